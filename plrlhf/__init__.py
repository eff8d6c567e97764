"""plrlhf: personalized preference optimization (P-RLHF / P-DPO) on Lightning.

Importing ``plrlhf`` registers every method and data module, which Lightning needs before it can
rebuild them from a checkpoint.
"""

from plrlhf.data import DataError, PreferenceDataModule, UserRegistry
from plrlhf.methods import DPO, PreferenceModule

__all__ = ["DPO", "DataError", "PreferenceDataModule", "PreferenceModule", "UserRegistry"]
__version__ = "0.1.0"
