"""Batch prediction over a file or standard input, written as CSV or JSONL."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

from tunelab.data.texts import read_texts
from tunelab.errors import TunelabError
from tunelab.models.card import ModelCard
from tunelab.models.predictor import Predictor, find_model_dir

CHUNK = 4096
OUTPUT_FORMATS = (".csv", ".jsonl")


def check_output(output: str | None) -> Path | None:
    """The output file (None: stdout), checked before any work: .csv or .jsonl, in a folder that can be written."""
    if output is None or output == "-":
        return None
    path = Path(output)
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise TunelabError(f"--output: '{output}' must end in .csv or .jsonl (or leave it out for JSONL on stdout)")
    folder = path.parent
    if not folder.is_dir():
        raise TunelabError(f"--output: folder {folder} does not exist; create it first")
    if path.is_dir():
        raise TunelabError(f"--output: {path} is a folder; give a file name ending in .csv or .jsonl")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TunelabError(f"--output: folder {folder} is not writable")
    return path


def predict_file(run: str | Path, source: str, output: str | None = None, text_column: str = "text",
                 pair_column: str | None = None, top_k: int | None = None) -> int:
    """Predict every text of `source`; write rows with text, label, score and per-label scores. Returns the count.

    The output path and the input are checked before the model loads: a mistake costs no model time."""
    out_path = check_output(output)
    model_dir = find_model_dir(run)
    pair = ModelCard.read(model_dir).pair
    read = read_texts(source, text_column, pair_column or ("text_pair" if pair else None))
    texts, pairs = read.texts, read.pairs
    predictor = Predictor(model_dir)
    fmt = "csv" if out_path is not None and out_path.suffix.lower() == ".csv" else "jsonl"
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
                    writer.writerow(["text", *predictor.task.csv_header()])
                writer.writerow([text, *predictor.task.csv_row(res)])
    except BaseException:  # Ctrl-C too: no half-written .tmp left beside the output
        if tmp:
            sink.close()
            tmp.unlink(missing_ok=True)
        raise
    if tmp:
        sink.close()
        tmp.replace(out_path)
    return len(texts)
