"""Few-shot and zero-shot intents: a handful of examples per intent, or only its description.

SetFit's recipe (Tunstall et al., 2022) with the retriever's loss: the encoder is fine-tuned contrastively on pairs
of examples of the same intent with in-batch negatives (apps/encoder.py: the other pairs of the batch, all of other
intents, are the negatives), then a logistic-regression head (scikit-learn) is fitted on the embeddings. An intent's
description (by default its name, "card_arrival" -> "card arrival") counts as one more example, so an intent with
no examples at all is still recognised (zero-shot: by similarity to its description).

Adding an intent needs no retraining of the encoder: its examples are embedded and the head refitted, in seconds.
The head is stored as JSON (classes, weights, bias), never as a pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEAD_FILE = "intent_head.json"


def describe(label: str) -> str:
    """An intent's default description: its name in words."""
    return " ".join(label.replace("_", " ").replace("-", " ").split())


def contrastive_pairs(examples: list[tuple[str, str]], partners: int, seed: int,
                      descriptions: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(text, another text of the same intent, intent) for each example and up to `partners` of its intent's other
    examples (its description among them: `descriptions`' or its name in words), drawn without repeats."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[str]] = {}
    for text, label in examples:
        by_label.setdefault(label, []).append(text)
    pairs = []
    for label, texts in by_label.items():
        pool = texts + [(descriptions or {}).get(label) or describe(label)]
        for i, text in enumerate(texts):
            others = [t for j, t in enumerate(pool) if j != i]
            for k in rng.permutation(len(others))[:partners]:
                pairs.append((text, others[k], label))
    return pairs


@dataclass
class IntentHead:
    classes: list[str]
    weights: np.ndarray  # (classes, dimensions)
    bias: np.ndarray  # (classes,)

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        z = embeddings @ self.weights.T + self.bias
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def save(self, folder: Path) -> None:
        (folder / HEAD_FILE).write_text(json.dumps({"classes": self.classes, "weights": self.weights.tolist(),
                                                    "bias": self.bias.tolist()}))

    @classmethod
    def load(cls, folder: Path) -> IntentHead:
        raw = json.loads((folder / HEAD_FILE).read_text())
        return cls(raw["classes"], np.asarray(raw["weights"], np.float32), np.asarray(raw["bias"], np.float32))


def fit_head(embeddings: np.ndarray, labels: list[str], c: float = 1.0, seed: int = 42) -> IntentHead:
    """Multinomial logistic regression on the embeddings (scikit-learn, L2 with inverse strength `c`)."""
    from sklearn.linear_model import LogisticRegression

    classes = sorted(set(labels))
    if len(classes) < 2:
        from tunelab.errors import DataError

        raise DataError(f"intents: {len(classes)} intent; a classifier needs at least 2")
    model = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(embeddings, labels)
    weights, bias = model.coef_, model.intercept_
    if len(classes) == 2:  # scikit-learn keeps one row (the second class's logit); softmax of (0, z) is the same
        weights, bias = np.vstack([np.zeros_like(weights), weights]), np.concatenate([[0.0], bias])
    order = [list(model.classes_).index(k) for k in classes]
    return IntentHead(classes, weights[order].astype(np.float32), bias[order].astype(np.float32))


def head_examples(examples: list[tuple[str, str]], descriptions: dict[str, str]) -> tuple[list[str], list[str]]:
    """The texts the head is fitted on and their intents: the examples, and each intent's description."""
    labels = sorted({label for _, label in examples} | set(descriptions))
    texts = [t for t, _ in examples] + [descriptions.get(label) or describe(label) for label in labels]
    return texts, [label for _, label in examples] + labels


def read_labelled(path: Path, what: str) -> list[tuple[str, str]]:
    """(text, label) rows of a CSV, JSONL, JSON or Parquet file; a bad row is named with its line and column."""
    from tunelab.apps.support.faq import fail
    from tunelab.data.load import SettingNames, Wanted, load_file
    from tunelab.data.validate import LabelCheck, validate

    wanted = Wanted("text", "label")
    rows, problems = validate(load_file(path, wanted, names=SettingNames(columns=f"the columns of {what} (text, label)",
                                                                          encoding=None, format=None)),
                              wanted, LabelCheck(None, False, "|"))
    if problems:
        fail(path, problems)
    return [(t.strip(), label) for t, label in zip(rows.text, rows.label)]


def read_descriptions(path: Path) -> dict[str, str]:
    """{intent: description} from a file with label and description columns."""
    from tunelab.apps.support.faq import fail
    from tunelab.data.load import SettingNames, Wanted, load_file
    from tunelab.data.validate import LabelCheck, validate

    wanted = Wanted("description", "label")
    rows, problems = validate(load_file(path, wanted, names=SettingNames(columns="intent_descriptions' columns (label, "
                                                                          "description)", encoding=None, format=None)),
                              wanted, LabelCheck(None, False, "|"))
    if problems:
        fail(path, problems)
    return dict(zip(rows.label, (d.strip() for d in rows.text)))


def build_fewshot(config, retrain: bool, quiet: bool, say, export) -> dict:
    """Fine-tune the intent encoder on the examples (unless one is trained: then only the head is refitted), export
    it (`export`: build.py's), fit the head; with intent_test, measure. -> what the report says of it."""
    from tunelab.apps.support.build import PARITY_TEXTS
    from tunelab.apps.encoder import Encoder, train_encoder
    from tunelab.hub import resolve_model

    fs = config.few_shot
    examples = read_labelled(config.intent_examples, "intent_examples")
    descriptions = read_descriptions(config.intent_descriptions) if config.intent_descriptions else {}
    test = read_labelled(config.intent_test, "intent_test") if config.intent_test is not None else None  # before training
    folder = config.app_dir / "intent-encoder"
    entry: dict = {"examples": len(examples)}
    fresh = False
    if fs.epochs and (retrain or not (folder / "modules.json").is_file()):
        say(f"intents: fine-tuning {fs.model} on {len(examples)} examples ({fs.epochs} epoch(s))")
        entry["training"] = train_encoder(fs.model, contrastive_pairs(examples, fs.partners, fs.seed, descriptions),
                                          folder, fs, quiet, retrain, name="intent encoder")
        (folder / "intents.json").write_text(json.dumps(sorted({label for _, label in examples})))
        fresh = True
    source = folder if fs.epochs else Path(resolve_model(fs.model))
    source = export(source, "intent-encoder", [t for t, _ in examples][:PARITY_TEXTS], fs.max_length, fresh)
    encoder = Encoder(source, fs.max_length)
    texts, labels = head_examples(examples, descriptions)
    head = fit_head(encoder.encode(texts), labels, fs.head_c, fs.seed)
    head.save(config.app_dir)
    tuned_on = set(json.loads((folder / "intents.json").read_text())) if (folder / "intents.json").is_file() else set()
    with_examples = {label for _, label in examples}
    entry.update(intents=len(head.classes), zero_shot=sorted(set(head.classes) - with_examples),
                 added_since_encoder_training=sorted(set(head.classes) - tuned_on) if tuned_on else [])
    if test is not None:
        seen = {t.casefold() for t, _ in examples}  # a test message that is also an example measures nothing
        fresh_test = [(t, label) for t, label in test if t.casefold() not in seen]
        known = [(t, label) for t, label in fresh_test if label in head.classes]
        accuracy = None
        if known:
            predicted = np.array(head.classes)[head.probabilities(encoder.encode([t for t, _ in known])).argmax(axis=1)]
            accuracy = float((predicted == np.array([label for _, label in known])).mean())
        entry["test"] = {"accuracy": accuracy, "examples": len(known), "unknown_intent": len(fresh_test) - len(known),
                         "also_examples": len(test) - len(fresh_test)}
    return entry
