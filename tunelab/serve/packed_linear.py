"""A served causal LM's linear layers with their weights packed once for oneDNN, for decoding on the CPU.

Decoding multiplies a few rows (one token per running request) by every weight matrix at each step. nn.Linear
hands the weight in its stored layout to a GEMM at every call; oneDNN's linear on a weight reordered once into
its blocked layout measured 1.86x faster for 8 rows over the 210 matrices of SmolLM2-135M's layers in fp32
(25.0 against 46.5 ms), 1.48x for one row, 1.62x for a 64-token prompt, 4.1x for its 49152-word output layer at
8 rows; 1.76x in bf16 at 8 rows (benchmarks/packed_linear.py). Whole decoding, 8 requests: 2.09x the tokens/s in
fp32, 1.43x in bf16, the same greedy answers (benchmarks/llm_precision.py). The packed weight is the only copy
kept, except where other code reads `.weight`: peft's base layers and an output layer tied to the input
embeddings (the same tensor, no extra memory).
"""

from __future__ import annotations

import torch
from torch import nn

ROWS_HINT = 8  # oneDNN picks the packed layout for this many rows; any number of rows runs on it


class PackedLinear(nn.Module):
    """nn.Linear's forward on a oneDNN-packed weight (inference only: no gradient flows to the weight)."""

    def __init__(self, linear: nn.Linear, keep_weight: bool):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), ROWS_HINT)
        self.bias = linear.bias
        if keep_weight:
            self.weight = linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def can_pack(model) -> bool:
    """Whether the model's linear layers can run packed here: on the CPU, fp32 or bf16 (with bf16 instructions)."""
    parameter = next(model.parameters())
    if parameter.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if parameter.dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return parameter.dtype == torch.float32


def pack_linears(model) -> int:
    """Replace the model's nn.Linear layers by PackedLinear, in place; -> how many. LoRA's own small matrices stay
    as they are (peft reads their weights)."""
    if not can_pack(model):
        return 0
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    swaps = [(parent, name, child) for path, parent in model.named_modules() for name, child in parent.named_children()
             if type(child) is nn.Linear and "lora_" not in f"{path}.{name}"]
    for parent, name, child in swaps:
        keep = name == "base_layer" or child is output
        setattr(parent, name, PackedLinear(child, keep_weight=keep))
    # the rest into memory of their own: loaded weights are views of the checkpoint file mapped into memory, whose
    # pages (and a merged LoRA's copied-on-write ones) stay resident while any tensor still points into the
    # mapping -- 400-540 MB more for SmolLM2-135M without this
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.data = tensor.data.clone()
    return len(swaps)
