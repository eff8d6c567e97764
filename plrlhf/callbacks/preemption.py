"""A run stopped by SIGTERM (what schedulers send before they kill) leaves a resumable checkpoint
and a non-zero exit status, so neither the work nor the failure is lost."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info


def last_checkpoint_path(trainer: Trainer) -> Path:
    """Where ``--ckpt_path last`` looks: ``last.ckpt`` in the checkpoint callback's directory
    (``<log dir>/checkpoints`` without one)."""
    callback = trainer.checkpoint_callback
    directory = getattr(callback, "dirpath", None)
    if directory is None:
        directory = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
    return Path(directory) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"


class SaveOnSigterm(Callback):
    """A SIGTERM (what schedulers send before they kill a job) stops training at the end of the
    batch in progress, on every process: the state there is saved as ``last.ckpt`` (the point a
    periodic checkpoint is taken, so ``--ckpt_path last`` resumes exactly) and the processes exit
    with status ``128 + SIGTERM`` (143), as a process killed by the signal would have.

    Lightning's own handler exits with status 0 without saving and, under DDP, runs a collective
    inside the signal handler; this callback replaces it while training: the handler only records
    the signal, and the processes decide together (one all-reduce) at the end of each batch.
    Put it after your other callbacks (the CLI adds it after the configured ones): it ends the
    batch's callbacks. The ``plrlhf`` CLI always adds it.

    A SIGTERM before the first batch (during work done at the start of training, such as the
    reference pass, which can take an hour on CPU) exits at once with the same status: no step
    was taken since the run started or resumed, so there is nothing new to save.
    """

    def __init__(self, exit_code: int = 128 + signal.SIGTERM) -> None:
        """
        Args:
            exit_code: the process's exit status after a SIGTERM.
        """
        self.exit_code = exit_code
        self._received = False
        self._batches_begun = False
        self._previous: Any = None

    def _record(self, signum: int, frame: Any) -> None:
        if not self._batches_begun:
            rank_zero_info("SIGTERM before the first batch: nothing new to save; exiting")
            raise SystemExit(self.exit_code)
        self._received = True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            self._received = False
            self._batches_begun = False
            self._previous = signal.signal(signal.SIGTERM, self._record)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        self._batches_begun = True

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        received = self._received
        if trainer.world_size > 1:  # decided together: saving is collective
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if not received:
            return
        path = last_checkpoint_path(trainer)
        # weights_only=False: save the full state (unset, Lightning logs "defaulting to False", which reads
        # like an unsafe load)
        trainer.save_checkpoint(path, weights_only=False)  # every process takes part (sharded states gather)
        rank_zero_info(f"SIGTERM: saved a resumable checkpoint to {path} (resume with --ckpt_path last)")
        raise SystemExit(self.exit_code)

    def _restore(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore()
