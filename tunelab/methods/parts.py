"""Finding the parts of a transformers model that methods freeze or extend, whatever its architecture."""

from __future__ import annotations

import torch


def head_modules(model: torch.nn.Module) -> list[str]:
    """Names of the task head: the top-level children outside the pretrained body (`base_model_prefix`),
    e.g. ['classifier'] for BERT, ['score'] for GPT-2, ['pre_classifier', 'classifier'] for DistilBERT.
    A causal LM has none: its language-model head is pretrained (and often tied to the input embeddings), so it
    is neither trained whole beside an adapter nor given a new head's learning rate."""
    if type(model).__name__.endswith("ForCausalLM"):
        return []
    body = getattr(model, "base_model_prefix", "")
    return [name for name, child in model.named_children()
            if name != body and any(True for _ in child.parameters())]


def transformer_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of transformer blocks: the ModuleList with config.num_hidden_layers entries."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    for candidate in lists:
        if len(candidate) == n:
            return candidate
    if lists:
        return max(lists, key=len)
    from tunelab.errors import TunelabError

    raise TunelabError(f"{type(model).__name__}: no stack of transformer layers found to freeze")


def embedding_parameters(model: torch.nn.Module) -> set[int]:
    """ids of the embedding parameters: every nn.Embedding, and modules named '*embeddings' (BERT's
    container with position/type embeddings and its LayerNorm)."""
    found = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding) or name.split(".")[-1] == "embeddings":
            found.update(id(p) for p in module.parameters())
    return found


def train_only(model: torch.nn.Module, modules: list[torch.nn.Module]) -> None:
    """Freeze every parameter, then let those of `modules` train."""
    for p in model.parameters():
        p.requires_grad_(False)
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(True)


def count_parameters(model: torch.nn.Module) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "trainable_percent": round(100 * trainable / max(total, 1), 4)}


def transformers_model(model: torch.nn.Module):
    """The transformers model inside a method's wrapper (peft's PeftModel, our PrefixModel), or the model."""
    from transformers import PreTrainedModel

    while not isinstance(model, PreTrainedModel):
        inner = model.get_base_model() if hasattr(model, "get_base_model") else getattr(model, "model", None)
        if inner is None:
            return model
        model = inner
    return model


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute activations layer by layer in the backward pass (non-reentrant: works with frozen inputs)."""
    inner = transformers_model(model)
    kwargs = {"use_reentrant": False}
    if hasattr(inner, "activation_checkpointing_enable"):
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class Fp32OnCpuLinear(torch.nn.Linear):
    """A linear layer that stays in fp32 on CPU under bf16 autocast.

    For thin added layers (LoRA's rank-r factors; adapters, optionally): bf16 buys nothing on matrices this
    thin (measured: same step time), while every bf16 matmul on CPU goes through oneDNN, which keeps a compiled
    kernel and its buffers for each input shape it meets; with dynamic padding that is each batch length, and
    LoRA's factors added ~230 MB to a MiniLM training run on SST-2 (BENCHMARKS.md, methods). fp32 matmuls use
    MKL/BLAS, which keeps none.
    The input is kept for the backward pass as it came (bf16 stays bf16: no fp32 copy per layer; peft's own
    cast of the input to the factors' dtype is turned off for that, methods/lora.py, and done here instead where
    no autocast does it).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            return _LinearInFp32.apply(x, self.weight, self.bias)
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(self.weight.dtype)
        return super().forward(x)


class _LinearInFp32(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.with_bias = bias is not None
        with torch.autocast("cpu", enabled=False):
            return torch.nn.functional.linear(x.float(), weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        with torch.autocast("cpu", enabled=False):
            if ctx.needs_input_grad[0]:
                grad_x = (grad @ weight).to(x.dtype)
            flat_grad = grad.reshape(-1, grad.shape[-1])
            if ctx.needs_input_grad[1]:
                grad_weight = flat_grad.t() @ x.reshape(-1, x.shape[-1]).float()
            if ctx.with_bias and ctx.needs_input_grad[2]:
                grad_bias = flat_grad.sum(0)
        return grad_x, grad_weight, grad_bias


def linears_in_fp32_on_cpu(modules) -> None:
    """Turn the plain nn.Linear among `modules` into Fp32OnCpuLinear in place (same weights, same state-dict
    names, still an nn.Linear to peft and friends)."""
    for module in modules:
        if type(module) is torch.nn.Linear:
            module.__class__ = Fp32OnCpuLinear
