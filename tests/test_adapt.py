"""Few-shot adaptation: a user who arrives after training gets served from a few preferences, with
the LM and the trained users untouched; the result exports like a trained model."""

import copy
import functools
import json

import pytest
import torch
from lightning.pytorch import seed_everything
from torch.testing import assert_close

from plrlhf import IndividualPDPO, PreferenceDataModule
from plrlhf.adapt import adapt_users
from plrlhf.export import load
from tests.conftest import TINY_MODELS, TOKENIZER, quiet_trainer, synthetic_rows, write_jsonl

TRAINED = ("user_0", "user_2", "user_3", "user_1")  # 3 majority users, 1 minority user
NEW = ("user_4", "user_5")  # minority, majority


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("trained")
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
    return method, dm.registry


def adapt(trained, tmp_path, k, extra_rows=(), **settings):
    method, registry = copy.deepcopy(trained)
    few = [r for user in NEW for r in [r for r in synthetic_rows("train") if r["user_id"] == user][:k]]
    held_out = [r for r in synthetic_rows("test") if r["user_id"] in NEW]
    result = adapt_users(
        method,
        registry,
        str(write_jsonl(tmp_path / "new.jsonl", few + list(extra_rows))),
        str(write_jsonl(tmp_path / "held_out.jsonl", held_out)),
        output=tmp_path / "adapt",
        accelerator="cpu",
        **settings,
    )
    return method, registry, result


def test_a_new_minority_user_is_served_after_one_preference(trained, tmp_path):
    known = [r for r in synthetic_rows("train") if r["user_id"] == "user_0"][:3]  # left out, counted
    method, registry, result = adapt(trained, tmp_path, k=1, extra_rows=known, steps=10)
    m = result.metrics
    assert result.new_users == ["user_4", "user_5"] and result.dropped_known == 3
    # one preference picks the trained user that explains it: the minority user for user_4
    assert result.started_from[0] == "user_1" and result.started_from[1] != "user_1"
    assert m["test/generic/rewards/accuracy/user/user_4"] < 0.2  # the generic user follows the majority
    assert m["test/rewards/accuracy/user/user_4"] > 0.9 and m["test/rewards/accuracy/user/user_5"] > 0.9

    # only the new users' rows were learned, and they were appended after the trained users
    original, _ = trained
    for key, value in method.policy.state_dict().items():
        assert torch.equal(value, original.policy.state_dict()[key]), key
    offsets = method.user_model.offsets.weight.detach()
    assert offsets.shape[0] == 4 + 2 + 1 and torch.equal(offsets[:5], original.user_model.offsets.weight)
    assert registry.users[-2:] == ["user_4", "user_5"] and method.num_users == 6
    assert json.loads((tmp_path / "adapt" / "users.json").read_text())["users"][-2:] == ["user_4", "user_5"]

    # the export serves the new users like trained ones
    served = load(result.export_dir)
    assert served.registry.index("user_4") == 5
    assert_close(served.soft_tokens(torch.tensor([5, 6])), method.user_model(torch.tensor([5, 6])))


def test_from_the_generic_user_sixteen_preferences_learn_a_new_offset(trained, tmp_path):
    method, _, result = adapt(trained, tmp_path, k=16, start="generic", steps=40, lr=0.01)
    assert result.started_from == ["<generic>", "<generic>"]
    assert result.metrics["test/rewards/accuracy/user/user_4"] > 0.9
    assert result.metrics["test/generic/rewards/accuracy/user/user_4"] < 0.2
    new_rows = method.user_model.offsets.weight.detach()[5:]
    assert not torch.equal(new_rows, trained[0].user_model.offsets.weight[1:3])  # learned, not copied
