"""``PredictionWriter``: what ``plrlhf predict`` returns, as JSON lines in the run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from plrlhf.tokenizer import load_tokenizer


class PredictionWriter(BasePredictionWriter):
    """Writes each predicted row (a dict) as one JSON line, in the order of the predict data.

    Rows holding a ``user_key`` get the user's name from the data module (``user_names``), so the
    file can be joined back to the input by user and position. Generated ``response_ids`` are
    decoded with the module's tokenizer (``tokenizer_path``) into ``response`` (and
    ``response_tokens``, their count). Each process writes its own file
    under DDP (``predictions.rank<N>.jsonl``).
    """

    def __init__(self, filename: str = "predictions.jsonl") -> None:
        """
        Args:
            filename: file in the run's log directory that receives the predictions.
        """
        super().__init__(write_interval="batch")
        self.filename = filename
        self.path: Path | None = None

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        name = self.filename
        if trainer.world_size > 1:
            stem, _, suffix = name.rpartition(".")
            name = f"{stem}.rank{trainer.global_rank}.{suffix}"
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / name
        self.path.write_text("")
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
        assert self.path is not None
        with self.path.open("a") as handle:
            for row in prediction:
                if self._names is not None and "user_key" in row:
                    row = {"user_id": self._names[row["user_key"]], **row}
                if self._tokenizer is not None and "response_ids" in row:
                    ids = row.pop("response_ids")
                    row["response"] = self._tokenizer.decode(ids, skip_special_tokens=True)
                    row["response_tokens"] = len(ids)
                handle.write(json.dumps(row) + "\n")
