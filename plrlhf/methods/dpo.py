"""Vanilla DPO: one policy for every user (Rafailov et al. 2023)."""

from __future__ import annotations

from torch import Tensor

from plrlhf.losses import PairScores
from plrlhf.methods.lm import Batch
from plrlhf.methods.preference import PreferenceModule


class DPO(PreferenceModule):
    """Direct preference optimization, and its variants through ``loss`` (IPO, SimPO, NCA, ...).

    Chosen and rejected responses run in one forward; user ids are ignored, but metrics are still
    reported per user and group, which shows whom a single policy serves.
    """

    def score(self, batch: Batch, reference: tuple[Tensor, Tensor] | None = None) -> dict[str, PairScores]:
        ((chosen, rejected, n_chosen, n_rejected),) = self.policy.pair_logps(
            batch["input_ids"],
            batch["attention_mask"],
            batch["response_mask"],
            self.pad_token_id,
            layout=self.row_layout,
        )
        ref_chosen, ref_rejected = reference if reference is not None else self.reference_logps(batch)
        return {"policy": PairScores(chosen, rejected, ref_chosen, ref_rejected, n_chosen, n_rejected)}
