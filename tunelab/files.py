"""Writing files so that a crash never leaves a half-written one in place."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temp file beside `path`, then rename over it (atomic on POSIX). The temp file's name is the
    writer's own: two processes writing the same file (search workers sharing a study) must not rename each
    other's."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_folder(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` in place of `out`: the old one is moved aside first and deleted last, so
    at every moment `out` is either the old whole folder or the new one."""
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
