"""One optimizer step over one global batch.

Each process takes its slice of the batch's rows (rows[rank::world]) and splits it into
`gradient_accumulation_steps` micro-batches. Losses are summed, and scaled by the loss terms of the whole global
batch (rows for classification, labelled tokens for token classification), so the gradient is the mean over the
global batch whatever the process count or accumulation.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch

from tunelab.errors import TunelabError
from tunelab.tasks.encoding import collate
from tunelab.training.distill import distill_loss_sum
from tunelab.training.optim import clip_inside_step
from tunelab.training.setup import Run
from tunelab.training.sharding import sharded


def forward_backward(run: Run, rows: np.ndarray) -> float:
    """Gradients of the batch `rows` (of the training split), accumulated over micro-batches; the mean loss."""
    acc, cfg, task, enc = run.accelerator, run.cfg, run.task, run.train_enc
    world, rank = acc.num_processes, acc.process_index
    terms = task.loss_terms(enc, rows)
    local = rows[rank::world]
    micro = [m for m in np.array_split(local, min(cfg.gradient_accumulation_steps, len(local))) if len(m)]
    step_loss = torch.zeros((), device=acc.device)
    for k, part in enumerate(micro):
        batch = {key: v.to(acc.device) for key, v in collate(enc, part, run.pad_id, run.with_types,
                                                               cfg.pad_to_multiple_of).items()}
        targets = task.batch_targets(enc, part, batch["input_ids"].shape[1]).to(acc.device)
        with acc.no_sync(run.model) if k < len(micro) - 1 else nullcontext():
            logits, wanted = task.forward(run.model, batch, targets)
            loss_sum = task.loss_sum(logits, wanted, run.weights, cfg.label_smoothing)
            if run.teacher is not None:
                matched = distill_loss_sum(logits, run.teacher[part].to(logits.device), cfg.distill.temperature)
                loss_sum = (1 - cfg.distill.weight) * loss_sum + cfg.distill.weight * matched
            acc.backward(loss_sum * world / max(terms, 1))
        step_loss += loss_sum.detach()
    loss = float(acc.reduce(step_loss, "sum")) / max(terms, 1)
    if not math.isfinite(loss):  # the weights would turn NaN at this step: stop before it
        raise TunelabError(f"training diverged: the loss is {loss} at step {run.state.step + 1}; "
                           f"lower the learning rate (now {run.config.learning_rate:g})")
    return loss


def update(run: Run) -> None:
    """Clip, step the optimizer (and the lazy embedding rows), the schedule and the weight average."""
    cfg = run.cfg
    # (sharded gradients: accelerate's clip, which takes the norm over every process's shard)
    if cfg.max_grad_norm is not None and (sharded(run.accelerator) or not clip_inside_step(run.optimizer, run.model.parameters(),
                                                                                          cfg.max_grad_norm)):
        run.accelerator.clip_grad_norm_(run.model.parameters(), cfg.max_grad_norm)
    if run.lazy is not None:
        run.lazy.step()
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.state.step += 1
    run.state.batch_in_epoch += 1
    if run.average is not None:
        run.average.update(run.state.step)
