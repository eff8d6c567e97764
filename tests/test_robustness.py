"""Non-finite losses, determinism."""

import pytest
import torch
from lightning.pytorch import Callback, seed_everything

from plrlhf import IndividualPDPO, PreferenceDataModule
from tests.conftest import TINY_MODELS, TOKENIZER, quiet_trainer, synthetic_rows, write_jsonl


def setup(tmp_path, **kwargs):
    seed_everything(0)
    rows = synthetic_rows("train", 48)
    path = str(write_jsonl(tmp_path / "t.jsonl", rows))
    dm = PreferenceDataModule(TOKENIZER, train=path, test=path, batch_size=8)
    module = IndividualPDPO(
        model=TINY_MODELS["llama"], tokenizer=TOKENIZER, num_users=dm.num_users, n_user_tokens=2, **kwargs
    )
    return dm, module


def poison_step(module, bad_call=2):
    """The objective of the bad_call-th training batch becomes NaN."""
    original, calls = module.combine, {"n": 0}

    def combine(values):
        calls["n"] += 1
        result = original(values)
        return result * float("nan") if calls["n"] == bad_call else result

    module.combine = combine


class Losses(Callback):
    def __init__(self):
        self.losses = []
        self.weights = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.weights[("start", batch_idx)] = pl_module.user_model.offsets.weight.detach().clone()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if outputs else None  # a skipped batch has no loss
        self.losses.append(None if loss is None else loss.item())
        self.weights[("end", batch_idx)] = pl_module.user_model.offsets.weight.detach().clone()


def test_nonfinite_loss_stops_with_step_users_and_last_good_state(tmp_path):
    dm, module = setup(tmp_path)
    poison_step(module)
    trainer = quiet_trainer(tmp_path, max_steps=4)
    with pytest.raises(
        FloatingPointError, match=r"non-finite loss at step 1 \(epoch 0, batch 1\), users \['user_"
    ):
        trainer.fit(module, datamodule=dm)
    saved = torch.load(tmp_path / "checkpoints/nonfinite-last-good.ckpt", weights_only=False)
    assert saved["global_step"] == 1
    # the saved weights are the module's now: the bad batch never reached the optimizer
    for name, value in module.state_dict().items():
        torch.testing.assert_close(saved["state_dict"][name], value, msg=name)
    assert all(torch.isfinite(v).all() for v in module.state_dict().values() if v.is_floating_point())


def test_nonfinite_loss_can_skip_the_batch(tmp_path):
    dm, module = setup(tmp_path, on_nonfinite="skip")
    poison_step(module)
    losses = Losses()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[losses])
    trainer.fit(module, datamodule=dm)
    assert module.skipped_batches == 1 and losses.losses[1] is None
    # Lightning still counts the step, but nothing had a gradient, so nothing moved
    assert torch.equal(losses.weights[("start", 1)], losses.weights[("end", 1)])
    assert not torch.equal(losses.weights[("start", 2)], losses.weights[("end", 2)])
    assert all(torch.isfinite(v).all() for v in module.state_dict().values() if v.is_floating_point())


def test_same_seed_same_losses(tmp_path):
    runs = []
    for _ in range(2):
        dm, module = setup(tmp_path)
        losses = Losses()
        quiet_trainer(tmp_path, max_steps=4, callbacks=[losses]).fit(module, datamodule=dm)
        runs.append(losses.losses)
    assert len(runs[0]) == 4 and runs[0] == runs[1]


def test_checkpoint_of_another_model_is_refused_clearly(tmp_path):
    dm, module = setup(tmp_path)
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "small.ckpt")
    bigger = IndividualPDPO(
        model={**TINY_MODELS["llama"], "hidden_size": 64},
        tokenizer=TOKENIZER,
        num_users=dm.num_users,
        n_user_tokens=2,
    )
    with pytest.raises(
        ValueError,
        match=r"does not fit this model: 44 of another shape .*'hidden_size': 32.*'hidden_size': 64",
    ):
        quiet_trainer(tmp_path).test(
            bigger, datamodule=dm, ckpt_path=tmp_path / "small.ckpt", verbose=False, weights_only=False
        )
