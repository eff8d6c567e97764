"""plrlhf: personalized preference optimization (P-RLHF / P-DPO) on Lightning.

Importing ``plrlhf`` registers every method and data module, which Lightning needs before it can
rebuild them from a checkpoint.
"""

from plrlhf.data import DataError, PreferenceDataModule, UserRegistry
from plrlhf.methods import DPO, PDPO, SFT, ClusterPDPO, IndividualPDPO, PreferenceModule
from plrlhf.user_models import ClusterUserModel, IndividualUserModel, LowRankUserModel, UserModel

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
    "PreferenceDataModule",
    "PreferenceModule",
    "UserModel",
    "UserRegistry",
]
__version__ = "0.1.0"
