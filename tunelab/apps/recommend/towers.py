"""The text two-tower recommender and its hybrid with a collaborative model.

Item tower: a sentence encoder over the item's text (title, other text columns, training tags), fine-tuned with
in-batch negatives on consecutive training interactions -- (an item, the next item the same user took) -- so that
items taken one after the other embed close together. User tower: the recency-weighted mean of the embeddings of
the user's last `recent` items (weight `decay` per step back). A user's score for an item is the cosine of the
two. Items with no interactions get their embedding from their text alone, so they can be recommended at once.

Hybrid: per user, the two-tower scores and a collaborative model's scores are standardised over the catalogue
and added with weight `weight` for the text side (tuned on validation).
"""

from __future__ import annotations

import numpy as np


def sequence_pairs(histories: list[np.ndarray], texts: list[str], max_pairs: int, seed: int) -> list[tuple[str, str, str]]:
    """(text of an item, text of the next item the same user took, the next item's code) for consecutive training
    interactions, at most `max_pairs` drawn at random (seeded)."""
    firsts = np.concatenate([h[:-1] for h in histories if len(h) > 1] or [np.zeros(0, np.int64)])
    nexts = np.concatenate([h[1:] for h in histories if len(h) > 1] or [np.zeros(0, np.int64)])
    keep = firsts != nexts
    firsts, nexts = firsts[keep], nexts[keep]
    if len(firsts) > max_pairs:
        chosen = np.sort(np.random.default_rng(seed).choice(len(firsts), max_pairs, replace=False))
        firsts, nexts = firsts[chosen], nexts[chosen]
    return [(texts[a], texts[b], str(b)) for a, b in zip(firsts, nexts)]


def user_vectors(histories: list[np.ndarray], item_vectors: np.ndarray, recent: int, decay: float) -> np.ndarray:
    """(users, dimensions): each user's recency-weighted mean of their last `recent` items, unit length (zero for
    a user with no history)."""
    out = np.zeros((len(histories), item_vectors.shape[1]), np.float32)
    for u, h in enumerate(histories):
        last = h[-recent:]
        if len(last):
            weights = decay ** np.arange(len(last) - 1, -1, -1, dtype=np.float32)
            v = weights @ item_vectors[last]
            out[u] = v / max(float(np.linalg.norm(v)), 1e-12)
    return out


def text_scorer(histories: list[np.ndarray], item_vectors: np.ndarray, recent: int, decay: float):
    users_v = user_vectors(histories, item_vectors, recent, decay)
    return lambda users: users_v[users] @ item_vectors.T


def standardised(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float32)
    return (scores - scores.mean(axis=1, keepdims=True)) / (scores.std(axis=1, keepdims=True) + 1e-6)


def hybrid_scorer(text, collaborative, weight: float):
    return lambda users: weight * standardised(text(users)) + (1 - weight) * standardised(collaborative(users))
