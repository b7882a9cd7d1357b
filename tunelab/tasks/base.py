"""The task interface: what a task implements so that every stage works for it without asking which task it is.

A task is a frozen dataclass (its labels and options) with the methods below; tasks/classification and
tasks/ner/task.py are the two implementations, and `tunelab.tasks.TASKS` registers them. Terms:

- an *example* is what a user gives and gets a prediction for (a text, a text pair, a sentence);
- a *row* is one model input. A task may cut an example into several rows (a long sentence into windows); its
  `examples()` maps row outputs back to example outputs, in example order.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import numpy as np
import torch

from tunelab.tasks.encoding import Encoded


class Task(Protocol):
    name: ClassVar[str]  # the registry key: config task.name, tunelab.json "task"
    auto_class: ClassVar[str]  # the transformers Auto class that loads a saved full-model folder
    labels: list[str]  # what the head predicts (class names; IOB2 tags)
    input_columns: ClassVar[tuple[str, ...]]  # the input columns of a prepared split (besides the targets)

    # ---- construction
    @classmethod
    def from_prepared(cls, config, prepared) -> Task: ...  # for training, from the data stage's result
    @classmethod
    def from_card(cls, card) -> Task: ...  # for prediction, from a model folder's tunelab.json
    def card_fields(self) -> dict: ...  # what tunelab.json keeps for from_card

    @property
    def num_labels(self) -> int: ...
    @property
    def default_metric(self) -> str: ...  # picks the kept model, drives early stopping and search

    # ---- data stage (data/pipeline.py writes what build_data returns)
    @staticmethod
    def build_data(config, tokenizer, say, quiet): ...  # -> data.pipeline.Built
    @staticmethod
    def prepare_file(path, config, labels, out): ...  # one more labelled file, checked and written to `out`

    # ---- model inputs
    def cache_key(self) -> list: ...  # what, besides the file and tokenizer, the encoded arrays depend on
    def encode(self, tokenizer, columns: dict, max_length: int) -> Encoded: ...  # a prepared split, with targets
    def example_targets(self, enc: Encoded): ...  # the targets per example, as collector.add takes them

    # ---- model and training
    def build_model(self, source: str, dropout, revision, trust_remote_code: bool, attention, layers): ...
    def batch_targets(self, enc: Encoded, rows: np.ndarray, width: int) -> torch.Tensor: ...
    # the training forward pass: (logits, targets) as loss_sum takes them (most tasks: model_logits below)
    def forward(self, model, batch: dict, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor, weights, label_smoothing: float) -> torch.Tensor: ...
    def loss_terms(self, enc: Encoded, rows: np.ndarray) -> int: ...  # the loss is a sum of this many terms
    def class_weights(self, enc: Encoded, setting) -> torch.Tensor | None: ...

    # ---- outputs, metrics, predictions
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor: ...  # per row (and token)
    def examples(self, enc: Encoded, rows_out) -> list | np.ndarray: ...  # row outputs -> example outputs
    def per_example(self, enc: Encoded, embeddings, lengths, unknown) -> tuple: ...  # row figures -> per example
    def collector(self, temperature: float = 1.0): ...  # .add(outputs, targets), .result(threshold, bins) -> dict
    def encode_inputs(self, tokenizer, texts: list[str], pairs: list[str] | None, max_length: int,
                      clean: dict | None = None) -> Encoded: ...  # raw inputs, cleaned as the training data was
    def decide(self, outputs, threshold: float = 0.5, top_k: int | None = None, contexts=None) -> list[dict]: ...
    def observe(self, output, threshold: float = 0.5) -> tuple: ...  # (label key, confidence) for the monitor

    # A task whose outputs are too large to collect (a causal LM's vocabulary at every token) scores a split
    # itself: `validate(model, enc, batch_size, pad_id, autocast) -> metrics` is then used in place of collector().


def data_stage(module: str) -> tuple[staticmethod, staticmethod]:
    """A task's build_data and prepare_file, from the module of its data stage (imported on first use, so a task's
    data dependencies load only when it is used): `build_data, prepare_file = data_stage("...data")`."""
    import importlib

    def build_data(config, tokenizer, say, quiet):
        return importlib.import_module(module).build_data(config, tokenizer, say, quiet)

    def prepare_file(path, config, labels, out):
        return importlib.import_module(module).prepare_file(path, config, labels, out)
    return staticmethod(build_data), staticmethod(prepare_file)


def model_logits(task, model, batch: dict, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training forward pass of a task whose loss reads the logits at every position: the model's logits."""
    return model(**batch).logits, targets


# The figures of an evaluation's summary (CLI table, report.html, progress lines), in this order; each task
# reports the ones that apply to it.
SUMMARY_KEYS = ("examples", "loss", "perplexity", "exact_match", "token_f1", "rouge_l", "rouge_l_before", "accuracy", "macro_f1", "micro_f1", "weighted_f1", "subset_accuracy", "roc_auc",
                "entity_f1", "entity_precision", "entity_recall", "token_accuracy", "ece", "ece_uncalibrated",
                "temperature", "threshold")
HEADLINE_KEYS = ("loss", "perplexity", "accuracy", "macro_f1", "subset_accuracy", "micro_f1", "roc_auc", "entity_f1", "entity_precision",
                 "entity_recall", "token_accuracy", "ece", "ece_uncalibrated")


def headline(metrics: dict) -> dict:
    """The few numbers shown in progress lines, metrics.jsonl and the trackers."""
    return {k: metrics[k] for k in HEADLINE_KEYS if k in metrics}


DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "dropout",
                "attention_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop")


def pretrained_config(source: str, revision: str | None, trust_remote_code: bool, dropout: float | None = None,
                      layers: int | None = None):
    """The checkpoint's transformers config, with every dropout rate it names set to `dropout` (None: the
    checkpoint's) and, with `layers`, only its first `layers` transformer layers: from_pretrained then loads those
    and leaves the rest out (a shallower model, faster in proportion; the bottom layers carry most of what
    fine-tuning needs, Sajjad et al., "On the effect of dropping layers of pre-trained transformer models", 2023)."""
    from transformers import AutoConfig

    from tunelab.errors import ConfigError

    config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    if dropout is not None:
        for key in DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, dropout)
    if layers is not None:
        depth = getattr(config, "num_hidden_layers", None)
        if not isinstance(depth, int):
            raise ConfigError(f"model.layers: {source} does not say how many layers it has (no num_hidden_layers in "
                              "its config); leave model.layers out")
        if layers > depth:
            raise ConfigError(f"model.layers: {layers} is more than the {depth} layers of {source}")
        config.num_hidden_layers = layers
        if isinstance(getattr(config, "layer_types", None), list):  # per-layer kinds (sliding window or full)
            config.layer_types = config.layer_types[:layers]
    return config
