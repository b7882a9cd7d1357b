"""tunelab: turn a pretrained transformer into a working, monitored application.

The Python API mirrors the CLI: `tunelab.prepare(load_config("cfg.yaml"))` is `tunelab prepare cfg.yaml`,
`tunelab.train(config)` is `tunelab train`, `tunelab.evaluate(run_dir)` is `tunelab evaluate`.
Heavy modules (torch, transformers) load only when a function that needs them is called.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {  # public name -> module that defines it (stage folders are named so they never shadow these)
    "load_config": "tunelab.config",
    "Config": "tunelab.config",
    "TunelabError": "tunelab.errors",
    "prepare": "tunelab.data.pipeline",
    "train": "tunelab.training.loop",
    "evaluate": "tunelab.evaluation.run",
    "Predictor": "tunelab.models.predictor",
    "load": "tunelab.models.adapters",
    "AdapterSet": "tunelab.models.adapters",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")
