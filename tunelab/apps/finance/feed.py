"""`tunelab app finance ingest CONFIG FILE [--follow]`: a JSONL or CSV file of items into the app's store.

Lines are read in batches, scored by the built models and committed batch by batch, so an interrupted ingest
keeps every batch it reported and a second run of the same file stores nothing twice (duplicates are counted,
not stored). A bad line is reported with its number and skipped. --follow (JSONL) keeps reading the file as it
grows, a line at a time once it is complete, until Ctrl-C. SIGTERM stops an ingest as Ctrl-C does, and Ctrl-C
works where the process inherited SIGINT ignored (a job started with `&` from a script); a batch being stored when
the signal comes is stored whole.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError


@dataclass
class IngestSummary:
    stored: int = 0
    duplicate: int = 0
    rejected: int = 0
    alerts: int = 0


def _jsonl_lines(path: Path, follow: bool, poll_s: float = 0.5):
    """(line number, raw item or reason) of each complete line; with follow, forever (new lines as they come)."""
    with open(path, "rb") as f:
        number, partial = 0, b""
        while True:
            chunk = f.readline()
            if chunk.endswith(b"\n") or (chunk and not follow):
                number += 1
                line = partial + chunk
                partial = b""
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    yield number, f"not UTF-8 (byte {exc.start})"
                except json.JSONDecodeError as exc:
                    yield number, f"not JSON ({exc.msg} at column {exc.colno})"
            elif chunk:  # a line still being written
                partial += chunk
            elif follow:
                yield None, None  # idle: the caller flushes what it holds
                time.sleep(poll_s)
            else:
                return


def _csv_columns(path: Path) -> list[str]:
    """The header, checked before any model loads."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            columns = next(csv.reader(f), [])
    except UnicodeDecodeError as exc:
        raise TunelabError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if "text" not in columns:
        raise TunelabError(f"{path}: a CSV of items needs a 'text' column (and optionally timestamp, source, url); "
                           f"found: {', '.join(columns) or 'none'}")
    return columns


def _csv_lines(path: Path):
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for row in reader:
                item = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
                if "timestamp" in item and _number(item["timestamp"]):
                    item["timestamp"] = float(item["timestamp"])
                yield reader.line_num, item
    except UnicodeDecodeError as exc:
        raise TunelabError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _number(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


def ingest_file(config, path: str | Path, follow: bool = False, batch_size: int = 256, quiet: bool = False,
                say=print, warn=lambda m: print(m, file=sys.stderr)) -> IngestSummary:
    from tqdm.auto import tqdm

    from tunelab.apps.finance.ingest import Finance, load_scorers, parse_item, score_texts
    from tunelab.apps.finance.store import alerts as alert_table
    from tunelab.signals import step_in_progress, stop_on_signals

    path = Path(path)
    if not path.is_file():
        raise TunelabError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise TunelabError(f"{path}: items come as .jsonl (one JSON object per line) or .csv (a text column)")
    if follow and suffix != ".jsonl":
        raise TunelabError("--follow reads JSONL files (a CSV row may span lines)")
    if suffix == ".csv":
        _csv_columns(path)
    models = load_scorers(config)
    finance = Finance(config)
    alerts_before = finance.store.count(alert_table)
    summary = IngestSummary()
    batch: list = []

    def flush():
        if not batch:
            return
        with step_in_progress():  # a stop signal waits for the batch to be stored and counted
            answers, entities = score_texts(models, [item.text for item in batch])
            for result in finance.commit(batch, answers, entities):
                setattr(summary, result["status"], getattr(summary, result["status"]) + 1)
            batch.clear()

    lines = _jsonl_lines(path, follow) if suffix == ".jsonl" else _csv_lines(path)
    with open(path, "rb") as f:
        total = None if follow else sum(1 for _ in f)
    bar = tqdm(total=total, unit="line", disable=quiet, desc=f"ingest {path.name}")
    done = 0
    try:
        with stop_on_signals():
            for number, raw in lines:
                if number is None:  # following, nothing new: store what is held
                    flush()
                    continue
                bar.update(number - done)
                done = number
                parsed = raw if isinstance(raw, str) else parse_item(raw, config.max_chars_per_text)
                if isinstance(parsed, str):
                    summary.rejected += 1
                    warn(f"{path}, line {number}: {parsed}")
                    continue
                batch.append(parsed)
                if len(batch) >= batch_size:
                    flush()
            flush()
    except KeyboardInterrupt:
        flush()  # what was read is stored; the rest can be ingested again (duplicates are not stored twice)
        if not follow:
            raise
    finally:
        bar.close()
    finance.reject(summary.rejected)
    summary.alerts = finance.store.count(alert_table) - alerts_before
    say(f"{summary.stored} stored, {summary.duplicate} duplicate, {summary.rejected} rejected, "
        f"{summary.alerts} new alert{'s' if summary.alerts != 1 else ''} ({finance.store.count()} texts in "
        f"{config.database_url()})")
    return summary
