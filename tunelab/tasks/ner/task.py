"""Token classification (named-entity recognition): a tag per word, entities as character spans of the text.

Words get their tag on their first sub-word (the loss ignores the others); a sentence longer than the model's
max_length is cut into overlapping windows of whole words (ner/align.py) and its words' scores are joined back.
Labels are IOB2 tags whatever scheme the data came in (ner/schemes.py); answers are entities with character
offsets into the text that was sent, a type and a score (the mean of the words' tag probabilities).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tunelab.tasks.base import data_stage, model_logits, pretrained_config
from tunelab.tasks.encoding import Encoded, token_targets
from tunelab.tasks.ner.align import IGNORE, encode_words
from tunelab.tasks.ner.spans import char_entities, entities


@dataclass(frozen=True)
class TokenClassificationTask:
    labels: list[str]  # IOB2 tags: O, B-TYPE, I-TYPE, ...
    scheme: str = "IOB2"  # the scheme the training data was written in (kept for reading evaluation files)

    name = "token_classification"
    auto_class = "AutoModelForTokenClassification"
    multi_label = False
    pair = False
    reports_calibration = False
    truncates = False  # a long text is read in overlapping windows, never cut
    input_columns = ("tokens",)
    split_columns = ("tokens", "tags", "text", "offsets")  # what evaluation reads of a prepared split
    default_metric = "entity_f1"
    live_metric = "entity_f1"
    observes_vectors = True  # each answer counts entities of several types
    parity_metric = "entity_f1"  # an int8 export is judged by the entity F1 it loses on validation
    forward = model_logits

    # ------------------------------------------------------------ construction
    @classmethod
    def from_prepared(cls, config, prepared) -> TokenClassificationTask:
        return cls(list(prepared.labels), prepared.task_options.get("scheme", "IOB2"))

    @classmethod
    def from_card(cls, card) -> TokenClassificationTask:
        return cls(list(card.labels), card.task_options.get("scheme", "IOB2"))

    def card_fields(self) -> dict:
        return {"task": self.name, "labels": self.labels, "task_options": {"scheme": self.scheme}}

    @staticmethod
    def metric_for(config) -> str:
        return "entity_f1"

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def types(self) -> list[str]:
        """The entity types, in label order."""
        return list(dict.fromkeys(t.split("-", 1)[1] for t in self.labels if t != "O"))

    observed_labels = types

    # ------------------------------------------------------------ data
    build_data, prepare_file = data_stage("tunelab.tasks.ner.data")

    # ------------------------------------------------------------ encoding
    def cache_key(self) -> list:
        return [self.name, self.labels]

    def encode(self, tokenizer, columns: dict, max_length: int) -> Encoded:
        """Sentences (`tokens`, `tags` in IOB2) -> windows of sub-word ids, a tag id on each word's first sub-word."""
        index = {tag: i for i, tag in enumerate(self.labels)}
        tags = columns.get("tags")
        tag_ids = None if tags is None else [[index[t] for t in sentence] for sentence in tags]
        contexts = None
        if columns.get("text") is not None and columns.get("offsets") is not None:
            contexts = [(text, [tuple(o) for o in offsets]) for text, offsets in zip(columns["text"], columns["offsets"])]
        return _windows(tokenizer, columns["tokens"], tag_ids, max_length, contexts)

    def encode_inputs(self, tokenizer, texts: list[str], pairs: list[str] | None, max_length: int,
                      clean: dict | None = None) -> Encoded:
        """Raw texts -> words (as the model's own pre-tokenizer splits them, with their character offsets in the
        text as sent) -> windows. Each word is cleaned as the training words were (Unicode form, case)."""
        from tunelab.data.clean import clean_text

        how = {**(clean or {}), "fold_whitespace": False}  # words hold no whitespace; offsets stay the text's
        words, contexts = [], []
        for text in texts:
            found = split_words(tokenizer, text)
            words.append([clean_text(w, **how) for w, _ in found])
            contexts.append((text, [span for _, span in found]))
        return _windows(tokenizer, words, None, max_length, contexts)

    def example_targets(self, enc: Encoded) -> list[np.ndarray]:
        """The gold tag id of each word, per sentence."""
        return self.examples(enc, _per_row(enc, enc.targets))

    # ------------------------------------------------------------ model
    def build_model(self, source: str, dropout: float | None = None, revision: str | None = None,
                    trust_remote_code: bool = False, attention: str | None = None, layers: int | None = None):
        from transformers import AutoModelForTokenClassification

        config = pretrained_config(source, revision, trust_remote_code, dropout, layers)
        config.num_labels = self.num_labels
        config.id2label = dict(enumerate(self.labels))
        config.label2id = {tag: i for i, tag in enumerate(self.labels)}
        return AutoModelForTokenClassification.from_pretrained(
            source, config=config, revision=revision, trust_remote_code=trust_remote_code, attn_implementation=attention)

    # ------------------------------------------------------------ training
    def batch_targets(self, enc: Encoded, rows: np.ndarray, width: int) -> torch.Tensor:
        return token_targets(enc, rows, width, IGNORE)

    def loss_terms(self, enc: Encoded, rows: np.ndarray) -> int:
        """The loss is a mean over labelled words (first sub-words), not over sentences."""
        return int(sum(np.count_nonzero(enc.targets[enc.offsets[r]:enc.offsets[r + 1]] != IGNORE) for r in rows))

    def class_weights(self, enc: Encoded, setting) -> torch.Tensor | None:
        if isinstance(setting, list):
            if len(setting) != self.num_labels:
                from tunelab.errors import ConfigError

                raise ConfigError(f"train.class_weights: {len(setting)} weights for {self.num_labels} tags "
                                  f"({', '.join(self.labels)})")
            return torch.tensor(setting, dtype=torch.float32)
        if setting != "balanced":
            return None
        labelled = enc.targets[enc.targets != IGNORE]
        counts = np.maximum(np.bincount(labelled, minlength=self.num_labels), 1).astype(np.float64)
        return torch.tensor(len(labelled) / (self.num_labels * counts), dtype=torch.float32)

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None,
                 label_smoothing: float = 0.0) -> torch.Tensor:
        logits = logits.float()[:, -targets.shape[1]:]  # a prompt method prepends virtual positions
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), weight=weights,
                               ignore_index=IGNORE, label_smoothing=label_smoothing, reduction="sum")

    # ------------------------------------------------------------ outputs
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=-1)

    def examples(self, enc: Encoded, rows_out) -> list[np.ndarray]:
        """Per-row, per-token outputs -> per sentence, one row per word: its first sub-word's, from the window
        that owns the word."""
        sentence, owned = enc.extras["sentence"], enc.extras["owned"]
        words = enc.extras["word_ids"]
        parts: list[list] = [[] for _ in range(int(sentence.max()) + 1 if len(sentence) else 0)]
        for r in range(len(enc)):
            ids = words[enc.offsets[r]:enc.offsets[r + 1]]
            first = np.flatnonzero((ids >= owned[r, 0]) & (ids < owned[r, 1]) & (ids != np.roll(ids, 1)))
            parts[int(sentence[r])].append(np.asarray(rows_out[r])[first])
        return [np.concatenate(p) if p else np.zeros((0,) + np.shape(rows_out[0])[1:]) for p in parts]

    def per_example(self, enc: Encoded, embeddings, lengths: np.ndarray, unknown: np.ndarray) -> tuple:
        """Window figures -> per sentence: embeddings averaged, token counts and unknown tokens summed."""
        sentence = enc.extras["sentence"].astype(np.int64)
        n = int(sentence.max()) + 1 if len(sentence) else 0
        windows = np.bincount(sentence, minlength=n)
        if embeddings is not None:
            summed = np.zeros((n, embeddings.shape[1]), dtype=np.float32)
            np.add.at(summed, sentence, embeddings)
            embeddings = summed / np.maximum(windows, 1)[:, None]
        return (embeddings, np.bincount(sentence, weights=lengths, minlength=n).astype(np.int64),
                np.bincount(sentence, weights=unknown, minlength=n).astype(np.int64))

    def tags(self, output: np.ndarray) -> list[str]:
        return [self.labels[i] for i in np.asarray(output).argmax(-1)] if len(output) else []

    def collector(self, temperature: float = 1.0):
        return _Collector(self)

    def decide(self, outputs, threshold: float = 0.5, top_k: int | None = None, contexts=None) -> list[dict]:
        """Per text: the entities found, each {start, end, label, score, text} with character offsets into the
        text as sent (`contexts`: each text and its words' offsets)."""
        results = []
        for i, output in enumerate(outputs):
            output = np.asarray(output)
            spans = entities(self.tags(output), output.max(-1).tolist() if len(output) else [])
            if contexts is not None and contexts[i] is not None:
                text, offsets = contexts[i]
                found = char_entities(text, offsets, spans)
            else:
                found = [{"start_word": a, "end_word": b, "label": kind, "score": score} for a, b, kind, score in spans]
            results.append({"entities": found})
        return results

    def agreement(self, a, b, threshold: float = 0.5) -> dict:
        """Two models' outputs on the same texts: the share of texts with the same entities, the texts that
        differ, and the largest difference of a word's tag probability."""
        same = [self.tags(x) == self.tags(y) for x, y in zip(a, b)]
        diff = max((float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a, b) if len(x)), default=0.0)
        return {"label_agreement": float(np.mean(same)) if same else 1.0, "disagreements": int(len(same) - sum(same)),
                "max_abs_prob_diff": diff}

    def csv_header(self) -> list[str]:
        return ["entities"]

    def csv_row(self, result: dict) -> list:
        return [json.dumps(result["entities"], ensure_ascii=False)]

    # ------------------------------------------------------------ monitoring
    def log_fields(self, result: dict) -> tuple[str, float, dict]:
        """The log's label is the entity spans as JSON (so feedback can be compared span by span); the score the
        least sure entity's (1.0 without entities)."""
        found = result["entities"]
        spans = [[e["start"], e["end"], e["label"]] for e in found if "start" in e]
        return (json.dumps(spans), float(min((e["score"] for e in found), default=1.0)),
                {"entities": found})

    def observe(self, output, threshold: float = 0.5) -> tuple:
        """(entities per type, mean confidence of the words' tags)."""
        output = np.asarray(output)
        types = self.types
        counts = [0] * len(types)
        for _, _, kind, _ in entities(self.tags(output)):
            if kind in types:
                counts[types.index(kind)] += 1
        return tuple(counts), float(output.max(-1).mean()) if len(output) else 1.0

    def target_counts(self, enc: Encoded) -> list[int]:
        types = self.types
        counts = [0] * len(types)
        for gold in self.example_targets(enc):
            for _, _, kind, _ in entities([self.labels[i] for i in gold]):
                counts[types.index(kind)] += 1
        return counts

    def feedback_label(self, given) -> tuple[str | None, str | None]:
        """Corrected entities [{start, end, label}] -> the log's form, or (None, what is wrong)."""
        if not isinstance(given, list):
            return None, "give the corrected entities: a list of {start, end, label}"
        spans = []
        for k, e in enumerate(given):
            if not (isinstance(e, dict) and isinstance(e.get("start"), int) and isinstance(e.get("end"), int)
                    and isinstance(e.get("label"), str) and 0 <= e["start"] < e["end"]):
                return None, f"entities[{k}]: give start and end (whole numbers, start < end) and label"
            if e["label"] not in self.types:
                return None, f"entities[{k}]: '{e['label']}' is not an entity type of this model; its types: {', '.join(self.types)}"
            spans.append([e["start"], e["end"], e["label"]])
        return json.dumps(sorted(spans)), None

    def live_figures(self, feedback: list[tuple[str, str]]) -> dict:
        """Entity F1 of the predictions with feedback against the corrected entities (exact span and type)."""
        found = gold = hit = 0
        for predicted, true in feedback:
            p, t = {tuple(s) for s in json.loads(predicted)}, {tuple(s) for s in json.loads(true)}
            found, gold, hit = found + len(p), gold + len(t), hit + len(p & t)
        precision, recall = hit / found if found else 1.0, hit / gold if gold else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"live_accuracy": f1, "live_entity_precision": precision, "live_entity_recall": recall}


