"""The sequence user tower: a small causal transformer over the user's recent items (SASRec's shape), trained on
(history -> next item) with every catalogue item as a negative (softmax cross-entropy over the catalogue).

An item's vector is a learned id embedding plus a learned projection of its text embedding (the item tower's
output, fixed here). Items with no training interactions have no trained id embedding, so theirs is left out and
the text projection alone places them: during training the id part of each item is dropped at random
(`id_dropout`) so that the text projection learns to stand on its own -- the cold-start path. The same vectors are
the transformer's input and its output layer, as in SASRec.

Training is early-stopped on validation NDCG@10 (the best epoch's weights are kept). The weights are saved as
safetensors with a small JSON of their shape, settings and training figures, so the server rebuilds the model
without pickles and a build reuses a tower trained on the same data with the same settings.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

WEIGHTS, SHAPE = "sequence.safetensors", "sequence.json"


@dataclass
class Shape:
    items: int
    text_dim: int
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2


class SequenceModel(nn.Module):
    def __init__(self, shape: Shape, text_vectors: np.ndarray, trained_items: np.ndarray):
        super().__init__()
        self.shape = shape
        self.ids = nn.Embedding(shape.items, shape.dim)
        nn.init.normal_(self.ids.weight, std=0.02)
        self.text = nn.Linear(shape.text_dim, shape.dim, bias=False)
        self.positions = nn.Embedding(shape.max_len, shape.dim)
        layer = nn.TransformerEncoderLayer(shape.dim, shape.heads, 2 * shape.dim, shape.dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, shape.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(shape.dim)
        self.drop = nn.Dropout(shape.dropout)
        self.register_buffer("text_vectors", torch.as_tensor(text_vectors, dtype=torch.float32), persistent=False)
        self.register_buffer("trained", torch.as_tensor(trained_items, dtype=torch.float32))

    def table(self, id_dropout: float = 0.0) -> torch.Tensor:
        """(items, dim): every item's vector; the id part only for items with training interactions."""
        keep = self.trained
        if id_dropout:
            keep = keep * (torch.rand_like(keep) >= id_dropout)
        return self.ids.weight * keep[:, None] + self.text(self.text_vectors)

    def forward(self, sequences: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """sequences: (batch, length) item codes, -1 = padding on the left -> (batch, length, dim)."""
        pad = sequences < 0
        # embedding(), not table[...]: its backward adds the gradients in a fixed order, so one seed gives one tower
        # (indexing's backward, index_put with accumulate, does not on CPU)
        x = nn.functional.embedding(sequences.clamp(min=0), table) * math.sqrt(self.shape.dim)
        x = x + self.positions.weight[-sequences.shape[1]:]
        x = self.drop(x.masked_fill(pad[..., None], 0))
        # causal attention only; padding is a zero input on the left, read the same way in training and serving
        causal = nn.Transformer.generate_square_subsequent_mask(sequences.shape[1])
        h = self.encoder(x, mask=causal, is_causal=True)
        return self.norm(h)

    @torch.no_grad()
    def users(self, histories: list[np.ndarray], table: torch.Tensor) -> torch.Tensor:
        """(len(histories), dim): each history's state after its last max_len items, against `table`'s items."""
        self.eval()
        batch = left_padded([h[-self.shape.max_len:] for h in histories], self.shape.max_len)
        return self(torch.as_tensor(batch), table)[:, -1]

    @torch.no_grad()
    def scores(self, histories: list[np.ndarray]) -> np.ndarray:
        """(len(histories), items): each history's next-item scores."""
        table = self.table()
        return (self.users(histories, table) @ table.T).numpy()


def left_padded(sequences: list[np.ndarray], length: int) -> np.ndarray:
    out = np.full((len(sequences), length), -1, dtype=np.int64)
    for row, s in enumerate(sequences):
        if len(s):
            out[row, -len(s):] = s[-length:]
    return out


def windows(histories: list[np.ndarray], length: int) -> np.ndarray:
    """Each history cut into windows of length + 1 items from the newest back, left-padded: the training sequences
    of one pass (shuffled by the caller)."""
    out = []
    for h in histories:
        if len(h) < 2:
            continue
        cuts = range(len(h), 1, -length)  # consecutive windows share one item: each transition is a target once
        out.extend(h[max(c - length - 1, 0):c] for c in cuts)
    return left_padded(out, length + 1)


def train_sequence(histories: list[np.ndarray], text_vectors: np.ndarray, validate, settings, seed: int,
                   quiet: bool = False) -> tuple[SequenceModel, dict]:
    """Fit on the training histories; `validate(model)` -> validation NDCG@10, checked after every epoch; stops
    after `settings.patience` epochs without a gain and keeps the best epoch's weights."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    trained = np.zeros(len(text_vectors), dtype=bool)
    trained[np.concatenate(histories)] = True
    shape = Shape(items=len(text_vectors), text_dim=text_vectors.shape[1], dim=settings.dim, layers=settings.layers,
                  heads=settings.heads, max_len=settings.max_len, dropout=settings.dropout)
    model = SequenceModel(shape, text_vectors, trained)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    best, best_state, since, history = -1.0, None, 0, []
    started = time.perf_counter()
    bar = tqdm(range(settings.epochs), desc="sequence tower", unit="epoch", disable=quiet)
    for epoch in bar:
        model.train()
        data = windows(histories, settings.max_len)
        data = data[rng.permutation(len(data))]
        total = 0.0
        for start in range(0, len(data), settings.batch_size):
            batch = torch.as_tensor(data[start:start + settings.batch_size])
            inputs, targets = batch[:, :-1], batch[:, 1:]
            table = model.table(settings.id_dropout)
            hidden = model(inputs, table)
            wanted = targets >= 0
            logits = hidden[wanted] @ table.T
            loss = nn.functional.cross_entropy(logits, targets[wanted])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        ndcg = validate(model)
        history.append({"epoch": epoch + 1, "loss": total / len(data), "validation_ndcg_at_10": ndcg})
        bar.set_postfix(loss=f"{total / len(data):.3f}", ndcg=f"{ndcg:.4f}")
        if ndcg > best:
            best, since = ndcg, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since += 1
            if since >= settings.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return model, {"epochs_run": len(history), "best_epoch": max(history, key=lambda r: r["validation_ndcg_at_10"])["epoch"],
                   "validation_ndcg_at_10": best, "seconds": round(time.perf_counter() - started, 1),
                   "curve": history}


def scorer(model: SequenceModel, histories: list[np.ndarray]):
    """users -> their next-item scores from `histories` (the build's scorer shape)."""
    return lambda users: model.scores([histories[u] for u in users])


def fingerprint(histories: list[np.ndarray], text_vectors: np.ndarray, settings: dict, seed: int) -> str:
    """What a trained tower depends on: the training histories, the item text vectors, the settings and the seed."""
    import hashlib

    digest = hashlib.sha256(json.dumps([settings, seed], sort_keys=True).encode())
    for h in histories:
        digest.update(np.asarray(h, np.int64).tobytes() + b"|")
    digest.update(np.ascontiguousarray(text_vectors, np.float32).tobytes())
    return digest.hexdigest()


def save(model: SequenceModel, folder: Path, about: dict | None = None) -> None:
    """The weights as safetensors, the shape and `about` (fingerprint, training figures) as JSON; the JSON is written
    last, so a tower whose JSON is there is whole."""
    from safetensors.torch import save_file

    (folder / SHAPE).unlink(missing_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS))
    (folder / SHAPE).write_text(json.dumps({"shape": asdict(model.shape), **(about or {})}))


def saved_about(folder: Path) -> dict | None:
    """The JSON beside a saved tower (None without one)."""
    path = folder / SHAPE
    return json.loads(path.read_text()) if path.is_file() and (folder / WEIGHTS).is_file() else None


def load(folder: Path, text_vectors: np.ndarray) -> SequenceModel:
    """The saved tower over the build's item text vectors (the ones it was trained with)."""
    from safetensors.torch import load_file

    weights = load_file(str(folder / WEIGHTS))
    model = SequenceModel(Shape(**saved_about(folder)["shape"]), text_vectors, weights["trained"].numpy())
    model.load_state_dict(weights)
    return model.eval()
