"""Tasks: how prepared rows become model inputs, which head the model gets, which loss and metrics.

A new task is one file here and one line in TASKS.
"""

from __future__ import annotations

from tunelab.tasks.classification import ClassificationTask

TASKS = {"classification": ClassificationTask}


def make_task(name: str, labels: list[str], multi_label: bool, pair: bool):
    if name not in TASKS:
        from tunelab.errors import ConfigError

        raise ConfigError(f"task.name: unknown task '{name}'; known: {', '.join(TASKS)}")
    return TASKS[name](labels=list(labels), multi_label=multi_label, pair=pair)


__all__ = ["TASKS", "ClassificationTask", "make_task"]
