"""Text generation with a fine-tuned causal LM (`tunelab generate`, and the Python API): the conversation through
the model's chat template (and the run's system prompt), then transformers' `generate`, streamed piece by piece.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.errors import TunelabError


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy (the same answer every time)
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def kwargs(self, tokenizer) -> dict:
        sample = self.temperature > 0
        out = {"max_new_tokens": self.max_new_tokens, "do_sample": sample,
               "repetition_penalty": self.repetition_penalty,
               "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id}
        if sample:
            out.update(temperature=self.temperature, top_p=self.top_p)
        else:  # the checkpoint's generation_config may ask for sampling: greedy means greedy
            out.update(temperature=None, top_p=None, top_k=None)
        return out


class Generator:
    """A trained causal LM (a run or model folder, any method) ready to answer conversations."""

    def __init__(self, run: str | Path, threads: int | None = None):
        from transformers import AutoTokenizer

        from tunelab.hub import quiet_transformers
        from tunelab.models.card import ModelCard
        from tunelab.models.load import load_model
        from tunelab.models.predictor import find_model_dir
        from tunelab.tasks import task_of
        from tunelab.threads import on_passing_thread

        quiet_transformers()
        self.model_dir = find_model_dir(run)
        self.card = card = ModelCard.read(self.model_dir)
        self.task = task_of(card)
        if self.task.name != "causal_lm":
            raise TunelabError(f"{self.model_dir} is a {self.task.name} model; `tunelab generate` needs a causal_lm "
                               "run (use `tunelab predict` for it)")
        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        # `stream` decodes on a thread of its own: loaded on a passing thread, it has the parallel workers to itself
        self.model = on_passing_thread(load_model, self.model_dir, card)

    def prompt(self, messages: list[dict]) -> str:
        return self.task.prompt(self.tokenizer, messages)

    def stream(self, messages: list[dict] | str, settings: GenerationSettings = GenerationSettings()) -> Iterator[str]:
        """The answer's text, piece by piece as it is generated."""
        from transformers import TextIteratorStreamer

        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        encoded = self.tokenizer(self.prompt(messages), return_tensors="pt", add_special_tokens=False)
        inputs = {k: encoded[k] for k in ("input_ids", "attention_mask")}
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        failed: list[BaseException] = []

        def run():
            try:
                if settings.seed is not None:
                    torch.manual_seed(settings.seed)
                with torch.inference_mode():
                    self.model.generate(**inputs, streamer=streamer, **settings.kwargs(self.tokenizer))
            except BaseException as exc:  # noqa: BLE001 -- handed to the caller's thread below
                failed.append(exc)
                streamer.end()
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        yield from streamer
        worker.join()
        if failed:
            raise failed[0]

    def answer(self, messages: list[dict] | str, settings: GenerationSettings = GenerationSettings()) -> str:
        return "".join(self.stream(messages, settings))
