"""The per-pair values a preference method trains on and reports, from log-probs alone (torch only).

``rewards = beta * r`` with ``r`` the log-ratio of policy and reference (per token when the loss is
length-normalized; the policy's log-prob alone when the loss needs no reference): the implicit
reward of DPO (Rafailov et al. 2023, eq. 5) and of P-DPO (method.md, "The objective").
"""

from __future__ import annotations

from torch import Tensor

from plrlhf.losses import PairScores, PreferenceLoss

VALUES = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracy",
    "logps/chosen",
    "logps/rejected",
)


def preference_values(scores: PairScores, loss: PreferenceLoss, beta: float) -> dict[str, Tensor]:
    """Per-pair loss, implicit rewards, margins, accuracy and log-probs of one condition."""
    chosen, rejected = scores.log_ratios(loss.length_normalized)
    rewards_chosen = beta * chosen.detach()
    rewards_rejected = beta * rejected.detach()
    return {
        "loss": loss(scores, beta),
        "rewards/chosen": rewards_chosen,
        "rewards/rejected": rewards_rejected,
        "rewards/margins": rewards_chosen - rewards_rejected,
        "rewards/accuracy": (rewards_chosen > rewards_rejected).float(),
        "logps/chosen": scores.policy_chosen.detach(),
        "logps/rejected": scores.policy_rejected.detach(),
    }
