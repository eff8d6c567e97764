"""Callbacks that crash a run and record what it trained on (used by the fault-tolerance tests)."""

from __future__ import annotations

import json
import os
import signal

from lightning.pytorch import Callback


class KillAtStep(Callback):
    """SIGKILLs the process when training is about to take optimizer step ``step``: no handler runs,
    nothing is flushed or saved (as when a node dies or the OOM killer strikes)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class BatchLog(Callback):
    """Appends, for every trained batch, the step, epoch, triple indices and loss to a JSON-lines
    file (flushed each line, so a killed run leaves its record)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        row = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "indices": batch["index"].tolist(),
            "loss": float(outputs["loss"]),
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class SigtermAtStep(Callback):
    """Sends this process SIGTERM when training is about to take optimizer step ``step`` (as a
    scheduler does before it kills a job); Lightning stops after that batch."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
