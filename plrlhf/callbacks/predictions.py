"""``PredictionWriter``: what ``plrlhf predict`` returns, as JSON lines in the run directory."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import IO, Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from plrlhf.io import atomic_file
from plrlhf.tokenizer import load_tokenizer


class PredictionWriter(BasePredictionWriter):
    """Writes each predicted row (a dict) as one JSON line, in the order of the predict data.

    Rows holding a ``user_key`` get the user's name from the data module (``user_names``), so the
    file can be joined back to the input by user and position. Generated ``response_ids`` are
    decoded with the module's tokenizer (``tokenizer_path``) into ``response`` (and
    ``response_tokens``, their count). Each process writes its own file
    under DDP (``predictions.rank<N>.jsonl``).

    The data module hands prediction batches over shortest first (less padding); rows are
    spooled to a temporary file as they come and the file is written at the end, in data order,
    in one atomic step: an interrupted predict leaves no partial file that reads as complete.
    """

    def __init__(self, filename: str = "predictions.jsonl") -> None:
        """
        Args:
            filename: file in the run's log directory that receives the predictions.
        """
        super().__init__(write_interval="batch")
        self.filename = filename
        self.path: Path | None = None
        self._spool: IO[bytes] | None = None
        self._order: list[tuple[int, int, int]] = []  # (data index, offset, size) per spooled line

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        name = self.filename
        if trainer.world_size > 1:
            stem, _, suffix = name.rpartition(".")
            name = f"{stem}.rank{trainer.global_rank}.{suffix}"
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / name
        self._spool = tempfile.TemporaryFile(dir=log_dir)
        self._order = []
        self._names = getattr(trainer.datamodule, "user_names", None)
        path = getattr(pl_module, "tokenizer_path", None)
        self._tokenizer = load_tokenizer(path) if path is not None else None

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        assert self._spool is not None
        indices = list(batch_indices) if batch_indices is not None else [None] * len(prediction)
        if len(indices) != len(prediction):
            raise RuntimeError(f"{len(prediction)} predicted rows for a batch of {len(indices)}")
        for index, row in zip(indices, prediction, strict=True):
            if self._names is not None and "user_key" in row:
                row = {"user_id": self._names[row["user_key"]], **row}
            if self._tokenizer is not None and "response_ids" in row:
                ids = row.pop("response_ids")
                row["response"] = self._tokenizer.decode(ids, skip_special_tokens=True)
                row["response_tokens"] = len(ids)
            line = (json.dumps(row) + "\n").encode()
            position = len(self._order) if index is None else int(index)
            self._order.append((position, self._spool.tell(), len(line)))
            self._spool.write(line)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        assert self.path is not None and self._spool is not None
        with atomic_file(self.path) as out:
            for _, offset, size in sorted(self._order):
                self._spool.seek(offset)
                out.write(self._spool.read(size))
        self._spool.close()
        self._spool, self._order = None, []
