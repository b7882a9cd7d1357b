"""Export stage: merged plain-transformers folders, ONNX and int8 ONNX folders."""

from tunelab.export.merge import merge_run
from tunelab.export.onnx import export_onnx
from tunelab.export.result import ExportResult

__all__ = ["ExportResult", "merge_run", "export_onnx"]
