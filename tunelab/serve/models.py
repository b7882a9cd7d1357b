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
    probabilities: Callable[[list[str], list[str] | None], np.ndarray]  # not thread-safe: one caller at a time
    decide: Callable[[np.ndarray, int | None], list[dict]]
    tokenizer: object
    max_length: int
    pair: bool
    info: dict = field(default_factory=dict)


def _info(predictor, backend: str, path: Path) -> dict:
    meta = predictor.meta
    validation = meta.get("validation", {})
    return {"labels": predictor.labels, "task": meta["task"], "multi_label": meta["multi_label"], "pair": meta["pair"],
            "base_model": meta.get("base_model"), "method": meta.get("method", {"name": "full"})["name"],
            "backend": backend, "path": str(path), "max_length": int(meta["max_length"]),
            "metrics": {k: validation[k] for k in ("accuracy", "macro_f1", "micro_f1", "roc_auc") if k in validation}}


def load_models(models: dict[str, str | Path], precision: str = "fp32", base: str | None = None,
                adapters: dict[str, str | Path] | None = None, threads: int | None = None) -> dict[str, ServedModel]:
    """{name: run or export folder} (+ adapters over one base) -> {name: ServedModel}."""
    import torch

    from tunelab.models.adapters import AdapterSet
    from tunelab.models.predictor import Predictor

    if threads:
        torch.set_num_threads(threads)
    served: dict[str, ServedModel] = {}
    for name, path in models.items():
        predictor = Predictor(path, precision=precision)
        backend = ("onnx-" + (predictor.meta["onnx"].get("quantize") or "fp32")) if predictor.onnx else f"torch-{precision}"
        served[name] = ServedModel(name, predictor.probabilities, predictor.decide, predictor.tokenizer,
                                   predictor.max_length, predictor.task.pair, _info(predictor, backend, predictor.model_dir))
    if adapters:
        if base is None:
            raise TunelabError("adapters need their base model: --base MODEL")
        shared = AdapterSet(base, adapters, precision=precision)
        for name in shared.names:
            if name in served:
                raise TunelabError(f"two models are called '{name}'")
            p = shared.predictors[name]
            served[name] = ServedModel(name, lambda texts, pairs, _n=name: shared.probabilities(texts, _n, pairs),
                                       p.decide, p.tokenizer, p.max_length, p.task.pair,
                                       {**_info(p, f"torch-{precision}", p.model_dir), "shared_base": base})
    if not served:
        raise TunelabError("nothing to serve: give a run or export folder (or --base with --adapter)")
    return served
