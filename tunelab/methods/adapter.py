"""bottleneck adapters beside each attention and feed-forward block (parallel_both, the default) or the
feed-forward block only (parallel), or after the attention and/or feed-forward output of each layer (Houlsby /
Pfeiffer).

peft has none, and the `adapters` library pins transformers 4, so this is ours: down-projection,
nonlinearity, up-projection initialised at zero (the model starts exactly as pretrained), scale, residual.
Each adapter hangs on a module as a child plus a hook, so the pretrained weights keep their names and the
adapter's weights sit next to them (`...output.dense.adapter.down.weight`, `...output.adapter.down.weight`).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from tunelab.errors import TunelabError
from tunelab.methods.parts import linears_in_fp32_on_cpu, train_only, transformer_layers
from tunelab.settings import Section

LEARNING_RATE = 1e-3  # measured: benchmarks/methods.py --sweep
SAVES = "state"

# output projections by architecture family: BERT/RoBERTa/MiniLM, GPT-2, Llama/Mistral/Qwen, DistilBERT, OPT/Phi
ATTENTION_OUTPUT = ("attention.output.dense", "attn.c_proj", "self_attn.o_proj", "attention.out_lin", "self_attn.out_proj")
ATTENTION_BLOCK = ("attn", "self_attn", "attention")  # GPT-2, Llama/Mistral/Qwen/OPT, DistilBERT (BERT: attention.output)
FFN_OUTPUT = ("output.dense", "mlp.c_proj", "mlp.down_proj", "ffn.lin2", "fc2", "mlp.fc2")


# Defaults measured (benchmarks/methods.py, BENCHMARKS.md): parallel + scale 4 + pooler trained beat Houlsby's
# placement at scale 1 by 1.37 points on SST-2 and 1.03 on FPB 50Agree at the same budget; beside the attention
# block too (parallel_both) beat the FFN alone by 0.55 points on SST-2 over five seeds, level on FPB over three.
class Settings(Section):
    size: int = Field(64, ge=1, description="Bottleneck width.")
    placement: Literal["houlsby", "pfeiffer", "parallel", "parallel_both"] = Field(
        "parallel_both", description="'parallel': beside each feed-forward block, from its input to its output (He et al. "
        "2022); 'parallel_both': beside each attention block too; 'houlsby': after the attention and "
        "feed-forward outputs; 'pfeiffer': after the feed-forward output only.")
    nonlinearity: Literal["gelu", "relu", "tanh"] = Field("gelu", description="Activation inside the bottleneck.")
    train_layer_norm: bool = Field(True, description="Also train the LayerNorm weights (as Houlsby et al. do).")
    train_pooler: bool = Field(True, description="Also train the pooler (BERT's dense layer over [CLS] under the head).")
    scale: float = Field(4.0, gt=0, description="Multiplier of the adapter's output (He et al. 2022 use 4; LoRA's alpha/r is 4 here too).")
    fp32_on_cpu: bool = Field(
        False, description="On CPU, compute the adapters in fp32 under bf16 autocast: faster (SST-2 427 vs 332 samples/s) "
        "and less memory (787 vs 912 MB); as accurate over five SST-2 seeds with the FFN-only placement (0.8571 vs "
        "0.8576), not yet measured with parallel_both, hence still off (BENCHMARKS.md, methods).")


class Bottleneck(torch.nn.Module):
    def __init__(self, hidden: int, size: int, nonlinearity: str, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.down = torch.nn.Linear(hidden, size)
        self.act = {"gelu": torch.nn.GELU(), "relu": torch.nn.ReLU(), "tanh": torch.nn.Tanh()}[nonlinearity]
        self.up = torch.nn.Linear(size, hidden)
        torch.nn.init.normal_(self.down.weight, std=0.02)
        torch.nn.init.zeros_(self.down.bias)
        torch.nn.init.zeros_(self.up.weight)  # zero update at the start: the model begins as pretrained
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.scale * self.up(self.act(self.down(hidden)))


def _add_after_output(module: torch.nn.Module, adapter: Bottleneck) -> None:
    module.add_module("adapter", adapter)
    module.register_forward_hook(lambda mod, args, output: mod.adapter(output))


def _output_projections(layer: torch.nn.Module, placement: str) -> list[torch.nn.Module]:
    found = []
    for name, module in layer.named_modules():
        is_attention = name.endswith(ATTENTION_OUTPUT)
        is_ffn = not is_attention and name.endswith(FFN_OUTPUT) and "attention" not in name
        if (is_attention and placement == "houlsby") or is_ffn:
            found.append(module)
    return found


def _add_beside_ffn(layer: torch.nn.Module, adapter: Bottleneck) -> bool:
    """Parallel placement: the FFN's output gains adapter(FFN input) - FFN input. False if no FFN block is found."""
    if hasattr(layer, "intermediate") and hasattr(getattr(layer, "output", None), "dense"):
        # BERT family: output(h, x) = LayerNorm(dense(h) + x) with x the FFN's input: adding to x adds to dense(h).
        # x + (adapter(x) - x) rather than adapter(x): the rounding the measured defaults were trained with
        layer.output.add_module("adapter", adapter)
        layer.output.register_forward_pre_hook(
            lambda mod, args: (args[0], args[1] + (mod.adapter(args[1]) - args[1]), *args[2:]))
        return True
    return _add_beside_block(next((getattr(layer, n) for n in ("mlp", "ffn") if getattr(layer, n, None) is not None),
                                  None), adapter)


