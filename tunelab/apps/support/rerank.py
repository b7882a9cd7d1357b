"""The optional cross-encoder re-ranker: the retriever's best `candidates` entries for a question, scored again by a
classifier that reads the question and the entry together (a tunelab sentence-pair classification run), so that
words of the question can attend to words of the entry's question and answer, which two separate embeddings cannot.

It is trained by tunelab's own training stage on pairs the build writes: each training question with its entry
(`match`) and with the `negatives` entries the retriever ranks highest among the wrong ones (`other`: the hard
negatives a re-ranker is there to tell apart), validated on the same pairs of the validation questions, exported
as the app's backend runs it. A candidate's logit is the retriever's (scale x cosine) plus `weight` times the
classifier's log-odds of `match`, the weight chosen on the validation questions among WEIGHTS (0 when no weight
ranks them better than the retriever alone: the re-ranker is then not called at all); entries outside the
candidates rank below them in the retriever's order and get no probability.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np

from tunelab.errors import TunelabError

RUN, MATCH, OTHER = "reranker", "match", "other"
FAR = 1e3  # how far below the candidates' logits the other entries are put: no probability after any temperature
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # the re-ranker's log-odds against the retriever's scaled cosines


def entry_texts(questions: list[str], answers: list[str]) -> list[str]:
    """What the re-ranker reads of each entry: its question, then its answer (cut first to the max_length)."""
    return [f"{question}\n{answer}" for question, answer in zip(questions, answers)]


def hard_negative_pairs(rows: list[tuple[str, str]], scores: np.ndarray, position: dict[str, int],
                        entries: list[str], negatives: int) -> list[tuple[str, str, str]]:
    """(question, entry text, match|other) for each (question, entry id) row: its entry and the `negatives` wrong
    entries with the highest retriever `scores` (questions, entries)."""
    pairs = []
    for (text, entry), row in zip(rows, scores):
        true = position[entry]
        pairs.append((text, entries[true], MATCH))
        wrong = [j for j in np.argsort(-row, kind="stable")[: negatives + 1] if j != true][:negatives]
        pairs.extend((text, entries[j], OTHER) for j in wrong)
    return pairs


def _write_pairs(path: Path, pairs: list[tuple[str, str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "entry", "label"])
        writer.writerows(pairs)


def run_config(config):
    """The re-ranker's tunelab run: sentence-pair classification of (question, entry) pairs, in the app's folder."""
    from tunelab.config import load_config

    r, data = config.reranker, config.app_dir / f"{RUN}-pairs"
    return load_config({
        "name": RUN, "runs_dir": str(config.app_dir),
        "data": {"train": str(data / "train.csv"), "validation": str(data / "validation.csv"), "test_fraction": 0,
                 "text_pair_column": "entry", "seed": r.seed},
        "model": {"name": r.model, "max_length": r.max_length},
        "train": {"epochs": r.epochs, "batch_size": r.batch_size, "learning_rate": r.learning_rate, "seed": r.seed,
                  "trackers": []},
    })


def model_folder(config) -> Path:
    """The re-ranker's folder for the app's backend (runs.backend_folder)."""
    from tunelab.apps.runs import backend_folder

    return backend_folder(config.app_dir / RUN, config.backend)


def train_reranker(config, faq, scores_of, questions, retrain: bool, quiet: bool, say) -> dict:
    """Write the hard-negative pairs (retriever scores from `scores_of(texts)`), train the re-ranker run on them
    and export it (runs.build_run: reused when its pairs and settings are unchanged, resumed when interrupted).
    -> what the report says."""
    from tunelab.apps.runs import build_run
    from tunelab.apps.support.build import command

    r = config.reranker
    position = {entry: i for i, entry in enumerate(faq.ids)}
    entries = entry_texts(faq.questions, faq.answers)
    data, written = config.app_dir / f"{RUN}-pairs", {}
    for split in ("train", "validation"):
        rows = getattr(questions, split)
        pairs = hard_negative_pairs(rows, scores_of([t for t, _ in rows]), position, entries, r.negatives)
        _write_pairs(data / f"{split}.csv", pairs)
        written[split] = len(pairs)
    run = run_config(config)
    recipe = hashlib.sha256(b"".join((data / f"{s}.csv").read_bytes() for s in ("train", "validation"))
                            + json.dumps(r.model_dump(mode="json", exclude={"candidates", "weight"}),  # used after training
                                         sort_keys=True).encode()).hexdigest()
    stamp = run.run_dir / "trained_on.json"
    if not retrain and stamp.is_file() and json.loads(stamp.read_text())["sha256"] != recipe:
        say("reranker: the retriever's candidates or the settings changed since it was trained; training it again")
        retrain = True
    entry = build_run(run, RUN, "classification", config.backend, retrain, quiet, command(config), test=False)
    stamp.write_text(json.dumps({"sha256": recipe}))
    return {"run": entry["run"], "steps": entry["steps"], "candidates": r.candidates, "negatives": r.negatives,
            "pairs": written, **({"export_parity": entry["export_parity"]} if "export_parity" in entry else {})}


def blend(scores: np.ndarray, best: np.ndarray, odds: np.ndarray, scale: float, weight: float) -> np.ndarray:
    """(questions, entries) logits: the `best` candidates' scale x cosine + weight x log-odds; the others FAR below
    the lowest of them, in the retriever's order (cosines lie in [-1, 1])."""
    candidates = scale * np.take_along_axis(scores, best, axis=1) + weight * odds
    out = candidates.min(axis=1, keepdims=True) - FAR + scores
    np.put_along_axis(out, best, candidates, axis=1)
    return out


