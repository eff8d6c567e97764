"""LightningModules: the methods, on one language-model base.

``lm.LanguageModelModule`` (the LM, user model, optimizer, training step, generation) <-
``preference.PreferenceModule`` (pairs, a reference, a loss, per-user metrics) <- ``DPO``, ``PDPO``
(``IndividualPDPO``, ``ClusterPDPO``) <- ``RewardModel``, ``PersonalizedRewardModel`` (a value head
instead of log-probs); ``SFT`` sits on the language-model base directly.
"""

from plrlhf.losses import PairScores
from plrlhf.methods.dpo import DPO
from plrlhf.methods.lm import LanguageModelModule
from plrlhf.methods.pdpo import PDPO, ClusterPDPO, IndividualPDPO
from plrlhf.methods.preference import PreferenceModule
from plrlhf.methods.reward import PersonalizedRewardModel, RewardModel
from plrlhf.methods.sft import SFT
from plrlhf.objective import preference_values

__all__ = [
    "DPO",
    "PDPO",
    "SFT",
    "ClusterPDPO",
    "IndividualPDPO",
    "LanguageModelModule",
    "PairScores",
    "PersonalizedRewardModel",
    "PreferenceModule",
    "RewardModel",
    "preference_values",
]
