"""Named-entity recognition on CoNLL-2003 with the default MiniLM: accuracy, training speed against a tuned
transformers Trainer, and int8 serving.

Cases (each in its own process, so each peak RSS is its own):
  conll_tunelab           examples/conll2003.yaml as it is (seed 42): entity F1 on validation and test (seqeval,
                          strict IOB2), training samples/s
  conll_trainer_tuned     a Trainer script tuned as an expert would (AutoModelForTokenClassification,
                          DataCollatorForTokenClassification, dynamic padding, group_by_length, bf16), on the same
                          prepared sentences, for the same number of optimizer steps of the same batch size, at the
                          same learning rate and schedule; its test entity F1 scored the same way (first sub-words)
  conll_tunelab_seed1/2   the defaults at seeds 1 and 2 (the three-seed mean)
  conll_serve             int8 ONNX export of conll_tunelab's model (its entity-F1 gate), then `tunelab serve` of the
                          torch fp32 model and of the int8 export, driven in turn with 32 concurrent clients sending
                          one test sentence each (three rounds; medians)

    .venv/bin/python benchmarks/ner.py                                        # about 40 minutes on 2 cores
    .venv/bin/python benchmarks/ner.py --only conll_tunelab,conll_trainer_tuned
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from _common import REPO, WORK, need_data, read_results, run_cases, start_server, stop_server, write_results

ROUNDS, CLIENTS, REQUESTS, SECONDS = 3, 32, 1000, 60
SST2_20K_BEFORE = 0.875  # classification.py --only sst2_tunelab_20k at git f6837dd, on the benchmark machine


def _config(seed: int = 42):
    from tunelab.config import load_config

    name = "conll2003" if seed == 42 else f"conll2003-seed{seed}"
    return load_config(REPO / "examples" / "conll2003.yaml", [f"runs_dir={WORK / 'runs'}", f"name={name}",
                                                             f"train.seed={seed}"])


def case_tunelab(seed: int = 42) -> dict:
    from tunelab.evaluation import evaluate
    from tunelab.training import train

    config = _config(seed)
    t = time.perf_counter()
    result = train(config, overwrite=True, quiet=True)
    out = {"train_seconds": result.train_seconds, "wall_seconds": time.perf_counter() - t, "steps": result.steps,
           "samples_per_second": result.samples_per_second}
    for split in ("validation", "test"):
        metrics = evaluate(config.run_dir, split, write_report=split == "test", quiet=True).metrics
        out[f"{split}_f1"] = metrics["entity_f1"]
        out[f"{split}_per_type_f1"] = {k: v["f1"] for k, v in metrics["per_type"].items()}
    return out


def case_trainer_tuned() -> dict:
    """The same sentences, steps, batch, rate and schedule through transformers' Trainer."""
    import pyarrow.parquet as pq
    import torch
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainingArguments)
    from transformers.utils import logging

    from tunelab.data import load_prepared
    from tunelab.hub import default_model_dir
    from tunelab.tasks.ner.metrics import ner_metrics

    logging.set_verbosity_error()
    config = _config()
    prepared = load_prepared(config.run_dir / "data")  # conll_tunelab's: the same sentences
    steps = json.loads((config.run_dir / "result.json").read_text())["steps"]
    labels = prepared.labels
    index = {t: i for i, t in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(default_model_dir())

    def encode(split):
        cols = pq.read_table(prepared.files[split]).to_pydict()
        enc = tok(cols["tokens"], is_split_into_words=True, truncation=True, max_length=config.model.max_length)
        rows = []
        for i, tags in enumerate(cols["tags"]):
            words, previous, labels_i = enc.word_ids(i), None, []
            for w in words:
                labels_i.append(-100 if w is None or w == previous else index[tags[w]])
                previous = w
            rows.append({"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                         "token_type_ids": enc["token_type_ids"][i], "labels": labels_i})
        return rows, cols

    train_rows, _ = encode("train")
    test_rows, _ = encode("test")
    torch.manual_seed(42)
    model = AutoModelForTokenClassification.from_pretrained(default_model_dir(), num_labels=len(labels),
                                                            id2label=dict(enumerate(labels)), label2id=index)
    cfg = config.train
    args = TrainingArguments(output_dir=str(WORK / "trainer-ner"), per_device_train_batch_size=cfg.batch_size,
                             per_device_eval_batch_size=128, learning_rate=config.learning_rate, max_steps=steps,
                             weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_ratio, lr_scheduler_type="linear",
                             max_grad_norm=cfg.max_grad_norm, save_strategy="no", eval_strategy="no", report_to=[],
                             logging_steps=100, seed=42, disable_tqdm=True, use_cpu=True, bf16=True,
                             train_sampling_strategy="group_by_length", dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=train_rows, data_collator=DataCollatorForTokenClassification(tok))
    t = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t
    pred = trainer.predict(test_rows)  # rows come back in the order evaluated (length grouping reorders them)
    gold, guess = [], []
    for label_ids, logits in zip(pred.label_ids, pred.predictions):
        first = np.flatnonzero(np.asarray(label_ids) != -100)  # each word's first sub-word
        gold.append([labels[i] for i in np.asarray(label_ids)[first]])
        guess.append([labels[i] for i in np.asarray(logits)[first].argmax(-1)])
    return {"test_f1": ner_metrics(gold, guess)["entity_f1"], "train_seconds": seconds, "steps": steps,
            "samples_per_second": steps * cfg.batch_size / seconds,
            "trainer_samples_per_second": out.metrics["train_samples_per_second"]}


def case_serve() -> dict:
    from tunelab.evaluation import evaluate
    from tunelab.export import export_onnx
    from tunelab.serve.loadgen import bench

    config = _config()
    run_dir = config.run_dir
    parity = export_onnx(run_dir, quantize="int8", quiet=True).parity
    out = {"int8_validation_f1_drop_points": parity["metric_drop_points"], "int8_export_seconds": parity["seconds"],
           "int8_mb": round(parity["bytes"] / 1e6, 1), "int8_ffn_down_fp32": bool(parity["ffn_down_fp32"])}
    fp32_test = evaluate(run_dir, "test", write_report=False, quiet=True).metrics["entity_f1"]
    int8_test = _test_f1(run_dir / "export" / "onnx-int8", run_dir)
    out.update(fp32_test_f1=fp32_test, int8_test_f1=int8_test, int8_test_f1_drop_points=100 * (fp32_test - int8_test))
    import pyarrow.parquet as pq

    from tunelab.data import load_prepared

    texts = pq.read_table(load_prepared(run_dir / "data").files["test"]).column("text").to_pylist()
    tunelab = [sys.executable, "-m", "tunelab", "serve", "--no-monitor"]
    servers = {"torch_fp32": [*tunelab, f"ner={run_dir}"], "onnx_int8": [*tunelab, f"ner={run_dir / 'export' / 'onnx-int8'}"]}
    started = {}
    rounds: dict[str, list[dict]] = {name: [] for name in servers}
    try:
        for name, cmd in servers.items():
            started[name] = start_server(cmd, "/readyz")
        for _ in range(ROUNDS):
            for name, (_, url) in started.items():
                rounds[name].append(bench(url, texts, CLIENTS, REQUESTS, SECONDS))
    finally:
        for proc, _ in started.values():
            stop_server(proc)
    for name, runs in rounds.items():
        for k in ("throughput", "p50_ms", "p95_ms"):
            out[f"{name}_c{CLIENTS}_{k}"] = float(np.median([r[k] for r in runs]))
        out[f"{name}_c{CLIENTS}_errors"] = sum(r["errors"] for r in runs)
    ratios = [a["throughput"] / b["throughput"] for a, b in zip(rounds["onnx_int8"], rounds["torch_fp32"])]
    out["int8_c32_throughput_ratio_vs_torch"] = float(np.median(ratios))
    out["int8_c32_throughput_ratio_rounds"] = [round(r, 3) for r in ratios]
    return out


def _test_f1(folder, run_dir) -> float:
    from tunelab.evaluation.run import resolve_split, score_file
    from tunelab.models.predictor import Predictor

    return float(score_file(Predictor(folder, batch_size=128), resolve_split(run_dir, "test")[1])["entity_f1"])


CASES = {
    "conll_tunelab": case_tunelab,
    "conll_trainer_tuned": case_trainer_tuned,  # right after tunelab's run: the same machine state
    "conll_tunelab_seed1": lambda: case_tunelab(1),
    "conll_tunelab_seed2": lambda: case_tunelab(2),
    "conll_serve": case_serve,
}


def flatten(results: dict, stored: dict) -> dict:
    flat = {}
    for name, figures in results.items():
        for key, value in figures.items():
            flat[f"{name}_{key}"] = round(value, 4) if isinstance(value, float) else value
    get = lambda case, key: results.get(case, {}).get(key, stored.get(f"{case}_{key}"))  # noqa: E731
    ours, theirs = get("conll_tunelab", "samples_per_second"), get("conll_trainer_tuned", "samples_per_second")
    seeds = [get(c, "test_f1") for c in ("conll_tunelab", "conll_tunelab_seed1", "conll_tunelab_seed2")]
    summary = {
        "conll_test_f1": get("conll_tunelab", "test_f1"),
        "conll_validation_f1": get("conll_tunelab", "validation_f1"),
        "conll_test_f1_mean_3_seeds": statistics.mean(seeds) if all(s is not None for s in seeds) else None,
        "conll_throughput_ratio_vs_trainer_tuned": ours / theirs if ours and theirs else None,
        "conll_f1_delta_vs_trainer": (100 * (get("conll_tunelab", "test_f1") - get("conll_trainer_tuned", "test_f1"))
                                      if get("conll_trainer_tuned", "test_f1") is not None else None),
        "conll_int8_f1_drop_points": get("conll_serve", "int8_validation_f1_drop_points"),
        "conll_int8_c32_throughput_ratio_vs_torch": get("conll_serve", "int8_c32_throughput_ratio_vs_torch"),
    }
    classification = read_results("classification")
    if "sst2_tunelab_20k_validation_accuracy" in classification:
        # classification on the task interface must score as it did before: the same case on the code before tasks
        # became plug-ins (git f6837dd), on this machine, gave this
        summary["sst2_20k_accuracy_before_task_interface"] = SST2_20K_BEFORE
        summary["sst2_20k_accuracy_unchanged"] = classification["sst2_tunelab_20k_validation_accuracy"] == SST2_20K_BEFORE
    flat.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items() if v is not None})
    targets = {"conll_test_f1": (0.88, ">="), "conll_throughput_ratio_vs_trainer_tuned": (1.3, ">="),
               "conll_f1_delta_vs_trainer": (-0.2, ">="), "conll_int8_f1_drop_points": (0.5, "<="),
               "conll_int8_c32_throughput_ratio_vs_torch": (2.0, ">=")}
    for key, (target, way) in targets.items():
        if key in flat:
            flat[f"{key}_target_met"] = flat[key] >= target if way == ">=" else flat[key] <= target
    return flat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="comma-separated case names")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args()
    need_data("conll2003", "train.txt")
    only = [n for n in args.only.split(",") if n]
    results = run_cases(__file__, CASES, args.case, only, "ner")
    if results is not None:
        stored = read_results("ner") if only else {}
        write_results("ner", {**stored, **flatten(results, stored)})


if __name__ == "__main__":
    main()
