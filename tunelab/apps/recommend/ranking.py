"""Full-ranking evaluation: each held-out item ranked against every item the user has not interacted with before
it; Recall@k (the held-out item among the top k) and NDCG@k (1 / log2(rank + 2) when it is), averaged over users."""

from __future__ import annotations

import numpy as np

KS = (10, 20)


def ranks(score_users, users: np.ndarray, targets: np.ndarray, histories: list[np.ndarray],
          batch: int = 256) -> np.ndarray:
    """The 0-based rank of each user's target among the items not in their history. `score_users(users)` ->
    (len(users), items) scores."""
    out = np.empty(len(users), dtype=np.int64)
    for start in range(0, len(users), batch):
        chunk = users[start:start + batch]
        scores = np.asarray(score_users(chunk), dtype=np.float64)
        for row, u in enumerate(chunk):
            scores[row, histories[u]] = -np.inf
        target = scores[np.arange(len(chunk)), targets[start:start + batch]]
        # ties are broken against the target (a model that scores everything equal ranks it last among them)
        out[start:start + batch] = (scores >= target[:, None]).sum(axis=1) - 1
    return out


def metrics(rank: np.ndarray, ks=KS) -> dict:
    out = {}
    for k in ks:
        hit = rank < k
        out[f"recall_at_{k}"] = float(hit.mean()) if len(rank) else None
        out[f"ndcg_at_{k}"] = float(np.where(hit, 1 / np.log2(rank + 2), 0).mean()) if len(rank) else None
    return out


def coverage(score_users, users: np.ndarray, histories: list[np.ndarray], items: int, k: int = 10,
             batch: int = 256) -> float:
    """Share of the catalogue that appears in at least one user's top k."""
    shown = np.zeros(items, dtype=bool)
    for start in range(0, len(users), batch):
        chunk = users[start:start + batch]
        scores = np.asarray(score_users(chunk), dtype=np.float64)
        for row, u in enumerate(chunk):
            scores[row, histories[u]] = -np.inf
        shown[np.argpartition(-scores, k, axis=1)[:, :k].ravel()] = True
    return float(shown.mean())
