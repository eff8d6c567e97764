"""``plrlhf evaluate``: what a model writes for each user, judged against a baseline.

For every (user, prompt) the model and the baseline (another model, or the same model as the
generic user) each generate a response (batched, with the KV cache); a judge compares the two
(see :mod:`plrlhf.judges`); the report gives win and tie rates per user, per group and overall
with 95% bootstrap intervals, as a table, ``summary.json`` and ``win_rates.png``.

Resumable: generations and judgments are appended to ``generations.jsonl`` and
``judgments.jsonl`` as they are made (each line flushed to disk); a stopped evaluation run again
with the same arguments continues where it stopped.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from plrlhf.data.encoding import render_prompt
from plrlhf.data.sources import DataError, read_records
from plrlhf.data.tables import describe as describe_source
from plrlhf.export import open_model
from plrlhf.io import atomic_write_json
from plrlhf.judges import Comparison, Judge
from plrlhf.judges import describe as describe_judge

GENERIC = "generic"


@dataclass
class Item:
    index: int
    user: str | None
    group: str | None
    prompt: str


def read_items(
    prompts: Any, users: list[str] | None, fields: tuple[str, str, str], tokenizer: Any, limit: int | None
) -> list[Item]:
    """One item per record (its own user), or per record and listed user (``users``)."""
    prompt_field, user_field, group_field = fields
    items: list[Item] = []
    for number, located in enumerate(read_records(prompts, "test")):
        if limit is not None and number >= limit:
            break
        record = located.record
        if prompt_field not in record:
            raise DataError(located.where, f"missing field {prompt_field!r}")
        text = render_prompt(tokenizer, record[prompt_field], located.where)
        group = record.get(group_field)
        for user in users or [record.get(user_field)]:
            items.append(Item(len(items), None if user is None else str(user), group, text))
    if not items:
        raise DataError(describe_source(prompts), "no prompts")
    return items


def _identity(path: Any) -> Any:
    """What a model or data path was when used: size and modification time of its files."""
    root = Path(str(path))
    files = (
        sorted(p for p in root.rglob("*") if p.is_file())
        if root.is_dir()
        else [root]
        if root.is_file()
        else []
    )
    return [str(root)] + [
        [str(p.relative_to(root.parent)), p.stat().st_size, p.stat().st_mtime_ns] for p in files
    ]


def judge_key(judge: Judge) -> dict[str, Any]:
    """A judge's class and plain settings: judgments made by another judge are not reused."""
    plain = {}
    for name, value in sorted(vars(judge).items()):
        if isinstance(value, re.Pattern):
            value = value.pattern
        if isinstance(value, dict):
            value = {k: v.pattern if isinstance(v, re.Pattern) else v for k, v in value.items()}
        if isinstance(value, (str, int, float, bool, dict, list, type(None))):
            plain[name] = value
    return {"class": f"{type(judge).__module__}.{type(judge).__qualname__}", **plain}


def _same_or_new(output: Path, settings_file: Path, key: dict[str, Any], quiet: bool = False) -> None:
    """Continue ``output`` only if it was made with the same settings; otherwise refuse (outputs
    of a model) or start it again (judgments of another judge)."""
    key = json.loads(json.dumps(key, default=str))
    if output.is_file() and settings_file.is_file():
        before = json.loads(settings_file.read_text(encoding="utf-8"))
        if before != key:
            if not quiet:
                changed = sorted(k for k in key if before.get(k) != key[k])
                raise ValueError(
                    f"{output.parent} holds an evaluation made with other settings ({', '.join(changed)} "
                    "changed): give another --out, or delete it to start again"
                )
            output.unlink()
    elif output.is_file():
        output.unlink()  # made before settings were recorded: not known to match
    atomic_write_json(settings_file, key)


