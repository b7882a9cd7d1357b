"""The training loop: plain PyTorch on accelerate (devices, DDP, bf16 autocast, trackers).

One optimizer step consumes one global batch of `train.batch_size` rows: each process takes its slice
(rows[rank::world]) and splits it into `gradient_accumulation_steps` micro-batches. Losses are summed and
scaled so the gradient equals the mean over the global batch, whatever the process count.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager, nullcontext
import os
import signal
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tunelab import allocator
from tunelab.config import Config, dump_config, flat_keys
from tunelab.data.clean import cleaning_settings
from tunelab.errors import Interrupted, TunelabError
from tunelab.files import write_text_atomic
from tunelab.methods import METHODS
from tunelab.methods.parts import count_parameters, enable_activation_checkpointing
from tunelab.methods.store import apply_method
from tunelab.models.inference import iter_probabilities
from tunelab.hub import load_tokenizer, quiet_transformers, resolve_model
from tunelab.runlock import run_lock
from tunelab.signals import step_in_progress, stop_on_signals
from tunelab.tasks import make_task
from tunelab.tasks.encoding import cached_encode, collate
from tunelab.tasks.metrics import Collector, best_threshold, headline
from tunelab.training.checkpoint import (LoopState, checkpoints, load_checkpoint, save_checkpoint,
                                      save_model_folder)
from tunelab.training.data import epoch_batches
from tunelab.training.lazy_rows import lazy_word_embeddings
from tunelab.training.optim import build_optimizer, build_scheduler, clip_inside_step
from tunelab.training.weight_average import WeightAverage


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


def bf16_available() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    except AttributeError:
        return False


def _precision(setting: str) -> str:
    if setting == "bf16" or (setting == "auto" and bf16_available()):
        return "bf16"
    return "no"


def planned_steps(cfg, steps_per_epoch: int, num_labels: int = 2) -> int:
    """epochs, stretched on small data (or many labels) to min_steps or min_steps_per_label x labels, but
    never past max_epochs."""
    steps = math.ceil(cfg.epochs * steps_per_epoch)
    wanted = max(cfg.min_steps, cfg.min_steps_per_label * num_labels)
    stretched = min(wanted, math.ceil(cfg.max_epochs * steps_per_epoch))
    return max(1, steps, stretched)


def _better(value: float, best: float | None, metric: str) -> bool:
    lower_is_better = metric in ("loss", "ece")
    return best is None or (value < best if lower_is_better else value > best)


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


def _fresh_accelerator_state() -> None:
    """accelerate keeps one global state per process and refuses a second Accelerator with other settings
    (precision, trackers). Several trainings in one process (tests, searches, notebooks) each get a fresh one;
    the process group (PartialState), if any, is kept."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


FINISHED = "result.json"  # written when a run ends: --resume then has nothing left to do
CHECKPOINT_AT_LEAST_EVERY = 500  # steps, when train.checkpoint_every is unset (~1 s per checkpoint of a MiniLM)


def _finished(run_dir: Path) -> TrainResult | None:
    path = run_dir / FINISHED
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return TrainResult(**{**saved, "run_dir": run_dir, "model_dir": run_dir / "model"})


