"""Data-stage speed and memory: SST-2 train (67k rows) and a synthetic 1M-row CSV.

Each case runs `tunelab.prepare` in a fresh process (token-length statistics included) and records wall
time and that process's peak RSS. Target: 1M rows in under 60 s and under 2 GiB peak RSS.

    .venv/bin/python benchmarks/prepare.py
"""

from __future__ import annotations

import csv
import random
import time

from _common import WORK, need_data, run_measured, write_results

CASE = """
import json, time
from tunelab.config import load_config
from tunelab.data import prepare
config = load_config({config!r})
t = time.perf_counter()
p = prepare(config, force=True, quiet=True)
print(json.dumps({{"seconds": time.perf_counter() - t, "rows_written": p.report["rows_written"]}}))
"""

WORDS = ("the a service was great terrible slow fast price quality support app phone delivery late broken "
         "love hate okay excellent poor refund order screen battery staff room food would not recommend again").split()


def synthetic_csv(path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    labels = ["negative", "neutral", "positive"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["text", "label"])
        for i in range(rows):
            n = rng.randint(4, 30)
            w.writerow([f"{i} " + " ".join(rng.choice(WORDS) for _ in range(n)), labels[i % 3]])


def main() -> None:
    sst2 = need_data("sst2", "train.csv")
    WORK.mkdir(exist_ok=True)
    big = WORK / "synthetic_1m.csv"
    if not big.exists():
        t = time.perf_counter()
        synthetic_csv(big, 1_000_000)
        print(f"wrote {big} in {time.perf_counter() - t:.1f}s")
    figures = {}
    for key, train in (("sst2_train", sst2), ("rows_1m", big)):
        config = {"name": key, "runs_dir": str(WORK / "runs"), "data": {"train": str(train)}}
        result = run_measured(CASE.format(config=config))
        print(key, result)
        figures[f"{key}_seconds"] = round(result["seconds"], 2)
        figures[f"{key}_peak_rss_mb"] = round(result["peak_rss_mb"], 1)
        figures[f"{key}_rows_written"] = result["rows_written"]
    figures["rows_1m_target_met"] = figures["rows_1m_seconds"] < 60 and figures["rows_1m_peak_rss_mb"] < 2048
    write_results("prepare", figures)


if __name__ == "__main__":
    main()
