"""Clean validated rows: Unicode form, whitespace, case, length limits, duplicates and conflicting labels."""

from __future__ import annotations

import unicodedata

from tunelab.config import DataConfig
from tunelab.data.load import Problem
from tunelab.data.validate import Rows

def clean_text(text: str, unicode_normalization: str = "NFC", fold_whitespace: bool = True, lowercase: bool = False) -> str:
    """The same cleaning at training and prediction time (the predictor reads these settings from tunelab.json)."""
    if unicode_normalization != "none" and not unicodedata.is_normalized(unicode_normalization, text):
        text = unicodedata.normalize(unicode_normalization, text)
    if fold_whitespace:
        text = " ".join(text.split())  # str.split() splits on every Unicode space; faster than a regex
    if lowercase:
        text = text.lower()
    return text


def cleaning_settings(cfg: DataConfig) -> dict:
    return {"unicode_normalization": cfg.unicode_normalization, "fold_whitespace": cfg.fold_whitespace,
            "lowercase": cfg.lowercase}


def clean_rows(rows: Rows, cfg: DataConfig) -> tuple[Rows, list[Problem]]:
    """Normalise texts in place and drop those outside the length limits (a cleaning choice, always reported)."""
    removed, keep = [], []
    how = cleaning_settings(cfg)
    for i, text in enumerate(rows.text):
        texts = [clean_text(text, **how)]
        if rows.text_pair is not None:
            texts.append(clean_text(rows.text_pair[i], **how))
            rows.text_pair[i] = texts[1]
        rows.text[i] = texts[0]
        n = max(len(t) for t in texts)
        short = min(len(t) for t in texts)
        if short < cfg.min_chars:
            reason, msg = ("empty_text", "text is empty after cleaning") if short == 0 else (
                "too_short", f"text has {short} characters after cleaning, fewer than data.min_chars={cfg.min_chars}")
        elif cfg.max_chars is not None and n > cfg.max_chars:
            reason, msg = "too_long", f"text has {n} characters, more than data.max_chars={cfg.max_chars}"
        else:
            keep.append(i)
            continue
        removed.append(Problem(rows.file, rows.where[i], None, reason, msg, rows.unit))
    return (rows if len(keep) == len(rows) else rows.take(keep)), removed


def row_keys(rows: Rows) -> list:
    """What makes two rows 'the same text': the text, or the (text, pair) couple."""
    if rows.text_pair is None:
        return rows.text
    return list(zip(rows.text, rows.text_pair))


def _label_key(label):
    return tuple(label) if isinstance(label, list) else label


def deduplicate(rows: Rows, cfg: DataConfig) -> tuple[Rows, list[Problem], list[dict]]:
    """Remove exact duplicates; find conflicting duplicates (same text, different labels) and apply the policy.

    Returns kept rows, removed-row problems, and one record per conflicting text for the report.
    """
    keys = row_keys(rows)
    first: dict = {}
    repeats = []
    for i, key in enumerate(keys):
        if first.setdefault(key, i) != i:
            repeats.append(i)
    if not repeats:
        return rows, [], []
    groups: dict = {}
    for i in repeats:
        groups.setdefault(keys[i], [first[keys[i]]]).append(i)
    conflicts, drop, removed = [], set(), []
    for key, idx in groups.items():
        labels = {_label_key(rows.label[i]) for i in idx}
        text = key if isinstance(key, str) else " ||| ".join(key)
        if len(labels) > 1:
            conflicts.append({"text": text, "labels": sorted(str(lab) for lab in labels),
                              "unit": rows.unit, "where": [rows.where[i] for i in idx]})
            if cfg.conflicting_duplicates == "error":
                continue
            dropped = idx if cfg.conflicting_duplicates == "drop" else idx[1:]
            for i in dropped:
                drop.add(i)
                removed.append(Problem(rows.file, rows.where[i], None, "conflicting_duplicate",
                                       f"text also at {rows.unit} {', '.join(str(rows.where[j]) for j in idx if j != i)} "
                                       f"with another label ({' vs '.join(str(lab) for lab in sorted(map(str, labels)))})",
                                       rows.unit))
        elif cfg.deduplicate:
            for i in idx[1:]:
                drop.add(i)
                removed.append(Problem(rows.file, rows.where[i], None, "duplicate",
                                       f"exact duplicate of {rows.unit} {rows.where[idx[0]]}", rows.unit))
    if not drop:
        return rows, removed, conflicts
    return rows.take([i for i in range(len(rows)) if i not in drop]), removed, conflicts


def remove_leaks(rows: Rows, owner: dict) -> tuple[Rows, list[Problem]]:
    """Drop rows whose text already belongs to another split (`owner`: text key -> split name)."""
    keys = row_keys(rows)
    keep = [i for i, k in enumerate(keys) if k not in owner]
    if len(keep) == len(rows):
        return rows, []
    removed = [Problem(rows.file, rows.where[i], None, "in_other_split",
                       f"text also occurs in the {owner[k]} split (kept there, removed here)", rows.unit)
               for i, k in enumerate(keys) if k in owner]
    return rows.take(keep), removed
