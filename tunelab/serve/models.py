"""What the server serves: named models, each a run or export folder, or one adapter over a shared base."""

from __future__ import annotations

from dataclasses import dataclass, field
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

    def probabilities(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        return self.infer(texts, pairs, False).probs


def _info(predictor, backend: str, path: Path) -> dict:
    card = predictor.card
    validation = card.validation
    return {"labels": predictor.labels, "task": card.task, "multi_label": card.multi_label, "pair": card.pair,
            "base_model": card.base_model, "method": card.method_name, "backend": backend, "path": str(path),
            "max_length": card.max_length,
            "metrics": {k: validation[k] for k in ("accuracy", "macro_f1", "micro_f1", "roc_auc", "entity_f1") if k in validation}}


def load_models(models: dict[str, str | Path], precision: str = "fp32", base: str | None = None,
                adapters: dict[str, str | Path] | None = None, threads: int | None = None) -> dict[str, ServedModel]:
    """{name: run or export folder} (+ adapters over one base) -> {name: ServedModel}."""
    import torch

    from tunelab.models.adapters import AdapterSet
    from tunelab.models.predictor import Predictor
    from tunelab.monitor.profile import load_profile

    if threads:
        torch.set_num_threads(threads)
    served: dict[str, ServedModel] = {}
    for name, path in models.items():
        predictor = Predictor(path, precision=precision)
        backend = ("onnx-" + (predictor.card.onnx.get("quantize") or "fp32")) if predictor.onnx else f"torch-{precision}"
        served[name] = ServedModel(name, predictor.infer, predictor.decide, predictor.tokenizer,
                                   predictor.max_length, predictor.card.pair, _info(predictor, backend, predictor.model_dir),
                                   load_profile(predictor.model_dir), predictor.threshold, predictor.task)
    if adapters:
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
    if not served:
        raise TunelabError("nothing to serve: give a run or export folder (or --base with --adapter)")
    return served