def _add_beside_attention(layer: torch.nn.Module, adapter: Bottleneck) -> bool:
    """Parallel placement beside the attention block: its output gains adapter(block input) - block input.
    False if no attention block is found."""
    output = getattr(getattr(layer, "attention", None), "output", None)
    if output is not None and hasattr(output, "dense"):
        # BERT family: attention.output(h, x) = LayerNorm(dense(h) + x), x the block's input, as for the FFN
        output.add_module("adapter", adapter)
        output.register_forward_pre_hook(lambda mod, args: (args[0], mod.adapter(args[1]), *args[2:]))
        return True
    return _add_beside_block(next((getattr(layer, n) for n in ATTENTION_BLOCK if hasattr(layer, n)), None), adapter)


def _add_beside_block(block: torch.nn.Module | None, adapter: Bottleneck) -> bool:
    """GPT-2, Llama, DistilBERT: the residual is outside the block, so its output (a tensor, or a tuple led by the
    hidden states) gains adapter(x) - x, x its input (positional or keyword). False if there is no block."""
    if block is None:
        return False

    def add(mod, args, kwargs, out):
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("query"))
        added = mod.adapter(x) - x
        return (out[0] + added, *out[1:]) if isinstance(out, tuple) else out + added
    block.add_module("adapter", adapter)
    block.register_forward_hook(add, with_kwargs=True)
    return True


def apply(model, settings: Settings, head):
    hidden = model.config.hidden_size
    adapters = []
    for layer in transformer_layers(model):
        if settings.placement == "parallel_both":
            adapter = Bottleneck(hidden, settings.size, settings.nonlinearity, settings.scale).to(model.device)
            if not _add_beside_attention(layer, adapter):
                raise TunelabError(f"method adapter: no attention block found in {type(layer).__name__} for "
                                   "placement 'parallel_both'; use parallel, houlsby or pfeiffer")
            adapters.append(adapter)
        if settings.placement in ("parallel", "parallel_both"):
            adapter = Bottleneck(hidden, settings.size, settings.nonlinearity, settings.scale).to(model.device)
            if not _add_beside_ffn(layer, adapter):
                raise TunelabError(f"method adapter: no feed-forward block found in {type(layer).__name__} for "
                                   "placement 'parallel'; use houlsby or pfeiffer")
            adapters.append(adapter)
            continue
        targets = _output_projections(layer, settings.placement)
        if not targets:
            raise TunelabError(f"method adapter: no attention/feed-forward output projection found in "
                               f"{type(layer).__name__}; known names: {', '.join(ATTENTION_OUTPUT + FFN_OUTPUT)}")
        for module in targets:
            adapter = Bottleneck(hidden, settings.size, settings.nonlinearity, settings.scale).to(next(module.parameters()).device)
            _add_after_output(module, adapter)
            adapters.append(adapter)
    if settings.fp32_on_cpu:
        linears_in_fp32_on_cpu(m for adapter in adapters for m in (adapter.down, adapter.up))
    norms = [m for m in model.modules() if "norm" in type(m).__name__.lower()] if settings.train_layer_norm else []
    poolers = [m for n, m in model.named_modules() if n.split(".")[-1] == "pooler"] if settings.train_pooler else []
    train_only(model, [*adapters, *norms, *poolers, *(getattr(model, name) for name in head)])
    return model
