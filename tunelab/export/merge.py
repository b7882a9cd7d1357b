"""`tunelab export RUN --merge`: fold LoRA/IA3 into the base weights -> a plain transformers folder.

The merged model is checked against the live adapter on the run's validation split before the folder
is put in place: max |logit difference| must stay within PARITY_TOLERANCE, or within RELATIVE_TOLERANCE of the
largest logit, or nothing is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from tunelab.errors import TunelabError
from tunelab.export.result import ExportResult
from tunelab.files import replace_folder
from tunelab.models.card import ModelCard
from tunelab.methods import METHODS
from tunelab.runlock import run_lock

PARITY_TOLERANCE = 1e-4
# fp32 keeps about 7 significant digits: a causal LM's logits reach 40 (SmolLM2 on the demo), where the unmerged
# model's own fp32 arithmetic differs from fp64's by 1.9e-4; the LoRA merge differed by 1.3e-4 there (3e-6 of 40)
RELATIVE_TOLERANCE = 1e-5
# a causal LM's logits span the vocabulary at every token (49k floats a token for SmolLM2): a few conversations,
# their first 256 tokens (both models' logits are held: ~0.8 GB at most for SmolLM2)
LM_PARITY_TEXTS, LM_PARITY_TOKENS, LM_BATCH = 8, 256, 2


def _logits(model, texts: list[str], pairs, tokenizer, max_length: int, batch_size: int = 64,
            rendered: bool = False) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            args = (texts[start:start + batch_size],) + ((pairs[start:start + batch_size],) if pairs else ())
            batch = tokenizer(*args, truncation=True, max_length=max_length, padding=True, return_tensors="pt",
                              add_special_tokens=not rendered)
            if rendered:  # a chat template's text holds its special tokens already; decoders take no segment ids
                batch.pop("token_type_ids", None)
            out.append(model(**batch).logits.float().numpy().reshape(-1))  # per text, or per token
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _validation_texts(run_dir: Path, limit: int | None, split: str = "validation", task=None,
                      tokenizer=None) -> tuple[list[str], list[str] | None]:
    from tunelab.evaluation.run import iter_chunks, resolve_split

    _, path = resolve_split(run_dir, split)
    texts, pairs = [], []
    for chunk in iter_chunks(path, list(getattr(task, "split_columns", ("text", "text_pair")))):
        if hasattr(task, "texts"):  # a causal LM: its conversations through the chat template
            texts += task.texts(tokenizer, {k: v[:limit] if limit else v for k, v in chunk.items()})
        else:
            texts += chunk["text"]
        pairs += chunk.get("text_pair") or []
        if limit and len(texts) >= limit:
            break
    texts = texts[:limit] if limit else texts
    return texts, (pairs[:len(texts)] or None)


PARITY_TEXTS = 1000  # an export is compared with its source on at least this many texts, where the data has them


def parity_texts(run_dir: Path, limit: int | None = None) -> tuple[list[str], list[str] | None, dict[str, int]]:
    """The texts an export is checked on: the validation split, topped up to PARITY_TEXTS with a fixed sample of
    training texts. Parity compares two models' outputs, not a model with labels, so any text of the domain
    counts, and on a small validation split (the demo's 90) one borderline sentence would otherwise be 1.1% of
    the verdict. `limit` caps the total. Returns (texts, pairs, {"validation": n, "train": n})."""
    texts, pairs = _validation_texts(run_dir, limit)
    wanted = min(limit or PARITY_TEXTS, PARITY_TEXTS) - len(texts)
    counts = {"validation": len(texts), "train": 0}
    if wanted > 0:
        train_texts, train_pairs = _validation_texts(run_dir, None, "train")
        pick = np.sort(np.random.default_rng(0).permutation(len(train_texts))[:wanted])
        texts = texts + [train_texts[i] for i in pick]
        if pairs is not None and train_pairs is not None:
            pairs = pairs + [train_pairs[i] for i in pick]
        counts["train"] = len(pick)
    return texts, pairs, counts


def merge_run(run: str | Path, out: str | Path | None = None, limit: int | None = None) -> ExportResult:
    """Write the merged model folder (default runs/<name>/export/merged); the result holds its parity figures."""
    from tunelab.models.predictor import find_model_dir

    model_dir = find_model_dir(run)
    with run_lock(model_dir.parent, "export"):  # a training of the run would rewrite the model being merged
        return _merge(model_dir, out, limit)


def _merge(model_dir: Path, out: str | Path | None, limit: int | None) -> ExportResult:
    from transformers import AutoTokenizer

    from tunelab.models.load import load_model
    from tunelab.tasks import task_of

    run_dir = model_dir.parent
    card = ModelCard.read(model_dir)
    method = card.method_name
    if not getattr(METHODS[method], "MERGEABLE", False):
        if METHODS[method].SAVES == "model":
            raise TunelabError(f"{model_dir} was trained with method '{method}': it is already a plain transformers "
                               "folder, there is nothing to merge")
        raise TunelabError(f"method '{method}' adds modules that cannot be folded into the base weights; only "
                           f"{', '.join(n for n, m in METHODS.items() if getattr(m, 'MERGEABLE', False))} can be merged. "
                           f"Load {model_dir} with tunelab (or peft) instead")
    out = Path(out) if out else run_dir / "export" / "merged"
    live = load_model(model_dir, card)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    task = task_of(card)
    generative = getattr(task, "generates", False)
    if generative:
        limit = min(limit or LM_PARITY_TEXTS, LM_PARITY_TEXTS)
    texts, pairs = _validation_texts(run_dir, limit, task=task, tokenizer=tokenizer)
    if tokenizer.pad_token is None:  # Llama 3, Mistral: no pad token; the padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    batch = LM_BATCH if generative else 64
    length = min(card.max_length, LM_PARITY_TOKENS) if generative else card.max_length
    before = _logits(live, texts, pairs, tokenizer, length, batch, generative)
    merged = live.merge_and_unload().eval()
    after = _logits(merged, texts, pairs, tokenizer, length, batch, generative)
    diff = float(np.abs(before - after).max()) if len(texts) else 0.0
    largest = float(np.abs(before).max()) if len(texts) else 0.0
    parity = {"examples": len(texts), "max_abs_logit_diff": diff, "max_abs_logit": largest,
              "tolerance": PARITY_TOLERANCE, "relative_tolerance": RELATIVE_TOLERANCE, "method": method}
    if diff > max(PARITY_TOLERANCE, RELATIVE_TOLERANCE * largest):
        raise TunelabError(f"merged model differs from the adapter model by {diff:.2e} (> {PARITY_TOLERANCE}, and > "
                           f"{RELATIVE_TOLERANCE} of the largest logit, {largest:.1f}) on {len(texts)} validation "
                           "texts; nothing written")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    card.replace(method={"name": "full"}, merged_from={"run": str(run_dir.resolve()), "method": card.method},
                 saved_bytes=(tmp / "model.safetensors").stat().st_size).write(tmp)
    (tmp / "parity.json").write_text(json.dumps(parity, indent=1))
    from tunelab.monitor.profile import EMBEDDINGS_FILE, PROFILE_FILE

    for name in (EMBEDDINGS_FILE, PROFILE_FILE):  # same predictions (checked above), same monitoring reference
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, tmp / name)
    replace_folder(tmp, out)
    return ExportResult(out, parity)
