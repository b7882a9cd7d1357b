"""Training memory of full fine-tuning and LoRA against the number of batch shapes (a diagnostic);
with the defaults (pad1), also the adapters, each at five seeds.

oneDNN, PyTorch's CPU kernel library, keeps a JIT-compiled kernel and its buffers for every input shape it
has seen (up to ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024 entries); with dynamic padding every batch length is
new shapes, and LoRA's small matmuls add more of them. Each case runs methods.py's SST-2 budget (20k
examples, one epoch, batch 32) in its own process on the tunelab command's allocator, with the batch length
padded up to a multiple (`train.pad_to_multiple_of`) and/or the primitive cache bounded. Figures: training
memory (peak RSS from the model's creation to the end of training, minus RSS then), samples/s, accuracy;
LoRA's memory over full fine-tuning's at the same setting; pad 1 and pad 8 also at seeds 1 and 2 (mean accuracy
over the seeds: padding changes bf16 rounding, so single runs differ by more than the setting's effect).

    .venv/bin/python benchmarks/memory_shapes.py
"""

from __future__ import annotations

import argparse

from _common import need_data, read_results, run_cases, write_results

# name: (pad multiple, oneDNN cache capacity; None: tunelab's bound, 64 -- the stored pad8 figures were taken
# under oneDNN's own 1024)
SETTINGS = {"pad1": (1, None), "pad8": (8, None), "pad8_cache32": (8, "32"), "pad1_cache1024": (1, "1024")}
# the padding also changes bf16 rounding, hence the run: more seeds tell that noise from an effect on accuracy
SEEDS = {"pad1": (42, 1, 2, 3, 4), "pad8": (42, 1, 2), "pad8_cache32": (42,), "pad1_cache1024": (42,)}
METHODS = {name: ("full", "lora", "adapter") if name == "pad1" else ("full", "lora") for name in SETTINGS}
CASES = {f"{method}_{name}" + (f"_seed{seed}" if seed != 42 else ""):
         (lambda method=method, pad=pad, seed=seed: _case(method, pad, seed))
         for name, (pad, _) in SETTINGS.items() for seed in SEEDS[name] for method in METHODS[name]}
CASE_ENV = {f"{method}_{name}": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": cache}
            for name, (_, cache) in SETTINGS.items() if cache for method in METHODS[name]}


def _case(method: str, pad: int, seed: int) -> dict:
    import methods

    figures = methods.run_method("sst2", method, [f"train.pad_to_multiple_of={pad}", f"train.seed={seed}"],
                                 f"shapes-{method}-pad{pad}-seed{seed}")
    return {"accuracy": figures["accuracy"], "samples_per_second": figures["samples_per_second"],
            "train_memory_mb": figures["peak_rss_training_mb"] - figures["rss_after_model_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="comma-separated case names (e.g. full_pad8,lora_pad8)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    need_data("sst2", "train.csv")
    only = [n for n in args.only.split(",") if n]
    results = run_cases(__file__, CASES, args.case, only, "memory_shapes", case_env=CASE_ENV)
    if results is None:
        return
    write_results("memory_shapes", summarise(results, read_results("memory_shapes") if only else {}))


def summarise(results: dict, stored: dict) -> dict:
    """Flat figures of `results` over the `stored` ones (the cases not run this time), and the ratios and means."""
    flat = dict(stored)
    for case, figures in results.items():
        for key in ("accuracy", "samples_per_second", "train_memory_mb", "allocator"):
            if key in figures:
                flat[f"{case}_{key}"] = round(figures[key], 4) if isinstance(figures[key], float) else figures[key]
    for name in SETTINGS:
        for method in METHODS[name][1:]:
            for seed in SEEDS[name]:
                suffix = f"_seed{seed}" if seed != 42 else ""
                mine, full = flat.get(f"{method}_{name}{suffix}_train_memory_mb"), flat.get(f"full_{name}{suffix}_train_memory_mb")
                if mine and full:
                    flat[f"{method}_{name}{suffix}_train_memory_ratio_vs_full"] = round(mine / full, 4)
        for method in METHODS[name]:
            runs = [f"{method}_{name}" + (f"_seed{seed}" if seed != 42 else "") for seed in SEEDS[name]]
            accuracies = [flat[f"{run}_accuracy"] for run in runs if f"{run}_accuracy" in flat]
            if len(accuracies) > 1:
                flat[f"{method}_{name}_accuracy_mean"] = round(sum(accuracies) / len(accuracies), 4)
                flat[f"{method}_{name}_accuracy_seeds"] = len(accuracies)
    return flat


if __name__ == "__main__":
    main()
