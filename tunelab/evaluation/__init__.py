"""The evaluation stage: metrics on a split or file, and the report."""

from tunelab.evaluation.run import EvalResult, evaluate, metrics_table

__all__ = ["EvalResult", "evaluate", "metrics_table"]
