"""One-client latency of the int8 server, and where it goes: the figure a user of the demo sees, and what moves it.

Servers, all started at once and driven in turn (ROUNDS interleaved rounds of REQUESTS single-sentence requests
at one client, SST-2 validation sentences, the order reversed every other round; medians of the rounds' p50):
  demo_int8            the demo run (examples/demo.yaml), `tunelab export --format onnx --quantize int8` as a user
                       gets it, `tunelab serve` with its defaults (monitor on)
  demo_int8_again      a second server of the same folder and settings (its own database): two instances of one
                       server differ by more than most of the changes measured here, so the user's figure,
                       c1_p50_ms_onnx_int8, is the median over the rounds of both
  demo_int8_nomonitor  the same with --no-monitor
  demo_int8_one_thread the same with `threads: 1`: a lone request on one thread (the server's default gives it
                       every core while that measures faster, timed on its lone calls: OnnxModel._timed)
  demo_int8_portable   the demo exported with --portable: standard ONNX ops, not fused into onnxruntime's kernels
  demo_int8_ffn_fp32   the demo exported with --ffn-down-fp32 (the slower, closer variant the export falls back to)
  sst2_int8            the full-SST-2 run of classification.py (benchmarks/work/runs/sst2), exported the same way
                       (left out when that run is not there)
And without any server, on the demo's int8 folder: the ONNX Runtime call alone (`model_only`) and the whole
predictor call (tokenise + ONNX + answer: `predictor`), one sentence at a time.

    .venv/bin/python benchmarks/serve_latency.py          # about 7 minutes
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from _common import REPO, WORK, need_data, start_server, stop_server, write_results

ROUNDS, REQUESTS = 5, 400


def _demo_run():
    from tunelab.config import load_config
    from tunelab.training import train

    config = load_config(REPO / "examples" / "demo.yaml", [f"runs_dir={WORK / 'runs'}"])
    if not (config.run_dir / "result.json").exists():
        train(config, overwrite=True, quiet=True)
    return config.run_dir


def _in_process(folder, texts) -> dict:
    """Median ms per sentence: the ONNX call alone, and the predictor's whole call."""
    from tunelab.models.predictor import Predictor

    predictor = Predictor(folder)
    enc = [predictor.task.encode_inputs(predictor.tokenizer, [t], None, predictor.max_length, predictor.card.clean)
           for t in texts[:300]]
    from tunelab.tasks.encoding import collate

    batches = [collate(e, np.array([0]), predictor.pad_id, predictor.with_types) for e in enc]
    for b in batches[:20]:
        predictor.onnx.outputs(b)
    model = []
    for b in batches:
        t = time.perf_counter()
        predictor.onnx.outputs(b)
        model.append((time.perf_counter() - t) * 1000)
    whole = []
    for text in texts[:300]:
        t = time.perf_counter()
        predictor.decide(predictor.infer([text]).probs)
        whole.append((time.perf_counter() - t) * 1000)
    return {"model_only_p50_ms": statistics.median(model), "predictor_p50_ms": statistics.median(whole)}


def main() -> None:
    from tunelab.export import export_onnx
    from tunelab.serve.loadgen import bench

    import csv

    validation = need_data("sst2", "validation.csv")
    demo = _demo_run()
    export_onnx(demo, quantize="int8", quiet=True)
    export_onnx(demo, demo / "export" / "onnx-int8-portable", quantize="int8", portable=True, quiet=True)
    export_onnx(demo, demo / "export" / "onnx-int8-ffn", quantize="int8", ffn_down_fp32=True, quiet=True)
    sst2 = WORK / "runs" / "sst2"
    if (sst2 / "model").exists():
        if not (sst2 / "export" / "onnx-int8" / "model.onnx").exists():
            export_onnx(sst2, quantize="int8", quiet=True)
    else:
        print(f"{sst2}: no SST-2 run (benchmarks/classification.py trains it); its server is left out", flush=True)
    with open(validation, newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    figures = {f"demo_int8_{k}": v for k, v in _in_process(demo / "export" / "onnx-int8", texts).items()}
    figures.update({f"demo_int8_portable_{k}": v for k, v in _in_process(demo / "export" / "onnx-int8-portable", texts).items()})
    serve = [sys.executable, "-m", "tunelab", "serve"]
    one_thread = WORK / "serve-one-thread.yaml"  # every call on one thread: how lone requests ran before
    one_thread.write_text("threads: 1\n")
    servers = {"demo_int8": [*serve, f"m={demo / 'export' / 'onnx-int8'}"],
               "demo_int8_again": [*serve, f"m={demo / 'export' / 'onnx-int8'}", "--monitor-db",
                                   f"sqlite:///{WORK / 'latency-again.db'}"],
               "demo_int8_nomonitor": [*serve, f"m={demo / 'export' / 'onnx-int8'}", "--no-monitor"],
               "demo_int8_one_thread": [*serve, f"m={demo / 'export' / 'onnx-int8'}", "--config", str(one_thread),
                                        "--monitor-db", f"sqlite:///{WORK / 'latency-one-thread.db'}"],
               "demo_int8_portable": [*serve, f"m={demo / 'export' / 'onnx-int8-portable'}", "--monitor-db",
                                      f"sqlite:///{WORK / 'latency-portable.db'}"],
               "demo_int8_ffn_fp32": [*serve, f"m={demo / 'export' / 'onnx-int8-ffn'}", "--monitor-db",
                                      f"sqlite:///{WORK / 'latency-ffn.db'}"],
               **({"sst2_int8": [*serve, f"m={sst2 / 'export' / 'onnx-int8'}"]} if (sst2 / "model").exists() else {})}
    started, rounds = {}, {name: [] for name in servers}
    try:
        for name, cmd in servers.items():
            started[name] = start_server(cmd, "/readyz")
        for i in range(ROUNDS):
            order = list(started.items())
            for name, (_, url) in order if i % 2 == 0 else order[::-1]:  # no server always first or last
                r = bench(url, texts, 1, REQUESTS, 120)
                rounds[name].append(r)
                print(f"round {i + 1} {name}: p50 {r['p50_ms']:.2f} p95 {r['p95_ms']:.2f} ms, {r['throughput']:.0f}/s",
                      flush=True)
    finally:
        for proc, _ in started.values():
            stop_server(proc)
    for name, runs in rounds.items():
        figures[f"{name}_c1_p50_ms"] = round(statistics.median(r["p50_ms"] for r in runs), 3)
        figures[f"{name}_c1_p95_ms"] = round(statistics.median(r["p95_ms"] for r in runs), 3)
        figures[f"{name}_c1_p50_ms_rounds"] = [round(r["p50_ms"], 3) for r in runs]
    # the figure a user of the demo sees: either server could be theirs
    figures["c1_p50_ms_onnx_int8"] = round(statistics.median(r["p50_ms"] for name in ("demo_int8", "demo_int8_again")
                                                             for r in rounds[name]), 3)
    figures["c1_p50_ms_onnx_int8_target_met"] = figures["c1_p50_ms_onnx_int8"] <= 5
    write_results("serve_latency", figures)


if __name__ == "__main__":
    main()
