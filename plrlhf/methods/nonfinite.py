"""What a method does when its training objective comes out NaN or infinite.

``stop``: the run saves the last good state and raises. The weights that produced the non-finite
loss are not good (the update before diverged them), so the state from *before* the last update is
kept (a CPU copy of the trainable parameters, but for row-wise sparse user tables, and of the
optimizer state, taken before every update: cheap with LoRA, one copy of the weights per step in
full fine-tuning; use ``skip`` where that is too much)
and written to ``<log dir>/checkpoints/nonfinite-last-good.ckpt``; it is checked on the failing
batch first. ``skip``: the batch is left out (its loss still logged, as NaN/inf, never the
previous step's); after ``max_consecutive_skips`` skips in a row the run stops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils._pytree import tree_map

NONFINITE_CHECKPOINT = "nonfinite-last-good.ckpt"


def _cpu_copy(tree: Any) -> Any:
    return tree_map(lambda v: v.detach().to("cpu", copy=True) if isinstance(v, Tensor) else v, tree)


class NonFiniteGuard:
    """Keeps what ``stop`` needs and decides, for a non-finite training objective, what happens."""

    def __init__(self, mode: Literal["stop", "skip"], max_consecutive_skips: int) -> None:
        if mode not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {mode!r}")
        if max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1, got {max_consecutive_skips}")
        self.mode = mode
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped = 0
        self.consecutive = 0
        self._before_update: dict[str, Any] | None = None

    def before_update(self, module: LightningModule, optimizer: torch.optim.Optimizer) -> None:
        """Called before each optimizer step (``on_before_optimizer_step``)."""
        if self.mode == "stop":
            # Row-wise (sparse) tables are left out: a copy would cost O(users) every step (a
            # million users' rows), and their own optimizer changes only the batch's rows.
            sparse = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding) and m.sparse}
            self._before_update = {
                "parameters": {
                    n: p.detach().to("cpu", copy=True)
                    for n, p in module.named_parameters()
                    if p.requires_grad and id(p) not in sparse
                },
                "optimizer": _cpu_copy(optimizer.state_dict()),
            }

    def finite(self) -> None:
        """The objective of a training batch was finite."""
        self.consecutive = 0

    def handle(self, module: LightningModule, where: str, still_nonfinite: Any) -> None:
        """Skip (returns) or stop (raises) after a non-finite objective at ``where``.
        ``still_nonfinite()`` re-evaluates the failing batch with the module's current weights."""
        if self.mode == "skip":
            self.skipped += 1
            self.consecutive += 1
            if self.consecutive > self.max_consecutive_skips:
                raise FloatingPointError(
                    f"non-finite loss at {where}: {self.consecutive} batches in a row skipped (more than "
                    f"max_consecutive_skips={self.max_consecutive_skips}); the run is diverging. Lower the "
                    "learning rate or check the data"
                )
            rank_zero_warn(f"non-finite loss at {where}: batch skipped")
            return
        trainer = module.trainer
        restored = self._restore(module, trainer)
        verdict = ""
        with torch.no_grad():
            batch_is_bad = restored and still_nonfinite()
        if batch_is_bad:
            verdict = (
                " Even with the weights from before the last update this batch gives a non-finite "
                "loss: check its data."
            )
        path = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / NONFINITE_CHECKPOINT
        trainer.save_checkpoint(path, weights_only=False)
        state = (
            "the state from before the update that diverged" if restored else "the state at the first step"
        )
        raise FloatingPointError(
            f"non-finite loss at {where}; {state} is saved to {path}.{verdict} Lower the learning rate, "
            "check the data, or set model.init_args.on_nonfinite: skip"
        )

    def _restore(self, module: LightningModule, trainer: Any) -> bool:
        saved, self._before_update = self._before_update, None
        if saved is None:
            return False  # nothing was updated yet: the weights are the initial ones
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name in saved["parameters"]:
                    p.copy_(saved["parameters"][name].to(p.device))
        optimizer = trainer.optimizers[0]
        optimizer.load_state_dict(saved["optimizer"])
        return True
