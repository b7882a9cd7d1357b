"""Classification metrics, gathered batch by batch.

The collector keeps a few bytes per example (true id, predicted id, confidence; per-label probabilities
only for multi-label) and never the logits, texts or hidden states, so memory stays flat in practice
over large evaluation sets. The numbers themselves come from scikit-learn.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


class Collector:
    """Accumulates one split's predictions; `result()` turns them into metrics."""

    def __init__(self, labels: list[str], multi_label: bool, temperature: float = 1.0):
        """`temperature`: the one the model's scores were calibrated with (tasks/calibration.py); the result
        then also gives the calibration error the scores had before (`ece_uncalibrated`)."""
        self.labels, self.multi_label, self.temperature = labels, multi_label, temperature
        self._true: list[np.ndarray] = []
        # single-label: (n, 3) = [predicted id, confidence, confidence before calibration] (+ p(positive))
        self._probs: list[np.ndarray] = []

    def add(self, probs: np.ndarray, targets: np.ndarray, contexts=None) -> None:
        if self.multi_label:
            self._true.append(targets.astype(bool))
            self._probs.append(probs.astype(np.float16))
            return
        from tunelab.tasks.calibration import uncalibrated

        pred = probs.argmax(-1)
        cols = [pred.astype(np.float32), probs.max(-1).astype(np.float32),
                uncalibrated(probs, self.temperature).max(-1).astype(np.float32)]
        if probs.shape[1] == 2:
            cols.append(probs[:, 1].astype(np.float32))
        self._true.append(targets.astype(np.int32))
        self._probs.append(np.stack(cols, axis=1))

    def __len__(self) -> int:
        return sum(len(t) for t in self._true)

    def result(self, threshold: float | None = None, calibration_bins: int = 15) -> dict:
        """The metrics. Multi-label decides at `threshold`, or (None) at the one with the best micro-F1 here."""
        if not self._true:
            return {"examples": 0}
        y = np.concatenate(self._true)
        p = np.concatenate(self._probs)
        if self.multi_label:
            p = p.astype(np.float32)
            return multilabel_metrics(y, p, self.labels, best_threshold(y, p) if threshold is None else threshold)
        out = single_label_metrics(y, p, self.labels, calibration_bins)
        if self.temperature != 1.0:
            out["temperature"] = float(self.temperature)
            out["ece_uncalibrated"] = float(calibration(p[:, 2], p[:, 0] == y, calibration_bins)[0])
        return out


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int) -> tuple[float, list[dict]]:
    """Expected calibration error and the reliability-diagram bins (equal-width in confidence)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        if n:
            acc, conf = float(correct[mask].mean()), float(confidence[mask].mean())
            ece += n / len(confidence) * abs(acc - conf)
            table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": n, "accuracy": acc, "confidence": conf})
    return ece, table


def single_label_metrics(y: np.ndarray, p: np.ndarray, labels: list[str], bins: int = 15) -> dict:
    pred = p[:, 0].astype(np.int64)
    ids = list(range(len(labels)))
    prec, rec, f1, support = skm.precision_recall_fscore_support(y, pred, labels=ids, zero_division=0)
    ece, table = calibration(p[:, 1], pred == y, bins)
    out = {
        "examples": int(len(y)),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "macro_f1": float(skm.f1_score(y, pred, labels=ids, average="macro", zero_division=0)),
        "micro_f1": float(skm.f1_score(y, pred, labels=ids, average="micro", zero_division=0)),
        "weighted_f1": float(skm.f1_score(y, pred, labels=ids, average="weighted", zero_division=0)),
        "ece": float(ece),
        "per_class": {lab: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                            "support": int(support[i])} for i, lab in enumerate(labels)},
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=ids).tolist(),
        "reliability": table,
    }
    if len(labels) == 2 and p.shape[1] > 3 and len(np.unique(y)) == 2:
        out["roc_auc"] = float(skm.roc_auc_score(y, p[:, 3]))
    return out


def multilabel_metrics(y: np.ndarray, probs: np.ndarray, labels: list[str], threshold: float) -> dict:
    pred = probs >= threshold
    f1 = skm.f1_score(y, pred, average=None, zero_division=0)
    return {
        "examples": int(len(y)),
        "threshold": float(threshold),
        "subset_accuracy": float(skm.accuracy_score(y, pred)),
        "micro_f1": float(skm.f1_score(y, pred, average="micro", zero_division=0)),
        "macro_f1": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
        "per_label": {lab: {"f1": float(f1[i]), "support": int(y[:, i].sum())} for i, lab in enumerate(labels)},
    }


def best_threshold(y: np.ndarray, probs: np.ndarray) -> float:
    """The multi-label decision threshold with the highest micro-F1 (ties: the one nearest 0.5)."""
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    scores = [skm.f1_score(y, probs >= t, average="micro", zero_division=0) for t in grid]
    best = max(scores)
    return float(min((t for t, s in zip(grid, scores) if s >= best - 1e-12), key=lambda t: abs(t - 0.5)))
