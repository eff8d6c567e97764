"""LightningModules: the preference methods, on one shared base."""

from plrlhf.methods.base import PairScores, PreferenceModule, preference_values
from plrlhf.methods.dpo import DPO

__all__ = ["DPO", "PairScores", "PreferenceModule", "preference_values"]
