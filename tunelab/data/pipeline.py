"""The data stage: the task's own loading, checking, cleaning and splitting (its `build_data`), then the prepared
splits, the report and the manifest written -- skipped when inputs and settings are unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.config import Config
from tunelab.data.load import Problem
from tunelab.data.report import removed_counts
from tunelab.files import write_text_atomic
from tunelab.runlock import run_lock

SPLITS = ("train", "validation", "test")
PRECEDENCE = ("test", "validation", "train")  # a text in two splits stays in the first of these
FORMAT_VERSION = 1  # bump when the prepared files change shape, so old ones are re-made
MAX_SHOWN = 20
ROW_GROUP = 8192  # Parquet row-group size: later stages stream a split one row group at a time


@dataclass
class Prepared:
    """What the data stage hands the next one: the split files, the label set and the report."""

    dir: Path
    files: dict[str, Path]
    labels: list[str]
    multi_label: bool
    report: dict
    up_to_date: bool = False  # True when an earlier identical run was reused
    task_options: dict = field(default_factory=dict)  # what the task found in the data (e.g. the tag scheme)


@dataclass
class Built:
    """What a task's data stage (its `build_data`) hands back to be written."""

    splits: dict[str, dict[str, list]]  # split -> its columns, in the order they are written
    labels: list[str]
    report: dict  # report.json; it must hold "warnings" and "rows_removed"
    markdown: str  # report.md
    multi_label: bool = False
    task_options: dict = field(default_factory=dict)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fingerprint(config: Config) -> str:
    """Hash of everything the prepared data depends on: data settings, tokenizer, input bytes."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": FORMAT_VERSION, "data": config.data.model_dump(mode="json"),
                         "model": [config.model.name, config.model.revision, config.model.max_length]},
                        sort_keys=True).encode())
    for split in SPLITS:
        path = getattr(config.data, split)
        if path is not None and Path(path).is_file():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def format_problems(problems: list[Problem], header: str, hint: str) -> str:
    by_reason: dict[str, int] = removed_counts(problems)
    lines = [f"{header}: {len(problems)} problem{'s' if len(problems) != 1 else ''} "
             f"({', '.join(f'{n} {r}' for r, n in by_reason.items())})"]
    lines += [f"  {p}" for p in problems[:MAX_SHOWN]]
    if len(problems) > MAX_SHOWN:
        lines.append(f"  ... and {len(problems) - MAX_SHOWN} more")
    lines.append(hint)
    return "\n".join(lines)


def write_split(columns: dict[str, list], path: Path, fmt: str) -> None:
    """Write one split's columns to a temp file, then rename: a crash never leaves a half-written split in place."""
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns), tmp, row_group_size=ROW_GROUP)
    else:
        names = list(columns)
        with open(tmp, "w", encoding="utf-8") as f:
            for values in zip(*columns.values()):
                f.write(json.dumps(dict(zip(names, values)), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def load_prepared(out: Path) -> Prepared | None:
    """The prepared data in `out`, if a complete run left it there (the manifest is written last)."""
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = {s: out / name for s, name in manifest["files"].items()}
    if any(not f.is_file() or f.stat().st_size != manifest["sizes"][s] for s, f in files.items()):
        return None
    return Prepared(out, files, manifest["labels"], manifest["multi_label"], report, up_to_date=True,
                    task_options=manifest.get("task_options", {}))


def prepare(config: Config, force: bool = False, tokenizer=None, quiet: bool = False) -> Prepared:
    """Run the data stage for `config`; reuse the earlier result when inputs and settings are unchanged."""
    with run_lock(config.run_dir, "prepare"):  # a training of the run reads data/ (it holds the lock itself)
        return _prepare(config, force, tokenizer, quiet)


def _prepare(config: Config, force: bool, tokenizer, quiet: bool) -> Prepared:
    say = (lambda m: None) if quiet else _say
    cfg = config.data
    out = config.run_dir / "data"
    key = fingerprint(config)
    if not force:
        previous = load_prepared(out)
        manifest = out / "manifest.json"
        if previous and json.loads(manifest.read_text())["fingerprint"] == key:
            say(f"data: {out} is up to date (inputs and settings unchanged)")
            return previous

    if tokenizer is None:  # before reading the data: a model that cannot load fails in seconds
        from tunelab.hub import load_tokenizer

        tokenizer = load_tokenizer(config.model.name, config.model.revision, config.model.trust_remote_code)
    from tunelab.tasks import task_class

    built = task_class(config.task.name).build_data(config, tokenizer, say, quiet)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # from here on the old data is not "prepared" any more
    ext = "parquet" if cfg.output_format == "parquet" else "jsonl"
    files = {s: out / f"{s}.{ext}" for s in built.splits}
    for split, columns in built.splits.items():
        write_split(columns, files[split], cfg.output_format)
    write_text_atomic(out / "report.json", json.dumps(built.report, indent=1, ensure_ascii=False))
    write_text_atomic(out / "report.md", built.markdown)
    manifest = {"fingerprint": key, "files": {s: f.name for s, f in files.items()},
                "sizes": {s: f.stat().st_size for s, f in files.items()}, "labels": built.labels,
                "multi_label": built.multi_label, "task_options": built.task_options}
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False))
    for warning in built.report["warnings"]:
        say(f"data: warning: {warning}")
    say(f"data: wrote {', '.join(f'{s} {len(next(iter(c.values())))}' for s, c in built.splits.items())} rows to {out} "
        f"({built.report['rows_removed']} removed; see {out / 'report.md'})")
    return Prepared(out, files, built.labels, built.multi_label, built.report, task_options=built.task_options)


__all__ = ["Built", "Prepared", "prepare", "load_prepared", "fingerprint", "format_problems", "write_split"]
