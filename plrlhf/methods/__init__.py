"""LightningModules: the preference methods, on one shared base."""

from plrlhf.methods.base import PairScores, PreferenceModule, preference_values
from plrlhf.methods.dpo import DPO
from plrlhf.methods.pdpo import PDPO, ClusterPDPO, IndividualPDPO, PersonalizedPreferenceModule

__all__ = [
    "DPO",
    "PDPO",
    "ClusterPDPO",
    "IndividualPDPO",
    "PersonalizedPreferenceModule",
    "PairScores",
    "PreferenceModule",
    "preference_values",
]
