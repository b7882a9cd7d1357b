"""The built recommender in memory: item vectors, users' histories, the item-kNN similarity, the chosen settings;
recommendations for a known user or any history, and new items embedded on arrival.

Scoring a request is the build's hybrid exactly: the text side -- the sequence tower's next-item scores, or the
recency-weighted mean of the last items' vectors against every item vector, whichever the build chose -- and the
item-kNN scores of the last items, both standardised over the catalogue and added. An item added after the build
has no similarities and no trained id embedding, so only its text scores it (the cold-start path the build
measures). Added items are kept in the app's database and loaded again at start.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import sqlalchemy as sa
import torch

from tunelab.apps.recommend.build import (
    HISTORIES, ITEMS, SERVING, SIMILARITY, USERS, VECTORS, command, encoder_folder)
from tunelab.apps.recommend.towers import standardised, user_vectors
from tunelab.errors import TunelabError

metadata = sa.MetaData()
added_items = sa.Table(
    "recommend_items", metadata,
    sa.Column("item_id", sa.String(200), primary_key=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),  # float32, the item tower's embedding of the text
)


class Recommender:
    def __init__(self, config):
        import scipy.sparse as sp

        from tunelab.apps.encoder import Encoder
        from tunelab.monitor.store import open_database

        folder = config.app_dir
        if not (folder / SERVING).is_file():
            raise TunelabError(f"{folder / SERVING} is missing: build the app first ({command(config)})")
        self.settings = json.loads((folder / SERVING).read_text())
        items = json.loads((folder / ITEMS).read_text(encoding="utf-8"))
        self.ids: list[str] = items["ids"]
        self.code = {item: i for i, item in enumerate(self.ids)}
        self.vectors = np.load(folder / VECTORS)
        with np.load(folder / HISTORIES) as h:
            flat, starts = h["items"], h["starts"]
        users = json.loads((folder / USERS).read_text(encoding="utf-8"))
        self.histories = {u: flat[starts[i]:starts[i + 1]] for i, u in enumerate(users)}
        self.similarity = sp.load_npz(folder / SIMILARITY).tocsr() if self.settings["knn"] else None
        self.encoder = Encoder(encoder_folder(config), config.tower.max_length)
        self.sequence, self.table = None, None  # with the sequence tower: the model, every item's vector in it
        if self.settings.get("side") == "sequence":
            from tunelab.apps.recommend.sequence import load

            self.sequence = load(folder, self.vectors)
            with torch.no_grad():
                self.table = self.sequence.table()
        self.lock = threading.Lock()  # items are added while requests are scored
        self.engine = open_database(config.database_url())
        metadata.create_all(self.engine)
        with self.engine.connect() as db:
            rows = db.execute(sa.select(added_items)).all()
        self._append([r.item_id for r in rows], np.stack([np.frombuffer(r.vector, np.float32) for r in rows])
                     if rows else np.zeros((0, self.vectors.shape[1]), np.float32))

    def _append(self, ids: list[str], vectors: np.ndarray) -> None:
        if self.sequence is not None:  # an added item's vector is its text's projection alone
            with torch.no_grad():
                added = self.sequence.text(torch.as_tensor(vectors, dtype=torch.float32))
        with self.lock:
            if self.sequence is not None:
                self.table = torch.cat([self.table, added])
            for item in ids:
                self.code[item] = len(self.ids)
                self.ids.append(item)
            self.vectors = np.concatenate([self.vectors, vectors.astype(np.float32)])

    def history_of(self, user: str) -> np.ndarray | None:
        return self.histories.get(user)

    def codes(self, ids: list[str]) -> tuple[np.ndarray, list[str]]:
        """Item codes of `ids` and the ids the catalogue does not have."""
        known = [self.code[i] for i in ids if i in self.code]
        return np.array(known, dtype=np.int64), [i for i in ids if i not in self.code]

    def recommend(self, history: np.ndarray, k: int, exclude: np.ndarray) -> list[tuple[str, float]]:
        """The top `k` items for a history (time order), leaving out the history and `exclude`."""
        with self.lock:
            vectors, ids, table = self.vectors, list(self.ids), self.table
        if self.sequence is not None:
            scores = (self.sequence.users([history], table) @ table.T).numpy()
        else:
            text = self.settings["text"]
            scores = user_vectors([history], vectors, text["recent"], text["decay"]) @ vectors.T
        weight = self.settings["weight"]
        if self.similarity is not None and weight < 1:
            from tunelab.apps.recommend.baselines import knn_scores

            built = self.similarity.shape[0]
            knn = np.zeros((1, len(ids)), np.float32)
            knn[:, :built] = knn_scores(self.similarity, [history[history < built]], self.settings["knn"]["recent"])
            scores = weight * standardised(scores) + (1 - weight) * standardised(knn)
        scores = scores[0]
        scores[np.concatenate([history, exclude]).astype(np.int64)] = -np.inf
        k = min(k, int(np.isfinite(scores).sum()))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(ids[i], float(scores[i])) for i in top]

    def add(self, items: list[tuple[str, str]]) -> None:
        """New items, embedded now and kept in the database (committed before they are recommended)."""
        vectors = self.encoder.encode([text for _, text in items])
        with self.engine.begin() as db:
            db.execute(added_items.insert(), [{"item_id": i, "text": t, "vector": v.astype(np.float32).tobytes()}
                                              for (i, t), v in zip(items, vectors)])
        self._append([i for i, _ in items], vectors)

    def close(self) -> None:
        self.engine.dispose()