class _Collector:
    """Gold and predicted tags per sentence; seqeval scores them at the end."""

    def __init__(self, task: TokenClassificationTask):
        self.task, self.gold, self.pred, self.words = task, [], [], []

    def add(self, outputs, targets, contexts=None) -> None:
        """Per sentence: outputs (word x tag probabilities), gold tag ids, and (text, word offsets) when known."""
        for i, (output, gold) in enumerate(zip(outputs, targets)):
            self.pred.append(self.task.tags(output))
            self.gold.append([self.task.labels[t] for t in gold])
            text, offsets = contexts[i] if contexts is not None else (None, None)
            self.words.append([text[a:b] for a, b in offsets] if offsets is not None else None)

    def __len__(self) -> int:
        return len(self.gold)

    def result(self, threshold=None, calibration_bins: int = 15) -> dict:
        from tunelab.tasks.ner.metrics import ner_metrics

        return ner_metrics(self.gold, self.pred, tokens=self.words if all(w is not None for w in self.words) else None)


def split_words(tokenizer, text: str) -> list[tuple[str, tuple[int, int]]]:
    """The words of a raw text with their character spans: as the model's pre-tokenizer splits (BERT: on
    whitespace and punctuation), else runs of letters and digits or single symbols."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None) if backend is not None else None
    if pre is not None:
        found = pre.pre_tokenize_str(text)
        if all(text[a:b] == w for w, (a, b) in found):  # a byte-level pre-tokenizer rewrites words: not usable
            return [(w, (a, b)) for w, (a, b) in found]
    from tunelab.tasks.ner.formats import WORD

    return [(m.group(), m.span()) for m in WORD.finditer(text)]


def _windows(tokenizer, words: list[list[str]], tag_ids, max_length: int, contexts) -> Encoded:
    windows = encode_words(tokenizer, words, tag_ids, max_length)
    lengths = [len(w.input_ids) for w in windows]
    offsets = np.zeros(len(windows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = lambda key, dtype: np.fromiter((v for w in windows for v in key(w)), dtype=dtype, count=int(offsets[-1]))  # noqa: E731
    ids = flat(lambda w: w.input_ids, np.int32)
    word_ids = flat(lambda w: (-1 if i is None else i for i in w.word_ids), np.int32)
    targets = flat(lambda w: w.labels, np.int64) if tag_ids is not None else None
    extras = {"sentence": np.array([w.sentence for w in windows], dtype=np.int32), "word_ids": word_ids,
              "owned": np.array([w.owned for w in windows], dtype=np.int32).reshape(-1, 2)}
    return Encoded(ids, None, offsets, targets, extras, contexts)


def _per_row(enc: Encoded, flat: np.ndarray) -> list[np.ndarray]:
    return [flat[enc.offsets[r]:enc.offsets[r + 1]] for r in range(len(enc))]
