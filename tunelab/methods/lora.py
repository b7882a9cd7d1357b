"""low-rank updates (LoRA) on the linear layers, via peft; rsLoRA and DoRA switches."""

from pydantic import Field

from tunelab.methods.parts import linears_in_fp32_on_cpu
from tunelab.methods.with_peft import task_type, wrap
from tunelab.settings import Section

LEARNING_RATE = 1e-3  # measured: benchmarks/methods.py --sweep
SAVES = "peft"
MERGEABLE = True


class Settings(Section):
    r: int = Field(8, ge=1, description="Rank of the update matrices.")
    alpha: float = Field(
        32, gt=0, description="Scale: the update is multiplied by alpha/r (alpha/sqrt(r) with rslora). 32 measured "
        "+0.8 points over 16 on SST-2 (BENCHMARKS.md).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input (0 is faster on CPU).")
    target_modules: list[str] | str = Field(
        "all-linear", description="Module names to adapt (e.g. [query, value]); 'all-linear': every linear layer but the head.")
    rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r).")
    dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA): slower, sometimes more accurate.")
    fp32_on_cpu: bool = Field(
        True, description="On CPU, compute the rank-r factors in fp32 under bf16 autocast: as fast, and oneDNN keeps no "
        "per-shape kernels for them (SST-2: LoRA's training memory 1054 -> 827 MB; BENCHMARKS.md, methods).")


def apply(model, settings: Settings, head):
    from peft import LoraConfig

    model = wrap(model, LoraConfig(task_type=task_type(model), r=settings.r, lora_alpha=settings.alpha,
                                   lora_dropout=settings.dropout, target_modules=settings.target_modules,
                                   use_rslora=settings.rslora, use_dora=settings.dora, modules_to_save=head))
    if settings.fp32_on_cpu:
        linears_in_fp32_on_cpu(m for name, m in model.named_modules() if ".lora_A." in name or ".lora_B." in name)
        if not settings.dora:  # DoRA's own matmuls need the input in the factors' dtype
            # peft casts a bf16 input to the factors' fp32 before lora_A, and lora_A then keeps that copy for the
            # backward pass: +46 MB of saved activations per 32x64 batch of MiniLM (BENCHMARKS.md, methods)
            for module in model.modules():
                if hasattr(module, "cast_input_dtype_enabled"):
                    module.cast_input_dtype_enabled = False
    return model
