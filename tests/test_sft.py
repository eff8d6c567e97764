"""SFT through its own training step, evaluation and prediction (the Trainer runs it, nothing is
re-implemented here): the NLL of the chosen responses falls, the user-conditioned variant trains
the user's tokens, and ``predict`` on triples gives each response's log-prob."""

import json
import math
from functools import partial

import pytest
import torch

from plrlhf import SFT, PreferenceDataModule
from plrlhf.callbacks import PredictionWriter
from plrlhf.user_models import IndividualUserModel
from tests.conftest import (
    TINY_MODELS,
    TOKENIZER,
    file_order_batch,
    quiet_trainer,
    synthetic_rows,
    write_jsonl,
)


@pytest.fixture
def data(tmp_path):
    rows = [r for r in synthetic_rows("train") if r["user_id"] in ("user_0", "user_1", "user_4")][:32]
    path = str(write_jsonl(tmp_path / "t.jsonl", rows))
    return PreferenceDataModule(TOKENIZER, train=path, validation=path, test=path, predict=path, batch_size=8)


def sft(dm, **kwargs):
    optimizer = partial(torch.optim.AdamW, lr=1e-2)
    return SFT(
        model=TINY_MODELS["llama"], tokenizer=TOKENIZER, num_users=dm.num_users, optimizer=optimizer, **kwargs
    )


def nll_by_hand(module, dm):
    """Token-averaged NLL of the chosen responses, from the model's logits directly."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in dm.test_dataloader():
            n = batch["user_ids"].shape[0]
            ids, mask, resp = (batch[k][:n] for k in ("input_ids", "attention_mask", "response_mask"))
            logits = module.policy.hf_model(input_ids=ids, attention_mask=mask).logits.float()
            logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            total -= float((logps * resp[:, 1:]).sum())
            count += int(resp[:, 1:].sum())
    return total / count


def test_sft_trains_and_evaluates_through_its_own_steps(data, tmp_path):
    module = sft(data)
    assert module.policy.reference is None and module.policy.reference_free and module.user_model is None
    trainer = quiet_trainer(tmp_path, inference_mode=False)  # the same metrics then train and test
    data.setup("test")
    (before,) = trainer.test(module, datamodule=data, verbose=False)
    assert before["test/loss"] == pytest.approx(nll_by_hand(module, data), rel=1e-4)
    quiet_trainer(tmp_path, max_epochs=3).fit(module, datamodule=data)
    (after,) = trainer.test(module, datamodule=data, verbose=False)
    assert after["test/loss"] == pytest.approx(nll_by_hand(module, data), rel=1e-4)
    assert after["test/loss"] < before["test/loss"] - 0.5
    assert after["test/logps/chosen"] > before["test/logps/chosen"]


def test_user_conditioned_sft_trains_the_users_tokens(data, tmp_path):
    module = sft(data, user_model=partial(IndividualUserModel, n_tokens=2))
    assert [g["name"] for g in module.param_groups()] == ["policy", "user_model"]
    quiet_trainer(tmp_path, max_steps=2).fit(module, datamodule=data)
    assert module.user_model.offsets.weight[1:].abs().sum() > 0  # the users' offsets were trained
    batch = next(iter(data.train_dataloader()))
    tokens = module.generate(
        batch["input_ids"][:2], batch["attention_mask"][:2], batch["user_ids"][:2], max_new_tokens=3
    )
    assert tokens.shape == (2, 3)


def test_user_conditioned_sft_gives_the_user_model_its_own_optimizer_settings(data):
    module = sft(data, user_model=partial(IndividualUserModel, n_tokens=2), user_model_lr=0.05)
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"policy": 1e-2, "user_model": 0.05}
    with pytest.raises(ValueError, match="no user_model"):
        sft(data, user_model_lr=0.05)
    with pytest.raises(ValueError, match="user_model_lr must be > 0"):
        sft(data, user_model=partial(IndividualUserModel, n_tokens=2), user_model_lr=0.0)


def test_sft_predict_on_triples_gives_both_log_probs(data, tmp_path):
    module = sft(data, user_model=partial(IndividualUserModel, n_tokens=2))
    writer = PredictionWriter()
    quiet_trainer(tmp_path, callbacks=[writer]).predict(module, datamodule=data)
    rows = [json.loads(line) for line in writer.path.read_text().splitlines()]
    assert len(rows) == 32 and rows[0]["user_id"] in ("user_0", "user_1", "user_4")
    batch = file_order_batch(data, "predict", 8)  # the writer puts rows back in file order
    with torch.no_grad():
        expected = module.policy.pair_logps(
            batch["input_ids"],
            batch["attention_mask"],
            batch["response_mask"],
            module.pad_token_id,
            soft_tokens=[module.user_model(batch["user_ids"])],
        )[0]
    for i in range(8):
        assert rows[i]["logps/chosen"] == pytest.approx(float(expected[0][i]), rel=1e-4)
        assert rows[i]["logps/rejected"] == pytest.approx(float(expected[1][i]), rel=1e-4)
        assert (
            math.isfinite(rows[i]["logps/rejected"]) and rows[i]["logps/chosen"] != rows[i]["logps/rejected"]
        )


def test_pdpo_starts_its_user_model_from_a_user_conditioned_sft_export(data, tmp_path):
    from plrlhf import IndividualPDPO
    from plrlhf.export import export

    stage = sft(data, user_model=partial(IndividualUserModel, n_tokens=2))
    quiet_trainer(tmp_path / "sft", max_steps=2).fit(stage, datamodule=data)
    exported = export(stage, tmp_path / "sft-export", data.registry)
    trained = {k: v.clone() for k, v in stage.user_model.state_dict().items()}
    assert trained["offsets.weight"][1:].abs().sum() > 0  # the SFT stage moved the users' tokens

    def pdpo(n_tokens=2):
        return IndividualPDPO(
            model=TINY_MODELS["llama"],
            tokenizer=TOKENIZER,
            num_users=data.num_users,
            user_model=partial(IndividualUserModel, n_tokens=n_tokens),
            user_model_init=str(exported),
        )

    module = pdpo()
    for name, value in module.user_model.state_dict().items():
        assert torch.equal(value, trained[name]), name
    quiet_trainer(tmp_path / "pdpo", max_steps=1).fit(module, datamodule=data)  # the same users: fits

    with pytest.raises(ValueError, match="same class with the same arguments"):
        pdpo(n_tokens=3)
    # the same users in another order: index 1 would be somebody else
    reordered = tmp_path / "users.json"
    reordered.write_text(json.dumps({"users": list(reversed(data.registry.users))}))
    other = PreferenceDataModule(
        TOKENIZER, train=str(tmp_path / "t.jsonl"), user_registry=str(reordered), batch_size=8
    )
    with pytest.raises(ValueError, match="another order or set"):
        quiet_trainer(tmp_path / "pdpo2", max_steps=1).fit(pdpo(), datamodule=other)
