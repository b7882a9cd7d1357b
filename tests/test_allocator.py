"""The tunelab command restarts itself on jemalloc where it is there (tunelab/allocator.py)."""

import os
import subprocess
import sys

import pytest

from tunelab import allocator
from tunelab.config import dump_config
from tunelab.errors import TunelabError


@pytest.fixture
def no_preload(monkeypatch, tmp_path):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("TUNELAB_ALLOCATOR", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setattr(allocator, "SYSTEM_FOLDERS", (str(tmp_path / "usr-lib"),))
    return tmp_path


def test_auto_preloads_the_environments_jemalloc_and_keeps_other_preloads(no_preload, monkeypatch):
    assert allocator.jemalloc_env() == {}  # nothing there: the system's malloc, no error
    library = no_preload / "venv" / "lib" / allocator.LIBRARY
    library.parent.mkdir(parents=True)
    library.write_bytes(b"")
    assert allocator.jemalloc_env() == {"LD_PRELOAD": str(library)}
    monkeypatch.setenv("LD_PRELOAD", "/opt/other.so")
    assert allocator.jemalloc_env() == {"LD_PRELOAD": f"{library} /opt/other.so"}
    monkeypatch.setenv("LD_PRELOAD", str(library))  # already on it: no second restart
    assert allocator.jemalloc_env() == {}
    monkeypatch.setenv("LD_PRELOAD", "")
    monkeypatch.setenv("TUNELAB_ALLOCATOR", "system")
    assert allocator.jemalloc_env() == {}


def test_asking_for_jemalloc_where_there_is_none_or_a_wrong_name_is_a_clear_error(no_preload, monkeypatch):
    monkeypatch.setenv("TUNELAB_ALLOCATOR", "jemalloc")
    with pytest.raises(TunelabError, match="no libjemalloc.so.2 in .*usr-lib.*libjemalloc2"):
        allocator.jemalloc_env()
    monkeypatch.setenv("TUNELAB_ALLOCATOR", "tcmalloc")
    with pytest.raises(TunelabError, match="use auto, jemalloc or system"):
        allocator.jemalloc_env()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
@pytest.mark.parametrize("choice", ["auto", "system"])
def test_the_train_command_runs_on_the_allocator_it_reports(tiny_config, tmp_path, choice):
    config = tiny_config(name=f"alloc-{choice}", max_steps=2)
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(config))
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ONEDNN_CACHE)}
    env |= {"TUNELAB_ALLOCATOR": choice} | ({allocator.ONEDNN_CACHE: "1024"} if choice == "system" else {})
    done = subprocess.run([sys.executable, "-m", "tunelab", "train", str(path)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = "jemalloc" if choice == "auto" and allocator.find_jemalloc() else "system"
    cache = "1024" if choice == "system" else allocator.ONEDNN_CACHE_DEFAULT  # the user's setting wins
    assert f"allocator {expected} (oneDNN kernel cache {cache})," in done.stderr
    bad = subprocess.run([sys.executable, "-m", "tunelab", "train", str(path)], capture_output=True, text=True,
                         env={**env, "TUNELAB_ALLOCATOR": "nope"}, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: TUNELAB_ALLOCATOR='nope': use auto, jemalloc or system"


ONEDNN_SHAPES = """
import sys, torch
from tunelab.allocator import bound_onednn_cache
bound_onednn_cache()
w = torch.randn(32, 32, dtype=torch.bfloat16)
for rows in [*range(16, 86), 16]:  # 70 shapes, then the first again
    torch.randn(rows, 32, dtype=torch.bfloat16) @ w
"""


@pytest.mark.parametrize("preset", [None, "1024"])
def test_onednn_keeps_kernels_for_64_shapes_unless_the_environment_says_otherwise(preset):
    env = {k: v for k, v in os.environ.items() if k != allocator.ONEDNN_CACHE} | {"ONEDNN_VERBOSE": "2"}
    if preset:
        env[allocator.ONEDNN_CACHE] = preset
    done = subprocess.run([sys.executable, "-c", ONEDNN_SHAPES], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lookups = [line for line in done.stdout.splitlines() if ",create:cache_" in line and ",matmul," in line]
    if not lookups:
        pytest.skip("this CPU's bf16 matmuls do not go through oneDNN")
    assert len(lookups) == 71 and all(",create:cache_miss," in line for line in lookups[:70])
    # the first shape again: evicted by the 64-kernel bound; still there with room for 1024
    assert (",create:cache_hit," in lookups[-1]) == (preset == "1024")


def test_a_kernel_cache_bound_that_is_not_a_number_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(allocator.ONEDNN_CACHE, "lots")
    with pytest.raises(TunelabError, match="ONEDNN_PRIMITIVE_CACHE_CAPACITY='lots': a whole number of kernels"):
        allocator.bound_onednn_cache()
    monkeypatch.setenv(allocator.ONEDNN_CACHE, "256")
    assert allocator.bound_onednn_cache() == "256"
    monkeypatch.delenv(allocator.ONEDNN_CACHE)
    assert allocator.bound_onednn_cache() == allocator.ONEDNN_CACHE_DEFAULT == os.environ[allocator.ONEDNN_CACHE]


def test_the_serve_command_bounds_the_kernel_cache_unless_told_otherwise(monkeypatch):
    from typer.testing import CliRunner

    from tunelab.cli import app

    monkeypatch.delenv(allocator.ONEDNN_CACHE, raising=False)
    done = CliRunner().invoke(app, ["serve"])  # nothing to serve: stops after the bound is set, before any model
    assert done.exit_code != 0 and os.environ[allocator.ONEDNN_CACHE] == allocator.ONEDNN_CACHE_DEFAULT
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} | {allocator.ONEDNN_CACHE: "lots"}
    bad = subprocess.run([sys.executable, "-m", "tunelab", "serve", "runs/x"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ONEDNN_PRIMITIVE_CACHE_CAPACITY='lots'"), bad.stderr[-500:]
