"""What serve.monitor.durability: sync costs against async (the default): throughput and latency of
`tunelab serve` with monitoring on, at 1 and 16 concurrent clients.

One MiniLM fine-tuned for a few steps on the demo reviews (accuracy does not matter here; trained into
benchmarks/work/runs/durability-demo if absent), served twice at once, each with its own SQLite log:
  async   answer first, the log written every flush_interval_s (1 s) off the request path
  sync    answer once the request's predictions are committed (group commit: concurrent requests share one)
driven in turn, ROUNDS rounds at each concurrency (figures: medians of the rounds), by tunelab's load generator
sending single demo validation reviews over loopback (client and servers share the 2 cores).
Also: rows per commit of the sync server (how many requests shared a transaction).

    .venv/bin/python benchmarks/serve_durability.py          # about 2 minutes
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import httpx
import numpy as np

from _common import REPO, WORK, start_server, stop_server, write_results

LEVELS = {1: 150, 16: 400}  # concurrency: requests, per server and round
ROUNDS = 3
SECONDS = 30


def _model_run() -> Path:
    run = WORK / "runs" / "durability-demo"
    if (run / "model" / "tunelab.json").exists():
        return run
    from tunelab.config import load_config
    from tunelab.training import train

    demo = REPO / "data" / "demo"
    config = load_config(REPO / "examples" / "demo.yaml", [
        f"runs_dir={WORK / 'runs'}", "name=durability-demo", f"data.train={demo / 'train.csv'}",
        f"data.validation={demo / 'dev.csv'}", f"data.test={demo / 'test.csv'}", "train.max_steps=10", "train.trackers=[]"])
    return train(config, quiet=True).run_dir


def _log(url: str) -> dict:
    """The server's prediction log counters: rows written, transactions."""
    return httpx.get(url + "/v1/monitor", timeout=30).json()["log"]


def main() -> None:
    from tunelab.serve.loadgen import bench

    run_dir = _model_run()
    with open(REPO / "data" / "demo" / "dev.csv", newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    servers = {}
    for mode in ("async", "sync"):
        db = WORK / f"durability-{mode}.db"
        for leftover in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            leftover.unlink(missing_ok=True)
        config = WORK / f"durability-{mode}.yaml"
        config.write_text(f"serve:\n  monitor:\n    database: sqlite:///{db}\n    durability: {mode}\n")
        servers[mode] = [sys.executable, "-m", "tunelab", "serve", f"demo={run_dir}", "--config", str(config)]
    figures: dict = {"model_run": str(run_dir.relative_to(REPO)), "rounds": ROUNDS}
    started = {}
    try:
        for mode, cmd in servers.items():
            started[mode] = start_server(cmd, "/readyz")
        for c, n in LEVELS.items():
            before = _log(started["sync"][1])
            rounds: dict[str, list[dict]] = {mode: [] for mode in servers}
            for i in range(ROUNDS):
                for mode, (proc, url) in started.items():
                    r = bench(url, texts, c, n, SECONDS)
                    rounds[mode].append(r)
                    print(f"round {i + 1} {mode} c{c}: {r['throughput']:.1f}/s p50 {r['p50_ms']:.1f} p95 {r['p95_ms']:.1f} ms, "
                          f"{r['errors']} errors", flush=True)
            for mode, runs in rounds.items():
                for k in ("throughput", "p50_ms", "p95_ms"):
                    figures[f"{mode}_c{c}_{k}"] = round(float(np.median([r[k] for r in runs])), 2)
                figures[f"{mode}_c{c}_errors"] = sum(r["errors"] for r in runs)
            ratios = [s["throughput"] / a["throughput"] for s, a in zip(rounds["sync"], rounds["async"])]
            figures[f"sync_vs_async_c{c}_throughput_ratio"] = round(float(np.median(ratios)), 3)
            figures[f"sync_minus_async_c{c}_p50_ms"] = round(figures[f"sync_c{c}_p50_ms"] - figures[f"async_c{c}_p50_ms"], 2)
            after = _log(started["sync"][1])
            figures[f"sync_c{c}_rows_per_commit"] = round((after["written"] - before["written"])
                                                          / max(after["commits"] - before["commits"], 1), 2)
    finally:
        for proc, _ in started.values():
            stop_server(proc)
    write_results("serve_durability", figures)


if __name__ == "__main__":
    main()
