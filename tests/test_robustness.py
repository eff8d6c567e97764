"""Non-finite losses, determinism."""

import csv
import math
from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, seed_everything

from plrlhf import IndividualPDPO, PreferenceDataModule
from plrlhf.user_models import IndividualUserModel
from tests.conftest import TINY_MODELS, TOKENIZER, quiet_trainer, synthetic_rows, write_jsonl


def setup(tmp_path, **kwargs):
    seed_everything(0)
    rows = synthetic_rows("train", 48)
    path = str(write_jsonl(tmp_path / "t.jsonl", rows))
    dm = PreferenceDataModule(TOKENIZER, train=path, test=path, batch_size=8)
    module = IndividualPDPO(
        model=TINY_MODELS["llama"],
        tokenizer=TOKENIZER,
        num_users=dm.num_users,
        user_model=partial(IndividualUserModel, n_tokens=2),
        **kwargs,
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


def test_a_diverging_run_stops_and_saves_weights_that_evaluate_finitely(tmp_path):
    """An update with an absurd learning rate blows the weights up (~1e25); the next loss is
    non-finite. The saved state is the one from before that update, and it tests finitely."""
    import functools

    dm, module = setup(tmp_path, optimizer=functools.partial(torch.optim.AdamW, lr=1e25))
    trainer = quiet_trainer(tmp_path, max_steps=6)
    with pytest.raises(
        FloatingPointError, match=r"non-finite loss at step (\d) \(epoch 0, batch \1\), users \['user_"
    ):
        trainer.fit(module, datamodule=dm)
    path = tmp_path / "checkpoints/nonfinite-last-good.ckpt"
    (metrics,) = quiet_trainer(tmp_path).test(module, datamodule=dm, ckpt_path=path, verbose=False)
    assert all(math.isfinite(v) for v in metrics.values()) and metrics


def test_a_nonfinite_first_batch_stops_with_the_initial_state(tmp_path):
    dm, module = setup(tmp_path)
    poison_step(module, bad_call=1)
    with pytest.raises(FloatingPointError, match="the state at the first step"):
        quiet_trainer(tmp_path, max_steps=4).fit(module, datamodule=dm)


def test_nonfinite_loss_can_skip_the_batch_and_logs_no_stale_loss(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    dm, module = setup(tmp_path, on_nonfinite="skip")
    poison_step(module)
    losses = Losses()
    logger = CSVLogger(tmp_path, name="", version="log")
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[losses], logger=logger, log_every_n_steps=1)
    trainer.fit(module, datamodule=dm)
    assert module.skipped_batches == 1 and losses.losses[1] is None
    # Lightning still counts the step, but nothing had a gradient, so nothing moved
    assert torch.equal(losses.weights[("start", 1)], losses.weights[("end", 1)])
    assert not torch.equal(losses.weights[("start", 2)], losses.weights[("end", 2)])
    assert all(torch.isfinite(v).all() for v in module.state_dict().values() if v.is_floating_point())
    rows = list(csv.DictReader(open(tmp_path / "log" / "metrics.csv")))
    logged = {int(r["step"]): r["train/loss"] for r in rows if r.get("train/loss")}
    assert logged[1] == "nan" and logged[0] != logged[2] != "nan"  # the skipped step: its own loss


def test_skipping_gives_up_after_max_consecutive_skips(tmp_path):
    dm, module = setup(tmp_path, on_nonfinite="skip", max_consecutive_skips=2)
    original, calls = module.combine, {"n": 0}

    def combine(values):  # every batch from the second on is non-finite
        calls["n"] += 1
        return original(values) * (float("nan") if calls["n"] >= 2 else 1.0)

    module.combine = combine
    with pytest.raises(FloatingPointError, match="3 batches in a row skipped .*max_consecutive_skips=2"):
        quiet_trainer(tmp_path, max_epochs=1).fit(module, datamodule=dm)


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
        user_model=partial(IndividualUserModel, n_tokens=2),
    )
    with pytest.raises(
        ValueError,
        match=r"does not fit this model: 44 of another shape .*'hidden_size': 32.*'hidden_size': 64",
    ):
        quiet_trainer(tmp_path).test(
            bigger, datamodule=dm, ckpt_path=tmp_path / "small.ckpt", verbose=False, weights_only=False
        )
