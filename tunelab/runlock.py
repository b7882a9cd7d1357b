"""One writer per run folder: `train`, `prepare` and `export` hold runs/<name>/.lock while they work.

The lock is an flock on the file: the OS drops it when its process ends, however it ends (kill -9 included), so a
lock file left behind never blocks anyone. The file holds the owner (stage, pid, host, start time) only so that the
refusal can name it. It stays in place when released: deleting it would let a process that opened the old file
and one that creates a new one both hold "the" lock. POSIX only (fcntl).

Re-entrant within a process (`train` calls `prepare`, which takes the lock again). Under `accelerate launch` only
the main process (RANK 0) takes it: the processes of one launch work on one run together.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from tunelab.errors import TunelabError

LOCK_FILE = ".lock"
_held: dict[Path, int] = {}  # run folder -> how many nested run_lock()s of this process hold it


class RunInUse(TunelabError):
    """Another process holds the run folder. `holder`: what its lock file says (may be empty)."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


@contextmanager
def run_lock(run_dir: Path, stage: str):
    """Hold `run_dir` for `stage` ("train", "prepare", "export"); raise RunInUse when another process holds it."""
    key = Path(run_dir).resolve()
    if int(os.environ.get("RANK", "0")) != 0:  # a launch's other processes: its main process holds the lock
        yield
        return
    if key in _held:  # held by this process already (train -> prepare)
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = _open(key)
    if fd is None:  # a folder nobody here can write to: nothing of ours can change it
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            raise RunInUse(f"{run_dir} is in use by {_describe(holder)}; wait for it or stop it", holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"stage": stage, "pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.time()}).encode())
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
            os.ftruncate(fd, 0)  # released: nothing in the file names a holder any more
    finally:
        os.close(fd)  # closing the descriptor drops the flock


def _open(run_dir: Path) -> int | None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        return os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError:
        return None


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:  # the holder is writing it right now
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another tunelab process"
    started = time.localtime(holder["started"])
    when = time.strftime("%H:%M:%S" if started[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M:%S", started)
    host = "" if holder["host"] == socket.gethostname() else f" on {holder['host']}"
    return f"tunelab {holder['stage']} (pid {holder['pid']}{host}, started {when})"
