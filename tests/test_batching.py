"""Inference batches cut by length (tunelab.tasks.encoding.eval_batches): every row once, within the batch
size, and the cheapest cut under the cost the docstring states (checked against brute force)."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tunelab.tasks.encoding import eval_batches


def _cost(lengths: np.ndarray, batches: list[np.ndarray], call_tokens: int) -> int:
    return sum(call_tokens + len(b) * int(lengths[b].max()) for b in batches)


def _brute_force(lengths: np.ndarray, batch_size: int, call_tokens: int) -> int:
    """The cheapest split of the rows, longest first, into contiguous batches (every composition of n)."""
    ordered = np.sort(lengths)[::-1]
    n, best = len(ordered), None
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        if max(sizes) > batch_size:
            continue
        cost = sum(call_tokens + (b - a) * int(ordered[a]) for a, b in zip(bounds, bounds[1:]))
        best = cost if best is None else min(best, cost)
    return best


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 128), min_size=1, max_size=9), st.integers(1, 6), st.sampled_from([0, 4, 32, 500]))
def test_batches_cover_every_row_once_and_cost_the_least(lengths, batch_size, call_tokens):
    lengths = np.array(lengths)
    batches = eval_batches(lengths, batch_size, call_tokens)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert _cost(lengths, batches, call_tokens) == _brute_force(lengths, batch_size, call_tokens)


def test_short_rows_are_not_padded_to_a_long_one():
    lengths = np.array([60] + [10] * 31)
    batches = eval_batches(lengths, 32, call_tokens=32)
    assert [len(b) for b in batches] == [1, 31]  # not one batch of 32 x 60 tokens
    assert eval_batches(lengths, 32, call_tokens=10**6)[0].size == 32  # a call dearer than any padding: one batch


def test_training_batches_group_by_length_for_encoders_not_for_causal_lms():
    """train.group_by_length left out: the task decides. A causal LM's batches mix lengths (like-length
    conversations are often near-copies); grouped batches of an encoder are each of one length band."""
    from tunelab.tasks.causal_lm.task import CausalLMTask
    from tunelab.tasks.classification import ClassificationTask
    from tunelab.training.data import epoch_batches, groups_by_length

    assert groups_by_length(None, CausalLMTask) is False and groups_by_length(True, CausalLMTask) is True
    assert groups_by_length(None, ClassificationTask) is True and groups_by_length(False, ClassificationTask) is False
    lengths = np.repeat(np.arange(10, 42), 8)  # 32 lengths, 8 rows each: grouped, each batch one length
    spread = lambda grouped: max(np.ptp(lengths[b]) for b in epoch_batches(lengths, 8, 0, 0, grouped))  # noqa: E731
    assert spread(True) == 0 and spread(groups_by_length(None, CausalLMTask)) > 10
