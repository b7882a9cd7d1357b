"""The `tunelab` command runs on jemalloc where the machine has it.

glibc's malloc keeps the freed blocks of every batch shape a training run has seen; jemalloc reuses blocks
across sizes. Measured on the SST-2 side-by-side (BENCHMARKS.md, classification): peak RSS of the same
training 2071 -> 1626 MB for tunelab and ~2000 -> ~1625 MB for the transformers Trainer, at the same speed
(within the machine's noise). The command re-executes itself once with jemalloc preloaded, as PyTorch's
own CPU launcher does (`python -m torch.backends.xeon.run_cpu --enable-jemalloc`); `make install` puts
Debian's libjemalloc2 into the virtual environment. Python API users preload it themselves:
`LD_PRELOAD=.venv/lib/libjemalloc.so.2 python script.py`.

TUNELAB_ALLOCATOR: 'auto' (default: jemalloc when found, else the system's malloc), 'jemalloc' (an error
when not found), 'system' (never preload).

Its other process-wide memory setting: oneDNN, PyTorch's CPU kernel library (bf16 matmuls), keeps a compiled
kernel for each input shape it meets, up to 1024; with dynamic padding every batch length brings a new set,
and on SST-2 they held ~240 MB of a MiniLM training run. Training bounds the cache to 64 kernels unless
ONEDNN_PRIMITIVE_CACHE_CAPACITY is set: full fine-tuning's training memory 1041 -> 794 MB, LoRA's 796 -> 591 MB,
for about 8% and 13% of the speed (kernels compiled again; BENCHMARKS.md, methods). `tunelab serve`
bounds it too: a bf16 server over 1000 varied requests grew 501 -> 1242 MB under oneDNN's 1024, 501 -> 869 MB
under the bound, ~8% slower (BENCHMARKS.md, serving). Prediction and evaluation, which end, keep
oneDNN's default.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from tunelab.errors import TunelabError

LIBRARY = "libjemalloc.so.2"
ONEDNN_CACHE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
ONEDNN_CACHE_DEFAULT = "64"
SYSTEM_FOLDERS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def find_jemalloc() -> Path | None:
    """The jemalloc library: the virtual environment's (`make install`), else the system's."""
    for folder in (Path(sys.prefix) / "lib", *map(Path, SYSTEM_FOLDERS)):
        if (folder / LIBRARY).is_file():
            return folder / LIBRARY
    return None


def in_use() -> str:
    """'jemalloc' when this process has it loaded, else 'system'."""
    maps = Path("/proc/self/maps")
    loaded = "libjemalloc" in maps.read_text() if maps.exists() else "jemalloc" in os.environ.get("LD_PRELOAD", "")
    return "jemalloc" if loaded else "system"


def jemalloc_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The changes to `environ` that start a process on jemalloc ({} when it is not wanted or not there)."""
    choice = environ.get("TUNELAB_ALLOCATOR", "auto")
    if choice not in ("auto", "jemalloc", "system"):
        raise TunelabError(f"TUNELAB_ALLOCATOR={choice!r}: use auto, jemalloc or system")
    if choice == "system" or "jemalloc" in environ.get("LD_PRELOAD", "") or not sys.platform.startswith("linux"):
        return {}
    library = find_jemalloc()
    if library is None:
        if choice == "jemalloc":
            raise TunelabError(f"TUNELAB_ALLOCATOR=jemalloc but no {LIBRARY} in {Path(sys.prefix) / 'lib'} or "
                               f"{', '.join(SYSTEM_FOLDERS)}; install jemalloc (Debian: libjemalloc2) or unset it")
        return {}
    return {"LD_PRELOAD": " ".join(filter(None, [str(library), environ.get("LD_PRELOAD", "")]))}


def restart_on_jemalloc(args: list[str]) -> None:
    """Replace this process by `python -m tunelab ARGS` on jemalloc, when it is wanted and there; else return."""
    changes = jemalloc_env()
    if changes:
        os.execve(sys.executable, [sys.executable, "-m", "tunelab", *args], {**os.environ, **changes})


def bound_onednn_cache() -> str:
    """Set oneDNN's kernel cache to tunelab's bound unless the environment sets one; return the bound in force.

    oneDNN reads the variable when it compiles its first kernel, so this works when called before any bf16
    matmul of the process: `train()` calls it first thing (the train and tune commands, and Python users), the
    serve command before it loads a model."""
    value = os.environ.setdefault(ONEDNN_CACHE, ONEDNN_CACHE_DEFAULT)
    if not value.strip().isdigit():
        raise TunelabError(f"{ONEDNN_CACHE}={value!r}: a whole number of kernels (tunelab's default {ONEDNN_CACHE_DEFAULT}, "
                           "oneDNN's 1024, 0 for none), or unset it")
    return value.strip()
