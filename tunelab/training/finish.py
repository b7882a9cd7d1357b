"""After the last step: the model folder completed (kept weights, calibration, monitoring profile), result.json."""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from tunelab.files import write_text_atomic
from tunelab.methods import METHODS
from tunelab.training.checkpoint import save_model_folder
from tunelab.training.setup import Run
from tunelab.training.sharding import whole_state

FINISHED = "result.json"  # written when a run ends: --resume then has nothing left to do


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    steps: int
    best_step: int | None
    validation: dict  # metrics of the saved model on validation
    train_seconds: float  # the loop, evaluations and checkpoints included
    samples_per_second: float  # training throughput: evaluation and checkpoint time left out
    stopped_early: bool


def finished(run_dir: Path) -> TrainResult | None:
    """The result of a run that ended, or None."""
    path = run_dir / FINISHED
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return TrainResult(**{**saved, "run_dir": run_dir, "model_dir": run_dir / "model"})


def finish(run: Run, train_seconds: float, loop_seconds: float, seen: int, profile: bool = True) -> TrainResult:
    """Complete the model folder and write result.json. `loop_seconds`: the training's own time (no evaluation,
    no checkpoint), for the throughput; `profile`: build the monitoring profile."""
    state, model_dir = run.state, run.run_dir / "model"
    if len(run.val_enc) == 0 or state.best_step is None:  # nothing to choose by: the last weights (or their average)
        with run.average.applied() if run.average is not None else nullcontext():
            whole = whole_state(run.accelerator, run.model)
            if run.main:
                run.card.validation = {}
                save_model_folder(run.unwrapped, run.tokenizer, model_dir, run.card, whole)
    fitted = _calibrate(run) if run.main else {}
    if run.main and profile and getattr(run.task, "profiles", True):
        from tunelab.monitor.profile import build_profile

        try:  # what live traffic is compared with when served (monitor/)
            build_profile(model_dir, run.run_dir)
        except Exception as exc:  # noqa: BLE001 -- the model is saved; the profile can be made later
            run.say(f"train: warning: no monitoring profile ({type(exc).__name__}: {exc}); "
                    f"make it with: tunelab monitor profile {run.run_dir}")
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    best = next((h for h in state.history if h["step"] == state.best_step), {})
    if fitted and best:  # the kept model's validation figures, as it now scores
        best = {**best, "ece": fitted["ece"], "ece_uncalibrated": fitted["ece_uncalibrated"]}
    result = TrainResult(run.run_dir, model_dir, state.step, state.best_step, best, train_seconds,
                         seen / max(loop_seconds, 1e-9), state.stopped_early)
    if run.main:
        write_text_atomic(run.run_dir / FINISHED, json.dumps({k: v for k, v in vars(result).items()
                                                              if k not in ("run_dir", "model_dir")}))
    method = run.config.method.name
    run.say(f"train: done in {train_seconds:.0f}s; model in {model_dir} ({run.card.saved_bytes / 1e6:.1f} MB of weights"
            + (f": {method} modules{' + head' if run.task.num_labels else ''}, over the base {run.config.model.name}" if METHODS[method].SAVES != "model" else "")
            + ")" + (f" (best validation score {state.best_metric:.4f} at step {state.best_step})" if state.best_step else ""))
    return result


def _calibrate(run: Run) -> dict:
    """The temperature of the kept model, fitted on validation (tasks that calibrate, single-label)."""
    task = run.task
    if not (run.config.task.calibrate and getattr(task, "reports_calibration", False) and len(run.val_enc)):
        return {}
    from tunelab.training.calibrate import calibrate_model_folder

    evaluate = run.config.evaluate
    fitted = calibrate_model_folder(run.run_dir / "model", run.val_enc, task, run.tokenizer, run.pad_id,
                                    run.with_types, evaluate.batch_size, evaluate.calibration_bins)
    if fitted["temperature"] is None:
        run.say("train: scores not calibrated: the model makes no mistake on validation to calibrate against")
        return {}
    run.say(f"train: calibrated: temperature {fitted['temperature']:.3f}, validation expected calibration error "
            f"{fitted['ece_uncalibrated']:.4f} -> {fitted['ece']:.4f}")
    return fitted
