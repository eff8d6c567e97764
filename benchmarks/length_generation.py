"""The paper's pipeline on the synthetic length task: SFT -> (DPO | IndividualPDPO) -> generate.

    python benchmarks/length_generation.py [--out runs/length-generation] [--prompts 20] [-- fit args]

1. SFT on the chosen responses (`configs/method/sft.yaml`), exported as a model directory.
2. DPO and IndividualPDPO from the SFT model (`configs/method/{dpo,individual_pdpo}.yaml`), with
   an NLL term on the chosen response (`nll_weight: 1.0`): without it the minority's objective is
   met most cheaply by making the rejected (longer) continuation unlikely at any cost, and greedy
   generation for those users degenerated into repeated words (measured: 646 characters of
   "painted repaired painted ..." against 172 for the majority).
3. `plrlhf predict` on held-out prompts for every user (seen and unseen), greedy decoding.

Prints the mean length (characters) of the generated summaries per group and method. The paper's
effect: P-DPO writes longer for users who prefer longer summaries than for those who prefer
shorter ones; vanilla DPO writes one length for everyone.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from cli_steps import fit, predict

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = str(ROOT / "configs/experiment/synthetic-length.yaml")


def prompts_file(out: Path, n: int) -> tuple[Path, dict[str, str]]:
    """n held-out test prompts, asked by every user of the test split."""
    rows = [json.loads(line) for line in (ROOT / "data/synthetic/test.jsonl").read_text().splitlines()]
    groups = {r["user_id"]: r["group"] for r in rows}
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))[:n]
    path = out / "prompts.jsonl"
    path.write_text("".join(json.dumps({"user_id": u, "prompt": p}) + "\n" for u in groups for p in prompts))
    return path, groups


def mean_lengths(rows: list[dict], groups: dict[str, str], seen: set[str]) -> dict[str, float]:
    by: dict[str, list[int]] = {}
    for row in rows:
        kind = "seen" if row["user_id"] in seen else "unseen"
        by.setdefault(f"{groups[row['user_id']]} ({kind})", []).append(len(row["response"]))
    return {k: statistics.mean(v) for k, v in sorted(by.items())}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/length-generation")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("extra", nargs="*", help="extra plrlhf fit arguments for DPO and P-DPO (after --)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sft = fit(
        "sft",
        EXPERIMENT,
        out,
        "sft",
        "--data.init_args.validation",
        "null",
        "--trainer.callbacks+=plrlhf.callbacks.Export",
    )
    sft_model = str(sft / "export/model")
    prompts, groups = prompts_file(out, args.prompts)
    seen = set(json.loads((sft / "users.json").read_text())["users"])
    results = {"sft": mean_lengths(predict(sft, prompts), groups, seen)}
    for method in ("dpo", "individual_pdpo"):
        run = fit(
            method,
            EXPERIMENT,
            out,
            method,
            "--data.init_args.validation",
            "null",
            "--model.init_args.model",
            sft_model,
            "--model.init_args.generation",
            '{"max_new_tokens": 80}',
            "--model.init_args.nll_weight",
            "1.0",
            *args.extra,
        )
        results[method] = mean_lengths(predict(run, prompts), groups, seen)
    columns = sorted({k for r in results.values() for k in r})
    print("| model | " + " | ".join(columns) + " | majority / minority (seen) |")
    print("|---" * (len(columns) + 2) + "|")
    for method, lengths in results.items():
        ratio = lengths["majority (seen)"] / lengths["minority (seen)"]
        print(f"| {method} | " + " | ".join(f"{lengths[c]:.0f}" for c in columns) + f" | {ratio:.2f} |")
