"""Export stage: merged plain-transformers folders, ONNX and int8 ONNX folders."""

from tunelab.export.merge import merge_run
from tunelab.export.onnx import export_onnx

__all__ = ["merge_run", "export_onnx"]
