"""Callbacks that any Lightning Trainer can use."""

from plrlhf.callbacks.predictions import PredictionWriter
from plrlhf.callbacks.report import TestReport, format_table

__all__ = ["PredictionWriter", "TestReport", "format_table"]
