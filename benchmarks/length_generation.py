"""The paper's pipeline on the synthetic length task: SFT -> (DPO | IndividualPDPO) -> generate.

    python benchmarks/length_generation.py [--out runs/length-generation] [--prompts 20] [-- fit args]

1. SFT on the chosen responses (`configs/method/sft.yaml`), exported as a model directory.
2. DPO and IndividualPDPO from the SFT model (`configs/method/{dpo,individual_pdpo}.yaml`), with
   an NLL term on the chosen response (`nll_weight: 1.0`): without it the minority's objective is
   met most cheaply by making the rejected (longer) continuation unlikely at any cost, and greedy
   generation for those users degenerated into repeated words (measured: 646 characters of
   "painted repaired painted ..." against 172 for the majority).
3. `plrlhf predict` on held-out prompts for every user (seen and unseen), greedy decoding.
4. A PersonalizedRewardModel on the same data (`configs/method/personalized_reward_model.yaml`),
   and `plrlhf evaluate` of IndividualPDPO against DPO on those prompts, judged by the length rule
   of the task's users and by the personalized reward model: win rates per group.

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

from plrlhf.cli import main as plrlhf

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = str(ROOT / "configs/experiment/synthetic-length.yaml")
PREFERENCES = {"majority": "longer", "minority": "shorter"}  # the task's users (data/make_synthetic.py)


def prompts_file(out: Path, n: int) -> tuple[Path, dict[str, str]]:
    """n held-out test prompts, asked by every user of the test split."""
    rows = [json.loads(line) for line in (ROOT / "data/synthetic/test.jsonl").read_text().splitlines()]
    groups = {r["user_id"]: r["group"] for r in rows}
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))[:n]
    path = out / "prompts.jsonl"
    path.write_text(
        "".join(
            json.dumps({"user_id": u, "group": groups[u], "prompt": p}) + "\n"
            for u in groups
            for p in prompts
        )
    )
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
    runs = {}
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
        runs[method] = run
        results[method] = mean_lengths(predict(run, prompts), groups, seen)
    columns = sorted({k for r in results.values() for k in r})
    print("| model | " + " | ".join(columns) + " | majority / minority (seen) |")
    print("|---" * (len(columns) + 2) + "|")
    for method, lengths in results.items():
        ratio = lengths["majority (seen)"] / lengths["minority (seen)"]
        print(f"| {method} | " + " | ".join(f"{lengths[c]:.0f}" for c in columns) + f" | {ratio:.2f} |")

    reward = fit(
        "personalized_reward_model",
        EXPERIMENT,
        out,
        "personalized_reward_model",
        "--data.init_args.validation",
        "null",
    )
    judges = {
        "length rule": ["--judge", "plrlhf.judges.LengthJudge", "--judge.by_group", json.dumps(PREFERENCES)],
        "personalized reward model": [
            "--judge",
            "plrlhf.judges.RewardModelJudge",
            "--judge.model",
            str(reward / "checkpoints/last.ckpt"),
        ],
    }
    print("\n| judge | " + " | ".join(f"{g} win rate [95%]" for g in ("majority", "minority")) + " | ties |")
    print("|---|---|---|---|")
    for name, judge in judges.items():
        evaluation = out / f"evaluate-{name.replace(' ', '-')}"
        plrlhf(
            [
                "evaluate",
                *("--model", str(runs["individual_pdpo"] / "checkpoints/last.ckpt")),
                *("--baseline", str(runs["dpo"] / "checkpoints/last.ckpt")),
                *("--prompts", str(prompts), "--out", str(evaluation), "--max_new_tokens", "80"),
                *judge,
            ]
        )
        summary = json.loads((evaluation / "summary.json").read_text())
        cells = [
            f"{r['win_rate']:.2f} [{r['win_rate_95'][0]:.2f}, {r['win_rate_95'][1]:.2f}]"
            for r in (summary["groups"][g] for g in ("majority", "minority"))
        ]
        print(f"| {name} | " + " | ".join(cells) + f" | {summary['all']['tie_rate']:.2f} |")
