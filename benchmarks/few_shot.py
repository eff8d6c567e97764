"""Few-shot adaptation curve: held-out accuracy of new users after k labelled preferences.

    python benchmarks/few_shot.py synthetic [--methods individual_pdpo cluster_pdpo]
    python benchmarks/few_shot.py hh        # needs runs/hh-smollm2 (benchmarks/hh_smollm2.py)

synthetic: the length task with 16 users (`plrlhf data length`); 4 of them (2 minority, 2
majority) are held out of training and arrive later as new users. A P-DPO model is trained on the
other 12 (`plrlhf fit`, configs/experiment/synthetic-length.yaml); for each k, k triples per new
user are drawn (3 draws) and `plrlhf adapt` learns their parameters; accuracy is measured on the
new users' 40 held-out test triples each. References: the generic user on the same triples (k =
0), and the same users when seen in full training (a model trained on all 16 users, 250 triples
each).

hh: relabeled HH-RLHF on SmolLM2-135M (the P-DPO run of benchmarks/hh_smollm2.py). New users
`new_helpful` / `new_harmless` get k triples of their annotator type from the validation split; the
reference is the trained `helpful` / `harmless` users on the same 104 test triples.

Writes runs/few-shot/<task>/results.json, prints a markdown table and saves docs/few_shot_<task>.png.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from cli_steps import fit, test

from plrlhf.adapt import adapt
from plrlhf.builders.length_task import make_length_task

ROOT = Path(__file__).resolve().parents[1]
KS = (1, 2, 4, 8, 16, 32)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def synthetic_setup(out: Path, method: str) -> dict:
    """Data, the base model (without the new users) and the fully trained model."""
    data = out / "data"
    if not (data / "train.jsonl").is_file():
        make_length_task(data, users=16, unseen_users=0, seed=7)
    train = read(data / "train.jsonl")
    groups = {r["user_id"]: r["group"] for r in train}
    minority = sorted(u for u, g in groups.items() if g == "minority")[:2]
    majority = sorted(u for u, g in groups.items() if g == "majority")[:2]
    new = minority + majority
    base_train = write(out / "base_train.jsonl", [r for r in train if r["user_id"] not in new])
    test_rows = [r for r in read(data / "test.jsonl") if r["user_id"] in new]
    experiment = ROOT / "configs/experiment/synthetic-length.yaml"
    common = [
        f"--data.init_args.validation={data / 'validation.jsonl'}",
        f"--data.init_args.test={write(out / 'new_test.jsonl', test_rows)}",
    ]
    runs = {}
    for name, train_file in (("base", base_train), ("full", str(data / "train.jsonl"))):
        run = out / f"{method}-{name}"
        if not (run / "checkpoints/last.ckpt").is_file():
            fit(method, experiment, out, f"{method}-{name}", f"--data.init_args.train={train_file}", *common)
        runs[name] = run
    full = test(runs["full"])
    return {
        "new_users": {u: groups[u] for u in new},
        "pool": {u: [r for r in train if r["user_id"] == u] for u in new},
        "test": str(out / "new_test.jsonl"),
        "checkpoint": str(runs["base"] / "checkpoints/last.ckpt"),
        "trained": {u: full[f"test/rewards/accuracy/user/{u}"] for u in new},
        "steps": 60,
        "batch_size": 8,
    }


def hh_setup(out: Path, method: str) -> dict:
    run = ROOT / "runs/hh-smollm2" / method
    trained = json.loads((run / "test_metrics.json").read_text())
    data = ROOT / "data/hh_relabeled"
    validation = read(data / "validation.jsonl")
    test_rows = read(data / "test.jsonl")[:104]  # the triples the training run was tested on
    new_test = [{**r, "user_id": f"new_{r['user_id']}"} for r in test_rows]
    kinds = ("helpful", "harmless")
    return {
        "new_users": {f"new_{k}": k for k in kinds},
        "pool": {
            f"new_{k}": [{**r, "user_id": f"new_{k}"} for r in validation if r["user_id"] == k] for k in kinds
        },
        "test": write(out / "new_test.jsonl", new_test),
        "checkpoint": str(run / "checkpoints/last.ckpt"),
        "trained": {f"new_{k}": trained[f"test/rewards/accuracy/user/{k}"] for k in kinds},
        "steps": 16,
        "batch_size": 4,
    }


def curve(setup: dict, out: Path, draws: int, start: str, ks: tuple[int, ...] = KS) -> dict:
    results: dict = {"k": {}, "generic": {}}
    for k in ks:
        per_draw = []
        for draw in range(draws):
            rng = random.Random(1000 * k + draw)
            rows = [r for user in setup["new_users"] for r in rng.sample(setup["pool"][user], k)]
            started = time.perf_counter()
            result = adapt(
                setup["checkpoint"],
                write(out / f"k{k}-d{draw}" / "train.jsonl", rows),
                setup["test"],
                output=str(out / f"k{k}-d{draw}"),
                steps=setup["steps"],
                batch_size=setup["batch_size"],
                start=start,
                seed=draw,
            )
            seconds = time.perf_counter() - started
            m = result.metrics
            per_draw.append(
                {u: m[f"test/rewards/accuracy/user/{u}"] for u in setup["new_users"]} | {"s": seconds}
            )
            for u in setup["new_users"]:
                results["generic"][u] = m[f"test/generic/rewards/accuracy/user/{u}"]
        results["k"][k] = per_draw
    return results


def summarise(setup: dict, results: dict) -> tuple[str, dict]:
    users = setup["new_users"]
    groups = sorted(set(users.values()))

    def mean_over(group_users: list[str], values: dict) -> float:
        return statistics.mean(values[u] for u in group_users)

    rows, series = [], {g: [] for g in groups}
    header = (
        "| k | "
        + " | ".join(f"{g}: adapted (draws) | of trained" for g in groups)
        + " | all: of trained | s/run |"
    )
    lines = [header, "|---" * (2 * len(groups) + 3) + "|"]
    generic_cells = []
    for g in groups:
        members = [u for u, gu in users.items() if gu == g]
        generic = mean_over(members, results["generic"])
        generic_cells.append(f"{generic:.3f} | {generic / mean_over(members, setup['trained']):.2f}")
    trained_all = statistics.mean(setup["trained"].values())
    generic_all = statistics.mean(results["generic"].values())
    lines.append(f"| 0 (generic user) | {' | '.join(generic_cells)} | {generic_all / trained_all:.2f} | |")
    for k, draws in results["k"].items():
        cells = []
        for g in groups:
            members = [u for u, gu in users.items() if gu == g]
            per = [mean_over(members, d) for d in draws]
            value = statistics.mean(per)
            series[g].append(value)
            spread = f"{min(per):.2f}-{max(per):.2f}" if len(per) > 1 else ""
            cells.append(f"{value:.3f} ({spread}) | {value / mean_over(members, setup['trained']):.2f}")
        overall = statistics.mean(statistics.mean(d[u] for u in users) for d in draws)
        seconds = statistics.mean(d["s"] for d in draws)
        lines.append(f"| {k} | {' | '.join(cells)} | {overall / trained_all:.2f} | {seconds:.0f} |")
        rows.append((k, overall))
    trained_cells = []
    for g in groups:
        members = [u for u, gu in users.items() if gu == g]
        trained_cells.append(f"{mean_over(members, setup['trained']):.3f} | 1.00")
    lines.append(f"| trained in full | {' | '.join(trained_cells)} | 1.00 | |")
    return "\n".join(lines), series


def plot(setup: dict, by_start: dict[str, tuple[dict, dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = setup["new_users"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    results = next(iter(by_start.values()))[0]
    ks = [int(k) for k in results["k"]]
    for i, group in enumerate(sorted(set(users.values()))):
        members = [u for u, g in users.items() if g == group]
        colour = f"C{i}"
        for (start, (_, series)), style in zip(by_start.items(), ("o-", "s-.")):
            ax.plot(ks, series[group], style, color=colour, label=f"{group}: adapted, start {start}")
        trained = statistics.mean(setup["trained"][u] for u in members)
        generic = statistics.mean(results["generic"][u] for u in members)
        ax.axhline(trained, color=colour, linestyle="--", linewidth=1, label=f"{group}: trained in full")
        ax.axhline(generic, color=colour, linestyle=":", linewidth=1, label=f"{group}: generic user")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("labelled preferences per new user (k)")
    ax.set_ylabel("held-out reward accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("task", choices=("synthetic", "hh"))
    parser.add_argument("--methods", nargs="+", default=["individual_pdpo"])
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS), help="preferences per new user")
    parser.add_argument("--steps", type=int, default=None, help="adaptation steps (synthetic 60, hh 16)")
    parser.add_argument("--starts", nargs="+", default=["closest", "generic"], help="plrlhf adapt --start")
    parser.add_argument("--draws", type=int, default=None, help="draws of the k triples (synthetic 3, hh 1)")
    args = parser.parse_args()
    for method in args.methods:
        out = ROOT / "runs/few-shot" / args.task
        setup = (synthetic_setup if args.task == "synthetic" else hh_setup)(out, method)
        draws = args.draws or (3 if args.task == "synthetic" else 1)
        setup["steps"] = args.steps or setup["steps"]
        by_start = {}
        for start in args.starts:
            results = curve(setup, out / f"{method}-{start}", draws, start, tuple(args.ks))
            table, series = summarise(setup, results)
            by_start[start] = (results, series)
            summary = {key: value for key, value in setup.items() if key != "pool"} | {"results": results}
            (out / f"{method}-{start}-results.json").write_text(json.dumps(summary, indent=1))
            print(f"\n{args.task}, {method}, start {start}:\n{table}", flush=True)
        png = ROOT / f"docs/few_shot_{args.task}_{method}.png"
        plot(setup, by_start, png, f"{args.task}: {method}, new users after k preferences")
        print(f"plot: {png}")


if __name__ == "__main__":
    main()
