"""Fine-tuning accuracy and speed of the default MiniLM, and a side-by-side with transformers' Trainer.

Part 1 (speed, side by side in one run): the same 20k-example SST-2 subset, one epoch, batch 32, lr 1e-4,
trained by (1) a Trainer script as the tutorials write it (pad to max_length=128, fp32), (2) a Trainer
script tuned as an expert would (dynamic padding, group_by_length, bf16), (3) tunelab's defaults. tunelab runs on
the allocator the `tunelab` command picks (jemalloc where it is there); the Trainer scripts on the system's
malloc, and the tuned one once more on jemalloc (`sst2_trainer_tuned_jemalloc`) to show what the allocator gives.
Part 2 (accuracy, tunelab defaults): SST-2 full train, Financial PhraseBank AllAgree and 50Agree (80/10/10,
seed 42), Banking77 (10% of train held out for validation); with the expected calibration error of the test
predictions as served (temperature fitted on validation) and before that scaling (`*_ece_uncalibrated`).

Each case runs in its own process, so its peak RSS is its own.

    .venv/bin/python benchmarks/classification.py            # everything (about an hour on 2 cores)
    .venv/bin/python benchmarks/classification.py --only sst2_trainer_tutorial,sst2_tunelab_20k
    .venv/bin/python benchmarks/classification.py --only sst2_tunelab_20k,sst2_trainer_tuned,sst2_trainer_tuned_jemalloc --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from _common import REPO, WORK, need_data, read_results, run_cases, sst2_subset, sst2_subset_csv, write_results

LR, BATCH = 1e-4, 32


def case_trainer(tuned: bool) -> dict:
    """A plain transformers Trainer script: (1) as tutorials write it, or (2) tuned."""
    import numpy as np
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments)
    from transformers.utils import logging

    from tunelab.hub import default_model_dir

    logging.set_verbosity_error()
    texts, labels, vtexts, vlabels = sst2_subset()
    model_dir = str(default_model_dir())
    tok = AutoTokenizer.from_pretrained(model_dir)
    pad = {} if tuned else {"padding": "max_length"}

    class DS(torch.utils.data.Dataset):
        def __init__(self, t, y):
            self.enc = tok(t, truncation=True, max_length=128, **pad)
            self.y = [int(v) for v in y]

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return {"input_ids": self.enc["input_ids"][i], "attention_mask": self.enc["attention_mask"][i],
                    "token_type_ids": self.enc["token_type_ids"][i], "labels": self.y[i]}

    train_ds, val_ds = DS(texts, labels), DS(vtexts, vlabels)
    torch.manual_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    args = TrainingArguments(output_dir=str(WORK / ("trainer-tuned" if tuned else "trainer-tutorial")),
                             per_device_train_batch_size=BATCH, per_device_eval_batch_size=128, learning_rate=LR,
                             num_train_epochs=1, weight_decay=0.01, warmup_steps=0.06, save_strategy="no",
                             eval_strategy="no", report_to=[], logging_steps=50, seed=42, disable_tqdm=True,
                             use_cpu=True, bf16=tuned, train_sampling_strategy="group_by_length" if tuned else "random", dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds,
                      data_collator=DataCollatorWithPadding(tok) if tuned else None)
    t = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t
    pred = trainer.predict(val_ds)  # label_ids come back in the order evaluated (length grouping reorders rows)
    accuracy = float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())
    return {"accuracy": accuracy, "train_seconds": seconds, "samples_per_second": len(texts) / seconds,
            "trainer_samples_per_second": out.metrics["train_samples_per_second"]}


def case_tunelab_20k() -> dict:
    path = sst2_subset_csv()
    return _tunelab("sst2.yaml", "sst2-20k", [f"data.train={path}", "train.epochs=1", "train.min_steps=0",
                                               f"train.learning_rate={LR}", f"train.batch_size={BATCH}"],
                    splits=("validation",))


def _tunelab(example: str, name: str, overrides: list[str], splits=("validation", "test")) -> dict:
    from tunelab.config import load_config
    from tunelab.evaluation import evaluate
    from tunelab.training import train

    extra = [o for o in os.environ.get("TUNELAB_BENCH_SET", "").split(";") if o]  # --set, for trying a change
    tag = "-" + os.environ["TUNELAB_BENCH_TAG"] if os.environ.get("TUNELAB_BENCH_TAG") else ""
    config = load_config(REPO / "examples" / example,
                         [f"runs_dir={WORK / 'runs'}", f"name={name}{tag}", *overrides, *extra])
    t = time.perf_counter()
    result = train(config, overwrite=True, quiet=True)
    wall = time.perf_counter() - t
    out = {"train_seconds": result.train_seconds, "wall_seconds": wall, "samples_per_second": result.samples_per_second,
           "steps": result.steps}
    for split in splits:
        metrics = evaluate(config.run_dir, split, write_report=split == "test", quiet=True).metrics
        out[f"{split}_accuracy"] = metrics["accuracy"]
        out[f"{split}_macro_f1"] = metrics["macro_f1"]
        out[f"{split}_ece"] = metrics["ece"]  # as served: after the temperature fitted on validation
        out[f"{split}_ece_uncalibrated"] = metrics.get("ece_uncalibrated", metrics["ece"])
    return out


CASES = {  # the two fast speed cases first, back to back, so they see the same machine state
    "sst2_tunelab_20k": case_tunelab_20k,
    "sst2_trainer_tuned": lambda: case_trainer(tuned=True),
    # the same tuned Trainer on jemalloc too: how much of tunelab's lead is the allocator it runs on
    "sst2_trainer_tuned_jemalloc": lambda: case_trainer(tuned=True),
    "sst2_trainer_tutorial": lambda: case_trainer(tuned=False),
    "sst2": lambda: _tunelab("sst2.yaml", "sst2", []),
    "fpb_allagree": lambda: _tunelab("fpb_allagree.yaml", "fpb-allagree", []),
    "fpb_50agree": lambda: _tunelab("fpb_50agree.yaml", "fpb-50agree", []),
    "banking77": lambda: _tunelab("banking77.yaml", "banking77", []),
}
SYSTEM_MALLOC = ("sst2_trainer_tuned", "sst2_trainer_tutorial")  # the baselines: plain Trainer scripts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="comma-separated case names")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the tunelab accuracy cases (a change being tried); needs --tag")
    parser.add_argument("--tag", default="", help="suffix of the case names (and run folders) of this variant")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the --only cases this many times, interleaved (the speed ratios: medians of the rounds)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args()
    need_data("sst2", "train.csv")
    need_data("banking77", "train.csv")
    if args.set and not args.tag:
        parser.error("--set needs --tag, so the variant's figures do not overwrite the defaults' figures")
    if not args.case:  # the parent hands the variant to its case processes through the environment
        os.environ.update(TUNELAB_BENCH_SET=";".join(args.set), TUNELAB_BENCH_TAG=args.tag)
    only = [n for n in args.only.split(",") if n]
    if args.rounds > 1 and (args.tag or not only or args.case):
        parser.error("--rounds needs --only and no --tag")
    results = {}
    for r in range(1, args.rounds + 1):
        tag = f"round{r}" if args.rounds > 1 else args.tag
        results = run_cases(__file__, CASES, args.case, only, "classification", tag=tag, system_malloc=SYSTEM_MALLOC)
        if results is None:
            return
    if results is not None:
        stored = read_results("classification") if only else {}
        write_results("classification", {**stored, **flatten(results, stored)})


def flatten(results: dict, stored: dict | None = None) -> dict:
    """Flat figures of `results`; the summary keys fall back on the `stored` figures of cases not run this time."""
    stored = stored or {}
    flat = {}
    for name, figures in results.items():
        for key, value in figures.items():
            flat[f"{name}_{key}"] = round(value, 4) if isinstance(value, float) else value
    get = lambda case, key: results.get(case, {}).get(key, stored.get(f"{case}_{key}"))  # noqa: E731
    aliases = {
        "sst2_validation_accuracy": get("sst2", "validation_accuracy"),
        "sst2_test_accuracy": get("sst2", "test_accuracy"),
        "fpb_allagree_test_accuracy": get("fpb_allagree", "test_accuracy"),
        "fpb_50agree_test_accuracy": get("fpb_50agree", "test_accuracy"),
        "banking77_test_accuracy": get("banking77", "test_accuracy"),
        **{f"{case}_test_{key}": get(case, f"test_{key}") for case in ("sst2", "fpb_allagree", "fpb_50agree", "banking77")
           for key in ("ece", "ece_uncalibrated")},
    }
    for baseline, key in (("sst2_trainer_tutorial", "sst2_throughput_ratio_vs_trainer"),
                          ("sst2_trainer_tuned", "sst2_throughput_ratio_vs_trainer_tuned"),
                          ("sst2_trainer_tuned_jemalloc", "sst2_throughput_ratio_vs_trainer_tuned_jemalloc")):
        rounds = sorted({n.split("_round")[1] for n in results if n.startswith(baseline + "_round")})
        pairs = ([(get(f"sst2_tunelab_20k_round{r}", "samples_per_second"), get(f"{baseline}_round{r}", "samples_per_second"))
                  for r in rounds] if rounds else [(get("sst2_tunelab_20k", "samples_per_second"), get(baseline, "samples_per_second"))])
        ratios = sorted(ours / theirs for ours, theirs in pairs if ours and theirs)
        if ratios:
            aliases[key] = statistics.median(ratios)
        if len(ratios) > 1:
            aliases[f"{key}_rounds"] = len(ratios)
            aliases[f"{key}_min"], aliases[f"{key}_max"] = ratios[0], ratios[-1]
    latest = lambda case: max((n for n in results if n.startswith(case + "_round")), default=case)  # noqa: E731
    ours = get(latest("sst2_tunelab_20k"), "validation_accuracy")  # the same in every round (same seed)
    accs = [a for a in (get(latest("sst2_trainer_tutorial"), "accuracy"), get(latest("sst2_trainer_tuned"), "accuracy"))
            if a is not None]
    if accs and ours is not None:
        aliases["sst2_accuracy_delta_vs_trainer"] = 100 * (ours - max(accs))
    flat.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in aliases.items() if v is not None})
    targets = {"sst2_validation_accuracy": 0.90, "fpb_allagree_test_accuracy": 0.96, "fpb_50agree_test_accuracy": 0.85,
               "banking77_test_accuracy": 0.92, "sst2_throughput_ratio_vs_trainer": 3.0,
               "sst2_throughput_ratio_vs_trainer_tuned": 1.3, "sst2_accuracy_delta_vs_trainer": 0.0}
    for key, target in targets.items():
        if key in flat:
            flat[f"{key}_target_met"] = flat[key] >= target
    for case in ("sst2", "fpb_allagree", "fpb_50agree", "banking77"):  # calibration: at most 0.05
        if flat.get(f"{case}_test_ece") is not None:
            flat[f"{case}_test_ece_target_met"] = flat[f"{case}_test_ece"] <= 0.05
    return flat


if __name__ == "__main__":
    main()
