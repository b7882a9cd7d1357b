"""The data report: counts, removed rows by reason, label distribution, lengths — as JSON and Markdown."""

from __future__ import annotations

from collections import Counter

import numpy as np

from tunelab.data.load import Problem


def token_lengths(tokenizer, texts: list[str], pairs: list[str] | None, batch_size: int = 8192, progress=None) -> np.ndarray:
    """Length in tokens (special tokens included, no truncation) of every text, with the fast tokenizer, batched.

    Uses the Rust tokenizer directly (`encode_batch_fast`, no offsets), with padding and truncation off.
    """
    from tunelab.hub import rust_tokenizer

    backend = rust_tokenizer(tokenizer)
    out = np.zeros(len(texts), dtype=np.int32)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        pair = pairs[start:start + batch_size] if pairs is not None else None
        if backend is not None:
            batch = chunk if pair is None else list(zip(chunk, pair))
            out[start:start + len(chunk)] = [len(e) for e in backend.encode_batch_fast(batch, add_special_tokens=True)]
        else:  # a slow (Python) tokenizer
            enc = tokenizer(chunk, pair, add_special_tokens=True, truncation=False, verbose=False)
            out[start:start + len(chunk)] = [len(ids) for ids in enc["input_ids"]]
        if progress is not None:
            progress.update(len(chunk))
    return out


def length_stats(lengths: np.ndarray, max_length: int | None = None) -> dict:
    if len(lengths) == 0:
        return {"count": 0}
    q = np.percentile(lengths, [50, 90, 95, 99])
    stats = {"count": int(len(lengths)), "min": int(lengths.min()), "mean": round(float(lengths.mean()), 2),
             "p50": float(q[0]), "p90": float(q[1]), "p95": float(q[2]), "p99": float(q[3]), "max": int(lengths.max())}
    if max_length is not None:
        stats["truncated_at_max_length"] = int((lengths > max_length).sum())
    return stats


def imbalance_warning(counts: Counter, labels: list[str], ratio: float) -> str | None:
    present = [counts.get(lab, 0) for lab in labels]
    if not present or min(present) == 0:
        missing = [lab for lab in labels if counts.get(lab, 0) == 0]
        return f"labels with no training example: {', '.join(missing)}" if missing else None
    most, least = max(present), min(present)
    if most / least >= ratio:
        common = max(labels, key=lambda lab: counts.get(lab, 0))
        rare = min(labels, key=lambda lab: counts.get(lab, 0))
        return (f"label imbalance: '{common}' has {most} training examples, '{rare}' only {least} "
                f"({most / least:.1f}x); consider class weights (train.class_weights) or more data for the rare labels")
    return None


def removed_counts(removed: list[Problem]) -> dict[str, int]:
    return dict(sorted(Counter(p.reason for p in removed).items()))


def removed_markdown(report: dict, unit: str = "rows") -> list[str]:
    """The report's removed rows (or sentences, conversations) by reason, and the first of them, as Markdown lines."""
    if not report["removed"]:
        return []
    lines = [f"## Removed {unit} by reason", "", f"| reason | {unit} |", "| --- | ---: |"]
    lines += [f"| {reason} | {n} |" for reason, n in report["removed"].items()]
    lines += ["", f"First removed {unit} (all of them are in report.json):", ""]
    lines += [f"- {p['file']}:{p.get('line') or p.get('row') or p.get('item')}: {p['reason']}: {p['message']}"
              for p in report["removed_rows"][:20]]
    return lines + [""]


def render_markdown(report: dict) -> str:
    """A readable summary of report.json."""
    lines = [f"# Data report: {report['name']}", "", f"Prepared {report['created']} by tunelab {report['tunelab_version']}.", ""]
    lines += ["## Rows", "", "| split | source | rows read | rows written |", "| --- | --- | ---: | ---: |"]
    for split, info in report["splits"].items():
        lines.append(f"| {split} | {info['source']} | {info['rows_read']} | {info['rows_written']} |")
    lines += ["", f"Rows read: {report['rows_read']}; written: {report['rows_written']}; removed: {report['rows_removed']}.", ""]
    lines += removed_markdown(report)
    if report["conflicting_duplicates"]:
        lines += ["## Conflicting duplicates (same text, different labels)", ""]
        lines += [f"- {c['text'][:80]!r}: labels {', '.join(c['labels'])}" for c in report["conflicting_duplicates"][:20]]
        lines.append("")
    labels = report["labels"]
    splits = list(report["splits"])
    lines += ["## Label distribution", "", "| label | " + " | ".join(splits) + " |", "| --- |" + " ---: |" * len(splits)]
    for lab in labels:
        lines.append(f"| {lab} | " + " | ".join(str(report["label_distribution"][s].get(lab, 0)) for s in splits) + " |")
    lines += ["", f"## Text length in tokens ({report['tokenizer']})", "",
              "| split | mean | p50 | p95 | max | longer than max_length |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for s in splits:
        t = report["text_length_tokens"][s]
        if t["count"]:
            lines.append(f"| {s} | {t['mean']} | {t['p50']:g} | {t['p95']:g} | {t['max']} | {t['truncated_at_max_length']} |")
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"
