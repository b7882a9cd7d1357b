"""Batched forward passes over an encoded split: sorted by length, padded per batch, no gradients."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from tunelab.tasks.encoding import Encoded, collate, eval_batches


@torch.inference_mode()
def iter_probabilities(model, enc: Encoded, task, batch_size: int, pad_id: int, with_types: bool,
                       autocast: bool = False, embeddings: bool = False, call_tokens: int = 32,
                       pad_multiple: int = 1, logits: bool = False) -> Iterator[tuple]:
    """Yield (row indices, probabilities) batch by batch -- (rows, probabilities, embeddings) with
    `embeddings` -- rows longest first, not in file order. Each batch is padded to its longest row, rounded up
    to a multiple of `pad_multiple` tokens. `logits`: the raw float32 logits instead of probabilities."""
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
            probs = (out.logits.float() if logits else task.probabilities(out.logits)).cpu().numpy()
            if embeddings:
                hidden = captured.pop("hidden") if hook is not None else out.hidden_states[-1]
                yield rows, probs, mean_pool(hidden, batch["attention_mask"]).float().cpu().numpy()
            else:
                yield rows, probs
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
