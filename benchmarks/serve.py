"""Serving throughput and latency: a plain FastAPI + transformers.pipeline server vs `tunelab serve`.

One fine-tuned MiniLM (the SST-2 run of classification.py, benchmarks/work/runs/sst2; trained here on the
20k subset if absent), served in turn by
  baseline     FastAPI calling a transformers pipeline per request, no batching (benchmarks/serve_baseline.py)
  torch_fp32   tunelab serve RUN
  torch_bf16   tunelab serve RUN --precision bf16
  onnx_int8    tunelab serve RUN/export/onnx-int8   (tunelab export RUN --format onnx --quantize int8)
all started at once and driven in turn, three rounds at each concurrency (figures: medians of the rounds),
by tunelab's load generator with 1, 8 and 32 concurrent clients sending single SST-2 validation sentences
over loopback (client and server share the 2 cores, the same for every server).
Also: int8 vs fp32 accuracy on SST-2 validation and test.

    .venv/bin/python benchmarks/serve.py          # about 10 minutes
"""

from __future__ import annotations

import json
import sys

import numpy as np
from pathlib import Path

from _common import REPO, WORK, need_data, split_texts, start_server, stop_server, write_results

LEVELS = {1: 200, 8: 500, 32: 1000}  # concurrency: requests, per server and round
ROUNDS = 3
SECONDS = 60


def _model_run() -> Path:
    for run in (WORK / "runs" / "sst2", WORK / "runs" / "sst2-serve"):  # classification.py's, or our own
        if (run / "model" / "tunelab.json").exists():
            return run
    from _common import sst2_subset_csv

    from tunelab.config import load_config
    from tunelab.training import train

    config = load_config(REPO / "examples" / "sst2.yaml", [f"runs_dir={WORK / 'runs'}", "name=sst2-serve",
                                                           f"data.train={sst2_subset_csv()}", "train.epochs=1", "train.min_steps=0"])
    return train(config, quiet=True).run_dir


def _accuracy(folder: Path, run_dir: Path) -> dict:
    from tunelab.models.predictor import Predictor

    predictor = Predictor(folder, batch_size=128)
    out = {}
    for split in ("validation", "test"):
        texts, labels = split_texts(run_dir, split)
        probs = predictor.probabilities(texts)
        out[split] = float(sum(predictor.labels[i] == y for i, y in zip(probs.argmax(1), labels)) / len(labels))
    return out


def main() -> None:
    from tunelab.export import export_onnx
    from tunelab.serve.loadgen import bench

    need_data("sst2", "train.csv")
    run_dir = _model_run()
    print(f"model: {run_dir}", flush=True)
    figures: dict = {"model_run": str(run_dir.relative_to(REPO))}
    for quantize in (None, "int8"):
        # the export as a user gets it: under its 99% label-agreement floor, every weight matmul in int8 is tried
        # first, then the GELU-fed ones in fp32 (all-int8 cost the full-SST-2 model 0.8 validation points)
        parity = export_onnx(run_dir, quantize=quantize, quiet=True).parity
        key = "onnx_int8" if quantize else "onnx_fp32"
        figures[f"{key}_export_seconds"] = parity["seconds"]
        figures[f"{key}_mb"] = round(parity["bytes"] / 1e6, 1)
        figures[f"{key}_validation_label_agreement"] = parity["label_agreement"]
        if quantize:
            figures["onnx_int8_ffn_down_fp32"] = bool(parity["ffn_down_fp32"])
    fp32 = _accuracy(run_dir / "export" / "onnx", run_dir)
    int8 = _accuracy(run_dir / "export" / "onnx-int8", run_dir)
    for split in ("validation", "test"):
        figures[f"fp32_sst2_{split}_accuracy"] = round(fp32[split], 4)
        figures[f"int8_sst2_{split}_accuracy"] = round(int8[split], 4)
        figures[f"int8_sst2_{split}_accuracy_drop_points"] = round(100 * (fp32[split] - int8[split]), 2)
    print(json.dumps(figures, indent=1), flush=True)

    texts, _ = split_texts(run_dir, "validation")
    tunelab = [sys.executable, "-m", "tunelab", "serve"]
    servers = {
        "baseline": ([sys.executable, "-m", "uvicorn", "serve_baseline:app", "--log-level", "warning"], "/healthz",
                     {"MODEL_DIR": str(run_dir / "model")}),
        "torch_fp32": ([*tunelab, f"sst2={run_dir}"], "/readyz", None),
        "torch_bf16": ([*tunelab, f"sst2={run_dir}", "--precision", "bf16"], "/readyz", None),
        "onnx_int8": ([*tunelab, f"sst2={run_dir / 'export' / 'onnx-int8'}"], "/readyz", None),
    }
    # all servers up at once, driven in turn, ROUNDS times at each concurrency: the machine's speed drifts
    # over minutes (shared, noisy), so each figure is the median of rounds measured side by side
    started = {}
    try:
        for name, (cmd, ready, env) in servers.items():
            started[name] = start_server(cmd, ready, env)
        for c, n in LEVELS.items():
            rounds: dict[str, list[dict]] = {name: [] for name in servers}
            for i in range(ROUNDS):
                for name, (proc, url) in started.items():
                    r = bench(url, texts, c, n, SECONDS)
                    rounds[name].append(r)
                    print(f"round {i + 1} {name} c{c}: {r['throughput']:.1f}/s p50 {r['p50_ms']:.1f} p95 {r['p95_ms']:.1f} "
                          f"p99 {r['p99_ms']:.1f} ms, {r['errors']} errors", flush=True)
            for name, runs in rounds.items():
                for k in ("throughput", "p50_ms", "p95_ms", "p99_ms"):
                    figures[f"{name}_c{c}_{k}"] = round(float(np.median([r[k] for r in runs])), 2)
                figures[f"{name}_c{c}_errors"] = sum(r["errors"] for r in runs)
                figures[f"{name}_c{c}_requests"] = sum(r["requests"] for r in runs)
            ratios = [a["throughput"] / b["throughput"] for a, b in zip(rounds["onnx_int8"], rounds["baseline"])]
            figures[f"c{c}_throughput_ratio_onnx_int8_vs_baseline_lowest_round"] = round(min(ratios), 2)
            figures[f"c{c}_throughput_ratio_onnx_int8_vs_baseline_highest_round"] = round(max(ratios), 2)
    finally:
        for proc, _ in started.values():
            stop_server(proc)
    figures["c32_throughput_ratio_onnx_int8_vs_baseline"] = round(
        figures["onnx_int8_c32_throughput"] / figures["baseline_c32_throughput"], 2)
    figures["c32_throughput_ratio_torch_fp32_vs_baseline"] = round(
        figures["torch_fp32_c32_throughput"] / figures["baseline_c32_throughput"], 2)
    figures["c1_p50_ms_onnx_int8"] = figures["onnx_int8_c1_p50_ms"]
    figures["c32_throughput_ratio_onnx_int8_vs_baseline_target_met"] = figures["c32_throughput_ratio_onnx_int8_vs_baseline"] >= 3
    figures["c32_p95_onnx_int8_below_baseline_target_met"] = figures["onnx_int8_c32_p95_ms"] < figures["baseline_c32_p95_ms"]
    figures["c1_p50_ms_onnx_int8_target_met"] = figures["c1_p50_ms_onnx_int8"] <= 5
    figures["int8_sst2_accuracy_drop_target_met"] = max(figures["int8_sst2_validation_accuracy_drop_points"],
                                                        figures["int8_sst2_test_accuracy_drop_points"]) <= 0.5
    write_results("serve", figures)


if __name__ == "__main__":
    main()