def _clear_run(run_dir: Path) -> None:
    for name in ("checkpoints", "model", "metrics.jsonl", "tb", "eval", FINISHED):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def train(config: Config, resume: bool = False, overwrite: bool = False, quiet: bool = False,
          on_evaluation: Callable[[int, float], None] | None = None) -> TrainResult:
    """Fine-tune `config.model` on the prepared data of `config` (see _train), holding the run folder's lock.
    Ctrl-C and SIGTERM save a checkpoint and raise Interrupted."""
    _check_trackers_installed(config.train.trackers)
    with run_lock(config.run_dir, "train"), _tracker_environment(config.train.trackers, config.run_dir), \
            stop_on_signals():
        return _train(config, resume, overwrite, quiet, on_evaluation)


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
           on_evaluation: Callable[[int, float], None] | None = None) -> TrainResult:
    """Fine-tune `config.model` on the prepared data of `config`; write runs/<name>/model and checkpoints.

    `on_evaluation(step, value)` is called after each validation with the value of the train metric (the
    search reports it to its pruner); whatever it raises stops the training and propagates.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    from tunelab.data import prepare

    quiet_transformers()
    onednn_cache = allocator.bound_onednn_cache()
    cfg, run_dir = config.train, config.run_dir
    ckpt_root = run_dir / "checkpoints"
    latest = (checkpoints(ckpt_root) or [None])[-1]
    if resume:
        _check_same_config(run_dir / "config.yaml", config)
        done = _finished(run_dir)  # it may have ended without a checkpoint (a single evaluation, at its end)
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
    # the model before the data: a model that cannot be had (offline, wrong id) fails in seconds, not after them
    source = resolve_model(config.model.name, config.model.revision)
    tokenizer = load_tokenizer(source, config.model.revision, config.model.trust_remote_code)
    trackers = list(cfg.trackers)  # their settings: _tracker_environment
    _fresh_accelerator_state()
    no_accelerator = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    accelerator = Accelerator(
        cpu=no_accelerator,  # on CPU, accelerate picks multi-process DDP (gloo) only when told it is CPU
        # our batches are global and split over processes: the scheduler must step once per optimizer step
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        mixed_precision=_precision(cfg.precision), log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tb")))
    main = accelerator.is_main_process
    say = (lambda m: None) if (quiet or not main) else (lambda m: print(m, file=sys.stderr, flush=True))
    if overwrite and not resume and main:
        _clear_run(run_dir)
    accelerator.wait_for_everyone()

    with accelerator.main_process_first():
        prepared = prepare(config, quiet=quiet or not main, tokenizer=tokenizer)
    if main:
        (run_dir / "config.yaml").write_text(dump_config(config))

    task = make_task(config.task.name, prepared.labels, prepared.multi_label, config.data.text_pair_column is not None)
    with_types = task.pair and "token_type_ids" in tokenizer.model_input_names
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cache = run_dir / "data" / "tokens"
    tokenizer_id = f"{config.model.name}@{config.model.revision}"
    with accelerator.main_process_first():
        train_enc = cached_encode(prepared.files["train"], cache, tokenizer, task, config.model.max_length, tokenizer_id)
        val_enc = cached_encode(prepared.files["validation"], cache, tokenizer, task, config.model.max_length, tokenizer_id)
    if len(train_enc) == 0:
        raise TunelabError(f"{prepared.files['train']}: the training split is empty")

    set_seed(cfg.seed)
    attention = config.model.attention
    if attention == "auto":
        attention = "eager" if accelerator.device.type == "cpu" else "sdpa"
    model = task.build_model(source, cfg.dropout, config.model.revision, config.model.trust_remote_code, attention)
    model = apply_method(model, config.method)
    if cfg.activation_checkpointing:
        if config.method.name == "prefix":  # the prefix rides in the attention cache, which a recompute would extend twice
            raise TunelabError("train.activation_checkpointing does not work with method 'prefix'; turn one off")
        enable_activation_checkpointing(model)
    parameters = count_parameters(model)
    steps_per_epoch = math.ceil(len(train_enc) / cfg.batch_size)
    total_steps = cfg.max_steps or planned_steps(cfg, steps_per_epoch, task.num_labels)
    optimizer = build_optimizer(model, cfg, config.learning_rate, config.head_learning_rate, cfg.layer_lr_decay)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    lazy = lazy_word_embeddings(model, optimizer) if cfg.lazy_embeddings and accelerator.device.type == "cpu" else None
    average = None
    if cfg.ema_steps:
        # every trained weight but the lazily updated word embedding (averaging it would read every row at every
        # update, the cost the lazy update avoids); time constant ema_steps, at most a tenth of the run, or a
        # short run would average in its start
        averaged = [p for p in model.parameters() if p.requires_grad and (lazy is None or p is not lazy.param)]
        average = WeightAverage(averaged, 1 - 1 / max(1.0, min(cfg.ema_steps, total_steps / 10)), cfg.ema_every)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    weights = task.class_weights(train_enc.targets, cfg.class_weights)
    weights = weights.to(accelerator.device) if weights is not None else None

    state = LoopState()
    if resume:
        state = load_checkpoint(accelerator, latest, average)
        say(f"train: resuming from {latest} (step {state.step} of {total_steps})")
    # the rate logged: the body's top rate (with layer-wise decay the lower layers' are smaller, the head's may differ)
    body_group = min(range(len(optimizer.param_groups)),
                     key=lambda i: abs(optimizer.param_groups[i]["initial_lr"] - config.learning_rate))
    log = _MetricsLog(run_dir / "metrics.jsonl", state.step if resume else None) if main else None
    if main:
        accelerator.init_trackers(config.name, config={"method": config.method.name, "learning_rate": config.learning_rate, "batch_size": cfg.batch_size,
                                                       "epochs": cfg.epochs, "seed": cfg.seed})
    say(f"train: {len(train_enc)} examples, {total_steps} steps of {cfg.batch_size}, "
        f"method {config.method.name}, {parameters['trainable']:,} of {parameters['total']:,} parameters trainable "
        f"({parameters['trainable_percent']:.2f}%), learning rate {config.learning_rate:g}"
        + (f" (set in the config; {config.method.name}'s default is {METHODS[config.method.name].LEARNING_RATE:g})"
           if cfg.learning_rate and cfg.learning_rate != METHODS[config.method.name].LEARNING_RATE else "")
        + (f" (x{cfg.layer_lr_decay:g} per layer down)" if cfg.layer_lr_decay != 1 else "")
        + f", precision {accelerator.mixed_precision}, allocator {allocator.in_use()}"
        + (f" (oneDNN kernel cache {onednn_cache})" if accelerator.device.type == "cpu" else "") + ", "
        f"{accelerator.num_processes} process(es)")

    meta = {"task": task.name, "labels": task.labels, "multi_label": task.multi_label, "pair": task.pair,
            "threshold": config.task.multi_label_threshold or 0.5, "max_length": config.model.max_length,
            "base_model": _portable_base(config.model.name), "base_revision": config.model.revision,
            "trust_remote_code": config.model.trust_remote_code, "method": _method_meta(config.method),
            "parameters": parameters, "run": config.name, "clean": cleaning_settings(config.data)}
    eval_every = cfg.eval_every or steps_per_epoch
    # at every evaluation, and on large data more often: one epoch of it is a single evaluation, and a kill before
    # its end would otherwise leave nothing to resume from
    ckpt_every = cfg.checkpoint_every or min(eval_every, CHECKPOINT_AT_LEAST_EVERY)
    world, rank = accelerator.num_processes, accelerator.process_index
    unwrapped = accelerator.unwrap_model(model)

    def evaluate_validation() -> dict:
        collector = Collector(task.labels, task.multi_label)
        for rows, probs in iter_probabilities(unwrapped, val_enc, task, config.evaluate.batch_size, pad_id, with_types,
                                              autocast=accelerator.mixed_precision == "bf16"):
            collector.add(probs, val_enc.targets[rows])
        if task.multi_label:
            y, p = collector.multilabel_arrays()
            meta["threshold"] = config.task.multi_label_threshold or best_threshold(y, p)
        return collector.result(meta["threshold"], config.evaluate.calibration_bins)

    bar = tqdm(total=total_steps, initial=state.step, unit="step", disable=quiet or not main, dynamic_ncols=True,
               desc="train")
    model.train()
    started, seen, side_seconds = time.perf_counter(), 0, 0.0  # side: evaluation + checkpoint time
    loss_acc, loss_n = 0.0, 0
    try:
        while state.step < total_steps and not state.stopped_early:
            batches = epoch_batches(train_enc.lengths, cfg.batch_size, cfg.seed, state.epoch, cfg.group_by_length)
            while state.batch_in_epoch < len(batches) and state.step < total_steps and not state.stopped_early:
                rows = batches[state.batch_in_epoch]
                local = rows[rank::world]
                micro = [m for m in np.array_split(local, min(cfg.gradient_accumulation_steps, len(local))) if len(m)]
                step_loss = torch.zeros((), device=accelerator.device)
                for k, part in enumerate(micro):
                    batch = {key: v.to(accelerator.device) for key, v in collate(train_enc, part, pad_id, with_types, cfg.pad_to_multiple_of).items()}
                    targets = torch.as_tensor(train_enc.targets[part], device=accelerator.device)
                    sync = k == len(micro) - 1
                    with accelerator.no_sync(model) if not sync else nullcontext():
                        logits = model(**batch).logits
                        loss_sum = task.loss_sum(logits, targets, weights, cfg.label_smoothing)
                        accelerator.backward(loss_sum * world / len(rows))
                    step_loss += loss_sum.detach()
                step_loss_value = float(accelerator.reduce(step_loss, "sum")) / len(rows)
                if not math.isfinite(step_loss_value):  # the weights would turn NaN at this step: stop before it
                    raise TunelabError(f"training diverged: the loss is {step_loss_value} at step {state.step + 1}; "
                                       f"lower the learning rate (now {config.learning_rate:g})")
                if cfg.max_grad_norm is not None and not clip_inside_step(optimizer, model.parameters(), cfg.max_grad_norm):
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                with step_in_progress():  # a stop signal from here on waits for the step, its evaluation and checkpoint
                    if lazy is not None:
                        lazy.step()
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    state.step += 1
                    state.batch_in_epoch += 1
                    if average is not None:
                        average.update(state.step)
                    seen += len(rows)
                    loss_acc += step_loss_value
                    loss_n += 1
                    if state.step % cfg.log_every == 0 or state.step == total_steps:
                        rate = seen / (time.perf_counter() - started - side_seconds)
                        record = {"step": state.step, "epoch": round(state.step / steps_per_epoch, 3),
                                  "loss": loss_acc / loss_n, "learning_rate": scheduler.get_last_lr()[body_group],
                                  "samples_per_second": rate}
                        bar.set_postfix(loss=f"{record['loss']:.4f}", samples_s=f"{rate:.0f}")
                        if main:
                            log.write(record)
                            accelerator.log({"train/loss": record["loss"], "train/learning_rate": record["learning_rate"]},
                                            step=state.step)
                        loss_acc, loss_n = 0.0, 0
                    bar.update(1)
                    end_of_epoch = state.batch_in_epoch == len(batches)
                    if end_of_epoch:
                        state.epoch += 1
                        state.batch_in_epoch = 0
                    do_eval = len(val_enc) > 0 and (state.step % eval_every == 0 or state.step == total_steps
                                                    or (cfg.eval_every is None and end_of_epoch))
                    side_start = time.perf_counter()
                    if lazy is not None and (do_eval or state.step == total_steps):
                        # the rows skipped since they last appeared, before the weights are evaluated or saved as the
                        # model. Not for a checkpoint: the pending steps are in the optimizer's state, and catching up
                        # where a run without that checkpoint would not would change the rounding
                        lazy.catch_up()
                    if do_eval:
                        with average.applied() if average is not None else nullcontext():  # scored and saved: the average
                            value = _evaluate_and_keep_best(evaluate_validation(), state, cfg, config, main, log,
                                                            accelerator, unwrapped, tokenizer, meta, bar, say)
                        if on_evaluation is not None:
                            on_evaluation(state.step, value)
                    if state.step % ckpt_every == 0 and state.step < total_steps and not state.stopped_early:
                        save_checkpoint(accelerator, ckpt_root, state, cfg.keep_checkpoints, average)
                    side_seconds += time.perf_counter() - side_start
                    if end_of_epoch:
                        break
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (tunelab.signals)
        bar.close()  # no lazy catch-up before this checkpoint either (see where checkpoints are scheduled)
        save_checkpoint(accelerator, ckpt_root, state, cfg.keep_checkpoints, average)
        accelerator.end_training()  # close the trackers' writer threads, or the process may not exit
        signum = getattr(exc, "signum", signal.SIGINT)
        raise Interrupted(f"interrupted{' by ' + signal.Signals(signum).name if signum != signal.SIGINT else ''} "
                          f"at step {state.step}; checkpoint saved in {ckpt_root}. "
                          f"Continue with: tunelab train CONFIG --resume", signum) from None
    except BaseException:  # divergence, a pruned search trial, a bug: close the trackers' writer threads
        bar.close()
        accelerator.end_training()
        raise
    bar.close()
    train_seconds = time.perf_counter() - started

    if len(val_enc) == 0 or state.best_step is None:  # nothing to choose by: keep the last weights (or their average)
        if main:
            meta["validation"] = {}
            with average.applied() if average is not None else nullcontext():
                save_model_folder(unwrapped, tokenizer, run_dir / "model", meta)
    fitted = {}
    if main and config.task.calibrate and not task.multi_label and len(val_enc) > 0:
        from tunelab.training.calibrate import calibrate_model_folder

        fitted = calibrate_model_folder(run_dir / "model", val_enc, task, tokenizer, pad_id, with_types,
                                        config.evaluate.batch_size, config.evaluate.calibration_bins)
        if fitted["temperature"] is None:
            say("train: scores not calibrated: the model makes no mistake on validation to calibrate against")
            fitted = {}
        else:
            say(f"train: calibrated: temperature {fitted['temperature']:.3f}, validation expected calibration error "
                f"{fitted['ece_uncalibrated']:.4f} -> {fitted['ece']:.4f}")
    if main:
        from tunelab.monitor.profile import build_profile

        try:  # what live traffic is compared with when served (monitor/)
            build_profile(run_dir / "model", run_dir)
        except Exception as exc:  # noqa: BLE001 -- the model is saved; the profile can be made later
            say(f"train: warning: no monitoring profile ({type(exc).__name__}: {exc}); "
                f"make it with: tunelab monitor profile {run_dir}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    best = next((h for h in state.history if h["step"] == state.best_step), {})
    if fitted and best:  # the kept model's validation figures, as it now scores
        best = {**best, "ece": fitted["ece"], "ece_uncalibrated": fitted["ece_uncalibrated"]}
    result = TrainResult(run_dir, run_dir / "model", state.step, state.best_step, best, train_seconds,
                         seen / max(train_seconds - side_seconds, 1e-9), state.stopped_early)
    if main:
        write_text_atomic(run_dir / FINISHED, json.dumps({k: v for k, v in vars(result).items()
                                                          if k not in ("run_dir", "model_dir")}))
    saved = json.loads((run_dir / "model" / "tunelab.json").read_text()).get("saved_bytes", 0) if main else 0
    say(f"train: done in {train_seconds:.0f}s; model in {run_dir / 'model'} ({saved / 1e6:.1f} MB of weights"
        + (f": {config.method.name} modules + head, over the base {config.model.name}"
           if METHODS[config.method.name].SAVES != "model" else "") + ")"
        + (f" (best validation score {state.best_metric:.4f} at step {state.best_step})" if state.best_step else ""))
    return result


def _portable_base(name: str) -> str:
    """How tunelab.json names the base: 'default' or a hub id as given, a local folder as an absolute path
    (an adapter run is loaded over its base later, from wherever the user then is)."""
    path = Path(name).expanduser()
    return str(path.resolve()) if name != "default" and path.is_dir() else name


def _check_same_config(saved_path: Path, config: Config) -> None:
    """--resume continues the run it finds: a changed config would silently train something else."""
    import yaml

    if not saved_path.is_file():
        return
    saved = flat_keys(yaml.safe_load(saved_path.read_text()) or {})
    now = flat_keys(yaml.safe_load(dump_config(config)))
    changed = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
               if saved.get(k) != now.get(k) and k not in ("runs_dir", "name")  # moving a run folder is fine
               and not k.startswith(("tune.", "serve."))]  # settings of other stages
    if changed:
        raise TunelabError(f"--resume: the config differs from the one {saved_path.parent} was started with ("
                           + "; ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
                           + "). Resume with the same config, or start again with --overwrite")


def _method_meta(method_config) -> dict:
    """The method's name and settings, as stored in tunelab.json (enough to rebuild the model)."""
    settings = getattr(method_config, method_config.name, None)
    return {"name": method_config.name, **({method_config.name: settings.model_dump()} if settings else {})}


