"""LightningModules: the preference methods, on one shared base."""

from plrlhf.losses import PairScores
from plrlhf.methods.base import PreferenceModule
from plrlhf.methods.dpo import DPO
from plrlhf.methods.pdpo import PDPO, ClusterPDPO, IndividualPDPO, PersonalizedPreferenceModule
from plrlhf.methods.sft import SFT
from plrlhf.objective import preference_values

__all__ = [
    "DPO",
    "PDPO",
    "SFT",
    "ClusterPDPO",
    "IndividualPDPO",
    "PersonalizedPreferenceModule",
    "PairScores",
    "PreferenceModule",
    "preference_values",
]
