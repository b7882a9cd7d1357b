"""Scoring on the validation split during training, and keeping the best model folder."""

from __future__ import annotations

import numpy as np

from tunelab.errors import TunelabError
from tunelab.models.inference import iter_outputs
from tunelab.tasks.base import headline
from tunelab.training.checkpoint import save_model_folder
from tunelab.training.setup import Run
from tunelab.training.sharding import whole_state


LOWER_IS_BETTER = ("loss", "perplexity", "ece")


def validate(run: Run) -> dict:
    """The task's validation metrics of the model as it is now (bf16 when training is)."""
    task, enc = run.task, run.val_enc
    autocast = run.accelerator.mixed_precision == "bf16"
    if hasattr(task, "validate"):  # scores the split itself (tasks/base.py)
        return task.validate(run.unwrapped, enc, run.config.evaluate.batch_size, run.pad_id, autocast)
    outputs: list = [None] * len(enc)
    for rows, out in iter_outputs(run.unwrapped, enc, task, run.config.evaluate.batch_size, run.pad_id,
                                  run.with_types, autocast=autocast):
        for row, value in zip(rows, out):
            outputs[row] = value
    collector = task.collector()
    collector.add(task.examples(enc, _stacked(outputs)), task.example_targets(enc))
    metrics = collector.result(run.config.task.multi_label_threshold, run.config.evaluate.calibration_bins)
    if "threshold" in metrics:  # chosen on validation (multi-label): what the saved model decides with
        run.card.threshold = float(metrics["threshold"])
    return metrics


def _stacked(outputs: list):
    """Row outputs of equal shape as one array (classification); a list otherwise (per-token outputs)."""
    shapes = {np.shape(o) for o in outputs}
    return np.stack(outputs) if len(shapes) == 1 else outputs


def metric_name(run: Run) -> str:
    return run.cfg.metric or run.task.default_metric


def better(value: float, best: float | None, metric: str) -> bool:
    lower_is_better = metric in LOWER_IS_BETTER
    return best is None or (value < best if lower_is_better else value > best)


def keep_best(run: Run, metrics: dict, log, bar) -> float:
    """Record the evaluation; save the model folder when it is the best so far; count towards early stopping.
    Returns the value of the train metric."""
    state, cfg = run.state, run.cfg
    metric = metric_name(run)
    if metric not in metrics:
        raise TunelabError(f"train.metric: '{metric}' is not a validation metric here; "
                           f"choose one of: {', '.join(headline(metrics))}")
    value = metrics[metric]
    record = {"step": state.step, "split": "validation", **headline(metrics)}
    state.history.append(record)
    if run.main:
        log.write(record)
        run.accelerator.log({f"validation/{k}": v for k, v in headline(metrics).items()}, step=state.step)
    if better(value, state.best_metric, metric):
        state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
        whole = whole_state(run.accelerator, run.model)
        if run.main:
            run.card.validation = {k: v for k, v in metrics.items() if k not in ("reliability", "errors")}
            run.card.best_step = state.step
            save_model_folder(run.unwrapped, run.tokenizer, run.run_dir / "model", run.card, whole)
        run.accelerator.wait_for_everyone()
    else:
        state.evals_without_improvement += 1
        if cfg.early_stopping_patience and state.evals_without_improvement >= cfg.early_stopping_patience:
            state.stopped_early = True
            run.say(f"train: early stop at step {state.step}: no better {metric} in "
                    f"{cfg.early_stopping_patience} evaluations")
    if run.main and not bar.disable:
        bar.write(f"step {state.step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in headline(metrics).items()))
    return value
