"""Lazy AdamW on the input word embeddings: each step updates only the rows of the tokens in the batch.

The word-embedding matrix is half of a MiniLM (30522 x 384 of 22.7M parameters), yet a batch touches a few
hundred of its rows. Dense training still writes a zero gradient for every row, takes it into the clipping
norm and runs AdamW over all 11.7M values each step: ~10% of a full fine-tuning step on a 2-core CPU
(BENCHMARKS.md, classification, session 8). Here the embedding returns a sparse gradient (`sparse=True`) and
its rows get AdamW with the hyperparameters and learning rate of their optimizer group, the state kept in the
optimizer's own state (so checkpoints and exact resume carry it unchanged) — TensorFlow's LazyAdam. As there,
rows absent from a batch do not move that step: dense AdamW would still move them by their decaying momentum
and weight decay. DDP all-reduces sparse gradients over gloo (CPU), which is where this is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tunelab.methods.parts import transformers_model
from tunelab.training.optim import fused_adamw


@dataclass
class LazyRows:
    param: torch.nn.Parameter
    optimizer: torch.optim.Optimizer  # the torch AdamW (inside accelerate's wrapper)
    group: int  # index in param_groups: load_state_dict (accelerate's prepare, resume) replaces the group dicts

    @torch.no_grad()
    def step(self) -> None:
        """Update the rows in `param.grad` (divided by the fused step's `grad_scale`, the clip), then drop the
        gradient so the optimizer's own step skips this parameter."""
        grad, self.param.grad = self.param.grad, None
        if grad is None:
            return
        grad = grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        scale = getattr(self.optimizer, "grad_scale", None)
        if scale is not None:
            values = values / scale
        state = self.optimizer.state[self.param]
        if not state:
            state.update(step=torch.zeros((), dtype=torch.float32), exp_avg=torch.zeros_like(self.param),
                         exp_avg_sq=torch.zeros_like(self.param))
        state["step"] += 1
        step = float(state["step"])
        group = self.optimizer.param_groups[self.group]
        beta1, beta2 = group["betas"]
        lr, decay, eps = group["lr"], group["weight_decay"], group["eps"]
        exp_avg = state["exp_avg"][rows].mul_(beta1).add_(values, alpha=1 - beta1)
        exp_avg_sq = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(values, values, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        weights = self.param[rows].mul_(1 - lr * decay)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** step)).add_(eps)
        weights.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1 ** step))
        self.param.index_copy_(0, rows, weights)


def lazy_word_embeddings(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> LazyRows | None:
    """Switch the trainable, untied input word embedding of `model` to sparse gradients and return its lazy
    updater; None (dense as usual) when there is no such embedding or the optimizer is not fused AdamW.
    Call before the model is wrapped for DDP: DDP reads `sparse` when it is built."""
    inner_optimizer = fused_adamw(optimizer)
    if inner_optimizer is None or inner_optimizer.defaults.get("amsgrad"):
        return None
    inner = transformers_model(model)
    embedding = inner.get_input_embeddings() if hasattr(inner, "get_input_embeddings") else None
    if type(embedding) is not torch.nn.Embedding or not embedding.weight.requires_grad:
        return None
    output = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if output is not None and getattr(output, "weight", None) is embedding.weight:  # tied: the LM head's gradient is dense
        return None
    group = next(i for i, g in enumerate(inner_optimizer.param_groups) if any(p is embedding.weight for p in g["params"]))
    embedding.sparse = True
    return LazyRows(embedding.weight, inner_optimizer, group)
