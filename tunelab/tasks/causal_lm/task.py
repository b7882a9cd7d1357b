"""Causal language modelling (instruction fine-tuning of a GPT-style model): the model learns the assistant's
turns of conversations, through the model's own chat template.

A row is one conversation (tokens through the template); its targets are, per token, the next token where that
one is the assistant's (chat.py). The language-model head runs only at those positions (`forward`): its logits
over the whole vocabulary at every position would be most of the memory of a step (49k floats per token for
SmolLM2), and the prompt's positions have nothing to learn. Validation reports the loss on the answers' tokens,
its perplexity and the share of answer tokens the model ranks first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tunelab.errors import TunelabError
from tunelab.tasks.base import data_stage, pretrained_config
from tunelab.tasks.causal_lm.chat import IGNORE, encode_conversation, load_template, with_system
from tunelab.tasks.encoding import Encoded, collate, eval_batches, token_targets


@dataclass(frozen=True)
class CausalLMTask:
    system_prompt: str | None = None
    chat_template: str | None = None  # the Jinja text (task.chat_template read), or None: the tokenizer's own
    labels: tuple = ()  # task.label_answers: the answers are these class labels (evaluation constrains to them)

    name = "causal_lm"
    auto_class = "AutoModelForCausalLM"
    multi_label = False
    pair = False
    reports_calibration = False
    profiles = False  # no monitoring profile of label rates and embeddings: the answers are text
    groups_by_length = False  # batches of like-length conversations are often near-copies (train.group_by_length)
    generates = True  # answered by generation (models/generate.py, serve/openai_api.py), not by a Predictor
    input_columns = ("messages",)
    split_columns = ("messages",)
    default_metric = "loss"

    # ------------------------------------------------------------ construction
    @classmethod
    def from_prepared(cls, config, prepared) -> CausalLMTask:
        return cls(config.task.system_prompt, load_template(config.task.chat_template), tuple(prepared.labels))

    @classmethod
    def from_card(cls, card) -> CausalLMTask:
        return cls(card.task_options.get("system_prompt"), card.task_options.get("chat_template"), tuple(card.labels))

    def card_fields(self) -> dict:
        return {"task": self.name, "labels": list(self.labels),  # label answers (task.label_answers): the class labels
                "task_options": {"system_prompt": self.system_prompt, "chat_template": self.chat_template}}

    @staticmethod
    def metric_for(config) -> str:
        return "loss"

    @property
    def num_labels(self) -> int:
        return 0

    # ------------------------------------------------------------ data
    build_data, prepare_file = data_stage("tunelab.tasks.causal_lm.data")

    @staticmethod
    def evaluate_split(run_dir, config, name, path, batch_size, quiet, report_dir) -> dict:
        """`tunelab evaluate`: loss and perplexity, then generated answers scored and shown side by side."""
        from tunelab.models.card import ModelCard
        from tunelab.tasks.causal_lm import evaluate as lm

        metrics, examples = lm.evaluate_split(run_dir, config, name, path, batch_size, quiet)
        if report_dir is not None:
            lm.write_report(report_dir, name, metrics, examples, ModelCard.read(run_dir / "model"))
        return metrics

    # ------------------------------------------------------------ encoding
    def cache_key(self) -> list:
        return [self.name, self.system_prompt, self.chat_template]

    def conversation(self, messages: list[dict]) -> list[dict]:
        return with_system(messages, self.system_prompt)

    def texts(self, tokenizer, columns: dict) -> list[str]:
        """A prepared split's conversations as the model reads them (to compare two models' outputs on)."""
        import json

        from tunelab.tasks.causal_lm.chat import render

        return [render(tokenizer, self.conversation(json.loads(m)), self.chat_template)[0] for m in columns["messages"]]

    def prompt(self, tokenizer, messages: list[dict]) -> str:
        """What the model continues to answer `messages`: through the template, with the generation prompt."""
        from tunelab.tasks.causal_lm.chat import prompt_text

        return prompt_text(tokenizer, self.conversation(messages), self.chat_template)

    def encode(self, tokenizer, columns: dict, max_length: int) -> Encoded:
        """Conversations (JSON text per row) -> token ids and next-token targets (IGNORE outside the answers),
        cut at max_length (the data stage has refused or counted longer ones, data.too_long)."""
        import json

        ids, targets = [], []
        for text in columns["messages"]:
            row_ids, row_targets, _ = encode_conversation(tokenizer, self.conversation(json.loads(text)),
                                                          self.chat_template, max_length)
            ids.append(row_ids)
            targets.append(row_targets)
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in ids], out=offsets[1:])
        flat = np.concatenate(ids).astype(np.int32) if ids else np.zeros(0, dtype=np.int32)
        flat_targets = np.concatenate(targets) if targets else np.zeros(0, dtype=np.int64)
        return Encoded(flat, None, offsets, flat_targets)

    # ------------------------------------------------------------ model and training
    def build_model(self, source: str, dropout: float | None = None, revision: str | None = None,
                    trust_remote_code: bool = False, attention: str | None = None, layers: int | None = None):
        from transformers import AutoModelForCausalLM

        config = pretrained_config(source, revision, trust_remote_code, dropout, layers)
        kwargs = {"attn_implementation": attention} if attention else {}
        return AutoModelForCausalLM.from_pretrained(source, config=config, revision=revision, dtype=torch.float32,
                                                    trust_remote_code=trust_remote_code, **kwargs)

    def batch_targets(self, enc: Encoded, rows: np.ndarray, width: int) -> torch.Tensor:
        return token_targets(enc, rows, width, IGNORE)

    def forward(self, model, batch: dict, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits at the positions that have a target only, and those targets (both flat)."""
        learned = targets != IGNORE
        width = targets.shape[1]
        head = _output_head(model)

        def at_targets(_module, args):  # the head's input is [batch, positions, hidden]: keep the learned positions
            hidden = args[0][:, -width:]  # a prompt-tuning method prepends virtual positions
            return (hidden[learned.to(hidden.device)],)
        handle = head.register_forward_pre_hook(at_targets)
        try:
            logits = model(**batch, use_cache=False).logits  # a cache would also turn off packed-row masking
        finally:
            handle.remove()
        return logits.reshape(-1, logits.shape[-1]), targets[learned]

    @staticmethod
    def pack(enc: Encoded, max_length: int) -> Encoded:
        """Rows of whole conversations, each of up to max_length tokens (first-fit, longest first); per token its
        position within its own conversation (extras["positions"]). Each conversation's last target is IGNORE,
        so none learns to continue into the next."""
        lengths = enc.lengths
        bins: list[list[int]] = []
        room: list[int] = []
        for row in np.argsort(-lengths, kind="stable"):
            n = int(lengths[row])
            place = next((b for b, free in enumerate(room) if free >= n), None)
            if place is None:
                bins.append([int(row)])
                room.append(max_length - n)
            else:
                bins[place].append(int(row))
                room[place] -= n
        pieces = [[(enc.offsets[r], enc.offsets[r + 1]) for r in members] for members in bins]
        ids = np.concatenate([enc.ids[s:e] for piece in pieces for s, e in piece])
        targets = np.concatenate([enc.targets[s:e] for piece in pieces for s, e in piece])
        positions = np.concatenate([np.arange(e - s, dtype=np.int32) for piece in pieces for s, e in piece])
        offsets = np.zeros(len(bins) + 1, dtype=np.int64)
        np.cumsum([sum(e - s for s, e in piece) for piece in pieces], out=offsets[1:])
        return Encoded(ids, None, offsets, targets, {"positions": positions})

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor, weights, label_smoothing: float) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=label_smoothing)

    def loss_terms(self, enc: Encoded, rows: np.ndarray) -> int:
        return int(sum((enc.targets[enc.offsets[r]:enc.offsets[r + 1]] != IGNORE).sum() for r in rows))

    def class_weights(self, enc: Encoded, setting) -> None:
        if setting != "none":
            from tunelab.errors import ConfigError

            raise ConfigError("train.class_weights: a causal LM has no classes to weight; leave it 'none'")
        return None

    # ------------------------------------------------------------ validation
    @torch.inference_mode()
    def validate(self, model, enc: Encoded, batch_size: int, pad_id: int, autocast: bool = False) -> dict:
        """Loss per answer token, perplexity and top-1 token accuracy over a split."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        total, right, count = 0.0, 0, 0
        try:
            for rows in eval_batches(enc.lengths, batch_size):
                batch = {k: v.to(device) for k, v in collate(enc, rows, pad_id, False).items()}
                targets = self.batch_targets(enc, rows, batch["input_ids"].shape[1]).to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    logits, wanted = self.forward(model, batch, targets)
                total += float(self.loss_sum(logits, wanted, None, 0.0))
                right += int((logits.argmax(-1) == wanted).sum())
                count += int(wanted.numel())
        finally:
            model.train(was_training)
        if not count:
            raise TunelabError("no answer token to score: every conversation was cut before its answer "
                               "(raise model.max_length)")
        loss = total / count
        return {"examples": len(enc), "tokens": count, "loss": loss, "perplexity": math.exp(min(loss, 50.0)),
                "token_accuracy": right / count}

    # ------------------------------------------------------------ monitoring
    RATINGS = ("good", "bad")

    def feedback_label(self, given) -> tuple[str | None, str | None]:
        """A rating of an answer from feedback ("good" or "bad", as a chat page's thumbs) -> (rating, None)."""
        if given not in self.RATINGS:
            return None, f"the feedback on a generated answer is 'good' or 'bad', not {given!r}"
        return given, None

    def live_figures(self, feedback: list[tuple[str, str]]) -> dict:
        """The share of rated answers rated good."""
        return {"live_approval": sum(rating == "good" for _, rating in feedback) / len(feedback)}


def _output_head(model) -> torch.nn.Module:
    """The language-model head (vocabulary projection), through peft and accelerate wrappers."""
    inner = model
    while True:
        if hasattr(inner, "get_output_embeddings") and inner.get_output_embeddings() is not None:
            return inner.get_output_embeddings()
        nxt = getattr(inner, "module", None) or getattr(inner, "base_model", None) or getattr(inner, "model", None)
        if nxt is None or nxt is inner:
            raise TunelabError(f"{type(model).__name__} has no language-model head (get_output_embeddings)")
        inner = nxt
