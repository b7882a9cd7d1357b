"""`tunelab tune`: a worker that takes trials from the study until none is left, each a normal training run.

    runs/<name>/trial-<n>/   one training run per trial (evaluate or serve any of them)
    runs/<name>/tune/        study.journal, trials.csv, best.yaml, report.html (+ PNGs)

Start the same command again (after Ctrl-C or a kill) and it continues the study: finished trials stay
finished, an interrupted one continues from its checkpoint. Start it on several machines with one database
URL as tune.storage and they share the study.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tunelab.config import Config, TuneConfig, load_config, set_key
from tunelab.errors import ConfigError, Interrupted, TunelabError
from tunelab.models.card import ModelCard
from tunelab.runlock import RunInUse
from tunelab.signals import stop_on_signals
from tunelab.search_space import Param, parse_space
from tunelab.tasks.base import headline
from tunelab.tuning import space as sampling
from tunelab.tuning.objective import base_raw, direction_of, metric_of, trial_raw


@dataclass
class TuneResult:
    study_dir: Path
    best_trial: int | None
    best_value: float | None
    best_config: Path | None
    states: dict  # state name -> count
    steps: int  # training steps over all trials (the compute spent)
    seconds: float  # training time over all trials


@dataclass
class Search:
    """What a search needs of what it tunes: a training config's (search_of) or an application's (apps/*/tune.py)."""

    name: str  # the study's name
    tune: TuneConfig
    folder: Path  # trials in folder/trial-<n>/, the study and its report in folder/tune/
    metric: str  # the validation figure optimised
    direction: str  # maximize or minimize
    params: list[Param]  # the space, checked against the config
    fixed: dict  # what must not change between the workers and restarts of one study (settings_of)
    run: Callable  # run(number, values, report) -> (validation value or None, trial attributes); report(step, value)
    best_yaml: Callable  # best_yaml(best FrozenTrial) -> the text of tune/best.yaml
    base_method: str = "full"  # keys under method.<name>. act only in that method's trials
    eval_every: int | None = None  # steps between reports (hyperband's smallest resource)


def search_of(config: Config) -> Search:
    """The search of a training config: each trial a training run, scored by its kept model on validation."""
    import yaml

    from tunelab.config import dump_config
    from tunelab.tuning.study import settings_of

    params, metric = check_space(config), metric_of(config)

    def run(number: int, values: dict, report) -> tuple[float | None, dict]:
        from tunelab.training import train

        run_dir = config.run_dir / f"trial-{number}"
        raw = trial_raw(config, values)
        raw.update(name=f"trial-{number}", runs_dir=str(config.run_dir))
        resume = any((run_dir / "checkpoints").glob("step-*"))
        result = train(load_config(raw), resume=resume, overwrite=not resume, quiet=True, on_evaluation=report,
                       profile=False)  # a measurement: the model to serve is retrained (--retrain-best) with its profile
        return result.validation.get(metric), {"steps": result.steps, "best_step": result.best_step}

    def best_yaml(best) -> str:
        raw = trial_raw(config, best.params)
        raw.update(name=f"{config.name}-best", runs_dir=str(config.runs_dir))
        tune_dir = config.run_dir / "tune"
        return (f"# The best trial ({best.number}) of the search '{config.name}': validation {metric} {best.value:.4f}.\n"
                f"# Train it again with: tunelab train {tune_dir / 'best.yaml'}\n"
                + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))

    fixed = settings_of(yaml.safe_load(dump_config(config)))
    return Search(config.name, config.tune, config.run_dir, metric, direction_of(config), params, fixed,
                  run, best_yaml, config.method.name, config.train.eval_every)


def startup_trials(tune: TuneConfig, n_trials: int) -> int:
    given = tune.startup_trials
    return given if given is not None else min(10, max(2, n_trials // 4))


def check_space(config: Config) -> list[Param]:
    """Parse the space and check every key is a config key taking values of that kind (errors say which)."""
    params = parse_space(config.tune.space)
    if not params:
        raise ConfigError("tune.space is empty: name the keys to search, e.g.\n  tune:\n    space:\n"
                          "      train.learning_rate: {log_uniform: [1e-5, 1e-3]}")
    base = base_raw(config)
    methods = next((set(p.choices) for p in params if p.key == "method.name"), {config.method.name})
    for p in params:
        if p.method and p.method not in methods:
            raise ConfigError(f"tune.space: {p.key} acts only in '{p.method}' trials, and no trial uses '{p.method}' "
                              f"(method.name: {', '.join(sorted(methods))}); add it to method.name's choices or drop the key")
        if p.key.split(".")[0] in ("tune", "name", "runs_dir"):
            raise ConfigError(f"tune.space: {p.key} cannot be searched")
        raw = copy.deepcopy(base)
        if p.method:
            set_key(raw, "method.name", p.method)
        set_key(raw, p.key, sampling.example_value(p))
        check_fits(p.key, lambda: load_config(raw), "the config")
    return params


def check_fits(key: str, validate: Callable, what: str) -> None:
    """Call `validate` (it builds a config holding `key`'s example value); a ConfigError it raises is said of the
    key: tune.space: key '...' does not fit <what>: <the loader's reason>."""
    try:
        validate()
    except ConfigError as exc:
        detail = str(exc).split("\n", 1)[-1].strip()
        raise ConfigError(f"tune.space: key {key!r} does not fit {what}: {detail}") from None


def _sampler(search: Search, trial_number: int, n_trials: int):
    import optuna

    seed = search.tune.seed * 100_003 + trial_number  # per trial, not per worker: workers never draw alike
    if search.tune.sampler == "tpe":
        conditional = any(p.method for p in search.params)  # group: model method-specific keys apart
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(search.tune, n_trials),
                                              multivariate=True, group=conditional, constant_liar=True)
    return optuna.samplers.RandomSampler(seed=seed)  # grid trials come with every value fixed


def _pruner(search: Search, n_trials: int):
    import optuna

    if search.tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials(search.tune, n_trials))
    if search.tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=search.eval_every or 1)
    return optuna.pruners.NopPruner()


def _grid(search: Search) -> list[dict]:
    try:
        return sampling.grid(search.params, search.base_method)
    except ValueError as exc:
        raise ConfigError(f"tune.space: {exc}") from None


def _slots(search: Search) -> list[dict]:
    if search.tune.sampler != "grid":
        return [{} for _ in range(search.tune.n_trials or 20)]
    points = _grid(search)
    return points[: search.tune.n_trials] if search.tune.n_trials else points


def tune(config: Config, quiet: bool = False) -> TuneResult:
    """Run trials of the study `config.name` until its queue is empty (or tune.timeout_minutes has passed)."""
    if not quiet and config.tune.pruner != "none" and config.train.eval_every is None:
        print("tune: note: train.eval_every is not set, so a trial reports once per epoch and the pruner has "
              "little to act on", file=sys.stderr, flush=True)
    return run_search(search_of(config), quiet)


def run_search(search: Search, quiet: bool = False) -> TuneResult:
    """Run trials of `search` until its queue is empty (or tune.timeout_minutes has passed)."""
    import optuna
    from tqdm.auto import tqdm

    from tunelab.tuning.report import write_outputs, write_report
    from tunelab.tuning.study import Heartbeat, open_storage, open_study, requeue_stale

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    say = (lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    tune_dir = search.folder / "tune"
    tune_dir.mkdir(parents=True, exist_ok=True)
    slots = _slots(search)
    if search.tune.sampler == "grid" and search.tune.n_trials and len(slots) == search.tune.n_trials:
        size = len(_grid(search))
        if size > len(slots):
            say(f"tune: the grid has {size} configurations; tune.n_trials = {len(slots)} runs the first {len(slots)} "
                "(set tune.n_trials: null for all)")
    storage = open_storage(search.tune.storage, tune_dir)
    study = open_study(search.name, storage, search.direction, search.fixed, slots)
    n_total = len(study.get_trials(deepcopy=False))
    study.pruner = _pruner(search, n_total)
    finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
    say(f"tune: study '{search.name}' ({search.tune.sampler} sampler, {search.tune.pruner} pruner, "
        f"{search.direction} validation {search.metric}): {finished} of {n_total} trials done")
    deadline = time.time() + 60 * search.tune.timeout_minutes if search.tune.timeout_minutes else math.inf
    heartbeat = Heartbeat(storage)
    bar = tqdm(total=n_total, initial=finished, unit="trial", desc="tune", disable=quiet, dynamic_ncols=True)
    try:
        with stop_on_signals():  # SIGTERM as Ctrl-C, between trials too: the running trial goes back to the queue
            while time.time() < deadline:
                back = requeue_stale(study, storage)  # trials of workers that died, here or elsewhere
                if back and not quiet:
                    bar.write(f"tune: trial(s) {', '.join(map(str, back))} lost their worker; they continue from "
                              "their checkpoints", file=sys.stderr)
                trial = _next_trial(study, storage, search, n_total)
                if trial is None:
                    break
                heartbeat.trial_id = trial._trial_id
                trial.set_user_attr("rss_mb_at_start", _rss_mb())
                line = run_trial(study, storage, trial, search)
                heartbeat.trial_id = None
                _release_memory()
                write_outputs(study, search, tune_dir)
                bar.update(1)
                if not quiet:
                    bar.write(line, file=sys.stderr)
    finally:
        heartbeat.stop()
        bar.close()
    write_outputs(study, search, tune_dir)
    write_report(study, search, tune_dir)
    return summarise(study, search)


def _next_trial(study, storage, search: Search, n_total: int):
    import optuna

    from tunelab.tuning.study import take_trial

    taken = take_trial(study, storage)
    if taken is None:
        return None
    study.sampler = _sampler(search, taken.number, n_total)  # seeded by the trial's number
    return optuna.trial.Trial(study, taken._trial_id)


def run_trial(study, storage, trial, search: Search) -> str:
    """Run one trial; tell the study how it ended; return a one-line summary."""
    import optuna
    from optuna.trial import TrialState

    from tunelab.tuning.study import put_back

    started = time.perf_counter()
    metric = search.metric
    progress = {"step": 0}
    shown = ""

    def report(step: int, value: float) -> None:
        progress["step"] = step
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned()

    def finish(state, value=None, reason=None, **attrs) -> None:
        try:
            for key, val in {"steps": progress["step"], "seconds": round(time.perf_counter() - started, 1),
                             "run_dir": str(run_dir), **attrs, **({"reason": reason} if reason else {})}.items():
                trial.set_user_attr(key, val)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # a worker that was thought dead finished it first
        study.tell(trial, value, state=state, skip_if_finished=True)

    run_dir = search.folder / f"trial-{trial.number}"
    try:
        values = sampling.suggest(trial, search.params, search.base_method)
        shown = ", ".join(f"{k.split('.')[-1] if k != 'method.name' else 'method'}={_short(v)}" for k, v in values.items())
        same = _same_config_done(study, trial, values)
        if same is not None:  # a config already measured (random draws repeat on small choice sets)
            trial.set_user_attr("same_as", same.number)
            trial.set_user_attr("steps", 0)
            study.tell(trial, same.value, skip_if_finished=True)
            return f"trial {trial.number}: {shown}: same config as trial {same.number}: {metric} {same.value:.4f}"
        value, attrs = search.run(trial.number, values, report)
        progress["step"] = attrs.pop("steps", progress["step"])
        if value is None:
            finish(TrialState.FAIL, reason=f"no validation {metric}: the validation split is empty")
            return f"trial {trial.number}: {shown}: failed: no validation split"
        finish(TrialState.COMPLETE, value, **attrs)
        return f"trial {trial.number}: {shown}: {metric} {value:.4f}" + (f" ({progress['step']} steps)" if progress["step"] else "")
    except optuna.TrialPruned:
        finish(TrialState.PRUNED)
        return f"trial {trial.number}: {shown}: pruned at step {progress['step']}"
    except Interrupted as exc:  # the checkpoint is saved: back to the queue, to continue on the next start
        put_back(storage, trial._trial_id)
        raise Interrupted(f"tune: interrupted in trial {trial.number} (checkpoint saved); run the same command "
                          "again to continue the study", exc.signum) from None
    except KeyboardInterrupt:
        put_back(storage, trial._trial_id)
        raise
    except RunInUse as exc:  # a worker thought lost still runs it: it stays that worker's, to finish and report
        if exc.holder:
            storage.set_trial_user_attr(trial._trial_id, "worker", f"{exc.holder['host']}:{exc.holder['pid']}")
        return f"trial {trial.number}: {shown}: left to the process still running it ({exc})"
    except Exception as exc:  # a bad combination, divergence, a bug: recorded, and the search goes on
        reason = " ".join((str(exc) if isinstance(exc, TunelabError) else f"{type(exc).__name__}: {exc}").split())
        finish(TrialState.FAIL, reason=reason[:500])
        return f"trial {trial.number}: {shown}: failed: {reason[:300]}"


def _same_config_done(study, trial, values: dict):
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != trial.number and t.params == values:
            return t
    return None


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _rss_mb() -> float:
    """This process's resident memory now (Linux; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    import os

    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def _release_memory() -> None:
    """Give the finished trial's memory back to the OS before the next one (glibc keeps freed arenas)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def summarise(study, search: Search) -> TuneResult:
    from tunelab.tuning.report import best_trial

    trials = study.get_trials(deepcopy=False)
    states: dict = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    best = best_trial(study, search.direction)
    best_yaml = search.folder / "tune" / "best.yaml"
    return TuneResult(search.folder, best.number if best else None, best.value if best else None,
                      best_yaml if best_yaml.exists() else None, states,
                      sum(int(t.user_attrs.get("steps", 0)) for t in trials),
                      sum(float(t.user_attrs.get("seconds", 0)) for t in trials))


@dataclass
class RetrainResult:
    trial: int  # the best trial's number
    run_dir: Path  # runs/<study>/best
    steps: int
    train_rows: int  # train + validation
    test: dict  # the headline test metrics (accuracy, ...; entity_f1 for token classification)


def retrain_best(config: Config, quiet: bool = False) -> RetrainResult:
    """Train the best trial's config on train + validation, for as many passes over the data as the best
    trial's kept model had seen, and evaluate it on the test split: the honest final figure of a search."""
    from tunelab.data.pipeline import load_prepared
    from tunelab.evaluation import evaluate
    from tunelab.training import train
    from tunelab.tuning.study import open_storage
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=config.name, storage=open_storage(config.tune.storage, config.run_dir / "tune"))
    except KeyError:
        raise TunelabError(f"no study '{config.name}' yet; run tunelab tune first") from None
    best = summarise(study, search_of(config)).best_trial
    if best is None:
        raise TunelabError(f"the study '{config.name}' has no finished trial yet")
    trial = study.trials[best]
    trial_dir = Path(trial.user_attrs["run_dir"])
    prepared = load_prepared(trial_dir / "data")
    if prepared is None:
        raise TunelabError(f"{trial_dir / 'data'}: the best trial's prepared data is missing")
    out_dir = config.run_dir / "best"
    out_dir.mkdir(parents=True, exist_ok=True)
    combined, n_train, n_all = _concat_splits(prepared, out_dir)
    raw = trial_raw(config, trial.params)
    raw.update(name="best", runs_dir=str(config.run_dir))
    data = raw["data"]
    data.update(train=str(combined), validation=None, test=str(prepared.files["test"]), validation_fraction=0.0,
                labels=prepared.labels, format="auto", text_column="text", label_column="label",
                text_pair_column="text_pair" if data.get("text_pair_column") else None, id_column=None)
    raw["train"].update(max_steps=max(1, round(trial.user_attrs["best_step"] * n_all / n_train)),
                        early_stopping_patience=None)
    retrain_config = load_config(raw)
    result = train(retrain_config, overwrite=True, quiet=quiet)
    temperature = ModelCard.read(trial_dir / "model").temperature
    if temperature is not None:  # no validation left to fit one on: the trial's, fitted on its validation
        from transformers import AutoTokenizer

        from tunelab.training.calibrate import apply_temperature

        from tunelab.monitor.profile import build_profile

        apply_temperature(result.model_dir, temperature, AutoTokenizer.from_pretrained(result.model_dir))
        build_profile(result.model_dir, result.run_dir)  # the served confidences are the calibrated ones
    test = evaluate(retrain_config.run_dir, "test", quiet=quiet).metrics
    return RetrainResult(best, result.run_dir, result.steps, n_all, headline(test))


def _concat_splits(prepared, out_dir: Path) -> tuple[Path, int, int]:
    """train + validation of a prepared data folder, as one file of the same format."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    train_file, val_file = prepared.files["train"], prepared.files["validation"]
    if train_file.suffix == ".parquet":
        tables = [pq.read_table(f) for f in (train_file, val_file)]
        columns = [c for c in ("text", "text_pair", "label") if c in tables[0].column_names]
        out = out_dir / "train+validation.parquet"
        pq.write_table(pa.concat_tables([t.select(columns) for t in tables]), out)
        return out, tables[0].num_rows, tables[0].num_rows + tables[1].num_rows
    lines = [f.read_text(encoding="utf-8").splitlines() for f in (train_file, val_file)]
    out = out_dir / "train+validation.jsonl"
    out.write_text("".join(ln + "\n" for part in lines for ln in part if ln.strip()), encoding="utf-8")
    return out, len(lines[0]), len(lines[0]) + len(lines[1])
