"""The applications' sentence encoder: fine-tuned contrastively, exported to ONNX, and run. The support app's FAQ
retriever and few-shot intents and the recommender's item tower are each one.

A bi-encoder (one encoder for both sides of a pair, compared by cosine; for the FAQ: customer question and entry
question) fine-tuned on pairs with in-batch negatives: sentence-transformers' MultipleNegativesRankingLoss in a
small loop of ours (its trainer needs the `datasets` package, which tunelab does not otherwise use). A batch never
holds two pairs of the same group (two questions of one FAQ entry), whose shared positive would be scored as
the other's negative.

Training saves a checkpoint at each epoch's end (weights as safetensors, optimizer and schedule); Ctrl-C or
SIGTERM stops it, and the next build resumes from the last finished epoch with the batches it would have had.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from tunelab.errors import Interrupted, TunelabError
from tunelab.files import replace_folder

ENCODER_FILE = "encoder.json"  # beside an exported encoder: max_length, quantization, parity with torch
MIN_COSINE = {None: 0.9999, "int8": 0.98}  # the export's worst cosine with the torch embedding, at least


def no_duplicate_batches(groups: list, size: int, seed: int) -> list[list[int]]:
    """Indices in batches of `size` (the last of each pass shorter) where no two share a group, in a seeded order."""
    order = list(np.random.default_rng(seed).permutation(len(groups)))
    batches: list[list[int]] = []
    while order:
        rest, batch, seen = [], [], set()
        for i in order:
            if groups[i] in seen:
                rest.append(i)
                continue
            batch.append(i)
            seen.add(groups[i])
            if len(batch) == size:
                batches.append(batch)
                batch, seen = [], set()
        if batch:
            batches.append(batch)
        order = rest
    return batches


def train_encoder(base: str, pairs: list[tuple[str, str, str]], out: Path, settings, quiet: bool = False,
                  retrain: bool = False, name: str = "encoder") -> dict:
    """Fine-tune `base` (a folder or hub id; 'default': the bundled MiniLM) on (text, positive text, group) pairs;
    the sentence-transformers folder goes to `out`; `name` is what the progress bar and messages call it.
    -> {epochs, steps, pairs, seconds, last_loss}."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from tunelab.hub import quiet_transformers, resolve_model
    from tunelab.signals import Stopped, stop_on_signals

    quiet_transformers()
    checkpoint = out.with_name(out.name + ".checkpoint")
    if retrain:
        shutil.rmtree(checkpoint, ignore_errors=True)
    state = torch.load(checkpoint / "state.pt", weights_only=True) if (checkpoint / "state.pt").is_file() else None
    torch.manual_seed(settings.seed)
    model = SentenceTransformer(str(checkpoint) if state else resolve_model(base), device="cpu")
    model.max_seq_length = settings.max_length
    loss_fn = MultipleNegativesRankingLoss(model, scale=settings.scale)
    tokenize = getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers 6 renamed it
    groups = [entry for _, _, entry in pairs]
    epochs = [no_duplicate_batches(groups, settings.batch_size, settings.seed + e) for e in range(settings.epochs)]
    total = sum(map(len, epochs))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total), total)
    first = 0
    if state:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        first = int(state["epoch"])
        torch.set_rng_state(state["rng"])
    started, loss = time.perf_counter(), float("nan")
    bar = tqdm(total=total, initial=sum(map(len, epochs[:first])), disable=quiet, desc=name, unit="step")
    try:
        with stop_on_signals():
            for epoch in range(first, settings.epochs):
                model.train()  # each epoch: saving a checkpoint leaves the model in eval mode
                for batch in epochs[epoch]:
                    features = [tokenize([pairs[i][0] for i in batch]), tokenize([pairs[i][1] for i in batch])]
                    value = loss_fn(features, None)
                    value.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    optimizer.step()
                    schedule.step()
                    optimizer.zero_grad(set_to_none=True)
                    loss = float(value.detach())
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", epoch=epoch + 1)
                _checkpoint(model, optimizer, schedule, epoch + 1, checkpoint)
    except Stopped as exc:
        raise Interrupted(f"{name} training stopped; the finished epochs are kept in {checkpoint}.",
                          exc.signum) from None
    finally:
        bar.close()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.eval()
    model.save(str(tmp))
    replace_folder(tmp, out)
    shutil.rmtree(checkpoint, ignore_errors=True)
    return {"epochs": settings.epochs, "steps": total, "pairs": len(pairs), "last_loss": round(loss, 4),
            "seconds": round(time.perf_counter() - started, 1)}


def _checkpoint(model, optimizer, schedule, epoch: int, folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(str(tmp))
    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "epoch": epoch,
                "rng": torch.get_rng_state()}, tmp / "state.pt")
    replace_folder(tmp, folder)


