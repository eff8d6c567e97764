"""plrlhf: personalized preference optimization (P-RLHF / P-DPO) on Lightning.

The names below are imported on first use (PEP 562), so ``import plrlhf.losses`` or
``plrlhf.user_models`` does not pull in Lightning, transformers and peft. ``plrlhf.IndividualPDPO``
(as a YAML ``class_path`` names it) imports the method's module when it is first asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.3.1"

_EXPORTS = {
    "DPO": "plrlhf.methods",
    "PDPO": "plrlhf.methods",
    "SFT": "plrlhf.methods",
    "ClusterPDPO": "plrlhf.methods",
    "IndividualPDPO": "plrlhf.methods",
    "PreferenceModule": "plrlhf.methods",
    "RewardModel": "plrlhf.methods",
    "PersonalizedRewardModel": "plrlhf.methods",
    "DataError": "plrlhf.data",
    "PreferenceDataModule": "plrlhf.data",
    "UserRegistry": "plrlhf.data",
    "ClusterUserModel": "plrlhf.user_models",
    "IndividualUserModel": "plrlhf.user_models",
    "LowRankUserModel": "plrlhf.user_models",
    "UserModel": "plrlhf.user_models",
}
__all__ = [
    "DPO",
    "PDPO",
    "SFT",
    "ClusterPDPO",
    "ClusterUserModel",
    "DataError",
    "IndividualPDPO",
    "IndividualUserModel",
    "LowRankUserModel",
    "PersonalizedRewardModel",
    "PreferenceDataModule",
    "PreferenceModule",
    "RewardModel",
    "UserModel",
    "UserRegistry",
]

if TYPE_CHECKING:
    from plrlhf.data import DataError, PreferenceDataModule, UserRegistry
    from plrlhf.methods import (
        DPO,
        PDPO,
        SFT,
        ClusterPDPO,
        IndividualPDPO,
        PersonalizedRewardModel,
        PreferenceModule,
        RewardModel,
    )
    from plrlhf.user_models import ClusterUserModel, IndividualUserModel, LowRankUserModel, UserModel


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'plrlhf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
