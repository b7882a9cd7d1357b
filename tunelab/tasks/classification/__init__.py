"""Sequence classification: single-label (softmax + cross-entropy), multi-label (sigmoid + BCE), text pairs.

A row of the model's input is one example; the output of an example is its probability per label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tunelab.tasks.base import data_stage, model_logits, pretrained_config
from tunelab.tasks.encoding import Encoded, encode_texts


@dataclass(frozen=True)
class ClassificationTask:
    labels: list[str]
    multi_label: bool = False
    pair: bool = False

    name = "classification"
    auto_class = "AutoModelForSequenceClassification"  # what loads a saved full-model folder
    calibrates = True  # single-label scores get a fitted temperature (tasks/calibration.py)
    forward = model_logits

    # ------------------------------------------------------------ construction
    @classmethod
    def from_prepared(cls, config, prepared) -> ClassificationTask:
        return cls(list(prepared.labels), prepared.multi_label, config.data.text_pair_column is not None)

    @classmethod
    def from_card(cls, card) -> ClassificationTask:
        return cls(list(card.labels), card.multi_label, card.pair)

    def card_fields(self) -> dict:
        """What tunelab.json records so that from_card rebuilds this task."""
        return {"task": self.name, "labels": self.labels, "multi_label": self.multi_label, "pair": self.pair}

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def default_metric(self) -> str:
        """The validation figure that picks the kept model, stops early and drives a search."""
        return "micro_f1" if self.multi_label else "accuracy"

    @staticmethod
    def metric_for(config) -> str:
        """default_metric, known from the config alone (a search needs it before any data is read)."""
        return "micro_f1" if config.data.multi_label else "accuracy"

    @property
    def reports_calibration(self) -> bool:
        return not self.multi_label

    # ------------------------------------------------------------ data
    build_data, prepare_file = data_stage("tunelab.tasks.classification.data")

    input_columns = ("text", "text_pair")  # what a prepared split holds besides the label
    split_columns = ("text", "text_pair", "label")  # what evaluation reads of a prepared split

    # ------------------------------------------------------------ encoding
    def cache_key(self) -> list:
        return [self.name, self.labels, self.multi_label, self.pair]

    def encode(self, tokenizer, columns: dict, max_length: int) -> Encoded:
        """A prepared split's columns -> token ids and targets, one row per example."""
        enc = encode_texts(tokenizer, columns["text"], columns.get("text_pair") if self.pair else None, max_length)
        enc.targets = self.targets(columns["label"])
        return enc

    def encode_inputs(self, tokenizer, texts: list[str], pairs: list[str] | None, max_length: int,
                      clean: dict | None = None) -> Encoded:
        """Texts to predict on, cleaned as the training data was (`clean`: data.clean.clean_text's settings)
        -> token ids, one row per text."""
        from tunelab.data.clean import clean_text

        texts = [clean_text(t, **(clean or {})) for t in texts]
        pairs = [clean_text(t, **(clean or {})) for t in pairs] if self.pair and pairs is not None else None
        return encode_texts(tokenizer, texts, pairs, max_length)

    def example_targets(self, enc: Encoded) -> np.ndarray:
        return enc.targets

    def targets(self, labels: list) -> np.ndarray:
        """Label names -> class ids (int64), or a multi-hot matrix (float32) for multi-label."""
        index = {lab: i for i, lab in enumerate(self.labels)}
        if not self.multi_label:
            return np.fromiter((index[lab] for lab in labels), dtype=np.int64, count=len(labels))
        out = np.zeros((len(labels), self.num_labels), dtype=np.float32)
        for row, labs in enumerate(labels):
            out[row, [index[lab] for lab in labs]] = 1.0
        return out

    # ------------------------------------------------------------ model
    def build_model(self, source: str, dropout: float | None = None, revision: str | None = None,
                    trust_remote_code: bool = False, attention: str | None = None, layers: int | None = None):
        """A transformers sequence-classification model whose config carries the label names."""
        from transformers import AutoModelForSequenceClassification

        config = pretrained_config(source, revision, trust_remote_code, dropout, layers)
        self.configure(config)
        return AutoModelForSequenceClassification.from_pretrained(
            source, config=config, revision=revision, trust_remote_code=trust_remote_code, attn_implementation=attention)

    def configure(self, config) -> None:
        config.num_labels = self.num_labels
        config.id2label = dict(enumerate(self.labels))
        config.label2id = {lab: i for i, lab in enumerate(self.labels)}
        config.problem_type = "multi_label_classification" if self.multi_label else "single_label_classification"

    # ------------------------------------------------------------ training
    def batch_targets(self, enc: Encoded, rows: np.ndarray, width: int) -> torch.Tensor:
        return torch.as_tensor(enc.targets[rows])

    def loss_terms(self, enc: Encoded, rows: np.ndarray) -> int:
        """How many terms the summed loss of these rows has: the divisor that makes it a mean."""
        return len(rows)

    def class_weights(self, enc: Encoded, setting) -> torch.Tensor | None:
        targets = enc.targets
        if isinstance(setting, list):
            if len(setting) != self.num_labels:
                from tunelab.errors import ConfigError

                raise ConfigError(f"train.class_weights: {len(setting)} weights for {self.num_labels} labels ({', '.join(self.labels)})")
            return torch.tensor(setting, dtype=torch.float32)
        if setting != "balanced":
            return None
        counts = targets.sum(0) if self.multi_label else np.bincount(targets, minlength=self.num_labels)
        counts = np.maximum(counts, 1).astype(np.float64)
        if self.multi_label:  # weight of the positive term: negatives / positives per label
            return torch.tensor((len(targets) - counts) / counts, dtype=torch.float32)
        return torch.tensor(len(targets) / (self.num_labels * counts), dtype=torch.float32)

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None,
                 label_smoothing: float = 0.0) -> torch.Tensor:
        """Summed (not averaged) loss, so micro-batches and processes can be combined exactly."""
        logits = logits.float()
        if self.multi_label:
            t = targets.float()
            if label_smoothing:
                t = t * (1 - label_smoothing) + 0.5 * label_smoothing
            return F.binary_cross_entropy_with_logits(logits, t, pos_weight=weights, reduction="sum") / self.num_labels
        return F.cross_entropy(logits, targets, weight=weights, label_smoothing=label_smoothing, reduction="sum")

    # ------------------------------------------------------------ outputs
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)

    def examples(self, enc: Encoded, rows_out: np.ndarray) -> np.ndarray:
        """Per-row outputs -> per-example outputs (a row is an example here)."""
        return rows_out

    def per_example(self, enc: Encoded, embeddings, lengths: np.ndarray, unknown: np.ndarray) -> tuple:
        """Per-row embeddings, token counts and unknown-token counts -> per example (the same here)."""
        return embeddings, lengths, unknown

    def collector(self, temperature: float = 1.0):
        from tunelab.tasks.classification.metrics import Collector

        return Collector(self.labels, self.multi_label, temperature)

    def decide(self, probs, threshold: float = 0.5, top_k: int | None = None, contexts=None) -> list[dict]:
        """Probabilities -> one result per example: the label(s), the score and all scores by label."""
        results = []
        for row in np.asarray(probs).reshape(-1, self.num_labels):
            scores = {lab: float(p) for lab, p in zip(self.labels, row)}
            if self.multi_label:
                result = {"labels": [lab for lab, p in scores.items() if p >= threshold], "scores": scores}
            else:
                best = int(row.argmax())
                result = {"label": self.labels[best], "score": float(row[best]), "scores": scores}
            if top_k:
                result["top_k"] = [{"label": lab, "score": s} for lab, s in
                                   sorted(scores.items(), key=lambda kv: -kv[1])[:top_k]]
            results.append(result)
        return results

    def csv_header(self) -> list[str]:
        """The columns of `tunelab predict -o out.csv` after the text."""
        return (["labels"] if self.multi_label else ["label", "score"]) + [f"score_{lab}" for lab in self.labels]

    def csv_row(self, result: dict) -> list:
        first = ["|".join(result["labels"])] if self.multi_label else [result["label"], f"{result['score']:.6f}"]
        return first + [f"{result['scores'][lab]:.6f}" for lab in self.labels]

    def agreement(self, a, b, threshold: float = 0.5) -> dict:
        """How far two models' outputs on the same inputs agree (an export against its source)."""
        a, b = np.asarray(a), np.asarray(b)
        same = ((a >= threshold) == (b >= threshold)).all(axis=1) if self.multi_label else a.argmax(1) == b.argmax(1)
        return {"label_agreement": float(same.mean()), "disagreements": int((~same).sum()),
                "max_abs_prob_diff": float(np.abs(a - b).max())}

    # ------------------------------------------------------------ monitoring
    @property
    def observed_labels(self) -> list[str]:
        """The names of what observe() counts."""
        return self.labels

    @property
    def observes_vectors(self) -> bool:
        """True when observe()'s key counts towards several labels at once (a 0/1 tuple)."""
        return self.multi_label

    @property
    def live_metric(self) -> str:
        """The validation figure that live accuracy from feedback is compared with (an exact label-set match)."""
        return "subset_accuracy" if self.multi_label else "accuracy"

    def feedback_label(self, given) -> tuple[str | None, str | None]:
        """A true label from feedback (a list of labels for multi-label) -> the log's form, or (None, what is wrong)."""
        labels = given if isinstance(given, list) else [given]
        wrong = [lab for lab in labels if lab not in self.labels]
        if wrong or (not self.multi_label and len(labels) != 1):
            return None, f"'{wrong[0] if wrong else given}' is not a label of this model; its labels: {', '.join(self.labels)}"
        return "|".join(sorted(set(labels), key=self.labels.index)), None  # in the order predictions list them

    def live_figures(self, feedback: list[tuple[str, str]]) -> dict:
        """Accuracy and macro-F1 (scikit-learn) of (predicted, true) label pairs from feedback."""
        from sklearn.metrics import accuracy_score, f1_score

        predicted, true = zip(*feedback)
        return {"live_accuracy": float(accuracy_score(true, predicted)),
                "live_macro_f1": float(f1_score(true, predicted, average="macro", zero_division=0))}

    def target_counts(self, enc: Encoded) -> list[int]:
        """How often each observed label is the true one in an encoded split."""
        targets = enc.targets
        if self.multi_label:
            return np.asarray(targets).sum(0).astype(int).tolist()
        return np.bincount(targets.astype(int), minlength=self.num_labels).astype(int).tolist()

    def log_fields(self, result: dict) -> tuple[str, float, dict]:
        """What the prediction log stores of an answer: its label as text, its score, all scores."""
        label = "|".join(result["labels"]) if self.multi_label else result["label"]
        return label, float(result.get("score", max(result["scores"].values()))), result["scores"]

    def observe(self, probs: np.ndarray, threshold: float = 0.5):
        """What the monitor keeps of one prediction: its label key (an id; a 0/1 tuple for multi-label) and how
        sure the model was."""
        probs = np.asarray(probs)
        if self.multi_label:
            return tuple((probs >= threshold).astype(int)), float(0.5 + np.abs(probs - 0.5).mean())
        return int(probs.argmax()), float(probs.max())
