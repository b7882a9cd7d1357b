"""The training stage."""

from tunelab.training.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
