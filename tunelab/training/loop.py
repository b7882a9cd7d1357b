"""The training loop: plain PyTorch on accelerate (devices, DDP or FSDP, bf16 autocast, trackers).

    train()            the lock on the run folder, trackers' settings, Ctrl-C/SIGTERM handling
      setup.py         accelerator, prepared and encoded data, model + method, optimizer, schedule -> Run
      step.py          one optimizer step over one global batch
      validation.py    scoring on validation, keeping the best model folder, early stopping
      checkpoint.py    resumable checkpoints and the model folder
      sharding.py      train.fsdp: the weights sharded over the processes (accelerate's FSDP2)
      finish.py        calibration, the monitoring profile, result.json
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable

from tunelab.config import Config, default_setting, dump_config, flat_keys
from tunelab.errors import Interrupted, TunelabError
from tunelab.hub import quiet_transformers
from tunelab.runlock import run_lock
from tunelab.signals import step_in_progress, stop_on_signals
from tunelab.training.checkpoint import checkpoints, load_checkpoint, save_checkpoint
from tunelab.training.data import epoch_batches, groups_by_length
from tunelab.training.finish import FINISHED, TrainResult, finished, finish
from tunelab.training.setup import planned_steps, setup
from tunelab.training.step import forward_backward, update
from tunelab.training.validation import keep_best, validate

__all__ = ["TrainResult", "train", "planned_steps"]


class _MetricsLog:
    """metrics.jsonl: one JSON line per logged step or evaluation (main process only)."""

    def __init__(self, path: Path, keep_until_step: int | None):
        self.path = path
        if keep_until_step is not None and path.exists():  # resume: forget what came after the checkpoint
            lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= keep_until_step]
            path.write_text("".join(ln + "\n" for ln in lines))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _clear_run(run_dir: Path) -> None:
    for name in ("checkpoints", "model", "metrics.jsonl", "tb", "eval", FINISHED):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def train(config: Config, resume: bool = False, overwrite: bool = False, quiet: bool = False,
          on_evaluation: Callable[[int, float], None] | None = None, profile: bool = True) -> TrainResult:
    """Fine-tune `config.model` on the prepared data of `config` (see _train), holding the run folder's lock.
    Ctrl-C and SIGTERM save a checkpoint and raise Interrupted. `profile=False` leaves out the monitoring profile
    (a search's trials: measurements, not models to serve)."""
    _check_trackers_installed(config.train.trackers)
    with run_lock(config.run_dir, "train"), _tracker_environment(config.train.trackers, config.run_dir), \
            stop_on_signals():
        return _train(config, resume, overwrite, quiet, on_evaluation, profile)


@contextmanager
def _tracker_environment(trackers: list[str], run_dir: Path):
    """Where MLflow and W&B write unless the environment says otherwise: this run's folder (MLflow: mlflow.db, W&B:
    wandb/, offline). Set for this training only: a later training in the same process (a search, a notebook) must
    not take the first one's folder for a setting of the user's."""
    defaults = {}
    if "mlflow" in trackers:  # MLflow 3 refuses its plain-folder store unless asked; SQLite is its local default
        defaults["MLFLOW_TRACKING_URI"] = f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
    if "wandb" in trackers:
        defaults.update(WANDB_MODE="offline", WANDB_DIR=str(run_dir.resolve()))
    ours = {k: v for k, v in defaults.items() if k not in os.environ}
    os.environ.update(ours)
    try:
        yield
    finally:
        for key in ours:
            os.environ.pop(key, None)


def _check_trackers_installed(trackers: list[str]) -> None:
    """accelerate leaves out a tracker whose package is missing without a word: a run would log nowhere."""
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    missing = [t for t in trackers if t not in available]
    if missing:
        raise TunelabError(f"train.trackers: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed; "
                           f"install with pip install 'tunelab[{','.join(missing)}]', or leave it out of train.trackers")


def _train(config: Config, resume: bool = False, overwrite: bool = False, quiet: bool = False,
           on_evaluation: Callable[[int, float], None] | None = None, profile: bool = True) -> TrainResult:
    """Fine-tune `config.model` on the prepared data of `config`; write runs/<name>/model and checkpoints.

    `on_evaluation(step, value)` is called after each validation with the value of the train metric (the
    search reports it to its pruner); whatever it raises stops the training and propagates.
    """
    from tqdm.auto import tqdm

    quiet_transformers()
    run_dir = config.run_dir
    ckpt_root = run_dir / "checkpoints"
    latest = (checkpoints(ckpt_root) or [None])[-1]
    if resume:
        _check_same_config(run_dir / "config.yaml", config)
        done = finished(run_dir)  # it may have ended without a checkpoint (a single evaluation, at its end)
        if done is not None:  # resuming it again would train its last stretch a second time
            if not quiet:
                print(f"train: {run_dir} finished at step {done.steps}: nothing to resume (its model: {done.model_dir}; "
                      "--overwrite trains it again)", file=sys.stderr)
            return done
    if resume and latest is None:
        raise TunelabError(f"{run_dir}: no checkpoint to resume from (train without --resume to start)")
    if not resume and not overwrite and (latest is not None or (run_dir / "model").exists()):
        raise TunelabError(f"{run_dir} already holds a training run; continue it with --resume, "
                           "or start again with --overwrite (deletes its checkpoints and model)")
    run = setup(config, quiet, _clear_run if overwrite and not resume else None)
    cfg, state, acc = run.cfg, run.state, run.accelerator
    if resume:
        run.state = state = load_checkpoint(acc, latest, run.average)
        run.say(f"train: resuming from {latest} (step {state.step} of {run.total_steps})")
    log = _MetricsLog(run_dir / "metrics.jsonl", state.step if resume else None) if run.main else None
    if run.main:
        acc.init_trackers(config.name, config={"method": config.method.name, "learning_rate": config.learning_rate,
                                               "batch_size": cfg.batch_size, "epochs": cfg.epochs, "seed": cfg.seed})
    bar = tqdm(total=run.total_steps, initial=state.step, unit="step", disable=quiet or not run.main,
               dynamic_ncols=True, desc="train")
    run.model.train()
    started, seen, side_seconds = time.perf_counter(), 0, 0.0  # side: evaluation + checkpoint time
    losses: list[float] = []
    grouped = groups_by_length(cfg.group_by_length, run.task)
    try:
        while state.step < run.total_steps and not state.stopped_early:
            batches = epoch_batches(run.train_enc.lengths, cfg.batch_size, cfg.seed, state.epoch, grouped)
            while state.batch_in_epoch < len(batches) and state.step < run.total_steps and not state.stopped_early:
                rows = batches[state.batch_in_epoch]
                # a stop signal waits for the step, its evaluation and checkpoint: the checkpoint it leaves is at a
                # step boundary, with the random state of that boundary (dropout draws it in the forward pass)
                with step_in_progress():
                    losses.append(forward_backward(run, rows))
                    update(run)
                    seen += len(rows)
                    if state.step % cfg.log_every == 0 or state.step == run.total_steps:
                        _log_step(run, log, bar, losses, seen / (time.perf_counter() - started - side_seconds))
                        losses = []
                    bar.update(1)
                    end_of_epoch = state.batch_in_epoch == len(batches)
                    if end_of_epoch:
                        state.epoch += 1
                        state.batch_in_epoch = 0
                    side_start = time.perf_counter()
                    _evaluate_and_checkpoint(run, end_of_epoch, log, bar, on_evaluation, ckpt_root)
                    side_seconds += time.perf_counter() - side_start
                if end_of_epoch:
                    break
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (tunelab.signals)
        bar.close()  # no lazy catch-up before this checkpoint either (see _evaluate_and_checkpoint)
        save_checkpoint(acc, ckpt_root, state, cfg.keep_checkpoints, run.average)
        acc.end_training()  # close the trackers' writer threads, or the process may not exit
        signum = getattr(exc, "signum", signal.SIGINT)
        raise Interrupted(f"interrupted{' by ' + signal.Signals(signum).name if signum != signal.SIGINT else ''} "
                          f"at step {state.step}; checkpoint saved in {ckpt_root}. "
                          f"Continue with: tunelab train CONFIG --resume", signum) from None
    except BaseException:  # divergence, a pruned search trial, a bug: close the trackers' writer threads
        bar.close()
        acc.end_training()
        raise
    bar.close()
    train_seconds = time.perf_counter() - started
    return finish(run, train_seconds, train_seconds - side_seconds, seen, profile)


def _log_step(run, log, bar, losses: list[float], rate: float) -> None:
    state = run.state
    record = {"step": state.step, "epoch": round(state.step / run.steps_per_epoch, 3), "loss": sum(losses) / len(losses),
              "learning_rate": run.scheduler.get_last_lr()[run.body_group], "samples_per_second": rate}
    bar.set_postfix(loss=f"{record['loss']:.4f}", samples_s=f"{rate:.0f}")
    if run.main:
        log.write(record)
        run.accelerator.log({"train/loss": record["loss"], "train/learning_rate": record["learning_rate"]}, step=state.step)


def _evaluate_and_checkpoint(run, end_of_epoch: bool, log, bar, on_evaluation, ckpt_root: Path) -> None:
    state, cfg = run.state, run.cfg
    last = state.step == run.total_steps
    do_eval = len(run.val_enc) > 0 and (state.step % run.eval_every == 0 or last or (cfg.eval_every is None and end_of_epoch))
    if run.lazy is not None and (do_eval or last):
        # the rows skipped since they last appeared, before the weights are evaluated or saved as the model. Not
        # for a checkpoint: the pending steps are in the optimizer's state, and catching up where a run without
        # that checkpoint would not would change the rounding
        run.lazy.catch_up()
    if do_eval:
        with run.average.applied() if run.average is not None else nullcontext():  # scored and saved: the average
            value = keep_best(run, validate(run), log, bar)
        if on_evaluation is not None:
            on_evaluation(state.step, value)
    if state.step % run.checkpoint_every == 0 and not last and not state.stopped_early:
        save_checkpoint(run.accelerator, ckpt_root, state, cfg.keep_checkpoints, run.average)


def _check_same_config(saved_path: Path, config: Config) -> None:
    """--resume continues the run it finds: a changed config would silently train something else."""
    import yaml

    if not saved_path.is_file():
        return
    saved = flat_keys(yaml.safe_load(saved_path.read_text()) or {})
    now = flat_keys(yaml.safe_load(dump_config(config)))
    changed = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
               if saved.get(k) != now.get(k) and k not in ("runs_dir", "name")  # moving a run folder is fine
               and not k.startswith(("tune.", "serve."))  # settings of other stages
               # a setting newer than the run, at its default: the run was trained as that default trains
               and not (k not in saved and now.get(k) == default_setting(config, k))]
    if changed:
        raise TunelabError(f"--resume: the config differs from the one {saved_path.parent} was started with ("
                           + "; ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
                           + "). Resume with the same config, or start again with --overwrite")
