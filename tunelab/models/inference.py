"""Batched forward passes over an encoded split: sorted by length, padded per batch, no gradients."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from tunelab.tasks.encoding import Encoded, collate, eval_batches


@torch.inference_mode()
def iter_probabilities(model, enc: Encoded, task, batch_size: int, pad_id: int, with_types: bool,
                       autocast: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (row indices, probabilities) batch by batch; rows come longest first, not in file order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for rows in eval_batches(enc.lengths, batch_size):
            batch = {k: v.to(device) for k, v in collate(enc, rows, pad_id, with_types).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(**batch).logits
            yield rows, task.probabilities(logits).cpu().numpy()
    finally:
        model.train(was_training)
