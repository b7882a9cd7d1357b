"""The tunelab runs an application is built from: trained (or reused, or resumed), exported, evaluated, found."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.errors import Interrupted, TunelabError


def run_config(path: Path):
    from tunelab.config import load_config

    return load_config(path)


def student_config(path: Path, layers: int):
    """The run config at `path` as a student: the same run on the model's first `layers` layers, learning from the
    trained run at `path` as its teacher (train.distill), in a run folder of its own (<name>-<layers>layers)."""
    from tunelab.config import load_config

    teacher = run_config(path)
    return load_config(path, [f"model.layers={layers}", f"train.distill.teacher={teacher.run_dir.resolve()}",
                              f"name={teacher.name}-{layers}layers"])


def depth_of(config) -> int | None:
    """How many transformer layers the run config's model has: model.layers, or its checkpoint's (None: its config
    does not say)."""
    from tunelab.hub import resolve_model
    from tunelab.tasks.base import pretrained_config

    if config.model.layers is not None:
        return config.model.layers
    source = resolve_model(config.model.name, config.model.revision)
    depth = getattr(pretrained_config(source, config.model.revision, config.model.trust_remote_code),
                    "num_hidden_layers", None)
    return depth if isinstance(depth, int) else None


def backend_folder(run_dir: Path, backend: str) -> Path:
    """The folder an app scores a run with under `backend`: its ONNX export (int8 or fp32) or its torch model."""
    if backend == "torch":
        return run_dir / "model"
    return run_dir / "export" / ("onnx-int8" if backend == "onnx-int8" else "onnx")


def model_folder(path, backend: str, command: str) -> Path:
    """The folder an app scores with for the run config at `path` (or a loaded Config; backend_folder). `command`:
    what builds it, for the error when it is missing."""
    folder = backend_folder((run_config(path) if isinstance(path, (str, Path)) else path).run_dir, backend)
    if not folder.is_dir():
        raise TunelabError(f"{folder} is missing: build the app first ({command})")
    return folder


def trained_labels(run_dir: Path) -> list[str]:
    from tunelab.models.card import ModelCard

    return list(ModelCard.read(run_dir / "model").labels)


def build_run(path, part: str, task: str, backend: str, retrain: bool, quiet: bool, command: str,
              test: bool = True) -> dict:
    """Train the run config at `path` (or a loaded Config: a run the app writes itself; a finished training is
    reused, an interrupted one resumed; `retrain`: from the start), export it for `backend`, evaluate it on its test
    split (`test`). -> what the app's report says of it."""
    from tunelab.evaluation.run import evaluate
    from tunelab.export.onnx import export_onnx
    from tunelab.training.loop import train

    say = (lambda m: None) if quiet else (lambda m: print(m, flush=True))
    config = run_config(path) if isinstance(path, (str, Path)) else path
    if config.task.name != task:
        raise TunelabError(f"{path}: the {part} model must be a {task} run (task.name is {config.task.name})")
    run_dir = config.run_dir
    started = (run_dir / "model").exists() or (run_dir / "checkpoints").exists()
    say(f"{part}: {'continuing' if started and not retrain else 'training'} {run_dir}")
    try:
        trained = train(config, resume=started and not retrain, overwrite=retrain, quiet=quiet)
    except Interrupted as exc:  # the app's own command continues it, not `tunelab train`
        raise Interrupted(f"{str(exc).split(' Continue with:')[0]} Continue with: {command}", exc.signum) from None
    entry = {"run": str(run_dir), "steps": trained.steps, "labels": trained_labels(run_dir)}
    if backend != "torch":
        out = backend_folder(run_dir, backend)
        if retrain or not (out / "parity.json").is_file():
            say(f"{part}: exporting {out}")
            export_onnx(run_dir, out, quantize="int8" if backend == "onnx-int8" else None, quiet=quiet)
        entry["export"] = str(out)
        entry["export_parity"] = json.loads((out / "parity.json").read_text())
    if test:
        metrics = evaluate(run_dir, "test", quiet=quiet).metrics
        entry["test"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    return entry
