"""Evaluating a causal LM: the loss on a split's answers (and its perplexity), then answers generated for the
first `evaluate.generate_examples` conversations, scored against the reference answers -- exact match and token F1
(SQuAD's normalisation: lower case, no punctuation or articles) for short answers, ROUGE-L (Google's rouge-score
package) for long ones -- and shown side by side with what the model answered before fine-tuning. When the answers
are class labels (task.label_answers), generation is constrained to the training labels (each step may only
continue one of them, then end the turn) and accuracy and macro-F1 are reported as for a classifier.

"Before" is the base model: a peft method's adapter switched off, or the pretrained weights loaded again.
Generation is greedy, in batches of prompts padded on the left, as `tunelab generate` answers.
"""

from __future__ import annotations

import html
import json
import re
import string
import sys
from collections import Counter
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

import torch

from tunelab.files import write_text_atomic
from tunelab.html_report import table

GENERATE_BATCH = 8


def normalize(text: str) -> list[str]:
    """SQuAD's answer normalisation, as words."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction), normalize(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref:
        return float(pred == ref)
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def generation_scores(predictions: list[str], references: list[str]) -> dict:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    n = max(len(references), 1)
    return {"exact_match": sum(normalize(p) == normalize(r) for p, r in zip(predictions, references)) / n,
            "token_f1": sum(token_f1(p, r) for p, r in zip(predictions, references)) / n,
            "rouge_l": sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / n}


def label_trie(tokenizer, labels) -> tuple[dict, int]:
    """The labels' tokens (as the model writes them after the prompt), each followed by the end of the turn, as a
    trie; and the longest of them (the tokens an answer needs)."""
    root: dict = {}
    sequences = [tokenizer(label, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for label in labels]
    for sequence in sequences:
        node = root
        for token in sequence:
            node = node.setdefault(token, {})
    return root, max(map(len, sequences))


def _allowed_by(trie: dict, prompt_width: int, end: int):
    """transformers' prefix_allowed_tokens_fn: the tokens that continue a label from what a row has generated."""
    def allowed(_row, ids):
        node = trie
        for token in ids[prompt_width:].tolist():
            node = node.get(token)
            if node is None:  # the row has ended (padding after the end token)
                return [end]
        return list(node) or [end]
    return allowed


@torch.inference_mode()
def generate_answers(model, tokenizer, prompts: list[str], max_new_tokens: int, desc: str, quiet: bool,
                     trie: dict | None = None) -> list[str]:
    """Greedy answers to rendered prompts (chat.prompt_text), in batches padded on the left; with a `trie` of
    labels (label_trie), each answer is one of them."""
    from tqdm.auto import tqdm

    side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:  # Llama 3, Mistral: no pad token; the padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers = []
    end = tokenizer.eos_token_id
    try:
        for start in tqdm(range(0, len(prompts), GENERATE_BATCH), desc=desc, unit="batch", disable=quiet, file=sys.stderr):
            enc = tokenizer(prompts[start:start + GENERATE_BATCH], return_tensors="pt", padding=True, add_special_tokens=False)
            width = enc["input_ids"].shape[1]
            constrained = {} if trie is None else {"prefix_allowed_tokens_fn": _allowed_by(trie, width, end), "eos_token_id": end}
            out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, temperature=None, top_p=None, top_k=None,
                                 **constrained)
            answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side, tokenizer.pad_token = side, pad_token
    return [a.strip() for a in answers]


def label_scores(predictions: list[str], references: list[str], labels) -> dict:
    """Accuracy and macro-F1 over every label (scikit-learn), as a classifier's evaluation reports them."""
    from sklearn.metrics import accuracy_score, f1_score

    every = sorted(set(labels) | set(references))
    return {"accuracy": float(accuracy_score(references, predictions)),
            "macro_f1": float(f1_score(references, predictions, labels=every, average="macro", zero_division=0)),
            "exact_match": sum(p == r for p, r in zip(predictions, references)) / max(len(references), 1)}


@contextmanager
def base_model_of(model, card):
    """The model before fine-tuning: a peft model with its adapter off, or the pretrained base loaded anew."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
        return
    from tunelab.models.load import build_base

    yield build_base(card).eval()


def evaluate_split(run_dir: Path, config, name: str, path: Path, batch_size: int | None, quiet: bool) -> tuple[dict, list]:
    """(metrics, side-by-side examples) of the run's model on a prepared split."""
    from transformers import AutoTokenizer

    from tunelab.hub import quiet_transformers
    from tunelab.models.card import ModelCard
    from tunelab.models.load import load_model
    from tunelab.tasks import task_of
    from tunelab.tasks.causal_lm.chat import prompt_text
    from tunelab.tasks.encoding import read_split

    quiet_transformers()
    model_dir = run_dir / "model"
    card = ModelCard.read(model_dir)
    task = task_of(card)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_model(model_dir, card)
    columns = read_split(path)
    enc = task.encode(tokenizer, columns, card.max_length)
    metrics = task.validate(model, enc, batch_size or config.evaluate.batch_size,
                            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    conversations = [json.loads(m) for m in columns["messages"][: config.evaluate.generate_examples]]
    prompts = [prompt_text(tokenizer, task.conversation(c[:-1]), task.chat_template) for c in conversations]
    references = [c[-1]["content"] for c in conversations]
    labels = task.labels
    trie, limit = label_trie(tokenizer, labels) if labels else (None, config.evaluate.max_new_tokens)
    after = generate_answers(model, tokenizer, prompts, limit, f"generate {name}", quiet, trie)
    with base_model_of(model, card) as base:
        before = generate_answers(base, tokenizer, prompts, limit, f"generate {name} (before fine-tuning)", quiet, trie)
    score = partial(label_scores, labels=labels) if labels else generation_scores
    metrics.update(score(after, references))
    metrics.update({f"{k}_before": v for k, v in score(before, references).items()})
    metrics["generated_examples"], metrics["max_new_tokens"] = len(conversations), limit
    if labels:
        metrics["decoding"] = f"constrained to the {len(labels)} training labels"
    examples = [{"prompt": c[-2]["content"], "reference": r, "before": b, "after": a}
                for c, r, b, a in zip(conversations, references, before, after)]
    return metrics, examples


def write_report(out: Path, split: str, metrics: dict, examples: list, card) -> None:
    """report.json (metrics and examples) and report.html (the same, side by side)."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "report.json", json.dumps({"split": split, "metrics": metrics, "examples": examples},
                                                      indent=1, ensure_ascii=False))
    keys = ["loss", "perplexity", "token_accuracy", "accuracy", "macro_f1", "exact_match", "token_f1", "rouge_l"]
    summary = table(["metric", "after fine-tuning", "before"],
                    [[k, metrics[k], metrics.get(f"{k}_before", "")] for k in keys if k in metrics])
    rows = table(["prompt", "reference", "before fine-tuning", "after"],
                 [[e["prompt"], e["reference"], e["before"], e["after"]] for e in examples])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tunelab evaluation: {html.escape(str(card.run))} on {html.escape(split)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}}</style></head><body>
<h1>Evaluation of {html.escape(str(card.run))} on {html.escape(split)}</h1>
<p>Base model: {html.escape(str(card.base_model))}. Loss and perplexity over the answers' tokens of {metrics['examples']} conversations;
answers generated greedily for the first {metrics['generated_examples']} (at most {metrics['max_new_tokens']} new tokens each).</p>
<h2>Summary</h2>{summary}<h2>Answers side by side</h2>{rows}</body></html>"""
    write_text_atomic(out / "report.html", page)
