"""What the server serves: named models, each a run or export folder, or one adapter over a shared base."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from tunelab.errors import TunelabError


@dataclass
class ServedModel:
    name: str
    infer: Callable  # (texts, pairs, embeddings) -> Inference; not thread-safe: one caller at a time
    decide: Callable[[np.ndarray, int | None], list[dict]]
    tokenizer: object
    max_length: int
    pair: bool
    info: dict = field(default_factory=dict)
    profile: dict | None = None  # the training profile drift is measured against (monitor/profile.py)
    threshold: float = 0.5
    task: object = None  # the model's task (tasks/base.py): what the monitor keeps of each answer
    engine: object = None  # a causal LM's continuous-batching decoder (serve/generation.py); None for the others
    prompt: Callable | None = None  # a causal LM: messages -> the prompt text through its chat template

    def probabilities(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        return self.infer(texts, pairs, False).probs


def _info(predictor, backend: str, path: Path) -> dict:
    card = predictor.card
    validation = card.validation
    return {"labels": predictor.labels, "task": card.task, "multi_label": card.multi_label, "pair": card.pair,
            "base_model": card.base_model, "method": card.method_name, "backend": backend, "path": str(path),
            "max_length": card.max_length,
            "metrics": {k: validation[k] for k in ("accuracy", "macro_f1", "micro_f1", "roc_auc", "entity_f1") if k in validation}}


def _generative(path) -> bool:
    from tunelab.models.card import ModelCard
    from tunelab.models.predictor import find_model_dir

    return ModelCard.read(find_model_dir(path)).task == "causal_lm"


def _generative_model(name: str, folder: Path, card, task, tokenizer, model, engine, max_queue: int,
                      precision: str = "fp32", **info) -> ServedModel:
    """A causal LM as the OpenAI-compatible routes serve it: what /v1/models shows, when an answer ends (the
    tokenizer's end token and the generation config's), how its prompts are built."""
    ends = [tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)]
    eos = {e for t in ends if t is not None for e in (t if isinstance(t, list) else [t])}
    info = {"task": "causal_lm", "base_model": card.base_model, "method": card.method_name, "backend": f"torch-{precision}",
            "path": str(folder), "max_length": card.max_length, **info,
            "max_position_embeddings": int(getattr(model.config, "max_position_embeddings", 2048)),
            "eos": tuple(sorted(eos)), "max_queue": max_queue}
    return ServedModel(name, None, None, tokenizer, card.max_length, False, info, None, task=task, engine=engine,
                       prompt=partial(task.prompt, tokenizer))


def _for_decoding(model, precision: str):
    """The model as the engine decodes with it. bf16: the weights themselves in bf16 (not autocast): decoding reads
    every weight at each token, and half the bytes with the CPU's bf16 instructions measured 1.35 times the tokens/s
    (both packed; benchmarks/llm_precision.py). On the CPU its linear layers run on weights packed once for oneDNN
    (serve/packed_linear.py)."""
    import torch

    from tunelab.serve.packed_linear import pack_linears

    model = model.to(torch.bfloat16) if precision == "bf16" else model
    pack_linears(model)
    return model


def load_generative(name: str, path, max_queue: int = 64, precision: str = "fp32",
                    prefix_cache_mb: float = 64.0) -> ServedModel:
    """A causal LM for the OpenAI-compatible routes: LoRA/IA3 merged into the weights (one plain model runs the
    batched decoding), its tokenizer and chat template, and its decoding engine (started with the server)."""
    import torch

    from tunelab.methods import METHODS
    from tunelab.models.generate import Generator
    from tunelab.serve.generation import Engine

    generator = Generator(path)
    card_method = generator.card.method_name
    model, virtual = generator.model, None
    if METHODS[card_method].SAVES == "peft":
        if getattr(METHODS[card_method], "MERGEABLE", False):
            model = model.merge_and_unload()
        else:  # prompt tuning: its learned virtual tokens, read before each prompt by the engine, over the plain base
            with torch.inference_mode():
                virtual = model.get_prompt(batch_size=1)[0].detach().clone()
            model = model.get_base_model()
    model = _for_decoding(model, precision)
    if virtual is not None:
        virtual = virtual.to(model.dtype)
    served = _generative_model(name, generator.model_dir, generator.card, generator.task, generator.tokenizer, model,
                               Engine(model, virtual=virtual, prefix_cache_mb=prefix_cache_mb), max_queue, precision)
    if virtual is not None:  # they take positions of the context like prompt tokens
        served.info["virtual_tokens"] = len(virtual)
        served.info["max_position_embeddings"] -= len(virtual)
    return served


def load_generative_adapters(base: str, adapters: dict[str, str | Path], max_queue: int = 64,
                             precision: str = "fp32", prefix_cache_mb: float = 64.0) -> dict[str, ServedModel]:
    """Several LoRA runs of one causal LM in one model: the base loaded once, each adapter beside it, and one
    decoding engine whose batches mix requests for any of them (peft's per-row adapter_names)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from tunelab.hub import resolve_model
    from tunelab.models.card import ModelCard
    from tunelab.models.load import build_base
    from tunelab.models.predictor import find_model_dir
    from tunelab.serve.generation import Engine
    from tunelab.tasks import task_of

    dirs = {name: find_model_dir(run) for name, run in adapters.items()}
    cards = {name: ModelCard.read(d) for name, d in dirs.items()}
    for name, card in cards.items():
        if card.method_name != "lora":
            raise TunelabError(f"--adapter {name}: a causal LM shares its base with other runs only as LoRA "
                               f"(this run is '{card.method_name}'); serve it on its own")
        if resolve_model(card.base_model, card.base_revision) != resolve_model(base):
            raise TunelabError(f"--adapter {name}: trained over {card.base_model}, not over --base {base}")
    first = next(iter(dirs))
    model = PeftModel.from_pretrained(build_base(cards[first]), dirs[first], adapter_name=first)
    for name, folder in dirs.items():
        if name != first:
            model.load_adapter(folder, adapter_name=name)
    model = _for_decoding(model.eval(), precision)
    engine = Engine(model, adapters=True, prefix_cache_mb=prefix_cache_mb)
    tokenizer = AutoTokenizer.from_pretrained(dirs[first])
    # each run with its own template and system prompt
    return {name: _generative_model(name, folder, cards[name], task_of(cards[name]), tokenizer, model, engine,
                                    max_queue, precision, shared_base=base, adapter=name) for name, folder in dirs.items()}


def load_models(models: dict[str, str | Path], precision: str = "fp32", base: str | None = None,
                adapters: dict[str, str | Path] | None = None, threads: int | None = None,
                max_queue: int = 64, built: dict[str, ServedModel] | None = None,
                prefix_cache_mb: float = 64.0) -> dict[str, ServedModel]:
    """{name: run or export folder} (+ adapters over one base, + models `built` by an application) ->
    {name: ServedModel}. Loaded on a passing thread: the threads that run the models then have the cores' parallel
    workers to themselves (tunelab/threads.py)."""
    from tunelab.threads import on_passing_thread

    return on_passing_thread(_load_models, models, precision, base, adapters, threads, max_queue, built,
                             prefix_cache_mb)


def _load_models(models, precision, base, adapters, threads, max_queue, built, prefix_cache_mb):
    import torch

    from tunelab.models.adapters import AdapterSet
    from tunelab.models.predictor import Predictor
    from tunelab.monitor.profile import load_profile

    if threads:
        torch.set_num_threads(threads)
    served: dict[str, ServedModel] = {}
    for name, path in models.items():
        if _generative(path):
            served[name] = load_generative(name, path, max_queue, precision, prefix_cache_mb)
            continue
        predictor = Predictor(path, precision=precision)
        backend = ("onnx-" + (predictor.card.onnx.get("quantize") or "fp32")) if predictor.onnx else f"torch-{precision}"
        served[name] = ServedModel(name, predictor.infer, predictor.decide, predictor.tokenizer,
                                   predictor.max_length, predictor.card.pair, _info(predictor, backend, predictor.model_dir),
                                   load_profile(predictor.model_dir), predictor.threshold, predictor.task)
    if adapters and base is not None and all(_generative(run) for run in adapters.values()):
        for name, model in load_generative_adapters(base, adapters, max_queue, precision, prefix_cache_mb).items():
            if name in served:
                raise TunelabError(f"two models are called '{name}'")
            served[name] = model
    elif adapters:
        if base is None:
            raise TunelabError("adapters need their base model: --base MODEL")
        shared = AdapterSet(base, adapters, precision=precision)
        for name in shared.names:
            if name in served:
                raise TunelabError(f"two models are called '{name}'")
            p = shared.predictors[name]
            served[name] = ServedModel(name, lambda texts, pairs, embeddings=True, _n=name: shared.infer(texts, _n, pairs, embeddings),
                                       p.decide, p.tokenizer, p.max_length, p.card.pair,
                                       {**_info(p, f"torch-{precision}", p.model_dir), "shared_base": base},
                                       load_profile(p.model_dir), p.threshold, p.task)
    for name, model in (built or {}).items():
        if name in served:
            raise TunelabError(f"two models are called '{name}'")
        served[name] = model
    if not served and built is None:  # an application may serve only its own routes (the recommender)
        raise TunelabError("nothing to serve: give a run or export folder (or --base with --adapter)")
    return served
