"""Rewrite an exported transformer graph into onnxruntime's fused kernels, with onnxscript's ORT fusions.

The dynamo exporter writes attention as ~30 small ops per layer (reshapes, transposes, the mask's Where/IsNaN)
and GELU as Erf arithmetic: on a one-sentence call their fixed cost is a large part of the time. onnxscript's
rewriter (made for torch.onnx's dynamo graphs) turns them into MultiHeadAttention and BiasGelu (com.microsoft ops,
which plain onnxruntime runs; other runtimes do not: hence `tunelab export --portable`). The residual Add +
LayerNormalization pairs stay as they are: onnxruntime's fused SkipLayerNormalization kernel measured slower than
them (models/predictor.py, SLOW_FUSIONS). benchmarks/serve_latency.py gives the effect on a served request.

Its packed-QKV `Attention` step is left out on purpose: it concatenates Q, K and V into one fp32 weight that
onnxruntime's int8 quantizer cannot reach when the mask comes as an additive bias, so int8 would lose those three
matmuls (measured: 20% fewer texts/s in batches).
"""

from __future__ import annotations

from pathlib import Path

# Steps of onnxscript's fuse_xformers that apply to encoder classifiers, in its order: packed Attention left out
# (above), and SkipLayerNormalization too: onnxruntime's CPU kernel for it measured slower than the Add and
# LayerNormalization it replaces (models/predictor.py SLOW_FUSIONS)
STEPS = ("erfgelu.fuse_erfgelu", "sdpa.fuse_sdpa",
         "mha.fuse_mha1", "mha.fuse_mha2", "mha_scale.fuse_mha_scale", "mha_bias.fuse_mha_bias",
         "gelu.fuse_gelu", "bias_gelu.fuse_bias_gelu")
FOLD_LIMIT = 1 << 26  # fold constant subgraphs up to this many elements (onnxscript's default stops at 8192)


def fuse_for_onnxruntime(path: Path) -> dict[str, int]:
    """Fuse the ONNX file at `path` in place; returns how many of each fusion were applied."""
    import importlib

    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions import ORT_PATTERN_REWRITE_RULES
    from onnxscript.rewriter.ort_fusions import shape_optimization

    model = ir.load(str(path))
    common_passes.ShapeInferencePass()(model)
    optimize(model)
    shape_optimization.rules.apply_to_model(model)
    optimize(model)
    counts = {}
    for step in STEPS:
        module, name = step.split(".")
        fuse = getattr(importlib.import_module(f"onnxscript.rewriter.ort_fusions.{module}"), name)
        counts[name.removeprefix("fuse_")] = fuse(model, **({"apply_shape_inference": True} if name == "fuse_sdpa" else {}))
    rewrite(model, ORT_PATTERN_REWRITE_RULES)
    optimize(model, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT)
    common_passes.ShapeInferencePass()(model)
    ir.save(model, str(path))
    return {k: v for k, v in counts.items() if v}
