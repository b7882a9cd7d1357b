"""The data stage: load, validate, clean, split and report labelled text."""

from tunelab.data.prepare import Prepared, load_prepared, prepare

__all__ = ["Prepared", "load_prepared", "prepare"]
