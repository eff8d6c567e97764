"""LightningModules: the preference methods, on one shared base."""

from plrlhf.methods.base import PairScores, PreferenceModule, preference_values
from plrlhf.methods.dpo import DPO
from plrlhf.methods.pdpo import PDPO, ClusterPDPO, IndividualPDPO, PersonalizedPreferenceModule
from plrlhf.methods.sft import SFT

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
