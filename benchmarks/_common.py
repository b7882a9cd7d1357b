"""Helpers shared by the benchmark scripts: where data is, machine description, results output."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("TUNELAB_DATA", REPO.parent / "shared" / "data"))
WORK = HERE / "work"  # scratch space (git-ignored)


def need_data(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        sys.exit(f"benchmark skipped: {path} is absent; set TUNELAB_DATA to the shared data folder")
    return path


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def run_measured(code: str) -> dict:
    """Run Python code in a fresh process; it prints one JSON line last. Adds that process's peak RSS (MB)."""
    wrapper = (code + "\nimport resource, json as _j\n"
               "print(_j.dumps({'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n")
    res = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    out = {}
    for line in lines:
        out.update(line)
    return out


def write_results(script: str, figures: dict) -> Path:
    WORK.mkdir(exist_ok=True)
    out = HERE / "results" / f"{script}.json"
    out.parent.mkdir(exist_ok=True)
    figures = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine(), **figures}
    out.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    return out
