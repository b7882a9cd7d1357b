"""Memory of a long-running torch server over many batch shapes: oneDNN's kernel cache with and without a bound.

oneDNN (PyTorch's CPU kernel library) keeps a compiled kernel and its buffers for every matmul shape it meets, up
to ONEDNN_PRIMITIVE_CACHE_CAPACITY (1024) entries; a server's dynamic batches meet a new (texts x tokens) shape
at almost every call. Each server serves the SST-2 model of serve.py, alone, to one client sending 1000 requests
of 1-32 SST-2 validation sentences (seeded, the same for every server), one at a time; figures: the server's RSS
when ready and after 100, 300 and 1000 requests, its peak, and the seconds the 1000 requests took.

    .venv/bin/python benchmarks/serve_memory.py          # about 5 minutes
"""

from __future__ import annotations

import random
import sys
import time

from _common import need_data, split_texts, start_server, status_mb, stop_server, write_results
from serve import _model_run

REQUESTS = 1000
MARKS = (100, 300, 1000)
SERVERS = {  # name: (precision, oneDNN cache capacity; None: what tunelab serve sets)
    "bf16_cache1024": ("bf16", "1024"),
    "bf16": ("bf16", None),
    "fp32_cache1024": ("fp32", "1024"),
    "fp32": ("fp32", None),
}


def _drive(url: str, pid: int, texts: list[str]) -> dict:
    import httpx

    rng = random.Random(0)
    figures = {"rss_ready_mb": status_mb("VmRSS", pid)}
    started = time.perf_counter()
    with httpx.Client(timeout=60) as client:
        for i in range(1, REQUESTS + 1):
            batch = rng.sample(texts, rng.randint(1, 32))
            client.post(url + "/v1/predict", json={"texts": batch}).raise_for_status()
            if i in MARKS:
                figures[f"rss_after_{i}_mb"] = status_mb("VmRSS", pid)
    figures["seconds"] = time.perf_counter() - started
    figures["peak_rss_mb"] = status_mb("VmHWM", pid)
    return {k: round(v, 1) for k, v in figures.items()}


def main() -> None:
    need_data("sst2", "train.csv")
    run_dir = _model_run()
    texts, _ = split_texts(run_dir, "validation")
    figures: dict = {}
    for name, (precision, cache) in SERVERS.items():
        env = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": cache} if cache else None
        proc, url = start_server([sys.executable, "-m", "tunelab", "serve", f"sst2={run_dir}", "--precision", precision,
                                  "--no-monitor"], "/readyz", env)
        try:
            result = _drive(url, proc.pid, texts)
        finally:
            stop_server(proc)
        print(name, result, flush=True)
        figures.update({f"{name}_{k}": v for k, v in result.items()})
    for precision in ("bf16", "fp32"):
        grown = {name: figures[f"{name}_rss_after_{REQUESTS}_mb"] - figures[f"{name}_rss_ready_mb"]
                 for name in (precision, f"{precision}_cache1024")}
        figures[f"{precision}_growth_mb"] = round(grown[precision], 1)
        figures[f"{precision}_cache1024_growth_mb"] = round(grown[f"{precision}_cache1024"], 1)
    write_results("serve_memory", figures)


if __name__ == "__main__":
    main()