def _evaluate_and_keep_best(metrics, state, cfg, config, main, log, accelerator, model, tokenizer, meta, bar, say):
    metric = cfg.metric or ("micro_f1" if config.data.multi_label else "accuracy")
    if metric not in metrics:
        raise TunelabError(f"train.metric: '{metric}' is not a validation metric here; "
                           f"choose one of: {', '.join(headline(metrics))}")
    value = metrics[metric]
    record = {"step": state.step, "split": "validation", **headline(metrics)}
    state.history.append(record)
    if main:
        log.write(record)
        accelerator.log({f"validation/{k}": v for k, v in headline(metrics).items()}, step=state.step)
    if _better(value, state.best_metric, metric):
        state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
        if main:
            meta["validation"] = {k: v for k, v in metrics.items() if k not in ("reliability",)}
            meta["best_step"] = state.step
            save_model_folder(model, tokenizer, config.run_dir / "model", meta)
        accelerator.wait_for_everyone()
    else:
        state.evals_without_improvement += 1
        if cfg.early_stopping_patience and state.evals_without_improvement >= cfg.early_stopping_patience:
            state.stopped_early = True
            say(f"train: early stop at step {state.step}: no better {metric} in {cfg.early_stopping_patience} evaluations")
    if main and not bar.disable:
        bar.write(f"step {state.step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in headline(metrics).items()))
    return value
