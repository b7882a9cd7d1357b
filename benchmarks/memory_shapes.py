"""Training memory of full fine-tuning and LoRA against the number of batch shapes (a diagnostic for #4).

oneDNN, PyTorch's CPU kernel library, keeps a JIT-compiled kernel and its buffers for every input shape it
has seen (up to ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024 entries); with dynamic padding every batch length is
new shapes, and LoRA's small matmuls add more of them. Each case runs methods.py's SST-2 budget (20k
examples, one epoch, batch 32) in its own process on the tunelab command's allocator, with the batch length
padded up to a multiple (`train.pad_to_multiple_of`) and/or the primitive cache bounded. Figures: training
memory (peak RSS from the model's creation to the end of training, minus RSS then), samples/s, accuracy;
LoRA's memory over full fine-tuning's at the same setting.

    .venv/bin/python benchmarks/memory_shapes.py
"""

from __future__ import annotations

import argparse

from _common import need_data, run_cases, write_results

SETTINGS = {"pad1": (1, None), "pad8": (8, None), "pad8_cache32": (8, "32")}  # name: (pad multiple, cache capacity)
CASES = {f"{method}_{name}": (lambda method=method, pad=pad: _case(method, pad))
         for name, (pad, _) in SETTINGS.items() for method in ("full", "lora")}
CASE_ENV = {f"{method}_{name}": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": cache}
            for name, (_, cache) in SETTINGS.items() if cache for method in ("full", "lora")}


def _case(method: str, pad: int) -> dict:
    import methods

    figures = methods.run_method("sst2", method, [f"train.pad_to_multiple_of={pad}"], f"shapes-{method}-pad{pad}")
    return {"accuracy": figures["accuracy"], "samples_per_second": figures["samples_per_second"],
            "train_memory_mb": figures["peak_rss_training_mb"] - figures["rss_after_model_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    need_data("sst2", "train.csv")
    results = run_cases(__file__, CASES, args.case, [], "memory_shapes", case_env=CASE_ENV)
    if results is None:
        return
    flat = {}
    for case, figures in results.items():
        for key in ("accuracy", "samples_per_second", "train_memory_mb", "allocator"):
            if key in figures:
                flat[f"{case}_{key}"] = round(figures[key], 4) if isinstance(figures[key], float) else figures[key]
    for name in SETTINGS:
        lora, full = flat.get(f"lora_{name}_train_memory_mb"), flat.get(f"full_{name}_train_memory_mb")
        if lora and full:
            flat[f"lora_{name}_train_memory_ratio_vs_full"] = round(lora / full, 4)
    write_results("memory_shapes", flat)


if __name__ == "__main__":
    main()
