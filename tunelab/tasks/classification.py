"""Sequence classification: single-label (softmax + cross-entropy), multi-label (sigmoid + BCE), text pairs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ClassificationTask:
    labels: list[str]
    multi_label: bool = False
    pair: bool = False

    name = "classification"

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    # ------------------------------------------------------------ model
    def build_model(self, source: str, dropout: float | None = None, revision: str | None = None,
                    trust_remote_code: bool = False, attention: str | None = None):
        """A transformers sequence-classification model whose config carries the label names."""
        from transformers import AutoConfig, AutoModelForSequenceClassification

        config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
        self.configure(config, dropout)
        return AutoModelForSequenceClassification.from_pretrained(
            source, config=config, revision=revision, trust_remote_code=trust_remote_code, attn_implementation=attention)

    def configure(self, config, dropout: float | None = None) -> None:
        config.num_labels = self.num_labels
        config.id2label = dict(enumerate(self.labels))
        config.label2id = {lab: i for i, lab in enumerate(self.labels)}
        config.problem_type = "multi_label_classification" if self.multi_label else "single_label_classification"
        if dropout is not None:
            for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
                        "dropout", "attention_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
                if hasattr(config, key):
                    setattr(config, key, dropout)

    # ------------------------------------------------------------ targets and loss
    def targets(self, labels: list) -> np.ndarray:
        """Label names -> class ids (int64), or a multi-hot matrix (float32) for multi-label."""
        index = {lab: i for i, lab in enumerate(self.labels)}
        if not self.multi_label:
            return np.fromiter((index[lab] for lab in labels), dtype=np.int64, count=len(labels))
        out = np.zeros((len(labels), self.num_labels), dtype=np.float32)
        for row, labs in enumerate(labels):
            out[row, [index[lab] for lab in labs]] = 1.0
        return out

    def class_weights(self, targets: np.ndarray, setting) -> torch.Tensor | None:
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

    # ------------------------------------------------------------ predictions
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