class _Embedding(torch.nn.Module):
    """The encoder as ONNX computes it: token ids -> the unit-length mean of the last layer."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        from tunelab.models.inference import mean_pool

        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.nn.functional.normalize(mean_pool(hidden, attention_mask), dim=-1)


def export_unless_current(source: Path, out: Path, quantize: str | None, texts: list[str], max_length: int,
                          force: bool = False, say=None) -> dict:
    """`source` exported to `out` (export_encoder) unless `out` already holds the export of that same folder at that
    `max_length`: a changed base model or `epochs: 0` is exported again. -> the parity figures."""
    made_from = {"source": str(Path(source).resolve()), "max_length": max_length}
    record = out / "exported_from.json"
    current = (out / ENCODER_FILE).is_file() and record.is_file() and json.loads(record.read_text()) == made_from
    if force or not current:
        if say is not None:
            say(f"exporting {out}")
        export_encoder(source, out, quantize, texts, max_length)
        record.write_text(json.dumps(made_from))
    return json.loads((out / ENCODER_FILE).read_text())["parity"]


def export_encoder(model_dir: Path, out: Path, quantize: str | None, texts: list[str], max_length: int) -> dict:
    """The encoder of `model_dir` (a sentence-transformers folder with mean pooling) as out/model.onnx, checked
    against the torch embeddings of `texts`; nothing is written when they differ. -> the parity figures."""
    from transformers import AutoModel, AutoTokenizer

    from tunelab.export.onnx import _export, _quantize_int8

    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text()) if (model_dir / "1_Pooling").is_dir() else {}
    if pooling and not (pooling.get("pooling_mode") == "mean" or pooling.get("pooling_mode_mean_tokens")):
        raise TunelabError(f"{model_dir}: its pooling is not the mean of the tokens; tunelab exports mean-pooled "
                           "encoders (set the app's model to one, or its backend: torch)")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    names = ["input_ids", "attention_mask"]
    sample = tokenizer(["an example", "a second, longer example text"], padding=True, return_tensors="pt")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _export(model, names, tuple(sample[n] for n in names), tmp / "model.fp32.onnx", module=_Embedding(model),
                outputs=("sentence_embedding",))
        if quantize == "int8":
            _quantize_int8(tmp / "model.fp32.onnx", tmp / "model.onnx")
            (tmp / "model.fp32.onnx").unlink()
        else:
            (tmp / "model.fp32.onnx").rename(tmp / "model.onnx")
        tokenizer.save_pretrained(tmp)
        (tmp / ENCODER_FILE).write_text(json.dumps({"max_length": max_length, "quantize": quantize}))
        reference = Encoder(model_dir, max_length).encode(texts)
        cosine = (Encoder(tmp).encode(texts) * reference).sum(axis=1)
        parity = {"texts": len(texts), "min_cosine": round(float(cosine.min()), 5),
                  "mean_cosine": round(float(cosine.mean()), 5), "quantize": quantize}
        if parity["min_cosine"] < MIN_COSINE[quantize]:
            raise TunelabError(f"the exported encoder's embeddings differ from the torch model's (cosine down to "
                               f"{parity['min_cosine']} < {MIN_COSINE[quantize]} on {len(texts)} texts); nothing written. "
                               "Set the app's backend to torch")
        (tmp / ENCODER_FILE).write_text(json.dumps({"max_length": max_length, "quantize": quantize, "parity": parity}))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, out)
    return parity


class Encoder:
    """Texts -> unit-length embeddings, from an exported folder (ONNX Runtime) or a sentence-transformers folder."""

    def __init__(self, folder: Path, max_length: int | None = None, threads: int | None = None):
        from transformers import AutoTokenizer

        from tunelab.hub import quiet_transformers

        quiet_transformers()
        folder = Path(folder)
        info = json.loads((folder / ENCODER_FILE).read_text()) if (folder / ENCODER_FILE).is_file() else {}
        self.max_length = int(max_length or info.get("max_length") or 128)
        if (folder / "model.onnx").is_file():
            from tunelab.models.predictor import OnnxModel

            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.onnx, self.torch = OnnxModel(folder / "model.onnx", threads), None
        else:
            from sentence_transformers import SentenceTransformer

            self.torch = SentenceTransformer(str(folder), device="cpu").eval()
            self.torch.max_seq_length = self.max_length
            self.tokenizer, self.onnx = self.torch.tokenizer, None

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), dimensions) float32, unit length; batches of similar length."""
        if self.torch is not None:
            with torch.inference_mode():
                return self.torch.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                         convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = [[texts[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]
        tokenized = (self.tokenizer(b, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
                     for b in batches)
        outputs = self.onnx.outputs_many(tokenized) if len(batches) != 1 else [self.onnx.outputs(next(tokenized), lone=True)]
        parts = [out[0].numpy() for out in outputs]
        if not parts:
            return np.zeros((0, 0), np.float32)
        embeddings = np.empty((len(texts), parts[0].shape[1]), np.float32)
        embeddings[order] = np.concatenate(parts)
        return embeddings

    def token_counts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokens per text (after truncation) and unknown tokens per text: what the monitor watches."""
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        unk = self.tokenizer.unk_token_id
        return np.array([len(i) for i in ids]), np.array([sum(t == unk for t in i) for i in ids])
