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
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} | {"TUNELAB_ALLOCATOR": choice}
    done = subprocess.run([sys.executable, "-m", "tunelab", "train", str(path)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = "jemalloc" if choice == "auto" and allocator.find_jemalloc() else "system"
    assert f"allocator {expected}," in done.stderr
    bad = subprocess.run([sys.executable, "-m", "tunelab", "train", str(path)], capture_output=True, text=True,
                         env={**env, "TUNELAB_ALLOCATOR": "nope"}, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: TUNELAB_ALLOCATOR='nope': use auto, jemalloc or system"
