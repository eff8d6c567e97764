"""Callbacks that any Lightning Trainer can use."""

from plrlhf.callbacks.export import Export
from plrlhf.callbacks.final_checkpoint import SaveLastAtEnd
from plrlhf.callbacks.plots import PerUserReport, UserEmbeddingMap
from plrlhf.callbacks.predictions import PredictionWriter
from plrlhf.callbacks.preemption import SaveOnSigterm
from plrlhf.callbacks.report import TestReport, format_table
from plrlhf.callbacks.resumed_logs import KeepMetricsOnResume
from plrlhf.callbacks.samples import GenerationSamples

__all__ = [
    "Export",
    "GenerationSamples",
    "KeepMetricsOnResume",
    "PerUserReport",
    "PredictionWriter",
    "SaveLastAtEnd",
    "SaveOnSigterm",
    "TestReport",
    "UserEmbeddingMap",
    "format_table",
]