def choose_weight(scores: np.ndarray, best: np.ndarray, odds: np.ndarray, scale: float, targets: np.ndarray,
                  fixed: float | None = None) -> dict:
    """The weight of WEIGHTS whose blend ranks the validation questions best (MRR@10; the smaller on a tie, so 0
    unless the re-ranker helps), or `fixed`, with each weight's validation MRR@10."""
    from tunelab.apps.support.matcher import ranking_metrics

    weights = WEIGHTS if fixed is None else sorted({*WEIGHTS, fixed})
    tried = {w: ranking_metrics(blend(scores, best, odds, scale, w), targets)["mrr_at_10"] for w in weights}
    chosen = max(weights, key=lambda w: (round(tried[w], 9), -w)) if fixed is None else fixed
    return {"weight": chosen, "validation_mrr_at_10": {str(w): round(v, 4) for w, v in tried.items()}}


class Reranker:
    """The trained re-ranker over an FAQ: (questions, retriever scores) -> blended logits per entry."""

    def __init__(self, folder: Path, candidates: int, entries: list[str], weight: float = 1.0):
        from tunelab.models.predictor import Predictor

        if not Path(folder).is_dir():
            raise TunelabError(f"{folder} is missing: build the app first")
        self.predictor = Predictor(folder)
        self.match = self.predictor.labels.index(MATCH)
        self.candidates, self.entries, self.weight = candidates, entries, weight

    def odds(self, texts: list[str], scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each question's best `candidates` entries by `scores` and the classifier's log-odds of `match` for each."""
        k = min(self.candidates, scores.shape[1])
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        probs = np.asarray(self.predictor.probabilities([t for t in texts for _ in range(k)],
                                                        [self.entries[j] for j in best.ravel()]), dtype=np.float64)
        probs = np.clip(probs, 1e-12, 1.0)
        return best, (np.log(probs[:, self.match]) - np.log(probs[:, 1 - self.match])).reshape(len(texts), k)

    def logits(self, texts: list[str], scores: np.ndarray, scale: float) -> np.ndarray:
        return blend(scores, *self.odds(texts, scores), scale, self.weight)
