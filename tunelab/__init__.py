"""tunelab: turn a pretrained transformer into a working, monitored application.

The Python API mirrors the CLI: `tunelab.prepare(load_config("cfg.yaml"))` is `tunelab prepare cfg.yaml`,
`tunelab.train(config)` is `tunelab train`, `tunelab.evaluate(run_dir)` is `tunelab evaluate`,
`tunelab.tune(config)` is `tunelab tune`, `tunelab.run_server({...})` is `tunelab serve` (`tunelab.create_app` its
ASGI app), `tunelab.monitor_report(run)` is `tunelab monitor report`.
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
    "TrainResult": "tunelab.training.finish",
    "train": "tunelab.training.loop",
    "evaluate": "tunelab.evaluation.run",
    "EvalResult": "tunelab.evaluation.run",
    "Predictor": "tunelab.models.predictor",
    "load": "tunelab.models.adapters",
    "AdapterSet": "tunelab.models.adapters",
    "tune": "tunelab.tuning.run",
    "retrain_best": "tunelab.tuning.run",
    "RetrainResult": "tunelab.tuning.run",
    "predict_file": "tunelab.models.predict_file",
    "ModelCard": "tunelab.models.card",
    "merge_run": "tunelab.export.merge",
    "export_onnx": "tunelab.export.onnx",
    "ExportResult": "tunelab.export.result",
    "ServeConfig": "tunelab.config",
    "create_app": "tunelab.serve.app",
    "run_server": "tunelab.serve.run",
    "build_profile": "tunelab.monitor.profile",
    "monitor_report": "tunelab.monitor.report",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")
