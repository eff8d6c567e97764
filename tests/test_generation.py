"""Personalized generation: cached equals uncached, the user's tokens are what the model sees."""

import json
from functools import partial

import pytest
import torch

from plrlhf import DPO, IndividualPDPO, PreferenceDataModule
from plrlhf.cli import main
from plrlhf.user_models import IndividualUserModel
from tests.conftest import ROOT, TINY_MODELS, TOKENIZER, synthetic_rows, write_jsonl
from tests.test_methods import randomize_user_model


def prompt_batch(tmp_path, users=("user_0", "user_1", "user_4", "stranger")):
    rows = [
        {"user_id": u, "prompt": r["prompt"][: 40 + 25 * i]}
        for i, (u, r) in enumerate(zip(users, synthetic_rows("test")))
    ]
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_rows("train", 40))
    dm = PreferenceDataModule(
        TOKENIZER, train=str(train), predict=str(write_jsonl(tmp_path / "p.jsonl", rows)), eval_batch_size=8
    )
    dm.setup("predict")
    return dm, next(iter(dm.predict_dataloader()))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("user_tokens", ["before_prompt", "after_prompt"])
def test_cached_generation_equals_uncached(tmp_path, arch, user_tokens):
    dm, batch = prompt_batch(tmp_path)
    assert batch["attention_mask"][:, 0].tolist() != [1, 1, 1, 1]  # left padding is exercised
    module = IndividualPDPO(
        model=TINY_MODELS[arch],
        tokenizer=TOKENIZER,
        num_users=dm.num_users,
        user_model=partial(IndividualUserModel, n_tokens=3),
        user_tokens=user_tokens,
    ).eval()
    randomize_user_model(module)
    args = (batch["input_ids"], batch["attention_mask"], batch["user_ids"])
    cached = module.generate(*args, max_new_tokens=12, use_cache=True)
    uncached = module.generate(*args, max_new_tokens=12, use_cache=False)
    assert cached.shape == (4, 12)
    assert torch.equal(cached, uncached)


def test_the_model_sees_the_users_soft_tokens(tmp_path, monkeypatch):
    dm, batch = prompt_batch(tmp_path)
    module = IndividualPDPO(
        model=TINY_MODELS["llama"],
        tokenizer=TOKENIZER,
        num_users=dm.num_users,
        user_model=partial(IndividualUserModel, n_tokens=3),
    ).eval()
    randomize_user_model(module)
    seen = {}
    original = module.policy.hf_model.generate

    def capture(**kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]
        return original(**kwargs)

    monkeypatch.setattr(module.policy.hf_model, "generate", capture)
    module.generate(batch["input_ids"], batch["attention_mask"], batch["user_ids"], max_new_tokens=2)
    expected = module.user_model(batch["user_ids"])
    torch.testing.assert_close(seen["embeds"][:, :3], expected)
    first = seen["embeds"][:, :3].clone()
    module.generate(
        batch["input_ids"], batch["attention_mask"], torch.zeros_like(batch["user_ids"]), max_new_tokens=2
    )
    assert not torch.allclose(seen["embeds"][:2, :3], first[:2])  # seen users changed to the generic user
    torch.testing.assert_close(seen["embeds"][3, :3], first[3])  # the stranger was the generic user already


def test_dpo_generates_without_user_tokens(tmp_path):
    dm, batch = prompt_batch(tmp_path)
    module = DPO(model=TINY_MODELS["llama"], tokenizer=TOKENIZER).eval()
    tokens = module.generate(batch["input_ids"], batch["attention_mask"], batch["user_ids"], max_new_tokens=5)
    assert tokens.shape == (4, 5)


def test_predict_writes_a_response_per_prompt(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"user_id": "user_1", "prompt": "Summarize the note.\nNote: Ana baked bread.\nSummary:"},
            {"user_id": "nobody", "prompt": "Summarize the note.\nNote: Ben fixed a roof.\nSummary:"},
        ],
    )
    main(
        [
            "predict",
            "--config",
            "configs/trainer/cpu.yaml",
            "--config",
            "configs/data/synthetic.yaml",
            "--config",
            "configs/method/individual_pdpo.yaml",
            "--config",
            "configs/model/tiny-llama.yaml",
            "--data.init_args.predict",
            str(prompts),
            "--model.init_args.generation",
            '{"max_new_tokens": 6}',
            "--untrained",
            "true",
            "--trainer.logger",
            "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir",
            str(tmp_path),
            "--trainer.logger.name",
            "run",
        ]
    )
    (path,) = tmp_path.glob("run/*/predictions.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["user_id"] for r in rows] == ["user_1", "nobody"]
    assert [r["user_index"] for r in rows][1] == 0
    assert all(isinstance(r["response"], str) and r["response_tokens"] <= 6 for r in rows)
    assert rows[0]["prompt"].endswith("Summary:")
