"""The reference profile a model carries: what its training data and its own predictions looked like.

`tunelab train` writes it into the model folder (monitor_profile.json + monitor_profile.safetensors) and
`tunelab export` into the export folder (computed with the exported model), so a server can compare live
traffic with it without any setup. For a run trained before profiles existed: `tunelab monitor profile RUN`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tunelab.models.card import ModelCard

PROFILE_FILE = "monitor_profile.json"
EMBEDDINGS_FILE = "monitor_profile.safetensors"
MAX_TRAIN_ROWS = 20_000  # a seeded sample is plenty for length and unknown-token distributions
MAX_REFERENCE_ROWS = 2_000  # predictions (confidence, labels, embeddings) on validation, or on train if it is small
MIN_VALIDATION_ROWS = 100


def build_profile(model_dir: str | Path, run_dir: str | Path | None = None, quiet: bool = True) -> dict:
    """Profile the model in `model_dir` (a model or export folder) against the prepared data of its run."""
    from tunelab.evaluation.run import resolve_split
    from tunelab.models.predictor import Predictor, find_model_dir
    from tunelab.tasks.encoding import read_split

    model_dir = find_model_dir(model_dir)
    card = ModelCard.read(model_dir)
    run_dir = Path(run_dir) if run_dir else run_of(model_dir, card)
    predictor = Predictor(model_dir)
    task, rng = predictor.task, np.random.default_rng(0)

    def sample(split: str, limit: int) -> dict:
        _, path = resolve_split(run_dir, split)
        columns = read_split(path)
        n = len(next(iter(columns.values()), []))
        keep = np.sort(rng.permutation(n)[:limit]) if n > limit else np.arange(n)
        return {k: [v[i] for i in keep] for k, v in columns.items()}

    train = sample("train", MAX_TRAIN_ROWS)
    train_enc = task.encode(predictor.tokenizer, train, predictor.max_length)
    try:
        reference = sample("validation", MAX_REFERENCE_ROWS)
    except Exception:  # noqa: BLE001 -- no validation split: the train sample stands in
        reference = {}
    reference_split = "validation"
    if len(next(iter(reference.values()), [])) < MIN_VALIDATION_ROWS:  # a random part of the train sample (files may be sorted)
        reference_split = "train"
        pick = np.sort(rng.permutation(len(next(iter(train.values()))))[:MAX_REFERENCE_ROWS])
        reference = {k: [v[i] for i in pick] for k, v in train.items()}
    ref_enc = task.encode(predictor.tokenizer, reference, predictor.max_length)
    out = predictor.infer_encoded(ref_enc)
    observed = [task.observe(p, predictor.threshold) for p in out.probs]
    names = task.observed_labels
    vectors = task.observes_vectors
    collector = task.collector()
    collector.add(out.probs, task.example_targets(ref_enc))
    unk = predictor.tokenizer.unk_token_id
    profile = {
        "version": 1,
        "labels": names,
        "multi_label": vectors,  # each prediction counts towards several labels (a 0/1 or count vector)
        "examples": {"train": len(train_enc), "reference": len(observed)},
        "reference_split": reference_split,
        "train_label_counts": task.target_counts(train_enc),
        "prediction_counts": label_counts([key for key, _ in observed], vectors, len(names)),
        "lengths": train_enc.lengths.astype(int).tolist(),
        "unknown_rate": float((train_enc.ids == unk).mean()) if unk is not None and len(train_enc.ids) else 0.0,
        "confidence": [round(float(sure), 6) for _, sure in observed],
        # the figure live feedback is compared with (accuracy; entity F1 for token classification)
        "reference_accuracy": float(collector.result(predictor.threshold).get(task.live_metric, float("nan"))),
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


def run_of(model_dir: Path, card) -> Path:
    """The run folder a model, export or merged folder came from (where its data and monitor.db are)."""
    source = card.exported_from or (card.merged_from or {}).get("run")
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
