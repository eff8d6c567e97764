"""Sparse per-user rows: a step touches only the rows of the batch's users, through a row-wise
optimizer whose state is in the checkpoint."""

import functools

import torch
from lightning.pytorch import seed_everything

from plrlhf import PDPO, LowRankUserModel, PreferenceDataModule
from tests.conftest import TINY_MODELS, TOKENIZER, quiet_trainer, synthetic_rows, write_jsonl


def build(tmp_path):
    seed_everything(0)
    rows = synthetic_rows("train", 40)
    dm = PreferenceDataModule(TOKENIZER, train=str(write_jsonl(tmp_path / "t.jsonl", rows)), batch_size=4)
    method = PDPO(
        model=TINY_MODELS["llama"],
        tokenizer=TOKENIZER,
        num_users=dm.num_users,
        user_model=functools.partial(LowRankUserModel, n_tokens=2, rank=4, sparse=True),
        user_model_lr=0.05,
    )
    return dm, method


def test_one_step_moves_only_the_rows_of_the_batch_users(tmp_path):
    dm, method = build(tmp_path)
    dm.setup("fit")
    first = next(iter(dm.train_dataloader()))
    in_batch = set(first["user_ids"].tolist())
    before = method.user_model.coefficients.weight.detach().clone()
    trainer = quiet_trainer(tmp_path, max_steps=1, enable_checkpointing=True)
    trainer.fit(method, datamodule=dm)
    after = method.user_model.coefficients.weight.detach()
    moved = {int(u) for u in torch.nonzero((after - before).abs().sum(-1)).flatten()}
    assert moved == in_batch - {0} and len(moved) >= 1
    main = trainer.optimizers[0]
    assert all(p is not method.user_model.coefficients.weight for g in main.param_groups for p in g["params"])
    assert method.user_model.coefficients.weight.grad is None  # freed after the row step

    path = tmp_path / "step1.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["user_rows_optimizer"]
    assert saved["state"][0]["step"] == 1
    # resuming restores the row optimizer's moments
    dm2, method2 = build(tmp_path)
    trainer2 = quiet_trainer(tmp_path, max_steps=2)
    trainer2.fit(method2, datamodule=dm2, ckpt_path=path, weights_only=False)
    assert method2.row_optimizer.state_dict()["state"][0]["step"] == 2
