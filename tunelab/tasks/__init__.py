"""Tasks: everything that depends on what the model learns to do, behind one interface (tasks/base.py).

The stages (data, training, evaluation, export, serving, monitoring) ask the task of a config or of a model
folder (`task.name` / tunelab.json's `task`) and never which task it is. A new task is one package here and one
line in TASKS.
"""

from __future__ import annotations

import importlib

TASKS = {  # task.name -> the class implementing it
    "classification": "tunelab.tasks.classification:ClassificationTask",
    "token_classification": "tunelab.tasks.ner.task:TokenClassificationTask",
    "causal_lm": "tunelab.tasks.causal_lm.task:CausalLMTask",
}


def task_class(name: str):
    """The class of task `name` (imported on first use: a task's dependencies load only when it is used)."""
    if name not in TASKS:
        from tunelab.errors import ConfigError

        raise ConfigError(f"task.name: unknown task '{name}'; known: {', '.join(TASKS)}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def task_for(config, prepared):
    """The task a training of `config` on its prepared data trains."""
    return task_class(config.task.name).from_prepared(config, prepared)


def task_of(card):
    """The task a model folder (its tunelab.json, models/card.py) was trained for."""
    return task_class(card.task).from_card(card)


__all__ = ["TASKS", "task_class", "task_for", "task_of"]
