"""Model inputs: tokenise a prepared split once (cached), pad each batch to its longest row."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tunelab.hub import rust_tokenizer


@dataclass
class Encoded:
    """A tokenised split: token ids per row (flat + offsets), the task's targets, and what else the task keeps.

    A row is one model input. For classification a row is an example; a task may cut an example into several
    rows (token classification: windows of a long sentence) and say in `extras` how they map back.
    """

    ids: np.ndarray  # all token ids, concatenated (int32)
    type_ids: np.ndarray | None  # segment ids for sentence pairs, same layout
    offsets: np.ndarray  # row i is ids[offsets[i]:offsets[i+1]]
    targets: np.ndarray | None  # per row (classification) or per token, laid out as ids (token classification)
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # task-specific arrays, cached with the rest
    contexts: list | None = None  # per example, what answering needs besides the outputs (never cached)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def read_split(path: Path) -> dict[str, list]:
    """A prepared split as columns."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pydict()
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return {k: [r[k] for r in rows] for k in (rows[0] if rows else {})}


def tokenize(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, batch_size: int = 4096):
    """Token ids (and segment ids) per text, truncated to max_length, with the fast Rust tokenizer."""
    backend = rust_tokenizer(tokenizer, max_length)
    ids, type_ids = [], []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        pair = pairs[start:start + batch_size] if pairs is not None else None
        if backend is not None:
            for enc in backend.encode_batch_fast(chunk if pair is None else list(zip(chunk, pair))):
                ids.append(enc.ids)
                type_ids.append(enc.type_ids)
        else:
            enc = tokenizer(chunk, pair, truncation=True, max_length=max_length, return_token_type_ids=True)
            ids += enc["input_ids"]
            type_ids += enc.get("token_type_ids", [[0] * len(x) for x in enc["input_ids"]])
    return ids, type_ids


def encode_texts(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int) -> Encoded:
    """Texts (and second texts) as rows of token ids, truncated to max_length; no targets."""
    ids, type_ids = tokenize(tokenizer, texts, pairs, max_length)
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in ids], out=offsets[1:])
    flat = np.fromiter((t for row in ids for t in row), dtype=np.int32, count=int(offsets[-1]))
    flat_types = (np.fromiter((t for row in type_ids for t in row), dtype=np.int8, count=int(offsets[-1]))
                  if pairs is not None else None)
    return Encoded(flat, flat_types, offsets, None)


def cached_encode(path: Path, cache_dir: Path, tokenizer, task, max_length: int, tokenizer_id: str) -> Encoded:
    """Encode a prepared split once (task.encode); later runs load the arrays (npz, no pickle) if nothing changed."""
    stat = path.stat()
    key = hashlib.sha256(json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, tokenizer_id, max_length,
                                     task.cache_key()]).encode()).hexdigest()[:16]
    cache = cache_dir / f"{path.stem}-{key}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            extras = {k.removeprefix("extra_"): z[k] for k in z.files if k.startswith("extra_")}
            return Encoded(z["ids"], z["type_ids"] if "type_ids" in z else None, z["offsets"], z["targets"], extras)
    enc = task.encode(tokenizer, read_split(path), max_length)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for old in cache_dir.glob(f"{path.stem}-*.npz"):
        old.unlink()
    arrays = {"ids": enc.ids, "offsets": enc.offsets, "targets": enc.targets,
              **{f"extra_{k}": v for k, v in enc.extras.items()}}
    if enc.type_ids is not None:
        arrays["type_ids"] = enc.type_ids
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, cache)
    return enc


def eval_batches(lengths: np.ndarray, batch_size: int, call_tokens: int = 32) -> list[np.ndarray]:
    """Batches for inference, longest first (the caller puts results back in row order).

    Rows are sorted by length, then cut where padding would cost more than one more model call: a batch
    costs `call_tokens` (the fixed cost of a call, in tokens' worth of compute) plus rows x its longest row,
    and the cuts minimise the total (dynamic programming over the sorted rows, at most batch_size a batch).
    Padded tokens cost as much as real ones: 32 random SST-2 sentences padded to their longest are ~2x the
    real tokens (measured in BENCHMARKS.md, "Serving").
    """
    order = np.argsort(-lengths, kind="stable")
    n = len(order)
    width = lengths[order].astype(np.int64)
    cost = np.zeros(n + 1)  # cost[j]: the cheapest way to run rows j.. (sorted) to the end
    end = np.zeros(n + 1, dtype=np.int64)
    for j in range(n - 1, -1, -1):
        stops = np.arange(j + 1, min(n, j + batch_size) + 1)
        options = call_tokens + (stops - j) * width[j] + cost[stops]
        best = int(options.argmin())
        cost[j], end[j] = options[best], stops[best]
    batches, j = [], 0
    while j < n:
        batches.append(order[j:end[j]])
        j = int(end[j])
    return batches


def token_targets(enc: Encoded, rows: np.ndarray, width: int, ignore: int = -100) -> torch.Tensor:
    """Targets laid out per token (token classification, causal LM), padded with `ignore` to the batch's width."""
    out = np.full((len(rows), width), ignore, dtype=np.int64)
    for r, row in enumerate(rows):
        start, end = enc.offsets[row], enc.offsets[row + 1]
        out[r, : end - start] = enc.targets[start:end]
    return torch.from_numpy(out)


def collate(enc: Encoded, rows: np.ndarray, pad_id: int, with_types: bool, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pad the chosen rows to the longest of them (dynamic padding), rounded up to a multiple of `multiple`."""
    starts, ends = enc.offsets[rows], enc.offsets[rows + 1]
    width = -(-int((ends - starts).max()) // multiple) * multiple
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    types = np.zeros((len(rows), width), dtype=np.int64) if with_types else None
    for r, (s, e) in enumerate(zip(starts, ends)):
        input_ids[r, : e - s] = enc.ids[s:e]
        mask[r, : e - s] = 1
        if types is not None and enc.type_ids is not None:
            types[r, : e - s] = enc.type_ids[s:e]
    if "positions" in enc.extras:  # packed rows (causal LM): positions restart at each example, padding included,
        # and no attention mask: transformers then lets each example attend to itself only
        positions = np.tile(np.arange(width, dtype=np.int64), (len(rows), 1))
        for r, (s, e) in enumerate(zip(starts, ends)):
            positions[r, : e - s] = enc.extras["positions"][s:e]
            positions[r, e - s:] = np.arange(width - (e - s))
        return {"input_ids": torch.from_numpy(input_ids), "position_ids": torch.from_numpy(positions)}
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
    return batch
