"""The reference profile a model carries: what its training data and its own predictions looked like.

`tunelab train` writes it into the model folder (monitor_profile.json + monitor_profile.safetensors) and
`tunelab export` into the export folder (computed with the exported model), so a server can compare live
traffic with it without any setup. For a run trained before profiles existed: `tunelab monitor profile RUN`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PROFILE_FILE = "monitor_profile.json"
EMBEDDINGS_FILE = "monitor_profile.safetensors"
MAX_TRAIN_ROWS = 20_000  # a seeded sample is plenty for length and unknown-token distributions
MAX_REFERENCE_ROWS = 2_000  # predictions (confidence, labels, embeddings) on validation, or on train if it is small
MIN_VALIDATION_ROWS = 100


def build_profile(model_dir: str | Path, run_dir: str | Path | None = None, quiet: bool = True) -> dict:
    """Profile the model in `model_dir` (a model or export folder) against the prepared data of its run."""
    from tunelab.evaluation.run import resolve_split
    from tunelab.models.predictor import Predictor, find_model_dir
    from tunelab.tasks.encoding import encode, read_split

    model_dir = find_model_dir(model_dir)
    meta = json.loads((model_dir / "tunelab.json").read_text())
    run_dir = Path(run_dir) if run_dir else run_of(model_dir, meta)
    predictor = Predictor(model_dir)
    task, rng = predictor.task, np.random.default_rng(0)

    def sample(split: str, limit: int) -> dict:
        _, path = resolve_split(run_dir, split)
        columns = read_split(path)
        n = len(columns.get("text", []))
        keep = np.sort(rng.permutation(n)[:limit]) if n > limit else np.arange(n)
        return {k: [v[i] for i in keep] for k, v in columns.items()}

    train = sample("train", MAX_TRAIN_ROWS)
    train_enc = encode(predictor.tokenizer, {"text": train["text"], "text_pair": train.get("text_pair"), "label": train["label"]},
                       task, predictor.max_length)
    try:
        reference = sample("validation", MAX_REFERENCE_ROWS)
    except Exception:  # noqa: BLE001 -- no validation split: the train sample stands in
        reference = {"text": []}
    reference_split = "validation"
    if len(reference["text"]) < MIN_VALIDATION_ROWS:  # a random part of the train sample (files may be sorted)
        reference_split = "train"
        pick = np.sort(rng.permutation(len(train["text"]))[:MAX_REFERENCE_ROWS])
        reference = {k: [v[i] for i in pick] for k, v in train.items()}
    out = predictor.infer(reference["text"], reference.get("text_pair"))
    ref_enc = encode(predictor.tokenizer, {"text": reference["text"], "text_pair": reference.get("text_pair"),
                                           "label": reference["label"]}, task, predictor.max_length)
    unk = predictor.tokenizer.unk_token_id
    profile = {
        "version": 1,
        "labels": task.labels,
        "multi_label": task.multi_label,
        "examples": {"train": len(train["text"]), "reference": len(reference["text"])},
        "reference_split": reference_split,
        "train_label_counts": label_counts(train_enc.targets, task.multi_label, len(task.labels)),
        "prediction_counts": label_counts(predicted(out.probs, task.multi_label, predictor.threshold),
                                          task.multi_label, len(task.labels)),
        "lengths": train_enc.lengths.astype(int).tolist(),
        "unknown_rate": float((train_enc.ids == unk).mean()) if unk is not None and len(train_enc.ids) else 0.0,
        "confidence": [round(float(c), 6) for c in confidence(out.probs, task.multi_label)],
        "reference_accuracy": float(accuracy(out.probs, ref_enc.targets, task.multi_label, predictor.threshold)),
        "has_embeddings": out.embeddings is not None,
    }
    tmp = model_dir / (PROFILE_FILE + ".tmp")
    tmp.write_text(json.dumps(profile))
    if out.embeddings is not None:
        from safetensors.numpy import save_file

        save_file({"embeddings": out.embeddings.astype(np.float32)}, str(model_dir / EMBEDDINGS_FILE))
    tmp.replace(model_dir / PROFILE_FILE)  # the JSON last: a profile is whole once it exists
    if not quiet:
        print(f"monitor: profile of {profile['examples']['train']} training and {profile['examples']['reference']} "
              f"reference texts written to {model_dir / PROFILE_FILE}", flush=True)
    return profile


def run_of(model_dir: Path, meta: dict) -> Path:
    """The run folder a model, export or merged folder came from (where its data and monitor.db are)."""
    source = meta.get("exported_from") or (meta.get("merged_from") or {}).get("run")
    return Path(source) if source else model_dir.parent


def load_profile(model_dir: str | Path) -> dict | None:
    """The profile with its embeddings as an array, or None when the folder has none."""
    model_dir = Path(model_dir)
    if not (model_dir / PROFILE_FILE).is_file():
        return None
    profile = json.loads((model_dir / PROFILE_FILE).read_text())
    profile["embeddings"] = None
    if profile.get("has_embeddings") and (model_dir / EMBEDDINGS_FILE).is_file():
        from safetensors.numpy import load_file

        profile["embeddings"] = load_file(str(model_dir / EMBEDDINGS_FILE))["embeddings"]
    return profile


def predicted(probs: np.ndarray, multi_label: bool, threshold: float = 0.5) -> np.ndarray:
    """Label indices (single-label) or a 0/1 matrix (multi-label)."""
    return (probs >= threshold).astype(np.int8) if multi_label else probs.argmax(1)


def confidence(probs: np.ndarray, multi_label: bool) -> np.ndarray:
    """How sure the model is of each prediction: the top probability; for multi-label, the mean distance
    of each label's probability from the undecided 0.5, scaled to 0.5..1."""
    if len(probs) == 0:
        return np.zeros(0)
    return 0.5 + np.abs(probs - 0.5).mean(1) if multi_label else probs.max(1)


def label_counts(labels: np.ndarray, multi_label: bool, n_labels: int) -> list[int]:
    """Count per label: how often each label is predicted (or true)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return [0] * n_labels
    if multi_label:
        return np.asarray(labels).sum(0).astype(int).tolist()
    return np.bincount(labels.astype(int), minlength=n_labels).astype(int).tolist()


def shares(labels: list[str], counts: list[int]) -> dict[str, float]:
    """Counts per label -> each label's share of the total."""
    total = max(sum(counts), 1)
    return {lab: c / total for lab, c in zip(labels, counts)}


def reference_shares(profile: dict | None) -> dict[str, float]:
    """The model's predicted-label shares on its reference data ({} without a profile)."""
    return shares(profile["labels"], profile["prediction_counts"]) if profile else {}


def accuracy(probs: np.ndarray, targets, multi_label: bool, threshold: float = 0.5) -> float:
    if targets is None or len(probs) == 0:
        return float("nan")
    guess = predicted(probs, multi_label, threshold)
    targets = np.asarray(targets)
    return float((guess == targets).all(1).mean() if multi_label else (guess == targets).mean())
