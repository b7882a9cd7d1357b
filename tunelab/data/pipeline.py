"""The data stage: load → validate → clean → deduplicate → split → report → write, skipped when nothing changed."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tunelab.config import Config, DataConfig
from tunelab.data.clean import clean_rows, deduplicate, remove_leaks, row_keys
from tunelab.data.load import Problem, SettingNames, Wanted, load_file
from tunelab.data.report import (imbalance_warning, length_stats, removed_counts, render_markdown,
                                 token_lengths)
from tunelab.data.split import label_counts, stratified_split
from tunelab.data.validate import LabelCheck, Rows, lone_surrogate, validate
from tunelab.errors import DataError
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


def _natural_sorted(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(labels)


def _infer_labels(raw_labels: list, cfg: DataConfig) -> list[str]:
    check = LabelCheck(None, cfg.multi_label, cfg.label_separator)
    found = set()
    for raw in raw_labels:
        label, reason, _ = check(raw)
        if reason is None and not lone_surrogate(label):  # that row is reported as invalid_unicode
            found.update(label if isinstance(label, list) else [label])
    if not found:
        raise DataError(f"{cfg.train}: no row has a usable label in column '{cfg.label_column}'")
    return _natural_sorted(found)


def format_problems(problems: list[Problem], header: str, hint: str) -> str:
    by_reason: dict[str, int] = removed_counts(problems)
    lines = [f"{header}: {len(problems)} problem{'s' if len(problems) != 1 else ''} "
             f"({', '.join(f'{n} {r}' for r, n in by_reason.items())})"]
    lines += [f"  {p}" for p in problems[:MAX_SHOWN]]
    if len(problems) > MAX_SHOWN:
        lines.append(f"  ... and {len(problems) - MAX_SHOWN} more")
    lines.append(hint)
    return "\n".join(lines)


def _check_has_rows(cols, what: str) -> None:
    """A file with no row at all (a header, blank lines or `[]`) is a mistake, not an empty split."""
    if not len(cols) and not cols.file_problems:
        blank = f" (only {cols.empty_rows} blank line{'s' if cols.empty_rows > 1 else ''})" if cols.empty_rows else ""
        raise DataError(f"{cols.file}: no data rows{blank}; {what}")


def _check_rows_left(rows: Rows, split: str, removed: list[Problem]) -> None:
    """Every row of a given file removed (bad rows dropped, cleaning, duplicates): say why, row by row."""
    if len(rows):
        return
    gone = [p for p in removed if p.file == rows.file]
    use = "train on" if split == "train" else "evaluate on"
    raise DataError(format_problems(gone, f"{rows.file}: no row of the {split} split is left",
                                    f"Nothing is left to {use}: fix these rows, or give another file."))


def _check_class_sizes(rows: Rows, cfg: DataConfig) -> None:
    counts = label_counts(rows.label)
    small = sorted((n, lab) for lab, n in counts.items() if n < cfg.min_examples_per_class)
    if small:
        shown = ", ".join(f"'{lab}' has {n}" for n, lab in small[:MAX_SHOWN])
        raise DataError(f"{cfg.train}: too few examples to split: {shown} (data.min_examples_per_class is "
                        f"{cfg.min_examples_per_class}). Add examples, leave those labels out of the data, give "
                        "validation/test files, or lower data.min_examples_per_class")


def _write_split(rows: Rows, path: Path, fmt: str) -> None:
    """Write one split to a temp file, then rename: a crash never leaves a half-written split in place."""
    columns = {"text": rows.text}
    if rows.text_pair is not None:
        columns["text_pair"] = rows.text_pair
    columns["label"] = rows.label
    if rows.ids is not None:
        columns["id"] = rows.ids
    columns["source_" + rows.unit] = rows.where
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
    return Prepared(out, files, manifest["labels"], manifest["multi_label"], report, up_to_date=True)


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
    wanted = Wanted(cfg.text_column, cfg.label_column, cfg.text_pair_column, cfg.id_column)
    given = {s: Path(getattr(cfg, s)) for s in SPLITS if getattr(cfg, s) is not None}
    loaded = {}
    for split, path in given.items():
        say(f"data: reading {split} from {path}")
        loaded[split] = load_file(path, wanted, cfg.format, cfg.encoding)
        _check_has_rows(loaded[split], f"data.{split} must hold at least one row")
    labels = list(cfg.labels) if cfg.labels else _infer_labels(loaded["train"].label, cfg)
    check = LabelCheck(labels, cfg.multi_label, cfg.label_separator)

    rows: dict[str, Rows] = {}
    bad: list[Problem] = []
    for split, cols in loaded.items():
        rows[split], problems = validate(cols, wanted, check)
        bad += problems
    if bad and cfg.on_bad_rows == "error":
        raise DataError(format_problems(bad, "the data has bad rows",
                                        "Fix these rows, or set data.on_bad_rows: drop to remove them "
                                        "(each removed row is then listed in the data report)."))
    removed: list[Problem] = list(bad)
    conflicts: list[dict] = []
    for split in list(rows):
        rows[split], cleaned_away = clean_rows(rows[split], cfg)
        rows[split], dups, split_conflicts = deduplicate(rows[split], cfg)
        removed += cleaned_away + dups
        conflicts += [dict(c, split=split) for c in split_conflicts]
    if conflicts and cfg.conflicting_duplicates == "error":
        raise DataError(f"{len(conflicts)} text(s) occur with different labels:\n" + "\n".join(
            f"  {c['split']}: {c['text'][:80]!r} has labels {', '.join(c['labels'])} at "
            f"{c['unit']}s {', '.join(map(str, c['where']))}" for c in conflicts[:MAX_SHOWN]) + "\nFix the labels, or set data.conflicting_duplicates: drop or keep_first")

    owner: dict = {}  # text key -> the split that keeps it
    for split in PRECEDENCE:  # the given evaluation sets stay whole; train gives way
        if split in rows:
            rows[split], leaked = remove_leaks(rows[split], owner)
            removed += leaked
            owner.update((k, split) for k in row_keys(rows[split]))
    for split in rows:
        _check_rows_left(rows[split], split, removed)

    to_make = {s: getattr(cfg, f"{s}_fraction") for s in ("validation", "test") if s not in rows}
    if to_make:
        train = rows["train"]
        _check_class_sizes(train, cfg)
        fractions = {"train": 1.0 - sum(to_make.values()), **to_make}
        strata = [tuple(lab) if isinstance(lab, list) else lab for lab in train.label]
        parts = stratified_split(row_keys(train), strata, fractions, cfg.seed)
        for split, idx in parts.items():
            rows[split] = train.take(idx)
    rows = {s: rows[s] for s in SPLITS if s in rows}

    report = _build_report(config, loaded, rows, removed, conflicts, labels, tokenizer, quiet)

    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # from here on the old data is not "prepared" any more
    ext = "parquet" if cfg.output_format == "parquet" else "jsonl"
    files = {s: out / f"{s}.{ext}" for s in rows}
    for split, part in rows.items():
        _write_split(part, files[split], cfg.output_format)
    write_text_atomic(out / "report.json", json.dumps(report, indent=1, ensure_ascii=False))
    write_text_atomic(out / "report.md", render_markdown(report))
    manifest = {"fingerprint": key, "files": {s: f.name for s, f in files.items()},
                "sizes": {s: f.stat().st_size for s, f in files.items()}, "labels": labels,
                "multi_label": cfg.multi_label}
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False))
    for warning in report["warnings"]:
        say(f"data: warning: {warning}")
    say(f"data: wrote {', '.join(f'{s} {len(r)}' for s, r in rows.items())} rows to {out} "
        f"({report['rows_removed']} removed; see {out / 'report.md'})")
    return Prepared(out, files, labels, cfg.multi_label, report)


def prepare_file(path: Path, config: Config, labels: list[str], out: Path) -> Path:
    """Validate and clean one more labelled file (e.g. to evaluate on) the way the data stage did; write it to `out`."""
    cfg = config.data
    wanted = Wanted(cfg.text_column, cfg.label_column, cfg.text_pair_column, None)
    cols = load_file(Path(path), wanted, "auto", cfg.encoding, SettingNames(format=None))
    _check_has_rows(cols, "nothing to evaluate")
    rows, bad = validate(cols, wanted, LabelCheck(labels, cfg.multi_label, cfg.label_separator))
    if bad and cfg.on_bad_rows == "error":
        raise DataError(format_problems(bad, f"{path} has bad rows", "Fix these rows, or set data.on_bad_rows: drop."))
    rows, cleaned_away = clean_rows(rows, cfg)
    _check_rows_left(rows, "evaluation", bad + cleaned_away)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_split(rows, out, "parquet")
    return out


def _build_report(config, loaded, rows, removed, conflicts, labels, tokenizer, quiet) -> dict:
    from tqdm.auto import tqdm

    from tunelab import __version__

    cfg = config.data
    read = {s: len(c) + len(c.file_problems) + c.empty_rows for s, c in loaded.items()}
    removed_by_file: dict[str, int] = {}
    for p in removed:
        removed_by_file[p.file] = removed_by_file.get(p.file, 0) + 1
    total = sum(len(r) for r in rows.values())
    bar = tqdm(total=total, desc="data: token lengths", unit="text", disable=quiet or total < 50_000)
    lengths = {s: token_lengths(tokenizer, r.text, r.text_pair, progress=bar) for s, r in rows.items()}
    bar.close()
    dist = {s: {lab: n for lab, n in sorted(label_counts(r.label).items(), key=lambda kv: labels.index(kv[0]))}
            for s, r in rows.items()}
    warnings = []
    imbalance = imbalance_warning(label_counts(rows["train"].label), labels, cfg.imbalance_warning_ratio)
    if imbalance:
        warnings.append(imbalance)
    for s in ("validation", "test"):
        missing = [lab for lab in labels if dist[s].get(lab, 0) == 0]
        if missing and len(rows[s]):
            warnings.append(f"{s} split has no example of: {', '.join(missing[:MAX_SHOWN])}")
        if not len(rows[s]):
            warnings.append(f"{s} split is empty")
    empty = {s: c.empty_rows for s, c in loaded.items() if c.empty_rows}
    removed_reasons = removed_counts(removed)
    if empty:
        removed_reasons["empty_row"] = sum(empty.values())
    return {
        "name": config.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tunelab_version": __version__,
        "tokenizer": config.model.name,
        "labels": labels,
        "multi_label": cfg.multi_label,
        "splits": {s: {"source": loaded[s].file if s in loaded else f"split from {cfg.train} (seed {cfg.seed})",
                       "rows_read": read.get(s, 0),
                       "rows_removed": removed_by_file.get(loaded[s].file, 0) + loaded[s].empty_rows if s in loaded else 0,
                       "rows_written": len(r)} for s, r in rows.items()},
        "rows_read": sum(read.values()),
        "rows_written": total,
        "rows_removed": sum(removed_reasons.values()),
        "removed": dict(sorted(removed_reasons.items())),
        "removed_rows": [p.to_dict() for p in removed],
        "conflicting_duplicates": conflicts,
        "label_distribution": dist,
        "text_length_tokens": {s: length_stats(lengths[s], config.model.max_length) for s in rows},
        "text_length_chars": {s: length_stats(_char_lengths(r)) for s, r in rows.items()},
        "warnings": warnings,
    }


def _char_lengths(rows: Rows):
    import numpy as np

    return np.fromiter((len(t) for t in rows.text), dtype=np.int32, count=len(rows))


__all__ = ["Prepared", "prepare", "prepare_file", "load_prepared", "fingerprint"]
