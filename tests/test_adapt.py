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
from plrlhf.user_models import IndividualUserModel, UserModel
from tests.conftest import TINY_MODELS, TOKENIZER, quiet_trainer, synthetic_rows, write_jsonl

TRAINED = ("user_0", "user_2", "user_3", "user_1")  # 3 majority users, 1 minority user
NEW = ("user_4", "user_5")  # minority, majority


def train_on_the_trained_users(tmp_path, method_class, epochs, **method_args):
    """``method_class`` trained on the users of ``TRAINED``; the method and the registry."""
    seed_everything(0)
    train = [r for r in synthetic_rows("train") if r["user_id"] in TRAINED][:480]
    dm = PreferenceDataModule(
        TOKENIZER, train=str(write_jsonl(tmp_path / "train.jsonl", train)), batch_size=16
    )
    method = method_class(
        model=TINY_MODELS["llama"],
        tokenizer=TOKENIZER,
        num_users=dm.num_users,
        optimizer=functools.partial(torch.optim.AdamW, lr=3e-3, weight_decay=0.0),
        **method_args,
    )
    quiet_trainer(tmp_path, max_epochs=epochs).fit(method, datamodule=dm)
    return method, dm.registry


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_on_the_trained_users(tmp_path_factory.mktemp("trained"), IndividualPDPO, epochs=2)


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
        trainer={"accelerator": "cpu"},
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


class GatedMLPUserModel(UserModel):
    """A user model written elsewhere: ``e_u = e_0 + [u > 0] * mlp(table[u])``. Its new users
    would start at ``e_0 + mlp(table[0])``, not as the generic user ``e_0``: it does not say how
    it grows (no ``new_user_row``)."""

    def __init__(self, num_users: int, hidden_size: int, n_tokens: int = 2) -> None:
        super().__init__()
        self.n_tokens = n_tokens
        self.generic_tokens = torch.nn.Parameter(torch.randn(n_tokens, hidden_size))
        self.table = torch.nn.Embedding(num_users + 1, 4)
        self.mlp = torch.nn.Linear(4, n_tokens * hidden_size)

    def forward(self, user_ids):
        gate = (user_ids > 0).float()[:, None, None]
        return self.generic_tokens + gate * self.mlp(self.table(user_ids)).view(
            len(user_ids), self.n_tokens, -1
        )


def test_a_user_model_that_grows_elsewhere_is_refused(tmp_path):
    from plrlhf.adapt import new_user_model

    model = GatedMLPUserModel(3, 8)
    with pytest.raises(TypeError, match="does not start new users as the users they start from"):
        new_user_model(model, 2, start=[0, 0])
    assert new_user_model(IndividualUserModel(3, 8), 2, start=[0, 2])  # the shipped ones do


def test_candidates_are_scored_with_one_reference_pass_per_batch(trained, tmp_path, monkeypatch):
    from plrlhf.adapt import closest_users
    from plrlhf.policy import Policy

    method, _ = copy.deepcopy(trained)
    rows = [r for r in synthetic_rows("train") if r["user_id"] in NEW][:24]
    dm = PreferenceDataModule(TOKENIZER, train=str(write_jsonl(tmp_path / "n.jsonl", rows)), batch_size=8)
    dm.setup("fit")
    calls = {"n": 0}
    original = Policy.reference_pair_logps

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Policy, "reference_pair_logps", counted)
    starts = closest_users(method, dm.train_dataloader(), num_new=dm.num_users)
    assert calls["n"] == 3  # 3 batches, 5 candidates each (the generic user and 4 trained users)
    assert len(starts) == dm.num_users


def test_the_adapt_command_takes_the_trainer_presets(trained, tmp_path, monkeypatch, capsys):
    from plrlhf.cli import main
    from tests.conftest import ROOT

    method, _ = trained
    # a checkpoint of the trained method, as `plrlhf fit` leaves one
    dm = PreferenceDataModule(
        TOKENIZER,
        train=str(
            write_jsonl(
                tmp_path / "t.jsonl", [r for r in synthetic_rows("train") if r["user_id"] in TRAINED][:16]
            )
        ),
        batch_size=16,
    )
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(copy.deepcopy(method), datamodule=dm)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    new = write_jsonl(
        tmp_path / "new.jsonl", [r for r in synthetic_rows("train") if r["user_id"] == "user_4"][:4]
    )
    preset = str(ROOT / "configs/trainer/cpu.yaml")
    main(["adapt", "--config", preset, "--checkpoint", str(tmp_path / "run.ckpt"), "--train", str(new),
          "--steps", "2", "--output", str(tmp_path / "out"), "--trainer.log_every_n_steps", "1"])  # fmt: skip
    assert "added 1 users (user_4)" in capsys.readouterr().out
    logged = (tmp_path / "out" / "logs" / "metrics.csv").read_text().splitlines()
    assert logged[0].startswith("epoch,step,train/loss") or "train/loss" in logged[0]
    assert len(logged) == 3  # log_every_n_steps 1 from the command line: both steps logged


def test_a_personalized_reward_model_adapts_new_users_and_exports_as_a_reward_model(tmp_path):
    from plrlhf import PersonalizedRewardModel

    trained = train_on_the_trained_users(tmp_path, PersonalizedRewardModel, 3, user_model=IndividualUserModel)
    _, _, result = adapt(trained, tmp_path, k=4, steps=20)
    assert result.metrics["test/rewards/accuracy/user/user_4"] > 0.9  # the new minority user
    assert result.metrics["test/generic/rewards/accuracy/user/user_4"] < 0.2
    served = load(result.export_dir)
    assert served.reward_head is not None and served.registry.index("user_4") == 5
