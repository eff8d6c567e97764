"""``Export``: write the trained model as a standalone directory when fitting ends."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from plrlhf.data.registry import UserRegistry
from plrlhf.export import export


class Export(Callback):
    """At the end of ``fit``, exports the method (see :func:`plrlhf.export.export`) to
    ``<log dir>/<dirname>``: a transformers model directory, the user model and registry."""

    def __init__(self, dirname: str = "export", merge_lora: bool = True) -> None:
        """
        Args:
            dirname: directory inside the run's log directory (or an absolute path).
            merge_lora: merge LoRA adapters into the exported weights.
        """
        self.dirname = dirname
        self.merge_lora = merge_lora
        self.path: Path | None = None

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        registry = getattr(trainer.datamodule, "registry", None) or UserRegistry()
        self.path = Path(trainer.log_dir or trainer.default_root_dir) / self.dirname
        export(pl_module, self.path, registry, merge_lora=self.merge_lora)
        rank_zero_info(f"exported to {self.path} (load with plrlhf.export.load)")
