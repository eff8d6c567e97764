"""A fit resumed into its own log directory keeps the metrics it logged before the checkpoint."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger

from plrlhf.io import atomic_write_bytes


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "-inf")
    except ValueError:
        return float("-inf")


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


class KeepMetricsOnResume(Callback):
    """Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its version directory is not empty,
    so a fit resumed into the same directory (``--ckpt_path last`` with a fixed ``version``) would
    lose every metric logged before it. This reads the file before the logger starts, and once the
    checkpoint is restored writes back the rows logged before its step (the resumed run logs the
    later ones again), so the file holds the whole run once. Lightning creates the logger's
    writer before any callback hook runs, so :meth:`stash` is called before ``trainer.fit`` (the
    ``plrlhf`` CLI adds this callback and does so; with your own Trainer, call it yourself).
    """

    def __init__(self) -> None:
        self._saved: dict[int, tuple[list[str], list[dict[str, str]]]] = {}

    def stash(self, trainer: Trainer) -> None:
        """Read the ``metrics.csv`` of every ``CSVLogger`` of ``trainer`` (before ``fit`` with a
        checkpoint to resume from)."""
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                path = Path(logger.log_dir) / "metrics.csv"
                if path.is_file():
                    self._saved[id(logger)] = _read(path)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for logger in trainer.loggers:
            saved = self._saved.pop(id(logger), None)
            if saved is None:
                continue
            keys, rows = saved
            # Lightning logs a batch's metrics under the number of steps before it: the resumed
            # run's first rows carry the checkpoint's step, earlier rows came before it.
            kept = [row for row in rows if _step(row) < trainer.global_step]
            writer: Any = logger.experiment
            path = Path(writer.metrics_file_path)
            if path.is_file():  # (anything the resumed run has written already comes after)
                new_keys, new_rows = _read(path)
                keys += [k for k in new_keys if k not in keys]
                kept += new_rows
            text = io.StringIO()
            table = csv.DictWriter(text, fieldnames=keys)
            table.writeheader()
            table.writerows(kept)
            atomic_write_bytes(path, text.getvalue().encode())
            # The writer appends under the header it knows: the whole header, so that its next
            # rewrite (when new metrics appear) keeps the earlier columns.
            writer.metrics_keys = list(keys)
