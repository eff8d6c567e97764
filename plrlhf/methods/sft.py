"""Supervised fine-tuning on the chosen responses: the warm start of the paper's pipeline.

SFT, then DPO or P-DPO from the SFT model (export it with ``plrlhf.callbacks.Export`` and give the
exported ``model/`` directory as the next method's ``model``). It reads the same preference data;
only the chosen response of each triple is trained on.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchmetrics import MeanMetric

from plrlhf.methods.base import Batch, PreferenceModule


class SFT(PreferenceModule):
    """Maximum likelihood of the chosen responses (token-averaged NLL); no reference model.

    Logged: ``<stage>/loss`` (NLL per token) and ``<stage>/logps/chosen`` (per response).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["reference_free"] = True  # SFT compares with nothing: no frozen copy
        super().__init__(*args, **kwargs)
        self.eval_nll = MeanMetric()
        self.eval_logps = MeanMetric()

    def _chosen(self, batch: Batch) -> tuple[Tensor, Tensor]:
        n = batch["user_ids"].shape[0]  # the first n rows hold the chosen responses
        return self.policy.response_logps(
            batch["input_ids"][:n], batch["attention_mask"][:n], batch["response_mask"][:n]
        )

    def score(self, batch: Batch) -> dict:
        raise NotImplementedError("SFT scores no preference pairs: predict with prompts to generate")

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        chosen, n_chosen = self._chosen(batch)
        loss = -chosen.sum() / n_chosen.sum().clamp(min=1)
        batch_size = batch["user_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/logps/chosen", chosen.detach().mean(), batch_size=batch_size)
        return loss

    def _eval_step(self, stage: str, batch: Batch) -> None:
        chosen, n_chosen = self._chosen(batch)
        self.eval_nll.update(-chosen.sum() / n_chosen.sum().clamp(min=1), weight=n_chosen.sum())
        self.eval_logps.update(chosen)

    def _eval_epoch_end(self, stage: str) -> None:
        self.log(f"{stage}/loss", self.eval_nll.compute(), prog_bar=True)
        self.log(f"{stage}/logps/chosen", self.eval_logps.compute())
        self.eval_nll.reset()
        self.eval_logps.reset()
