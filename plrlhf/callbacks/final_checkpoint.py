"""``last.ckpt`` holds the end of training, not the last periodic save before it."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from plrlhf.callbacks.preemption import last_checkpoint_path


class SaveLastAtEnd(Callback):
    """Lightning's ``ModelCheckpoint(save_last=True, every_n_train_steps=N)`` leaves ``last.ckpt``
    at the last multiple of ``N`` when training ends between two (its own end-of-training save
    happens only if no ``last.ckpt`` was ever written), so ``--ckpt_path last`` would test, predict
    or export weights up to ``N - 1`` steps old. At the end of training this saves ``last.ckpt``
    again when it is behind. The ``plrlhf`` CLI always adds it; it does nothing without a
    ``ModelCheckpoint`` that keeps a last checkpoint.
    """

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        callback = trainer.checkpoint_callback
        if callback is None or not getattr(callback, "save_last", False):
            return
        path = last_checkpoint_path(trainer)
        behind = False  # decided on rank 0, which wrote the file
        if trainer.is_global_zero:
            saved = {}
            if path.is_file():
                saved = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            behind = saved.get("global_step") != trainer.global_step
        if trainer.world_size > 1:  # saving is collective: every process decides the same
            behind = trainer.strategy.reduce_boolean_decision(behind, all=False)
        if behind:
            trainer.save_checkpoint(path, weights_only=False)
            rank_zero_info(f"saved the end of training (step {trainer.global_step}) to {path}")
