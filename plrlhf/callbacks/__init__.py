"""Callbacks that any Lightning Trainer can use."""

from plrlhf.callbacks.report import TestReport, format_table

__all__ = ["TestReport", "format_table"]
