"""Export stage: merged plain-transformers folders (and, later, ONNX / int8)."""

from tunelab.export.merge import merge_run

__all__ = ["merge_run"]
