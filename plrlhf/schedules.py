"""Learning-rate schedules that need the run's total number of steps."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosine(LambdaLR):
    """Linear warm-up to the base learning rate, then cosine decay to ``min_lr_ratio`` of it.

    With ``total_steps`` unset the method fills it in from the trainer (``set_total_steps``, when
    training starts), so a YAML need not repeat what the data size and epochs already determine.
    That is why this is not ``transformers.get_cosine_with_min_lr_schedule_with_warmup`` or torch's
    ``SequentialLR(LinearLR, CosineAnnealingLR)``: both need the run's length when the optimizer
    is configured, and asking the trainer then builds the training loader before a resumed run
    restores its position (the resume would restart the epoch).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 150,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.0,
    ) -> None:
        """
        Args:
            optimizer: the optimizer to schedule.
            warmup_steps: optimizer steps of linear warm-up (the paper: 150).
            total_steps: optimizer steps in the run; default: the trainer's estimate.
            min_lr_ratio: the final learning rate as a fraction of the base one.
        """
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, self._factor)

    def set_total_steps(self, total_steps: int) -> None:
        if self.total_steps is None:
            self.total_steps = total_steps

    def _factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        total = self.total_steps or step + 1
        progress = min(1.0, (step - self.warmup_steps) / max(1, total - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
