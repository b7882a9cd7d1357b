"""Training data order: shuffled, length-grouped batches that are a pure function of (seed, epoch)."""

from __future__ import annotations

import numpy as np


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[np.ndarray]:
    """The batches (arrays of row indices) of one epoch; a pure function of (seed, epoch), so resume is exact.

    Length grouping: shuffle, cut into mega-batches of 50 batches, sort each by length, cut into batches,
    shuffle the batch order. Padding drops, and the order stays random.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        mega = batch_size * 50
        order = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")]
                                for chunk in np.split(order, range(mega, len(order), mega))])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def groups_by_length(setting: bool | None, task) -> bool:
    """train.group_by_length, or where it is none the task's default (on, but off for causal LMs: like-length
    conversations are often near-copies of each other, and a batch of them teaches as much as one)."""
    return setting if setting is not None else getattr(task, "groups_by_length", True)
