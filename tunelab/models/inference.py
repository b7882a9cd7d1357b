"""Batched forward passes over an encoded split: sorted by length, padded per batch, no gradients."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from tunelab.tasks.encoding import Encoded, collate, eval_batches


def row_scores(scores, lengths, width: int):
    """A batch's scores per row: as they are (one vector per row), or, scored per token, each row's own
    positions (the input's last `width`: a prompt method prepends virtual ones), cut to its length."""
    if scores.ndim < 3:
        return scores
    scores = scores[:, -width:]
    return [scores[i, :n] for i, n in enumerate(lengths)]


@torch.inference_mode()
def iter_outputs(model, enc: Encoded, task, batch_size: int, pad_id: int, with_types: bool,
                 autocast: bool = False, embeddings: bool = False, call_tokens: int = 32,
                 pad_multiple: int = 1, logits: bool = False) -> Iterator[tuple]:
    """Yield (row indices, outputs) batch by batch -- (rows, outputs, embeddings) with `embeddings` -- rows
    longest first, not in file order. Outputs are the task's probabilities (`logits`: the raw float32 logits):
    an array with one row per input, or, where the model scores every token, a list with one (tokens, labels)
    array per input, cut to its length. Each batch is padded to its longest row, rounded up to a multiple of
    `pad_multiple` tokens."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    captured: dict = {}
    hook = _capture_last_hidden_state(model, captured) if embeddings else None
    try:
        for rows in eval_batches(enc.lengths, batch_size, call_tokens):
            batch = {k: v.to(device) for k, v in collate(enc, rows, pad_id, with_types, pad_multiple).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = model(**batch, output_hidden_states=embeddings and hook is None)
            scores = (out.logits.float() if logits else task.probabilities(out.logits)).cpu().numpy()
            scores = row_scores(scores, enc.lengths[rows], batch["input_ids"].shape[1])
            if embeddings:
                hidden = captured.pop("hidden") if hook is not None else out.hidden_states[-1]
                yield rows, scores, mean_pool(hidden, batch["attention_mask"]).float().cpu().numpy()
            else:
                yield rows, scores
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)


def _capture_last_hidden_state(model, captured: dict):
    """A forward hook on the encoder body that keeps its last hidden state (output_hidden_states would keep
    every layer's for the whole batch); None when the model has no separate body."""
    from tunelab.methods.parts import transformers_model

    inner = transformers_model(model)
    body = getattr(inner, "base_model", inner)
    if body is inner:
        return None

    def keep(_module, _args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state
    return body.register_forward_hook(keep)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of the last layer over the real tokens of each row: the text's embedding (drift monitoring).
    Virtual tokens that a method prepends (prompt tuning) are left out."""
    hidden = hidden[:, -mask.shape[1]:]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
