"""Vanilla DPO: one policy for every user (Rafailov et al. 2023)."""

from __future__ import annotations

from plrlhf.losses import PairScores
from plrlhf.methods.base import Batch, PreferenceModule


class DPO(PreferenceModule):
    """Direct preference optimization, and its variants through ``loss`` (IPO, hinge, cDPO, ...).

    Chosen and rejected responses run in one forward of ``2B`` rows; user ids are ignored, but
    metrics are still reported per user and group, which shows whom a single policy serves.
    """

    def score(self, batch: Batch) -> dict[str, PairScores]:
        ((chosen, rejected, n_chosen, n_rejected),) = self.policy_logps(batch)
        ref_chosen, ref_rejected = self.reference_logps(batch)
        return {"policy": PairScores(chosen, rejected, ref_chosen, ref_rejected, n_chosen, n_rejected)}
