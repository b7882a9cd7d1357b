"""Lazy AdamW on the input word embeddings: each step computes only the rows of the tokens in the batch; every
other row gets, when it is next read, the moves dense AdamW made to it meanwhile.

The word-embedding matrix is half of a MiniLM (30522 x 384 of 22.7M parameters), yet a batch touches a few
hundred of its rows. Dense training still writes a zero gradient for every row, takes it into the clipping
norm and runs AdamW over all 11.7M values each step: ~10% of a full fine-tuning step on a 2-core CPU
(BENCHMARKS.md, classification). Here the embedding returns a sparse gradient (`sparse=True`) and
its rows get AdamW with the hyperparameters and learning rate of their optimizer group, the state kept in the
optimizer's own state (so checkpoints and exact resume carry it unchanged).

A row absent from a batch is not frozen in dense AdamW: its momentum keeps moving it (over ~1/(1-beta1) = 10
steps) and weight decay shrinks it. TensorFlow's LazyAdam drops those moves, so a rare token's row moves by a
tenth of what dense AdamW moves it — another optimizer, not a faster one (0.6 points lower on FPB 50Agree over three seeds). Here
each row records the step it is up to date with; before a training forward pass reads it (a pre-hook on the
embedding), and for all rows before the weights are evaluated or saved (`catch_up`), it gets the skipped steps in
closed form: with no gradient, step u multiplies the moments by beta1 and beta2 and moves the row by
lr_u / bc1_u * m_u / (sqrt(v_u / bc2_u) + eps), so the skipped moves are the moments at the row's last update
times a sum of per-step scalars (the recorded rates, the bias corrections, (beta1/sqrt(beta2))^j, the weight decay
of the later steps) over at most `WINDOW` steps. Equal to dense AdamW but for float rounding and eps, which is
taken at the first skipped step (it matters only for gradients near eps in size; tests/test_train.py). DDP
all-reduces sparse gradients over gloo (CPU), which is where this is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tunelab.methods.parts import transformers_model
from tunelab.training.optim import fused_adamw

WINDOW = 256  # skipped steps summed: beyond it (beta1/sqrt(beta2))^j < 1e-11 at the default betas


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
        if grad is None:  # dense AdamW skips a parameter without a gradient altogether: so do we
            return
        grad = grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        scale = getattr(self.optimizer, "grad_scale", None)
        if scale is not None:
            values = values / scale
        state = self._state()
        group = self.optimizer.param_groups[self.group]
        state["step"] += 1
        step = int(state["step"])
        _record_step(state, step, group["lr"], group["weight_decay"])
        self._skipped_steps(rows, step - 1)  # under DDP the gradient holds other processes' rows, not read here
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
        state["last"][rows] = step

    def catch_up_rows(self, ids: torch.Tensor) -> None:
        """Bring the rows of `ids` up to the last step before a training forward pass reads them (a forward
        pre-hook on the embedding: dense AdamW's rows have moved by then)."""
        state = self.optimizer.state.get(self.param)
        if state and torch.is_grad_enabled():  # not in evaluation: catch_up() has brought every row up by then
            with torch.no_grad():
                self._skipped_steps(torch.unique(ids), int(state["step"]))

    @torch.no_grad()
    def catch_up(self) -> None:
        """Bring every row up to the last step (as dense AdamW has it): before the weights are evaluated or saved."""
        state = self.optimizer.state.get(self.param)
        if not state:
            return
        for rows in torch.arange(self.param.shape[0]).split(4096):  # in slices: a row x WINDOW table per row
            self._skipped_steps(rows, int(state["step"]))

    def _state(self) -> dict:
        state = self.optimizer.state[self.param]
        if not state:
            state.update(step=torch.zeros((), dtype=torch.float32), exp_avg=torch.zeros_like(self.param),
                         exp_avg_sq=torch.zeros_like(self.param),
                         last=torch.zeros(self.param.shape[0], dtype=torch.float32),  # step each row is up to date with
                         # per step u (index u; grown by doubling): its rate, and the log of what weight decay
                         # keeps through steps 1..u, so steps a..b keep exp(kept[b] - kept[a - 1])
                         lr=torch.zeros(1024, dtype=torch.float32), kept=torch.zeros(1024, dtype=torch.float32))
        return state

    def _skipped_steps(self, rows: torch.Tensor, upto: int) -> None:
        """Give `rows` the gradient-free AdamW steps from their last update to step `upto` (1-based)."""
        state = self.optimizer.state[self.param]
        last = state["last"][rows].long()
        missed = upto - last
        behind = missed > 0
        if not bool(behind.any()):
            return
        rows, last, missed = rows[behind], last[behind], missed[behind]
        group = self.optimizer.param_groups[self.group]
        beta1, beta2 = group["betas"]
        eps, lr, kept = group["eps"], state["lr"], state["kept"]
        j = torch.arange(1, min(int(missed.max()), WINDOW) + 1, dtype=torch.long)
        u = last[:, None] + j[None, :]  # the skipped step numbers, where j <= missed
        inside = j[None, :] <= missed[:, None]
        u = torch.where(inside, u, torch.ones_like(u))
        uf = u.double()
        # step u moves the row by lr_u * sqrt(bc2_u) / bc1_u * (beta1 / sqrt(beta2))^j * m / sqrt(v) (m, v: at the
        # last update), and weight decay of the steps after u shrinks that move too
        per_step = (lr[u].double() * torch.sqrt(1 - beta2 ** uf) / (1 - beta1 ** uf)
                    * (beta1 / math.sqrt(beta2)) ** j.double()[None, :]
                    * torch.exp(kept[upto].double() - kept[u].double()))
        move = torch.where(inside, per_step, torch.zeros_like(per_step)).sum(1)
        exp_avg, exp_avg_sq = state["exp_avg"][rows], state["exp_avg_sq"][rows]
        shrink = torch.exp(kept[upto].double() - kept[last].double()).float()
        weights = self.param[rows].mul_(shrink[:, None])
        # eps sits beside sqrt(v / bc2_u) in each step: beside sqrt(v) it is eps * sqrt(bc2_u), taken at the first
        # skipped step (the largest term of the sum) — it only matters for rows whose gradients are near eps
        eps_rows = eps * torch.sqrt(1 - beta2 ** (last + 1).double()).float()
        weights.addcdiv_(exp_avg * move.float()[:, None], exp_avg_sq.sqrt().add_(eps_rows[:, None]), value=-1.0)
        self.param.index_copy_(0, rows, weights)
        state["exp_avg"].index_copy_(0, rows, exp_avg.mul_((beta1 ** missed.double()).float()[:, None]))
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq.mul_((beta2 ** missed.double()).float()[:, None]))
        state["last"][rows] = float(upto)


def _record_step(state: dict, step: int, lr: float, weight_decay: float) -> None:
    """Store step `step`'s rate and the running log of what weight decay keeps, growing the buffers by doubling."""
    if step >= len(state["lr"]):
        for key in ("lr", "kept"):
            grown = torch.zeros(2 * len(state[key]), dtype=state[key].dtype)
            grown[: len(state[key])] = state[key]
            state[key] = grown
    state["lr"][step] = lr
    # lr * decay >= 1 (a diverging run: dense AdamW flips the weights' sign) has no log; such a step zeroes the row
    # here, and the loss check stops the run on the batch's own rows a step later either way
    shrink = lr * weight_decay
    state["kept"][step] = state["kept"][step - 1] + (math.log1p(-shrink) if shrink < 1 else math.log(1e-30))


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
    lazy = LazyRows(embedding.weight, inner_optimizer, group)
    embedding.register_forward_pre_hook(lambda module, args: lazy.catch_up_rows(args[0]))
    return lazy
