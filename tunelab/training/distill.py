"""Knowledge distillation (train.distill): a teacher's logits for every training row, computed once before the
first step, and the loss that matches them (Hinton et al., "Distilling the knowledge in a neural network", 2015).

Computed once rather than at every step: the teacher is fixed, so its logits for a row never change, and one
inference pass costs what a few training steps of the teacher would. Resuming recomputes them identically.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tunelab.errors import ConfigError


def teacher_logits(teacher: str, task, tokenizer, train_enc, pad_id: int, with_types: bool):
    """-> ([training rows, labels] float32: the teacher's logits for each row of the training split, its folder)."""
    from transformers import AutoTokenizer

    from tunelab.models.card import ModelCard
    from tunelab.models.inference import iter_outputs
    from tunelab.models.load import load_model
    from tunelab.models.predictor import find_model_dir

    if task.name != "classification" or task.multi_label:
        raise ConfigError("train.distill: distillation covers single-label classification; leave it out here")
    model_dir = find_model_dir(teacher)
    card = ModelCard.read(model_dir)
    if card.task != task.name or list(card.labels) != list(task.labels):
        raise ConfigError(f"train.distill.teacher: {model_dir} predicts {', '.join(card.labels)} ({card.task}); this "
                          f"run's labels are {', '.join(task.labels)}: the teacher must have the same labels in the same order")
    if AutoTokenizer.from_pretrained(model_dir).get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"train.distill.teacher: {model_dir} reads text with another tokenizer than this run's "
                          "model; a teacher must share the student's tokenizer")
    model = load_model(model_dir, card)
    out = np.zeros((len(train_enc), task.num_labels), dtype=np.float32)
    for rows, logits in iter_outputs(model, train_enc, task, 64, pad_id, with_types, logits=True):
        out[rows] = logits
    return torch.from_numpy(out), model_dir


def distill_loss_sum(logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(teacher || student) of the probabilities at temperature T, summed over rows (as the task's loss_sum
    is): the T^2 keeps its gradient's scale as T changes."""
    t = temperature
    return F.kl_div(F.log_softmax(logits.float() / t, -1), F.log_softmax(teacher.float() / t, -1), log_target=True,
                    reduction="sum") * t * t
