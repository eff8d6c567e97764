"""A run stopped by SIGTERM (what schedulers send before they kill) leaves a resumable checkpoint
and a non-zero exit status, so neither the work nor the failure is lost."""

from __future__ import annotations

import signal
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException


def last_checkpoint_path(trainer: Trainer) -> Path:
    """Where ``--ckpt_path last`` looks: ``last.ckpt`` in the checkpoint callback's directory
    (``<log dir>/checkpoints`` without one)."""
    callback = trainer.checkpoint_callback
    directory = getattr(callback, "dirpath", None)
    if directory is None:
        directory = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
    return Path(directory) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"


class SaveOnSigterm(Callback):
    """On SIGTERM, Lightning stops training after the current batch (on every process) and exits
    with status 0. This callback saves the state at the end of that batch as ``last.ckpt`` (the
    point a periodic checkpoint is taken, so ``--ckpt_path last`` resumes exactly) and makes the
    exit status ``128 + SIGTERM`` (143), as a process killed by the signal would have. A signal
    that lands during validation is saved when Lightning stops (the resumed run validates again).
    The ``plrlhf`` CLI always adds it."""

    def __init__(self, exit_code: int = 128 + signal.SIGTERM) -> None:
        """
        Args:
            exit_code: the process's exit status after a SIGTERM.
        """
        self.exit_code = exit_code
        self._saved_at: int | None = None

    def _save(self, trainer: Trainer) -> None:
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)  # every process takes part (sharded states gather)
        self._saved_at = trainer.global_step
        rank_zero_info(f"SIGTERM: saved a resumable checkpoint to {path} (resume with --ckpt_path last)")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        received = bool(getattr(trainer, "received_sigterm", False))
        if trainer.world_size > 1:  # decided together: saving is collective
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if received and self._saved_at != trainer.global_step:
            self._save(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        if trainer.state.fn == TrainerFn.FITTING and self._saved_at != trainer.global_step:
            self._save(trainer)
        exception.code = self.exit_code
