"""tunelab: turn a pretrained transformer into a working, monitored application.

The Python API mirrors the CLI: `tunelab.prepare(load_config("cfg.yaml"))` is `tunelab prepare cfg.yaml`,
`tunelab.train(config)` is `tunelab train`, `tunelab.evaluate(run_dir)` is `tunelab evaluate`,
`tunelab.tune(config)` is `tunelab tune`, `tunelab.create_app({...})` is the app `tunelab serve` runs.
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
    "tune": "tunelab.tuning.run",
    "retrain_best": "tunelab.tuning.run",
    "merge_run": "tunelab.export.merge",
    "export_onnx": "tunelab.export.onnx",
    "create_app": "tunelab.serve.app",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")
