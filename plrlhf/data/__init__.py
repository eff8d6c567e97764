"""Data: reading files, the user registry, tokenization, batching, the data module."""

from plrlhf.data.datamodule import PreferenceDataModule
from plrlhf.data.registry import UserRegistry
from plrlhf.data.sources import DataError

__all__ = ["DataError", "PreferenceDataModule", "UserRegistry"]
