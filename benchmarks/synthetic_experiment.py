"""Run DPO, IndividualPDPO and ClusterPDPO on the synthetic length task; print one table.

    python benchmarks/synthetic_experiment.py [--methods dpo individual_pdpo ...] [-- extra CLI args]

Each method is `configs/method/<name>.yaml` composed with `configs/experiment/synthetic-length.yaml`,
trained with `plrlhf fit` and evaluated with `plrlhf test` from its saved config, exactly as a user
would. The table gives held-out reward accuracy for majority and minority users (seen in training),
unseen users, and overall; for P-DPO also the generic user's accuracy on the same pairs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cli_steps import fit, test

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "configs/experiment/synthetic-length.yaml"


def run(method: str, extra: list[str], out: Path) -> dict[str, float]:
    started = time.perf_counter()
    metrics = test(fit(method, EXPERIMENT, out, method, *extra))
    metrics["seconds"] = time.perf_counter() - started
    return metrics


def seen_group_accuracy(metrics: dict[str, float], group: str, users: dict[str, str], prefix: str) -> float:
    """Mean accuracy over *seen* users of a group (unseen users are reported on their own)."""
    values = [metrics[f"{prefix}/rewards/accuracy/user/{u}"] for u, g in users.items() if g == group]
    return sum(values) / len(values)


def table(results: dict[str, dict[str, float]], users: dict[str, str]) -> str:
    columns = (
        "method | majority (seen) | minority (seen) | unseen | overall "
        "| generic user: majority / minority | time"
    )
    lines = [
        f"| {columns} |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, m in results.items():
        generic = ""
        if "test/generic/rewards/accuracy" in m:
            generic = (
                f"{seen_group_accuracy(m, 'majority', users, 'test/generic'):.3f} / "
                f"{seen_group_accuracy(m, 'minority', users, 'test/generic'):.3f}"
            )
        lines.append(
            f"| {method} | {seen_group_accuracy(m, 'majority', users, 'test'):.3f} | "
            f"{seen_group_accuracy(m, 'minority', users, 'test'):.3f} | "
            f"{m['test/rewards/accuracy/unseen']:.3f} | "
            f"{m['test/rewards/accuracy']:.3f} | {generic} | {m['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def seen_users() -> dict[str, str]:
    users: dict[str, str] = {}
    for line in (ROOT / "data/synthetic/train.jsonl").read_text().splitlines():
        row = json.loads(line)
        users[row["user_id"]] = row["group"]
    return users


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--methods", nargs="+", default=["dpo", "individual_pdpo", "cluster_pdpo", "low_rank_pdpo"]
    )
    parser.add_argument("--out", default="runs/synthetic-length")
    parser.add_argument("extra", nargs="*", help="extra plrlhf fit arguments (after --)")
    args = parser.parse_args()
    results = {m: run(m, args.extra, Path(args.out)) for m in args.methods}
    print(table(results, seen_users()))
