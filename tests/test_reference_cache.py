"""Precomputed reference log-probs: equal to the on-the-fly values, cached, and no reference
forward in training steps."""

import pytest
import torch
from torch.testing import assert_close

from plrlhf import DPO, IndividualPDPO, PreferenceDataModule
from plrlhf.policy import Policy
from tests.conftest import TINY_MODELS, TOKENIZER, quiet_trainer, synthetic_rows, write_jsonl


@pytest.fixture
def count_reference_forwards(monkeypatch):
    calls = {"n": 0}
    original = Policy.reference_logps

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Policy, "reference_logps", counted)
    return calls


def setup(tmp_path, rows=40, method=IndividualPDPO, **kwargs):
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_rows("train", rows))
    dm = PreferenceDataModule(TOKENIZER, train=str(train), batch_size=8)
    torch.manual_seed(0)
    module = method(
        model=TINY_MODELS["llama"],
        tokenizer=TOKENIZER,
        num_users=dm.num_users,
        precompute_reference=True,
        reference_cache_dir=str(tmp_path / "cache"),
        **kwargs,
    )
    return dm, module


def test_training_steps_run_no_reference_forward(tmp_path, count_reference_forwards):
    dm, module = setup(tmp_path)
    quiet_trainer(tmp_path, max_epochs=2).fit(module, datamodule=dm)
    assert count_reference_forwards["n"] == 5  # one pass over 40 triples in batches of 8, then none
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    # a later run on the same data and model reads the cache: no reference forward at all
    count_reference_forwards["n"] = 0
    dm, module = setup(tmp_path)
    quiet_trainer(tmp_path, max_steps=3).fit(module, datamodule=dm)
    assert count_reference_forwards["n"] == 0


def test_precomputed_values_equal_the_reference_forward(tmp_path):
    dm, module = setup(tmp_path, method=DPO)
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=dm)
    module.train()
    for batch in dm.train_dataloader():
        chosen, rejected = module.reference_logps(batch)
        expected_chosen, expected_rejected = module._reference_forward(batch)
        assert_close(chosen, expected_chosen, atol=1e-4, rtol=1e-5)
        assert_close(rejected, expected_rejected, atol=1e-4, rtol=1e-5)


def test_cache_key_follows_data_and_weights(tmp_path):
    dm, module = setup(tmp_path)
    dm_other = PreferenceDataModule(
        TOKENIZER, train=str(write_jsonl(tmp_path / "o.jsonl", synthetic_rows("train", 41)))
    )
    assert dm.fingerprint("train") != dm_other.fingerprint("train")
    assert dm.fingerprint("train") == PreferenceDataModule(
        TOKENIZER, train=str(tmp_path / "train.jsonl")
    ).fingerprint("train")
    before = module.policy.reference_fingerprint()
    with torch.no_grad():
        next(module.policy.reference.parameters()).add_(1.0)
    assert module.policy.reference_fingerprint() != before
