"""The training stage."""

from tunelab.train.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
