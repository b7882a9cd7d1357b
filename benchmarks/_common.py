"""Helpers shared by the benchmark scripts: where data is, machine description, results output."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import tempfile
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("TUNELAB_DATA", REPO.parent / "shared" / "data")).resolve()
# the example configs read ${TUNELAB_DATA:-../shared/data}: without this, relative to whatever folder we run in
os.environ["TUNELAB_DATA"] = str(DATA)
WORK = HERE / "work"  # scratch space (git-ignored)
SUBSET = int(os.environ.get("BENCH_SUBSET", 20_000))  # the fixed SST-2 training subset; smaller only to smoke-test


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


def status_mb(field: str, pid: int | str = "self") -> float:
    """VmRSS (now) or VmHWM (the peak since the process started or since the last reset) in MB, of this
    process or of `pid`."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status: this benchmark needs Linux")


def read_results(script: str) -> dict:
    """The stored figures of results/<script>.json (without its date and machine); {} if there are none yet.
    A run of some cases (--only) keeps the others' figures from here."""
    path = HERE / "results" / f"{script}.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    return {k: v for k, v in stored.items() if k not in ("date", "machine")}


def write_results(script: str, figures: dict) -> Path:
    WORK.mkdir(exist_ok=True)
    out = HERE / "results" / f"{script}.json"
    out.parent.mkdir(exist_ok=True)
    figures = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine(), **figures}
    out.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    return out


def sst2_subset() -> tuple:
    """The fixed SUBSET-example sample of SST-2 train (seeded, after tunelab's cleaning) and the validation set."""
    import numpy as np
    import pyarrow.parquet as pq

    from tunelab.config import load_config
    from tunelab.data import prepare

    config = load_config(REPO / "examples" / "sst2.yaml", [f"runs_dir={WORK / 'runs'}", "name=sst2-bench-data"])
    prepared = prepare(config, quiet=True)
    train = pq.read_table(prepared.files["train"]).to_pydict()
    pick = np.random.default_rng(42).permutation(len(train["text"]))[:SUBSET]
    texts = [train["text"][i] for i in pick]
    labels = [train["label"][i] for i in pick]
    val = pq.read_table(prepared.files["validation"]).to_pydict()
    return texts, labels, val["text"], val["label"]


def sst2_subset_csv(size: int | None = None) -> Path:
    """The subset as a CSV tunelab can train on (the first `size` rows of it when given)."""
    import csv

    texts, labels, _, _ = sst2_subset()
    size = size or len(texts)
    path = WORK / f"sst2_{size}.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["text", "label"])
        w.writerows(zip(texts[:size], labels[:size]))
    return path


def run_cases(script: str, cases: dict, case: str | None, only: list[str], results_name: str,
              tag: str = "", system_malloc: tuple[str, ...] = (), case_env: dict | None = None) -> dict | None:
    """Run each case of a benchmark script in its own process (so its peak RSS is its own).

    With `case` set we are that child process: run it, print its figures, return None. Otherwise run the
    cases (all, or `only`, merged into the stored results) and return {case: figures}; a `tag` stores
    them as case_tag (a variant being tried beside the defaults' figures). Cases run on the allocator the
    `tunelab` command picks (jemalloc where it is there: tunelab/allocator.py), those in `system_malloc`
    (other tools' baselines) on the system's malloc; each case's figures say which (`allocator`).
    `case_env` ({case: {VAR: value}}) sets environment variables of some cases' processes.
    """
    from tunelab.allocator import in_use, jemalloc_env

    import resource
    import time

    if case:
        result = cases[case]()
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["allocator"] = in_use()
        print("RESULT " + json.dumps(result), flush=True)
        return None
    WORK.mkdir(exist_ok=True)
    results_path = WORK / f"{results_name}_cases.json"
    results = json.loads(results_path.read_text()) if results_path.exists() and only else {}
    for name in only or list(cases):
        key = f"{name}_{tag}" if tag else name
        print(f"== {key}", flush=True)
        t = time.perf_counter()
        env = {k: v for k, v in os.environ.items() if not (k == "LD_PRELOAD" and "jemalloc" in v)}
        env.update(TUNELAB_DATA=str(DATA), **({} if name in system_malloc else jemalloc_env(env)), **(case_env or {}).get(name, {}))
        proc = subprocess.run([sys.executable, script, "--case", name], capture_output=True, text=True, env=env)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(proc.stderr[-3000:], file=sys.stderr)
            results[key] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
        else:
            results[key] = json.loads(line[len("RESULT "):])
        results[key]["case_wall_seconds"] = time.perf_counter() - t
        print(json.dumps(results[key]), flush=True)
        results_path.write_text(json.dumps(results, indent=1))
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], ready_path: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """Start a server command on a free loopback port (--port is appended); wait until ready_path answers 200."""
    import httpx

    port = free_port()
    log = tempfile.TemporaryFile("w+")  # not a pipe: a server logging every request would fill it and stall
    proc = subprocess.Popen([*cmd, "--port", str(port)], cwd=HERE, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(log.read()[-3000:])
        try:
            if httpx.get(url + ready_path, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{cmd} did not become ready")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def split_texts(run_dir: Path, split: str) -> tuple[list[str], list[str]]:
    """Texts and labels of a run's prepared split."""
    import pyarrow.parquet as pq

    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    table = pq.read_table(run_dir / "data" / manifest["files"][split], columns=["text", "label"]).to_pydict()
    return table["text"], table["label"]
