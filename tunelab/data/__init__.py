"""The data stage: load, validate, clean, split and report labelled text."""

from tunelab.data.pipeline import Prepared, load_prepared, prepare

__all__ = ["Prepared", "load_prepared", "prepare"]
