"""The collaborative baselines every recommender is measured against, each fitted on training interactions only:
popularity, item-kNN (cosine between items' user sets, the `neighbours` most similar kept), and matrix
factorisation by ALS and BPR (the `implicit` package). Each is a scorer: users -> (users, items) scores, given the
histories it ranks from (for the test cases, training plus the validation item)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def history_matrix(histories: list[np.ndarray], items: int) -> sp.csr_matrix:
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.concatenate(histories) if histories else np.zeros(0, dtype=np.int64)
    return sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(len(histories), items))


def popularity(histories: list[np.ndarray], items: int):
    counts = np.bincount(np.concatenate(histories), minlength=items).astype(np.float32)
    return lambda users: np.broadcast_to(counts, (len(users), items))


def knn_similarity(histories: list[np.ndarray], items: int, neighbours: int, chunk: int = 1024) -> sp.csr_matrix:
    """Cosine similarity of items over the users who took them, each item's `neighbours` most similar kept."""
    x = history_matrix(histories, items)
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
    xn = (x @ sp.diags(np.where(norms > 0, 1 / np.maximum(norms, 1e-12), 0).astype(np.float32))).tocsc()
    rows, cols, vals = [], [], []
    k = min(neighbours, items - 1)
    for start in range(0, items, chunk):
        block = (xn[:, start:start + chunk].T @ xn).toarray()  # (chunk, items)
        block[np.arange(len(block)), np.arange(start, start + len(block))] = 0  # not its own neighbour
        top = np.argpartition(-block, k, axis=1)[:, :k]
        rows.append(np.repeat(np.arange(start, start + len(block)), k))
        cols.append(top.ravel())
        vals.append(np.take_along_axis(block, top, axis=1).ravel())
    similarity = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                               shape=(items, items), dtype=np.float32)
    similarity.eliminate_zeros()
    return similarity


def knn_scores(similarity: sp.csr_matrix, histories: list[np.ndarray], recent: int | None) -> np.ndarray:
    """(len(histories), items): each item's summed similarity to the histories' items (their last `recent`)."""
    h = history_matrix([h if recent is None else h[-recent:] for h in histories], similarity.shape[0])
    return (h @ similarity).toarray()


def item_knn(histories: list[np.ndarray], items: int, neighbours: int = 100, recent: int | None = None):
    """A user's score for an item: the sum of its similarities to the user's items (the last `recent` of them,
    when set: the recency the text model's user tower may use too)."""
    similarity = knn_similarity(histories, items, neighbours)
    return lambda users: knn_scores(similarity, [histories[u] for u in users], recent)


def factorisation(kind: str, histories: list[np.ndarray], items: int, factors: int, regularization: float,
                  iterations: int, seed: int, alpha: float = 1.0, learning_rate: float = 0.01):
    """ALS (confidence 1 + alpha for an interaction) or BPR from `implicit`, fitted on the histories."""
    from threadpoolctl import threadpool_limits

    x = history_matrix(histories, items)
    import warnings

    with threadpool_limits(1, "blas"), warnings.catch_warnings():  # implicit's own threads; BLAS's only contend
        warnings.filterwarnings("ignore", message="OpenBLAS is configured", category=RuntimeWarning)
        if kind == "als":
            from implicit.cpu.als import AlternatingLeastSquares

            model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                            iterations=iterations, random_state=seed, calculate_training_loss=False)
        else:
            from implicit.cpu.bpr import BayesianPersonalizedRanking

            model = BayesianPersonalizedRanking(factors=factors, learning_rate=learning_rate,
                                                regularization=regularization, iterations=iterations,
                                                random_state=seed)
        model.fit(x, show_progress=False)
    users_f, items_f = np.asarray(model.user_factors), np.asarray(model.item_factors)
    return lambda users: users_f[users] @ items_f.T


GRIDS = {  # each baseline's main settings, tuned on validation NDCG@10 as the text models' are
    "popularity": [{}],
    "item_knn": [{"neighbours": n, "recent": r} for n in (5, 10, 20, 50, 100, 200) for r in (None, 20, 5, 2)],
    "als": [{"factors": f, "regularization": r, "alpha": a, "iterations": 15}
            for f in (32, 64, 128, 256) for r in (0.001, 0.01, 0.1) for a in (1.0, 10.0)],
    "bpr": [{"factors": f, "learning_rate": lr, "regularization": r, "iterations": 100}
            for f in (32, 64, 128) for lr in (0.01, 0.05) for r in (0.001, 0.01)],
}


def fit(name: str, histories: list[np.ndarray], items: int, settings: dict, seed: int = 42):
    if name == "popularity":
        return popularity(histories, items)
    if name == "item_knn":
        return item_knn(histories, items, **settings)
    return factorisation(name, histories, items, seed=seed, **settings)
