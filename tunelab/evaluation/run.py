"""Evaluate a trained run on a split or a file, streaming over the data in chunks."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path


from tunelab.config import load_config
from tunelab.errors import TunelabError
from tunelab.models.card import ModelCard
from tunelab.models.predictor import Predictor, find_model_dir
from tunelab.tasks import task_class, task_of
from tunelab.tasks.base import SUMMARY_KEYS

CHUNK_ROWS = 8192  # rows read, tokenised and scored at a time: memory does not grow with the split


@dataclass
class EvalResult:
    """What `evaluate` returns: the split's name, its metrics (also in `out_dir`/report.json) and the report folder."""

    split: str
    metrics: dict
    out_dir: Path


def iter_chunks(path: Path, columns: list[str]):
    """Column dicts of at most CHUNK_ROWS rows from a prepared split (Parquet or JSONL)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        with pq.ParquetFile(path) as f:
            names = [c for c in columns if c in f.schema_arrow.names]
            for batch in f.iter_batches(batch_size=CHUNK_ROWS, columns=names):
                yield batch.to_pydict()
        return
    chunk: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                chunk.append(json.loads(line))
            if len(chunk) == CHUNK_ROWS:
                yield {c: [r.get(c) for r in chunk] for c in columns}
                chunk = []
    if chunk:
        yield {c: [r.get(c) for r in chunk] for c in columns}


def resolve_split(run_dir: Path, split: str) -> tuple[str, Path]:
    """'test' / 'validation' / 'train' -> the prepared file; anything else is a labelled file to prepare first."""
    manifest = run_dir / "data" / "manifest.json"
    if split in ("train", "validation", "test"):
        if not manifest.is_file():
            raise TunelabError(f"{run_dir}: no prepared data (run `tunelab prepare` or `tunelab train` first)")
        files = json.loads(manifest.read_text())["files"]
        return split, run_dir / "data" / files[split]
    path = Path(split)
    if not path.is_file():
        raise TunelabError(f"--split: '{split}' is neither train, validation, test nor an existing file")
    config = load_config(run_dir / "config.yaml")
    card = ModelCard.read(run_dir / "model")
    name = path.stem
    return name, task_of(card).prepare_file(path, config, card.labels, run_dir / "eval" / name / "data.parquet")


def run_folder(run: str | Path) -> Path:
    """A run folder, or the model folder inside one -> the run folder (its config and prepared data live there)."""
    path = Path(run)
    if (path / "config.yaml").is_file():
        return path
    model_dir = find_model_dir(path)  # a clear error when there is no model here at all
    if model_dir.name == "model" and (model_dir.parent / "config.yaml").is_file():
        return model_dir.parent
    where = "here" if model_dir != path else "beside this model folder"
    raise TunelabError(f"{path}: no config.yaml {where}; evaluate needs the run folder `tunelab train` wrote "
                       "(runs/<name>, or its model/ folder), for its config and prepared data")


def evaluate(run: str | Path, split: str = "test", batch_size: int | None = None, write_report: bool = True,
             quiet: bool = False) -> EvalResult:
    """Metrics of the run's model on `split`; writes report.json, report.html and PNGs. `batch_size`: examples
    per forward pass (none: the run's evaluate.batch_size)."""
    run_dir = run_folder(run)
    config = load_config(run_dir / "config.yaml")
    name, path = resolve_split(run_dir, split)  # before the model loads: a wrong split or file fails at once
    out = run_dir / "eval" if name == "test" else run_dir / "eval" / name
    task = task_class(config.task.name)
    if hasattr(task, "evaluate_split"):  # a task that evaluates itself (a causal LM generates answers)
        return EvalResult(name, task.evaluate_split(run_dir, config, name, path, batch_size, quiet, out if write_report else None), out)
    predictor = Predictor(run_dir, batch_size=batch_size or config.evaluate.batch_size)
    metrics = score_file(predictor, path, config.evaluate.calibration_bins, quiet, name)
    if write_report:
        from tunelab.evaluation.report import write_report as write

        write(out, name, metrics, predictor.task.labels, run_dir / "metrics.jsonl", predictor.card)
    return EvalResult(name, metrics, out)


def score_file(predictor, path: Path, calibration_bins: int = 15, quiet: bool = True, name: str = "split") -> dict:
    """The task's metrics of `predictor` on a prepared split file, read and scored chunk by chunk."""
    from tqdm.auto import tqdm

    task = predictor.task
    collector = task.collector(predictor.card.temperature or 1.0)
    bar = tqdm(desc=f"evaluate {name}", unit="example", disable=quiet, file=sys.stderr)
    seen = 0
    for chunk in iter_chunks(path, list(task.split_columns)):
        enc = task.encode(predictor.tokenizer, chunk, predictor.max_length)
        collector.add(predictor.infer_encoded(enc, embeddings=False).probs, task.example_targets(enc), enc.contexts)
        n = len(next(iter(chunk.values())))
        seen += n
        bar.update(n)
    bar.close()
    if not seen:
        raise TunelabError(f"{path}: the {name} split is empty; nothing to evaluate")
    return collector.result(predictor.threshold, calibration_bins)


def metrics_table(metrics: dict) -> str:
    """The headline numbers as a small text table."""
    keys = [k for k in SUMMARY_KEYS if k in metrics]
    width = max(len(k) for k in keys)
    return "\n".join(f"{k:<{width}}  {metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k:<{width}}  {metrics[k]}"
                     for k in keys)


__all__ = ["EvalResult", "evaluate", "metrics_table"]
