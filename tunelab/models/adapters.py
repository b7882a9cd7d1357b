"""Several adapters over one base model in memory: `tunelab.load(base, adapters={name: run, ...})`.

One copy of the base weights; each adapter adds its LoRA/IA3 tensors (peft's multi-adapter model) and its
own task head, which may have its own label set. A call picks its adapter: peft switches the adapter
weights, we switch the head. Calls are serialised by a lock (one adapter active at a time).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from tunelab.errors import TunelabError
from tunelab.methods import METHODS
from tunelab.methods.parts import head_modules
from tunelab.models.card import ModelCard
from tunelab.models.load import build_base
from tunelab.models.predictor import Predictor, find_model_dir
from tunelab.hub import resolve_model

SHAREABLE = [n for n, m in METHODS.items() if getattr(m, "MERGEABLE", False)]  # weight-level adapters: lora, ia3
PEFT_PREFIX = "base_model.model."


class AdapterSet:
    """Predict with any of several adapters trained on the same base; the base is loaded once."""

    def __init__(self, base: str, adapters: dict[str, str | Path], precision: str = "fp32", batch_size: int = 64):
        from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
        from safetensors.torch import load_file

        if not adapters:
            raise TunelabError("give at least one adapter: tunelab.load(base, adapters={'name': 'runs/<run>'})")
        self.model, self.heads, self.predictors = None, {}, {}
        self._lock = threading.Lock()
        for name, run in adapters.items():
            model_dir = find_model_dir(run)
            card = ModelCard.read(model_dir)
            method = card.method_name
            if method not in SHAREABLE:
                raise TunelabError(f"adapter '{name}': {run} was trained with method '{method}'; only "
                                   f"{' and '.join(SHAREABLE)} runs can share one base model")
            if not _same_model(card.base_model, base):
                raise TunelabError(f"adapter '{name}': {run} was trained on base '{card.base_model}', not '{base}'")
            donor = build_base(card)  # a fresh model with this adapter's head shape
            heads = head_modules(donor)
            state = load_file(str(model_dir / "adapter_model.safetensors"))
            is_head = {k: k.removeprefix(PEFT_PREFIX).split(".")[0] in heads for k in state}
            donor.load_state_dict({k.removeprefix(PEFT_PREFIX): v for k, v in state.items() if is_head[k]}, strict=False)
            self.heads[name] = {h: getattr(donor, h).eval() for h in heads}
            config = PeftConfig.from_pretrained(str(model_dir))
            config.modules_to_save, config.task_type, config.inference_mode = None, None, True  # heads are ours
            if self.model is None:
                self.model = get_peft_model(donor, config, adapter_name=name).eval()  # its body is the shared base
            else:
                self.model.add_adapter(name, config)
            set_peft_model_state_dict(self.model, {k: v for k, v in state.items() if not is_head[k]}, adapter_name=name)
            self.predictors[name] = Predictor(model_dir, precision, batch_size, model=self.model)

    @property
    def names(self) -> list[str]:
        return list(self.predictors)

    def _use(self, adapter: str) -> Predictor:
        if adapter not in self.predictors:
            raise TunelabError(f"unknown adapter '{adapter}'; loaded: {', '.join(self.predictors)}")
        self.model.set_adapter(adapter)
        body = self.model.get_base_model()
        for head, module in self.heads[adapter].items():
            setattr(body, head, module)
        return self.predictors[adapter]

    def probabilities(self, texts: list[str], adapter: str, pairs: list[str] | None = None) -> np.ndarray:
        with self._lock:
            return self._use(adapter).probabilities(texts, pairs)

    def infer(self, texts: list[str], adapter: str, pairs: list[str] | None = None, embeddings: bool = True):
        """Predictor.infer through one adapter (probabilities, embeddings, token counts)."""
        with self._lock:
            return self._use(adapter).infer(texts, pairs, embeddings)

    def predict(self, texts: list[str], adapter: str, pairs: list[str] | None = None, top_k: int | None = None) -> list[dict]:
        with self._lock:
            predictor = self._use(adapter)
            return predictor.decide(predictor.probabilities(texts, pairs), top_k)


def _same_model(a: str, b: str) -> bool:
    a, b = resolve_model(a), resolve_model(b)
    return a == b or (Path(a).is_dir() and Path(b).is_dir() and Path(a).resolve() == Path(b).resolve())


def load(model: str | Path, adapters: dict[str, str | Path] | None = None, **options):
    """`load(run)`: a Predictor for one trained run. `load(base, adapters={name: run})`: an AdapterSet
    sharing one copy of `base` between the LoRA/IA3 runs trained on it."""
    if adapters is None:
        return Predictor(model, **options)
    return AdapterSet(str(model), adapters, **options)
