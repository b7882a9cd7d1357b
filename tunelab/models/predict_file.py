"""Batch prediction over a file or standard input, written as CSV or JSONL."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.models.predictor import Predictor

CHUNK = 4096


def _read_texts(source: str, text_column: str, pair_column: str | None):
    """Texts (and pairs) from a CSV/TSV/JSONL file, or plain lines (one text each) from '-' (stdin)."""
    if source == "-":
        lines = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        return lines, None, None
    from tunelab.data.load import Wanted, load_file

    cols = load_file(Path(source), Wanted(text_column, None, pair_column, None))
    bad = cols.file_problems + [p for ps in cols.row_problems.values() for p in ps]
    if bad:
        raise TunelabError(f"{source}: {len(bad)} unreadable row(s); first: {bad[0]}")
    empty = [w for w, t in zip(cols.where, cols.text) if not (isinstance(t, str) and t.strip())]
    if empty:
        raise TunelabError(f"{source}:{cols.unit} {empty[0]}: column '{text_column}': text is empty "
                           f"({len(empty)} empty text(s) in all)")
    return cols.text, (cols.text_pair if pair_column else None), cols.where


def predict_file(run: str | Path, source: str, output: str | None = None, text_column: str = "text",
                 pair_column: str | None = None, top_k: int | None = None) -> int:
    """Predict every text of `source`; write rows with text, label, score and per-label scores. Returns the count."""
    predictor = Predictor(run)
    texts, pairs, _ = _read_texts(source, text_column, pair_column or ("text_pair" if predictor.task.pair else None))
    fmt = "jsonl" if output is None or output == "-" or output.endswith((".jsonl", ".json")) else "csv"
    if output and output != "-" and not output.endswith((".csv", ".jsonl", ".json")):
        raise TunelabError(f"--output: '{output}' must end in .csv or .jsonl")
    out_path = Path(output) if output and output != "-" else None
    tmp = out_path.with_name(out_path.name + ".tmp") if out_path else None
    sink = open(tmp, "w", newline="", encoding="utf-8") if tmp else sys.stdout
    try:
        writer = None
        for start in range(0, len(texts), CHUNK):
            chunk = texts[start:start + CHUNK]
            results = predictor.predict(chunk, pairs[start:start + CHUNK] if pairs else None, top_k)
            for text, res in zip(chunk, results):
                if fmt == "jsonl":
                    sink.write(json.dumps({"text": text, **res}, ensure_ascii=False) + "\n")
                    continue
                if writer is None:
                    writer = csv.writer(sink, lineterminator="\n")
                    head = ["text", "labels" if predictor.task.multi_label else "label"]
                    writer.writerow(head + ([] if predictor.task.multi_label else ["score"])
                                    + [f"score_{lab}" for lab in predictor.labels])
                label = "|".join(res["labels"]) if predictor.task.multi_label else res["label"]
                row = [text, label] + ([] if predictor.task.multi_label else [f"{res['score']:.6f}"])
                writer.writerow(row + [f"{res['scores'][lab]:.6f}" for lab in predictor.labels])
    finally:
        if tmp:
            sink.close()
    if tmp:
        tmp.replace(out_path)
    return len(texts)
