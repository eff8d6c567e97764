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
from plrlhf.user_models import IndividualUserModel


class SFT(PreferenceModule):
    """Maximum likelihood of the chosen responses (token-averaged NLL); no reference model;
    optionally conditioned on the user through soft tokens.

    Logged: ``<stage>/loss`` (NLL per token) and ``<stage>/logps/chosen`` (per response).
    """

    def __init__(self, *args: Any, n_user_tokens: int = 0, **kwargs: Any) -> None:
        """
        Args:
            n_user_tokens: condition on the user with this many soft tokens of an individual user
                model (``e_u = e_0 + o_u``, trained jointly, exported with the model); 0: plain SFT.
        """
        kwargs["reference_free"] = True  # SFT compares with nothing: no frozen copy
        super().__init__(*args, **kwargs)
        self.eval_nll = MeanMetric()
        self.eval_logps = MeanMetric()
        self.user_model: IndividualUserModel | None = None
        if n_user_tokens:
            self.user_model = IndividualUserModel(
                self.num_users, self.policy.hidden_size, n_tokens=n_user_tokens
            )
            self.user_model.initialize(self.policy.hf_model.get_input_embeddings().weight)

    def user_soft_tokens(self, user_ids: Tensor) -> Tensor | None:
        return None if self.user_model is None else self.user_model(user_ids)

    def param_groups(self) -> list[dict[str, Any]]:
        groups = super().param_groups()
        if self.user_model is not None:
            groups.append(
                {"params": list(self.user_model.parameters()), "weight_decay": 0.0, "name": "user_model"}
            )
        return groups

    def _chosen(self, batch: Batch) -> tuple[Tensor, Tensor]:
        n = batch["user_ids"].shape[0]  # the first n rows hold the chosen responses
        return self.policy.response_logps(
            batch["input_ids"][:n],
            batch["attention_mask"][:n],
            batch["response_mask"][:n],
            soft_tokens=self.user_soft_tokens(batch["user_ids"]),
        )

    def score(self, batch: Batch) -> dict:
        raise NotImplementedError("SFT scores no preference pairs: predict with prompts to generate")

    def _values(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """The token-averaged NLL, and the chosen responses' log-probs and token counts."""
        chosen, n_chosen = self._chosen(batch)
        return -chosen.sum() / n_chosen.sum().clamp(min=1), chosen, n_chosen

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss, chosen, _ = self(batch)
        batch_size = batch["user_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/logps/chosen", chosen.detach().mean(), batch_size=batch_size)
        return loss

    def _eval_step(self, stage: str, batch: Batch) -> None:
        loss, chosen, n_chosen = self(batch)
        self.eval_nll.update(loss, weight=n_chosen.sum())
        self.eval_logps.update(chosen)

    def _eval_epoch_end(self, stage: str) -> None:
        self.log(f"{stage}/loss", self.eval_nll.compute(), prog_bar=True)
        self.log(f"{stage}/logps/chosen", self.eval_logps.compute())
        self.eval_nll.reset()
        self.eval_logps.reset()
