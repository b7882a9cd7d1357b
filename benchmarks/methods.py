"""Every fine-tuning method against full fine-tuning, on the default MiniLM, same seed and budget.

Budget (the same for every method, each at its own default learning rate):
  SST-2: the fixed 20k-example training subset, one epoch (625 steps of 32), full validation set;
  Financial PhraseBank 50Agree: its fixed 80/10/10 split (seed 42), 400 steps of 32, test set.
Figures per method and dataset: accuracy, macro-F1, trainable %, checkpoint MB (weights saved), train
seconds, samples/s, peak RSS, and training memory = peak RSS from the moment the model is built and the
method applied to the end of training (the peak is reset there: /proc/self/clear_refs), minus RSS at that moment.

    .venv/bin/python benchmarks/methods.py                 # all (about 35 minutes on 2 cores)
    .venv/bin/python benchmarks/methods.py --only sst2_lora,sst2_full
    .venv/bin/python benchmarks/methods.py --sweep         # how the default learning rates were chosen

--sweep: each method at 3 learning rates on a 5k-example SST-2 subset (one epoch), full validation;
the best one became the method's LEARNING_RATE (results/methods_sweep.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from _common import REPO, WORK, need_data, read_results, run_cases, sst2_subset_csv, status_mb, write_results

METHOD_NAMES = ["full", "freeze", "head", "lora", "ia3", "prefix", "prompt", "adapter"]
DATASETS = {  # name: (example config, overrides, split reported)
    "sst2": ("sst2.yaml", ["train.epochs=1", "train.min_steps=0", "train.batch_size=32"], "validation"),
    "fpb": ("fpb_50agree.yaml", ["train.max_steps=400", "train.batch_size=32"], "test"),
}
SWEEP = {"head": [3e-3, 1e-2, 3e-2, 1e-1], "freeze": [1e-4, 3e-4, 1e-3], "lora": [5e-4, 1e-3, 3e-3],
         "ia3": [3e-3, 1e-2, 3e-2, 1e-1], "prefix": [3e-3, 1e-2, 3e-2, 1e-1], "prompt": [1e-2, 3e-2, 1e-1],
         "adapter": [3e-4, 1e-3, 3e-3]}


def run_method(dataset: str, method: str, extra: list[str], name: str) -> dict:
    import tunelab.training.loop as loop
    from tunelab.config import load_config
    from tunelab.evaluation import evaluate

    example, overrides, split = DATASETS[dataset]
    extra = [*extra, *(o for o in os.environ.get("TUNELAB_BENCH_SET", "").split(";") if o)]  # --set
    name += "-" + os.environ["TUNELAB_BENCH_TAG"] if os.environ.get("TUNELAB_BENCH_TAG") else ""
    if dataset == "sst2":
        overrides = [f"data.train={sst2_subset_csv()}", *overrides]
    config = load_config(REPO / "examples" / example,
                         [f"runs_dir={WORK / 'runs'}", f"name={name}", f"method.name={method}", *overrides, *extra])
    after_model = {}
    real_apply = loop.apply_method

    def apply_and_measure(model, method_config):  # RSS once the model is built and the method applied
        model = real_apply(model, method_config)
        after_model["rss_mb"] = status_mb("VmRSS")
        # the peak from here on: before this point the data stage (reading, cleaning, tokenising) has its own
        # peak, the same for every method, which would hide the training's
        Path("/proc/self/clear_refs").write_text("5")
        return model
    loop.apply_method = apply_and_measure
    result = loop.train(config, overwrite=True, quiet=True)
    peak_in_training = status_mb("VmHWM")  # before the evaluation below loads the model again
    meta = json.loads((result.model_dir / "tunelab.json").read_text())
    metrics = evaluate(config.run_dir, split, write_report=False, quiet=True).metrics
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "split": split,
            "learning_rate": config.learning_rate, "steps": result.steps,
            "trainable_percent": meta["parameters"]["trainable_percent"],
            "trainable_parameters": meta["parameters"]["trainable"],
            "checkpoint_mb": meta["saved_bytes"] / 1e6, "train_seconds": result.train_seconds,
            "samples_per_second": result.samples_per_second, "rss_after_model_mb": after_model["rss_mb"],
            "peak_rss_training_mb": peak_in_training}


def _sweep_case(method: str, lr: float):
    def case():
        path = sst2_subset_csv(5000)
        extra = [f"data.train={path}", f"train.learning_rate={lr}"]
        return run_method("sst2", method, extra, f"sweep-{method}-{lr:g}")
    return case


CASES = {f"{d}_{m}": (lambda d=d, m=m: run_method(d, m, [], f"methods-{d}-{m}")) for d in DATASETS for m in METHOD_NAMES}
# Settings measured beside the defaults: case -> (dataset, method, overrides). The run folder is methods-<case>.
HOULSBY = ["method.adapter.placement=houlsby", "method.adapter.train_pooler=false", "method.adapter.scale=1"]  # the Houlsby placement
PARALLEL = ["method.adapter.placement=parallel", "method.adapter.scale=4"]
VARIANTS = {
    "sst2_lora_checkpointing": ("sst2", "lora", ["train.activation_checkpointing=true"]),  # its memory figure
    "sst2_lora_alpha16": ("sst2", "lora", ["method.lora.alpha=16", "method.lora.fp32_on_cpu=false"]),  # the default before alpha 32
    # variants of the old adapter default (Houlsby, scale 1, pooler frozen)
    "sst2_adapter_lr3e-3": ("sst2", "adapter", [*HOULSBY, "train.learning_rate=3e-3"]),
    "sst2_adapter_pooler": ("sst2", "adapter", [*HOULSBY, "method.adapter.train_pooler=true"]),
    "sst2_adapter_pooler_lr2e-3": ("sst2", "adapter", [*HOULSBY, "method.adapter.train_pooler=true", "train.learning_rate=2e-3"]),
    "sst2_adapter_pooler_size256": ("sst2", "adapter", [*HOULSBY, "method.adapter.train_pooler=true", "method.adapter.size=256"]),
    "sst2_adapter_scale4": ("sst2", "adapter", [*HOULSBY, "method.adapter.scale=4"]),
    "sst2_adapter_pooler_scale4": ("sst2", "adapter", [*HOULSBY, "method.adapter.train_pooler=true", "method.adapter.scale=4"]),
    "sst2_adapter_pooler_scale4_nonorm": ("sst2", "adapter", [*HOULSBY, "method.adapter.train_pooler=true", "method.adapter.scale=4",
                                                              "method.adapter.train_layer_norm=false"]),
    "fpb_adapter_pooler": ("fpb", "adapter", [*HOULSBY, "method.adapter.train_pooler=true"]),
    "fpb_adapter_pooler_scale4": ("fpb", "adapter", [*HOULSBY, "method.adapter.train_pooler=true", "method.adapter.scale=4"]),
    # the parallel placement, which became the default (with the pooler trained), and variants of it
    "sst2_adapter_parallel_scale4": ("sst2", "adapter", [*PARALLEL, "method.adapter.train_pooler=false"]),
    "sst2_adapter_parallel_scale4_pooler": ("sst2", "adapter", [*PARALLEL, "method.adapter.train_pooler=true"]),
    "fpb_adapter_parallel_scale4_pooler": ("fpb", "adapter", [*PARALLEL, "method.adapter.train_pooler=true"]),
    "sst2_adapter_parallel_scale4_pooler_size128": ("sst2", "adapter", [*PARALLEL, "method.adapter.train_pooler=true", "method.adapter.size=128"]),
    "sst2_adapter_scale8": ("sst2", "adapter", ["method.adapter.scale=8"]),
    "sst2_adapter_lr5e-4": ("sst2", "adapter", ["train.learning_rate=5e-4"]),
    # LoRA's factors in bf16 rather than fp32 on CPU (rows *_lora_bf16), and adapters in fp32 (rows *_adapter_fp32)
    "sst2_lora_bf16": ("sst2", "lora", ["method.lora.fp32_on_cpu=false"]),
    "fpb_lora_bf16": ("fpb", "lora", ["method.lora.fp32_on_cpu=false"]),
    "sst2_adapter_fp32": ("sst2", "adapter", ["method.adapter.fp32_on_cpu=true"]),
    "fpb_adapter_fp32": ("fpb", "adapter", ["method.adapter.fp32_on_cpu=true"]),
}
# the adapter at 5e-4 over the seeds memory_shapes.py ran the defaults at (1, 2, 3, 4; 42 is the row above)
VARIANTS.update({f"sst2_adapter_lr5e-4_seed{seed}": ("sst2", "adapter", ["train.learning_rate=5e-4", f"train.seed={seed}"])
                 for seed in (1, 2, 3, 4)})
CASES.update({case: (lambda case=case, d=d, m=m, o=o: run_method(d, m, o, "methods-" + case.replace("_", "-")))
              for case, (d, m, o) in VARIANTS.items()})
SWEEP_CASES = {f"{m}_{lr:g}": _sweep_case(m, lr) for m, lrs in SWEEP.items() for lr in lrs}


def _variants(cases, dataset: str) -> list[str]:
    """The methods measured on `dataset`, in table order: the plain ones, then variants (lora_checkpointing)."""
    names = [c[len(dataset) + 1:] for c in cases if c.startswith(dataset + "_") and not c.endswith(tuple(
        "_" + k for k in ("accuracy",)))]
    names = [n for n in names if "_" not in n or n.split("_")[0] in METHOD_NAMES]
    return [m for m in METHOD_NAMES if m in names] + sorted(n for n in names if n not in METHOD_NAMES)


def flatten(results: dict, stored: dict | None = None) -> dict:
    """Flat figures of `results`, over the `stored` ones of the cases not run this time (--only)."""
    flat = dict(stored or {})
    for case, figures in results.items():
        figures = dict(figures)
        peak = figures.get("peak_rss_training_mb", figures.get("peak_rss_mb"))  # older runs: the whole case's peak
        if peak is not None and "rss_after_model_mb" in figures:
            figures["train_memory_mb"] = peak - figures["rss_after_model_mb"]
        for key, value in figures.items():
            if key in ("split", "case_wall_seconds"):
                continue
            keep = not isinstance(value, float) or key == "learning_rate"  # round(5e-5, 4) would say 1e-4
            flat[f"{case}_{key}"] = value if keep else round(value, 4)
    for d in DATASETS:  # full fine-tuning's memory per allocator, for the rows measured on each
        if f"{d}_full_train_memory_mb" in flat:
            flat[f"{d}_full_train_memory_mb_{flat.get(f'{d}_full_allocator', 'system')}"] = flat[f"{d}_full_train_memory_mb"]
    for d in DATASETS:
        full = flat.get(f"{d}_full_accuracy")
        head = flat.get(f"{d}_head_accuracy")
        for m in _variants(_cases(flat), d)[1:]:
            acc = flat.get(f"{d}_{m}_accuracy")
            if full is not None and acc is not None:
                flat[f"{d}_{m}_gap_points"] = round(100 * (full - acc), 2)
            if head is not None and acc is not None and m in METHOD_NAMES and m != "head":
                flat[f"{d}_{m}_above_head_points"] = round(100 * (acc - head), 2)
            mem = flat.get(f"{d}_{m}_train_memory_mb")
            full_mem = flat.get(f"{d}_full_train_memory_mb_{flat.get(f'{d}_{m}_allocator', 'system')}")  # same allocator
            if mem is not None and full_mem:
                flat[f"{d}_{m}_train_memory_ratio_vs_full"] = round(mem / full_mem, 4)
            else:  # no full run on this row's allocator: no ratio (a stored one would be another run's)
                flat.pop(f"{d}_{m}_train_memory_ratio_vs_full", None)
    targets = {"sst2_lora_gap_points": ("<=", 1.0), "sst2_lora_trainable_percent": ("<=", 2.0),
               "sst2_lora_train_memory_ratio_vs_full": ("<=", 0.75), "sst2_adapter_gap_points": ("<=", 1.5)}
    for key, (op, target) in targets.items():
        if key in flat:
            flat[f"{key}_target_met"] = flat[key] <= target
    for d in DATASETS:
        for m in METHOD_NAMES:
            if m not in ("head", "full") and f"{d}_{m}_above_head_points" in flat:
                flat[f"{d}_{m}_above_head_target_met"] = flat[f"{d}_{m}_above_head_points"] >= 1.0
    return flat


def _cases(flat: dict) -> list[str]:
    return [k[:-len("_accuracy")] for k in flat if k.endswith("_accuracy")]


def markdown_table(flat: dict) -> str:
    """The BENCHMARKS.md table, straight from the figures."""
    head = ("| data | method | lr | accuracy | macro-F1 | gap to full (points) | trainable % | saved MB | "
            "train s | samples/s | malloc | peak RSS MB | train memory MB (× full) |\n" + "|---" * 13 + "|")
    rows = []
    for d in DATASETS:
        for m in _variants(_cases(flat), d):
            g = lambda k, fmt="{:.4f}": fmt.format(flat[f"{d}_{m}_{k}"]) if f"{d}_{m}_{k}" in flat else "–"  # noqa: E731
            rows.append(f"| {d} | {m} | {g('learning_rate', '{:g}')} | {g('accuracy')} | {g('macro_f1')} | "
                        f"{g('gap_points', '{:+.2f}') if m != 'full' else '–'} | {g('trainable_percent', '{:.3f}')} | "
                        f"{g('checkpoint_mb', '{:.1f}')} | {g('train_seconds', '{:.0f}')} | {g('samples_per_second', '{:.0f}')} | "
                        f"{flat.get(f'{d}_{m}_allocator', 'system')} | "
                        f"{g('peak_rss_mb', '{:.0f}')} | {g('train_memory_mb', '{:.0f}')}"
                        + ("" if f"{d}_{m}_peak_rss_training_mb" in flat else "*")
                        + (f" ({g('train_memory_ratio_vs_full', '{:.2f}')})" if m != "full" else "") + " |")
    return "\n".join([head, *rows])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="comma-separated case names (e.g. sst2_lora,fpb_full)")
    parser.add_argument("--sweep", action="store_true", help="the learning-rate sweep behind the defaults")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the --only cases (a variant being tried, e.g. another seed); needs --tag")
    parser.add_argument("--tag", default="", help="suffix of the case names (and run folders) of this variant")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    need_data("sst2", "train.csv")
    need_data("financial_phrasebank")
    if args.set and not args.tag:
        parser.error("--set needs --tag, so the variant's figures do not overwrite the defaults' figures")
    if not args.case:  # the parent hands the variant to its case processes through the environment
        os.environ.update(TUNELAB_BENCH_SET=";".join(args.set), TUNELAB_BENCH_TAG=args.tag)
    cases = {**CASES, **SWEEP_CASES} if args.case else SWEEP_CASES if args.sweep else CASES
    only = [n for n in args.only.split(",") if n]
    results = run_cases(__file__, cases, args.case, only, "methods_sweep" if args.sweep else "methods", tag=args.tag)
    if results is None:
        return
    if args.sweep:
        best = {}
        for case, figures in results.items():
            method = case.split("_")[0]
            if "accuracy" in figures and figures["accuracy"] > best.get(method, (0, None))[0]:
                best[method] = (figures["accuracy"], figures["learning_rate"])
        flat = {f"{case}_accuracy": round(f.get("accuracy", float("nan")), 4) for case, f in results.items()}
        flat.update({f"{m}_best_learning_rate": lr for m, (_, lr) in best.items()})
        write_results("methods_sweep", flat)
    else:
        flat = flatten(results, read_results("methods") if only else None)
        write_results("methods", flat)
        print(markdown_table(flat))


if __name__ == "__main__":
    sys.exit(main())
