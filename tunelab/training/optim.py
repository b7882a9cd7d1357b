"""Optimizer and learning-rate schedule from the train config."""

from __future__ import annotations

import math

import torch

from tunelab.config import TrainConfig
from tunelab.methods.parts import embedding_parameters, head_modules, transformer_layers, transformers_model


def parameter_groups(model: torch.nn.Module, weight_decay: float, learning_rate: float,
                     head_learning_rate: float, layer_decay: float = 1.0) -> list[dict]:
    """Weight decay on weight matrices only: never on biases or normalisation weights (1-d parameters).
    The task head, freshly initialised, may learn at its own rate. With `layer_decay` < 1, each transformer
    layer learns at `layer_decay` times the rate of the one above it, the embeddings one step below the
    bottom layer (layer-wise learning-rate decay: the lower layers hold the more general features)."""
    inner = transformers_model(model)
    head = {id(p) for name in head_modules(inner) for p in getattr(inner, name).parameters()}
    scale = _layer_scales(inner, layer_decay) if layer_decay != 1.0 else {}
    groups: dict[tuple, list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = not (param.ndim < 2 or "norm" in name.lower())
        groups.setdefault((decays, id(param) in head, scale.get(id(param), 1.0)), []).append(param)
    return [{"params": params, "weight_decay": weight_decay if decays else 0.0,
             "lr": head_learning_rate if in_head else learning_rate * factor}
            for (decays, in_head, factor), params in sorted(groups.items())]


def _layer_scales(model: torch.nn.Module, decay: float) -> dict[int, float]:
    """id(parameter) -> its rate factor: decay ** (layers above it); the embeddings sit below layer 0."""
    layers = transformer_layers(model)
    n = len(layers)
    scales = {pid: decay ** (n + 1) for pid in embedding_parameters(model)}
    for depth, layer in enumerate(layers):
        scales.update({id(p): decay ** (n - depth) for p in layer.parameters()})
    return scales


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, learning_rate: float,
                    head_learning_rate: float | None = None, layer_decay: float = 1.0) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay, learning_rate, head_learning_rate or learning_rate, layer_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=learning_rate, momentum=cfg.sgd_momentum)
    # fused: one kernel for all parameters; measured 5x faster than the per-tensor loop on CPU (MiniLM)
    return torch.optim.AdamW(groups, lr=learning_rate, betas=tuple(cfg.adam_betas), eps=cfg.adam_epsilon, fused=True)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """Linear warmup, then linear or half-cosine decay to zero (or constant): transformers' schedules, to the float
    (tests/test_train.py compares them). Written here because transformers.optimization imports its Trainer's
    utilities and with them peft, 2.4 s of every training's start."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg.scheduler, round(cfg.warmup_ratio * total_steps),
                                                                  total_steps))


def lr_factor(schedule: str, warmup: int, total: int):
    """step -> the share of the peak learning rate at that step."""
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "cosine":
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def fused_adamw(optimizer: torch.optim.Optimizer) -> torch.optim.AdamW | None:
    """The fused torch AdamW behind `optimizer` (accelerate wraps it), or None for any other optimizer."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return inner if isinstance(inner, torch.optim.AdamW) and inner.defaults.get("fused") else None


def clip_inside_step(optimizer: torch.optim.Optimizer, parameters, max_norm: float) -> bool:
    """Clip the gradients' global norm to `max_norm` inside fused AdamW's step instead of before it.

    The fused kernel divides each gradient by `grad_scale` as it reads it (the hook GradScaler uses), so the clip
    costs one pass over the gradients (the norm) instead of two (norm, then rewriting every gradient): the clip
    was ~8% of a MiniLM step on CPU. Same update to float precision (tests/test_train.py). False when the optimizer
    has no such hook (SGD, unfused): clip the usual way then.
    """
    inner = fused_adamw(optimizer)
    if inner is None:
        return False
    grads = []
    for p in parameters:
        if p.grad is not None and p.grad.is_sparse:  # lazy_rows.py: the rows of a batch, repeated tokens summed
            p.grad = p.grad.coalesce()
            grads.append(p.grad.values())
        elif p.grad is not None:
            grads.append(p.grad)
    norm = torch.nn.utils.get_total_norm(grads)
    inner.grad_scale = (norm / max_norm).clamp(min=1.0).to(torch.float32)  # 1/clip coefficient
    return True
