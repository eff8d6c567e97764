"""Few-shot adaptation: a user who arrives after training gets served from a few preferences, with
the LM and the trained users untouched; the result exports like a trained model."""

import functools
import json

import torch
from lightning.pytorch import seed_everything
from torch.testing import assert_close

from plrlhf import IndividualPDPO, PreferenceDataModule
from plrlhf.adapt import adapt_users
from plrlhf.export import load
from tests.conftest import TINY_MODELS, TOKENIZER, quiet_trainer, synthetic_rows, write_jsonl

TRAINED = ("user_0", "user_2", "user_3", "user_1")  # 3 majority users, 1 minority user
NEW = {"user_4": "minority", "user_5": "majority"}


def test_a_new_minority_user_is_served_after_16_preferences(tmp_path):
    seed_everything(0)
    train = [r for r in synthetic_rows("train") if r["user_id"] in TRAINED][:480]
    dm = PreferenceDataModule(
        TOKENIZER, train=str(write_jsonl(tmp_path / "train.jsonl", train)), batch_size=16
    )
    method = IndividualPDPO(
        model=TINY_MODELS["llama"],
        tokenizer=TOKENIZER,
        num_users=dm.num_users,
        optimizer=functools.partial(torch.optim.AdamW, lr=3e-3, weight_decay=0.0),
    )
    quiet_trainer(tmp_path, max_epochs=2).fit(method, datamodule=dm)
    policy_before = {k: v.clone() for k, v in method.policy.state_dict().items()}
    users_before = method.user_model.offsets.weight.detach().clone()

    k = 16
    few = [r for user in NEW for r in [r for r in synthetic_rows("train") if r["user_id"] == user][:k]]
    known = [r for r in synthetic_rows("train") if r["user_id"] == "user_0"][:3]  # left out, counted
    held_out = [r for r in synthetic_rows("test") if r["user_id"] in NEW]
    result = adapt_users(
        method,
        dm.registry,
        str(write_jsonl(tmp_path / "new.jsonl", few + known)),
        str(write_jsonl(tmp_path / "held_out.jsonl", held_out)),
        output=tmp_path / "adapt",
        steps=40,
        accelerator="cpu",
    )
    m = result.metrics
    assert result.new_users == ["user_4", "user_5"] and result.dropped_known == 3
    # the generic user follows the majority; the adapted minority user does not
    assert m["test/generic/rewards/accuracy/user/user_4"] < 0.2
    assert m["test/rewards/accuracy/user/user_4"] > 0.9
    assert m["test/rewards/accuracy/user/user_5"] > 0.9

    # only the new users' rows were learned, and they were appended after the trained users
    for key, value in method.policy.state_dict().items():
        assert torch.equal(value, policy_before[key]), key
    offsets = method.user_model.offsets.weight.detach()
    assert offsets.shape[0] == 4 + 2 + 1 and torch.equal(offsets[:5], users_before)
    assert offsets[5:].abs().sum() > 0
    assert dm.registry.users == [*dm.registry.users[:4], "user_4", "user_5"] and method.num_users == 6
    assert json.loads((tmp_path / "adapt" / "users.json").read_text())["users"][-2:] == ["user_4", "user_5"]

    # the export serves the new users like trained ones
    served = load(result.export_dir)
    assert served.registry.index("user_4") == 5
    assert_close(served.soft_tokens(torch.tensor([5, 6])), method.user_model(torch.tensor([5, 6])))
