"""Reward models, plain and personalized: a scalar head on the LM, trained with Bradley-Terry.

The reward ``r(u, x, y)`` is a linear head on the decoder's last hidden state at the response's last
token (EOS), the user's soft tokens placed as in P-DPO. The objective is Bradley-Terry on
``r(u, x, y_c) - r(u, x, y_r)`` (the ``Sigmoid`` loss with ``beta`` 1 and no reference), with P-DPO's
``alpha`` term for the generic user, so every user model, metric, test table, ``adapt`` and
strategy of the P-DPO methods applies unchanged::

    L = alpha * mean BT(u) + (1 - alpha) * mean BT(0) + center_rewards * mean (r_c + r_r)^2

``RewardModel`` is the non-personalized case (no user model), as in TRL's ``RewardTrainer``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from plrlhf.methods.dpo import DPO
from plrlhf.methods.lm import Batch, Values
from plrlhf.methods.pdpo import PDPO


def _become_reward_model(module: DPO | PDPO, center_rewards: float) -> None:
    """What turns a preference method into a reward model: the value head, the centering weight;
    the settings that only mean something for log-probs are refused."""
    if center_rewards < 0:
        raise ValueError(f"center_rewards must be >= 0, got {center_rewards}")
    if module.nll_weight or module.precomputed is not None:
        raise ValueError("nll_weight and precompute_reference do not apply to a reward model")
    module.center_rewards = center_rewards
    module.policy.add_value_head(module.pad_token_id)


def _reward_objective(module: DPO | PDPO, batch: Batch) -> tuple[Tensor, Values]:
    scores = module.score(batch)
    values = module.pair_values(scores)
    objective = module.combine(values)
    if module.center_rewards:
        own = scores[module.conditions[0]]
        objective = (
            objective + module.center_rewards * ((own.policy_chosen + own.policy_rejected) ** 2).mean()
        )
    return objective, values


class RewardModel(DPO):
    """A reward model for every user (Bradley-Terry on a scalar head); metrics per user and group
    show whom one reward serves."""

    def __init__(self, *args: Any, beta: float = 1.0, center_rewards: float = 0.0, **kwargs: Any) -> None:
        """
        Args:
            beta: scale of the reward difference in the loss (1: Bradley-Terry as is).
            center_rewards: weight of ``mean (r_c + r_r)^2``, which keeps rewards centred on 0
                (TRL's ``center_rewards_coefficient``; 0 = none).
        """
        super().__init__(*args, beta=beta, reference_free=True, **kwargs)
        _become_reward_model(self, center_rewards)

    objective = _reward_objective


class PersonalizedRewardModel(PDPO):
    """A reward model conditioned on the user: ``r(u, x, y)`` with the user's soft tokens from any
    user model, trained with the alpha objective; user 0 is the generic user's reward."""

    def __init__(self, *args: Any, beta: float = 1.0, center_rewards: float = 0.0, **kwargs: Any) -> None:
        """
        Args:
            beta: scale of the reward difference in the loss (1: Bradley-Terry as is).
            center_rewards: weight of ``mean (r_c + r_r)^2`` on the user's rewards (0 = none).
        """
        super().__init__(*args, beta=beta, reference_free=True, **kwargs)
        _become_reward_model(self, center_rewards)

    objective = _reward_objective