def _done(path: Path, key: str = "index") -> dict[int, dict[str, Any]]:
    """The complete lines of an output file (a line torn by a kill is dropped and rewritten)."""
    if not path.is_file():
        return {}
    kept, rows = [], {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        rows[row[key]] = row
        kept.append(line)
    with open(path, "w", encoding="utf-8") as handle:  # without the torn tail
        handle.write("".join(k + "\n" for k in kept))
    return rows


class _Appender:
    """Appends JSON lines, each flushed to disk before it counts as done."""

    def __init__(self, path: Path) -> None:
        self.handle = open(path, "a", encoding="utf-8")

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.handle.write("".join(json.dumps(r) + "\n" for r in rows))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def _batches(items: list[Item], done: dict[int, Any], size: int) -> Iterator[list[Item]]:
    todo = [i for i in items if i.index not in done]
    for start in range(0, len(todo), size):
        yield todo[start : start + size]


def bootstrap_interval(values: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``values``."""
    if not values:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(draws))
    return means[int(0.025 * draws)], means[min(draws - 1, int(0.975 * draws))]


def rates(scores: list[float], draws: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Win rate (the model's response better), tie rate and mean score, with intervals."""
    wins = [1.0 if s > 0.5 else 0.0 for s in scores]
    ties = [1.0 if s == 0.5 else 0.0 for s in scores]
    return {
        "n": len(scores),
        "win_rate": sum(wins) / len(wins) if wins else float("nan"),
        "win_rate_95": bootstrap_interval(wins, draws, seed),
        "tie_rate": sum(ties) / len(ties) if ties else float("nan"),
        "tie_rate_95": bootstrap_interval(ties, draws, seed + 1),
        "score": sum(scores) / len(scores) if scores else float("nan"),
    }


def evaluate(
    model: str,
    prompts: str,
    judge: Judge,
    out: str,
    baseline: str = GENERIC,
    users: list[str] | None = None,
    max_prompts: int | None = None,
    prompt_field: str = "prompt",
    user_field: str = "user_id",
    group_field: str = "group",
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "cpu",
    trust_checkpoint: bool = False,
    bootstrap_draws: int = 2000,
) -> dict[str, Any]:
    """Generate for each (user, prompt) with a model and a baseline, judge, report win rates.

    Args:
        model: the model: a ``plrlhf`` export directory or a ``plrlhf fit`` checkpoint.
        prompts: records with a prompt (text or chat messages), and a user id and group unless
            ``users`` is given (any format the data module reads).
        judge: a :class:`plrlhf.judges.Judge` by class path, e.g. ``plrlhf.judges.LengthJudge``.
        out: directory for ``generations.jsonl``, ``judgments.jsonl``, ``summary.json`` and
            ``win_rates.png`` (a stopped evaluation continues from them).
        baseline: another model (export or checkpoint), or ``generic``: the same model as the
            generic user.
        users: evaluate every prompt for each of these users (default: each record's own user).
        max_prompts: use the first records only.
        prompt_field: record key of the prompt.
        user_field: record key of the user id.
        group_field: record key of the group label.
        max_new_tokens: most tokens per response.
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature.
        top_p: nucleus sampling threshold.
        batch_size: prompts per generation batch (and comparisons per judge call).
        seed: seed of sampling (per batch, so a resumed run samples the same) and of the intervals.
        device: where the models run.
        trust_checkpoint: read legacy pickled checkpoints (runs code from the file: yours only).
        bootstrap_draws: resamples for the 95% intervals.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    policy = open_model(model, device, trust_checkpoint)
    other = policy if baseline == GENERIC else open_model(baseline, device, trust_checkpoint)
    items = read_items(prompts, users, (prompt_field, user_field, group_field), policy.tokenizer, max_prompts)
    settings = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
    if do_sample:
        settings |= {"temperature": temperature, "top_p": top_p}

    generation_key = {
        "model": _identity(model),
        "baseline": baseline if baseline == GENERIC else _identity(baseline),
        "prompts": describe_source(prompts),
        "prompts_identity": _identity(prompts),
        "users": users,
        "max_prompts": max_prompts,
        "fields": [prompt_field, user_field, group_field],
        "generation": settings,
        "seed": seed,
    }
    _same_or_new(root / "generations.jsonl", root / "generation-settings.json", generation_key)
    _same_or_new(
        root / "judgments.jsonl", root / "judge-settings.json", {"judge": judge_key(judge)}, quiet=True
    )
    generations = _done(root / "generations.jsonl")
    writer = _Appender(root / "generations.jsonl")
    progress = tqdm(total=len(items), initial=len(generations), desc="generating", unit="prompt")
    for batch in _batches(items, generations, batch_size):
        texts, who = [i.prompt for i in batch], [i.user for i in batch]
        torch.manual_seed(seed + batch[0].index)
        ours = policy.generate(texts, who, **settings)
        torch.manual_seed(seed + batch[0].index)
        theirs = other.generate(texts, [None] * len(batch) if baseline == GENERIC else who, **settings)
        rows = [
            {
                "index": i.index,
                "user": i.user,
                "group": i.group,
                "prompt": i.prompt,
                "model": a,
                "baseline": b,
            }
            for i, a, b in zip(batch, ours, theirs)
        ]
        writer.write(rows)
        generations.update({r["index"]: r for r in rows})
        progress.update(len(batch))
    writer.close()
    progress.close()

    judgments = _done(root / "judgments.jsonl")
    writer = _Appender(root / "judgments.jsonl")
    for batch in _batches(items, judgments, batch_size):
        rows = [generations[i.index] for i in batch]
        scores = judge(
            [Comparison(r["user"], r["group"], r["prompt"], r["model"], r["baseline"]) for r in rows]
        )
        judged = [{"index": r["index"], "score": s} for r, s in zip(rows, scores)]
        writer.write(judged)
        judgments.update({j["index"]: j for j in judged})
    writer.close()

    summary = _summary(items, judgments, bootstrap_draws, seed, set(policy.registry.users))
    summary["settings"] = {
        "model": model,
        "baseline": baseline,
        "prompts": describe_source(prompts),
        "judge": describe_judge(judge),
        **settings,
    }
    atomic_write_json(root / "summary.json", summary)
    print(table(summary))
    _plot(summary, root / "win_rates.png")
    return summary


def _summary(
    items: list[Item], judgments: dict[int, Any], draws: int, seed: int, seen: set[str]
) -> dict[str, Any]:
    """Rates overall, per group, per group among users seen / unseen in the model's training,
    and per user."""
    by: dict[str, dict[str, list[float]]] = {"groups": {}, "seen": {}, "users": {}}
    for item in items:
        score = judgments[item.index]["score"]
        kind = "seen" if item.user in seen else "unseen"
        by["users"].setdefault(item.user or "<generic>", []).append(score)
        by["seen"].setdefault(kind, []).append(score)
        if item.group is not None:
            by["groups"].setdefault(str(item.group), []).append(score)
            by["seen"].setdefault(f"{item.group} ({kind})", []).append(score)
    summary = {"all": rates([judgments[i.index]["score"] for i in items], draws, seed)}
    for section, values in by.items():
        summary[section] = {name: rates(scores, draws, seed) for name, scores in sorted(values.items())}
    return summary


def table(summary: dict[str, Any]) -> str:
    """The summary as an aligned text table."""
    lines = [f"{'':22} {'n':>5} {'win rate':>9} {'95% interval':>15} {'ties':>6}"]
    rows = [("all", summary["all"])]
    rows += [(f"group {g}", r) for g, r in summary["groups"].items()]
    rows += [(name, r) for name, r in summary["seen"].items()]
    rows += [(f"user {u}", r) for u, r in summary["users"].items()]
    for name, r in rows:
        low, high = r["win_rate_95"]
        interval = f"[{low:.2f}, {high:.2f}]"
        lines.append(f"{name[:22]:22} {r['n']:5d} {r['win_rate']:9.3f} {interval:>15} {r['tie_rate']:6.2f}")
    return "\n".join(lines)


def _plot(summary: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional (pip install plrlhf[plots])
        return
    names = [*summary["seen"], *summary["users"]]
    values = [*summary["seen"].values(), *summary["users"].values()]
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(names) + 2), 3.2))
    rates_ = [v["win_rate"] for v in values]
    errors = [
        [r - v["win_rate_95"][0] for r, v in zip(rates_, values)],
        [v["win_rate_95"][1] - r for r, v in zip(rates_, values)],
    ]
    colors = ["tab:gray"] * len(summary["seen"]) + ["tab:blue"] * len(summary["users"])
    ax.bar(range(len(names)), rates_, yerr=errors, color=colors, capsize=3)
    ax.axhline(0.5, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("win rate vs baseline")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def parser() -> Any:
    from jsonargparse import ActionConfigFile, ArgumentParser

    root = ArgumentParser(prog="plrlhf evaluate", description=(evaluate.__doc__ or "").split("\n\n")[0])
    root.add_argument("--config", action=ActionConfigFile, help="YAML files of these arguments")
    root.add_function_arguments(evaluate, as_positional=False)
    return root


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    arguments = parser()
    config = arguments.parse_args(argv)
    instantiated = arguments.instantiate_classes(config)
    options = {k: v for k, v in vars(instantiated).items() if k != "config"}
    evaluate(**options)
