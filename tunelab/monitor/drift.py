"""Drift of a window of live predictions against the model's reference profile.

Statistics are scipy's and scikit-learn's (chi-square, Kolmogorov-Smirnov, logistic regression, ROC AUC);
only the population stability index, which neither has, is written here (one line of arithmetic).
"""

from __future__ import annotations

import numpy as np

PSI_BINS = 10
EPS = 1e-4  # floor of a bin's share: an empty bin would make PSI infinite


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two count (or share) vectors over the same bins."""
    e = np.maximum(np.asarray(expected, float) / max(np.sum(expected), 1e-12), EPS)
    a = np.maximum(np.asarray(actual, float) / max(np.sum(actual), 1e-12), EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_continuous(reference: np.ndarray, live: np.ndarray, bins: int = PSI_BINS) -> float:
    """PSI with bins at the reference's quantiles (ties merged)."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1)
    cur = np.bincount(np.searchsorted(edges, live, side="right"), minlength=len(edges) + 1)
    return psi(ref, cur)


def label_drift(reference_counts: list[int], live_counts: list[int]) -> dict:
    from scipy.stats import chi2_contingency

    table = np.array([reference_counts, live_counts], dtype=float)
    table = table[:, table.sum(0) > 0]
    if table.shape[1] > 1 and (table.sum(1) > 0).all():
        p = float(chi2_contingency(table)[1])
    else:  # a window in which no label was predicted at all (multi-label) is certainly not the reference
        p = 0.0 if table[0].sum() > 0 and table[1].sum() == 0 else float("nan")
    return {"label_psi": psi(reference_counts, live_counts), "label_chi2_p": p}


def continuous_drift(name: str, reference: np.ndarray, live: np.ndarray) -> dict:
    from scipy.stats import ks_2samp

    return {f"{name}_psi": psi_continuous(reference, live), f"{name}_ks_p": float(ks_2samp(reference, live).pvalue)}


def embedding_auc(reference: np.ndarray, live: np.ndarray, seed: int = 0) -> float:
    """How well a classifier tells live embeddings from the reference ones (cross-validated ROC AUC):
    0.5 = indistinguishable, 1.0 = a different population (3 folds: a check costs ~0.2 s of CPU). Duplicate live texts should be removed first,
    or the classifier could learn a repeated text and score it in another fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    if len(reference) > 2 * len(live):  # a balanced-ish pair: the reference sample need not dwarf the window
        reference = reference[rng.permutation(len(reference))[:2 * len(live)]]
    x = np.vstack([reference, live])
    y = np.r_[np.zeros(len(reference)), np.ones(len(live))]
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300))
    scores = cross_val_predict(classifier, x, y, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


def load_statistics() -> None:
    """Import scipy.stats and the scikit-learn parts now (seconds of CPU, once): done at server start, not in
    the first check, where it took a tenth of a busy server's throughput for a while (measured)."""
    import scipy.stats  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import sklearn.pipeline  # noqa: F401
    import sklearn.preprocessing  # noqa: F401


def window_drift(profile: dict, labels: list[int], confidences: np.ndarray, lengths: np.ndarray,
                 unknown_rate: float, embeddings: np.ndarray | None) -> dict:
    """Every drift figure of one live window (figures it cannot compute are left out)."""
    figures = label_drift(profile["prediction_counts"], labels)
    figures.update(continuous_drift("length", np.asarray(profile["lengths"]), lengths))
    figures.update(continuous_drift("confidence", np.asarray(profile["confidence"]), confidences))
    figures["unknown_rate"] = unknown_rate
    figures["unknown_rate_increase"] = unknown_rate - profile["unknown_rate"]
    if embeddings is not None and profile.get("embeddings") is not None and len(embeddings) >= 20:
        figures["embedding_auc"] = embedding_auc(profile["embeddings"], embeddings)
    return figures
