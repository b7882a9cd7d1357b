"""FAQ matching: a customer question -> a calibrated probability per FAQ entry, and the hand-off threshold.

The index holds, per entry, the embeddings of its question and (by default) of its training phrasings; an entry's
score for a question is the best cosine among them: exact search (numpy, a matrix product and a per-entry max) up to
`exact_up_to` vectors, beyond that an HNSW graph (FAISS, when installed) that reads the `candidates` nearest vectors;
an entry with none among them scores as the farthest of them (calibration and threshold are fitted on the same
search, so they account for what it misses).
Probabilities are softmax(scale * score / T) over the entries (with a re-ranker, rerank.py: over the retriever's
best candidates, their logits blended with the re-ranker's), with T fitted on validation (tasks/calibration.py),
so that the top probability is a confidence a threshold can be set on: the lowest threshold whose answers on
validation are right at least `target_precision` of the time. That confidence is relative (one entry against
the others), so a question the FAQ does not cover at all can still single one entry out: a second rule hands off
a question whose best cosine is below what all but `out_of_scope_quantile` of the validation questions reached.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_FILE, GRAPH_FILE, FAQ_FILE, CALIBRATION_FILE = "index.npz", "index.faiss", "faq.json", "calibration.json"


@dataclass
class FaqIndex:
    vectors: np.ndarray  # (n, dimensions) float32, unit length, grouped by entry
    starts: np.ndarray  # where each entry's vectors begin (every entry has at least one)
    graph: object = None  # a FAISS HNSW index over `vectors` (inner product): approximate search
    candidates: int = 64

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """(queries, entries): each entry's best cosine with each query."""
        if self.graph is None:
            return np.maximum.reduceat(queries @ self.vectors.T, self.starts, axis=1)
        found, rows = self.graph.search(np.ascontiguousarray(queries, dtype=np.float32),
                                        min(self.candidates, len(self.vectors)))
        entries = np.searchsorted(self.starts, rows, side="right") - 1
        missing = np.where(rows >= 0, found, np.inf).min(axis=1, keepdims=True)  # the farthest candidate
        out = np.repeat(missing, len(self.starts), axis=1).astype(np.float32)
        hit = rows >= 0  # FAISS pads with -1 when the graph yields fewer than asked
        np.maximum.at(out, (np.nonzero(hit)[0], entries[hit]), found[hit])
        return out

    def with_graph(self, candidates: int, links: int = 32) -> FaqIndex:
        """This index searched through an HNSW graph (FAISS)."""
        import faiss

        graph = faiss.IndexHNSWFlat(self.vectors.shape[1], links, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = 200
        graph.add(np.ascontiguousarray(self.vectors, dtype=np.float32))
        graph.hnsw.efSearch = max(2 * candidates, 128)
        return FaqIndex(self.vectors, self.starts, graph, candidates)

    def save(self, folder: Path) -> None:
        np.savez(folder / INDEX_FILE, vectors=self.vectors, starts=self.starts, candidates=self.candidates)
        (folder / GRAPH_FILE).unlink(missing_ok=True)
        if self.graph is not None:
            import faiss

            faiss.write_index(self.graph, str(folder / GRAPH_FILE))

    @classmethod
    def load(cls, folder: Path) -> FaqIndex:
        with np.load(folder / INDEX_FILE, allow_pickle=False) as data:
            index = cls(data["vectors"], data["starts"])
            if "candidates" in data.files:
                index.candidates = int(data["candidates"])
        if (folder / GRAPH_FILE).is_file():
            try:
                import faiss
            except ImportError:
                from tunelab.errors import TunelabError

                raise TunelabError(f"{folder / GRAPH_FILE}: the index was built for FAISS, which is not installed "
                                   "here: pip install 'tunelab[ann]'") from None
            index.graph = faiss.read_index(str(folder / GRAPH_FILE))
            index.graph.hnsw.efSearch = max(2 * index.candidates, 128)
        return index


def choose_search(settings, vectors: int) -> str:
    """exact or faiss, for `vectors` index vectors under the retriever's `search` setting."""
    if settings.search == "exact" or (settings.search == "auto" and vectors <= settings.exact_up_to):
        return "exact"
    try:
        import faiss  # noqa: F401
    except ImportError:
        if settings.search == "faiss":
            from tunelab.errors import ConfigError

            raise ConfigError("retriever.search is faiss, which is not installed: pip install 'tunelab[ann]'") from None
        return "exact"  # auto: the report says that FAISS would have been used
    return "faiss"


def build_index(encoder, faq, phrasings: list[tuple[str, str]]) -> FaqIndex:
    """Each entry's question and its `phrasings` ((text, entry id) pairs), encoded and grouped by entry."""
    texts_of: dict[str, list[str]] = {entry: [question] for entry, question in zip(faq.ids, faq.questions)}
    for text, entry in phrasings:
        texts_of[entry].append(text)
    texts = [t for entry in faq.ids for t in texts_of[entry]]
    starts = np.cumsum([0] + [len(texts_of[entry]) for entry in faq.ids[:-1]])
    return FaqIndex(encoder.encode(texts), starts.astype(np.int64))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def threshold_for_precision(confidence: np.ndarray, correct: np.ndarray, target: float) -> dict:
    """The lowest confidence threshold whose answers (confidence >= it) are right at least `target` of the time,
    with the coverage and precision it gives; when none is, every question is handed off (threshold above 1)."""
    order = np.argsort(-confidence, kind="stable")
    ranked = confidence[order]
    precision = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    cut = np.append(ranked[:-1] > ranked[1:], True)  # a threshold cannot split equal confidences
    ok = np.flatnonzero((precision >= target) & cut)
    if not len(ok):
        return {"threshold": 1.000001, "coverage": 0.0, "precision": None}
    k = int(ok[-1])
    return {"threshold": float(ranked[k]), "coverage": (k + 1) / len(order), "precision": float(precision[k])}


def answered(given: np.ndarray, correct: np.ndarray) -> dict:
    """Coverage and precision of the answers `given` (the others handed off)."""
    return {"coverage": float(given.mean()), "precision": float(correct[given].mean()) if given.any() else None,
            "answered": int(given.sum()), "handed_off": int((~given).sum())}


def ranking_metrics(probs: np.ndarray, targets: np.ndarray) -> dict:
    """Recall@1, @3, @10 and MRR@10 of the true entries under `probs` (queries, entries)."""
    rank = (probs > probs[np.arange(len(targets)), targets][:, None]).sum(axis=1)  # 0: the true entry is first
    out = {f"recall_at_{k}": float((rank < k).mean()) for k in (1, 3, 10)}
    out["mrr_at_10"] = float(np.where(rank < 10, 1.0 / (rank + 1), 0.0).mean())
    return out


class Matcher:
    """Customer questions -> probabilities per FAQ entry, from an encoder, the folder build() wrote and the
    re-ranker, when the app has one."""

    def __init__(self, encoder, folder: Path, reranker=None):
        self.encoder, self.folder, self.reranker = encoder, Path(folder), reranker
        self.index = FaqIndex.load(self.folder)
        faq = json.loads((self.folder / FAQ_FILE).read_text(encoding="utf-8"))
        self.ids, self.questions, self.answers = faq["ids"], faq["questions"], faq["answers"]
        calibration = json.loads((self.folder / CALIBRATION_FILE).read_text())
        self.scale, self.temperature = calibration["scale"], calibration["temperature"]
        self.threshold, self.min_similarity = calibration["threshold"], calibration["min_similarity"]
        self.validation = calibration.get("validation", {})

    def calibrated(self, texts: list[str], scores: np.ndarray) -> np.ndarray:
        """Questions and their index scores (questions, entries) -> probabilities per entry."""
        logits = self.scale * scores if self.reranker is None else self.reranker.logits(texts, scores, self.scale)
        return softmax(logits / self.temperature).astype(np.float32)

    def hands_off(self, confidence: float, similarity: float) -> bool:
        """Whether a question goes to a person: not sure enough which entry, or unlike every question the FAQ
        answers (its best cosine below the out-of-scope floor)."""
        return confidence < self.threshold or similarity < self.min_similarity


def write_matcher(folder: Path, faq, index: FaqIndex, calibration: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    index.save(folder)
    (folder / FAQ_FILE).write_text(json.dumps({"ids": faq.ids, "questions": faq.questions, "answers": faq.answers},
                                              ensure_ascii=False), encoding="utf-8")
    (folder / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=1))
