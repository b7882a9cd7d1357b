"""The data stage of text classification: labelled texts (and pairs) from CSV/TSV/JSONL/JSON/Parquet files.

load -> validate (labels against the label set) -> clean -> deduplicate (conflicting labels found) -> remove
texts that leak between splits -> stratified split -> report. data/pipeline.py writes what this returns.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from tunelab.config import Config, DataConfig
from tunelab.data.clean import clean_rows, deduplicate, remove_leaks, row_keys
from tunelab.data.load import Problem, SettingNames, Wanted, load_file
from tunelab.data.pipeline import MAX_SHOWN, PRECEDENCE, SPLITS, Built, format_problems, write_split
from tunelab.data.report import imbalance_warning, length_stats, removed_counts, render_markdown, token_lengths
from tunelab.data.split import label_counts, stratified_split
from tunelab.data.validate import LabelCheck, Rows, lone_surrogate, validate
from tunelab.errors import DataError


def build_data(config: Config, tokenizer, say, quiet: bool) -> Built:
    """The prepared splits of a classification config (columns text[, text_pair], label[, id], source_<unit>)."""
    cfg = config.data
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

    report = _report(config, loaded, rows, removed, conflicts, labels, tokenizer, quiet)

    return Built({s: _columns(r) for s, r in rows.items()}, labels, report, render_markdown(report), cfg.multi_label)


def _columns(rows: Rows) -> dict[str, list]:
    columns = {"text": rows.text}
    if rows.text_pair is not None:
        columns["text_pair"] = rows.text_pair
    columns["label"] = rows.label
    if rows.ids is not None:
        columns["id"] = rows.ids
    columns["source_" + rows.unit] = rows.where
    return columns


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
    write_split(_columns(rows), out, "parquet")
    return out


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


def _report(config, loaded, rows, removed, conflicts, labels, tokenizer, quiet) -> dict:
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
