"""Hyperparameter search: the space, the samplers, pruning, failures, resume, two workers, memory, best.yaml."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from tunelab.config import dump_config, load_config
from tunelab.errors import ConfigError
from tunelab.training import train
from tunelab.search_space import parse_space
from tunelab.tuning import space as S
from tunelab.tuning.run import check_space, retrain_best, tune

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {"method.name": ["full", "lora"], "method.lora.r": [2, 4, 8],
         "train.learning_rate": {"log_uniform": [1e-4, 1e-2]}, "train.batch_size": {"int": [8, 32], "step": 8},
         "train.warmup_ratio": {"uniform": [0.0, 0.2]}}


def _config(tiny_config, name="study", tune_section=None, **train):
    base = tiny_config(name=name, **{"max_steps": 20, "eval_every": 5, "precision": "fp32", **train})
    raw = yaml.safe_load(dump_config(base))
    raw["tune"] = {"sampler": "random", "pruner": "none", "n_trials": 3, **(tune_section or {})}
    return load_config(raw)


def _trials(config):
    with open(config.run_dir / "tune" / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- the space, without training

def test_space_errors_name_the_key_and_what_is_allowed():
    with pytest.raises(ConfigError, match="space key 'train.learning_rate'.*low must be below high"):
        load_config({"name": "x", "data": {"train": "t.csv"}, "tune": {"space": {"train.learning_rate": {"uniform": [1, 0]}}}})
    with pytest.raises(ConfigError, match="log_uniform needs a positive low bound"):
        load_config({"name": "x", "data": {"train": "t.csv"}, "tune": {"space": {"train.learning_rate": {"log_uniform": [0, 1]}}}})
    with pytest.raises(ConfigError, match="int needs a whole-number step, got 0.5"):
        load_config({"name": "x", "data": {"train": "t.csv"}, "tune": {"space": {"train.batch_size": {"int": [8, 32], "step": 0.5}}}})
    with pytest.raises(ConfigError, match="a range is one of uniform, log_uniform, int, log_int"):
        load_config({"name": "x", "data": {"train": "t.csv"}, "tune": {"space": {"train.epochs": {"between": [1, 3]}}}})


def test_an_unknown_or_mistyped_key_is_refused_before_any_trial(tiny_config):
    with pytest.raises(ConfigError, match="'train.learnin_rate' does not fit the config.*unknown key"):
        check_space(_config(tiny_config, tune_section={"space": {"train.learnin_rate": [1e-3]}}))
    with pytest.raises(ConfigError, match="'method.lora.rank' does not fit"):
        check_space(_config(tiny_config, tune_section={"space": {"method.name": ["lora"], "method.lora.rank": [4, 8]}}))
    with pytest.raises(ConfigError, match="'train.batch_size' does not fit"):
        check_space(_config(tiny_config, tune_section={"space": {"train.batch_size": ["big"]}}))
    with pytest.raises(ConfigError, match="tune.space is empty"):
        check_space(_config(tiny_config, tune_section={"space": {}}))


def test_grid_has_each_distinct_config_once_and_needs_lists():
    params = parse_space({"method.name": ["full", "lora"], "method.lora.r": [4, 8], "train.learning_rate": [1e-4, 1e-3]})
    points = S.grid(params, "full")
    assert len(points) == 6  # full x 2 lr + lora x 2 r x 2 lr: r does not act on full, so no full run twice
    assert all("method.lora.r" not in p for p in points if p["method.name"] == "full")
    assert len({repr(sorted(p.items())) for p in points}) == 6
    with pytest.raises(ValueError, match="train.learning_rate is a range"):
        S.grid(parse_space({"train.learning_rate": {"log_uniform": [1e-5, 1e-3]}}), "full")


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_samplers_honour_types_bounds_and_conditionals(sampler):
    params = parse_space(SPACE)
    make = (lambda: optuna.samplers.RandomSampler(seed=0)) if sampler == "random" else (
        lambda: optuna.samplers.TPESampler(seed=0, n_startup_trials=5, multivariate=True))
    study = optuna.create_study(sampler=make(), direction="maximize")
    seen_methods = set()
    for i in range(30):
        trial = study.ask()
        values = S.suggest(trial, params, "full")
        seen_methods.add(values["method.name"])
        assert 1e-4 <= values["train.learning_rate"] <= 1e-2
        assert isinstance(values["train.batch_size"], int) and values["train.batch_size"] in (8, 16, 24, 32)
        assert 0.0 <= values["train.warmup_ratio"] <= 0.2
        assert ("method.lora.r" in values) == (values["method.name"] == "lora")  # conditional key
        if "method.lora.r" in values:
            assert values["method.lora.r"] in (2, 4, 8)
        study.tell(trial, values["train.learning_rate"])  # a made-up objective: the sampler must learn from it
    assert seen_methods == {"full", "lora"}


# ---------------------------------------------------------------- searches that train the tiny model

def test_search_writes_trials_best_yaml_that_reproduces_the_best_and_a_report(tiny_config):
    config = _config(tiny_config, tune_section={"space": {"method.name": ["full", "lora"], "method.lora.r": [2, 4],
                                                          "train.learning_rate": {"log_uniform": [1e-3, 1e-2]}}})
    result = tune(config, quiet=True)
    rows = _trials(config)
    assert [r["number"] for r in rows] == ["0", "1", "2"] and result.states == {"complete": 3}
    for r in rows:
        assert (config.run_dir / f"trial-{r['number']}" / "model" / "tunelab.json").exists()
        assert (r["method.lora.r"] != "") == (r["method.name"] == "lora")
    assert result.steps == sum(int(r["steps"]) for r in rows) == 60
    best = max(rows, key=lambda r: float(r["value"]))
    assert result.best_trial == int(best["number"])
    again = train(load_config(str(config.run_dir / "tune" / "best.yaml"), [f"runs_dir={config.runs_dir}"]), quiet=True)
    assert abs(again.validation["accuracy"] - float(best["value"])) < 1e-6  # best.yaml is the best trial's config
    html = (config.run_dir / "tune" / "report.html").read_text()
    assert "Optimization history" in html and "data:image/png;base64" in html

    final = retrain_best(config, quiet=True)  # train + validation, then test
    assert final.train_rows == 300 and 0 <= final.test["accuracy"] <= 1
    assert final.steps == round(int(best["best_step"]) * 300 / 240)
    kept = [json.loads((config.run_dir / d / "model" / "tunelab.json").read_text()) for d in (f"trial-{best['number']}", "best")]
    assert kept[1].get("temperature") == kept[0].get("temperature")  # no validation left: the trial's temperature
    from tunelab.monitor.profile import PROFILE_FILE

    trial_model, best_model = (config.run_dir / d / "model" for d in (f"trial-{best['number']}", "best"))
    assert not (trial_model / PROFILE_FILE).exists() and (best_model / PROFILE_FILE).is_file()  # what is served has one


def test_median_pruner_stops_a_trailing_trial_early(tiny_config):
    config = _config(tiny_config, max_steps=60, eval_every=10, tune_section={
        "sampler": "grid", "pruner": "median", "startup_trials": 1, "n_trials": None,
        "space": {"train.learning_rate": [3e-3, 1e-8]}})
    result = tune(config, quiet=True)
    rows = _trials(config)
    assert [r["state"] for r in rows] == ["complete", "pruned"], rows
    assert int(rows[1]["steps"]) < 60  # stopped at an evaluation, not at the end
    assert result.steps < 120


def test_failing_trials_are_recorded_with_their_reason_and_the_search_goes_on(tiny_config):
    config = _config(tiny_config, tune_section={"sampler": "grid", "n_trials": None, "space": {
        "model.max_length": [32, 100000], "train.learning_rate": [3e-3, 1e30]}})
    result = tune(config, quiet=True)
    rows = {(r["model.max_length"], r["train.learning_rate"]): r for r in _trials(config)}
    assert rows[("32", "0.003")]["state"] == "complete"
    assert rows[("32", "1e+30")]["state"] == "fail" and "diverged" in rows[("32", "1e+30")]["reason"]
    for lr in ("0.003", "1e+30"):
        assert rows[("100000", lr)]["state"] == "fail" and "model.max_length" in rows[("100000", lr)]["reason"]
    assert result.best_trial == int(rows[("32", "0.003")]["number"])


def test_memory_does_not_grow_over_12_trials(tiny_config):
    config = _config(tiny_config, max_steps=4, eval_every=4, trackers=[], tune_section={
        "n_trials": 12, "space": {"train.learning_rate": {"log_uniform": [1e-4, 1e-2]}}})
    tune(config, quiet=True)
    rss = [float(r["rss_mb_at_start"]) for r in _trials(config)]
    assert len(rss) == 12 and all(r > 0 for r in rss)
    # after warm-up, each trial gives its memory back (a cache that kept each trial's tokenizer: ~30 MB a trial)
    assert rss[-1] - rss[4] < 25, rss


# ---------------------------------------------------------------- processes: kill + resume, two workers

def _cli(config_path, *extra, **kw):
    return subprocess.Popen([sys.executable, "-m", "tunelab", "tune", str(config_path), *extra],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_killed_search_continues_without_repeating_finished_trials(tiny_config, tmp_path):
    config = _config(tiny_config, max_steps=60, eval_every=10, checkpoint_every=10, tune_section={
        "sampler": "grid", "n_trials": None, "space": {"train.learning_rate": [3e-3, 1e-3, 2e-3]}})
    path = tmp_path / "search.yaml"
    path.write_text(dump_config(config))
    proc = _cli(path)
    mid = config.run_dir / "trial-1" / "checkpoints" / "step-20"
    deadline = time.time() + 180
    while not mid.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert mid.exists(), "trial 1 never reached step 20; nothing was interrupted"
    first_model = (config.run_dir / "trial-0" / "model" / "model.safetensors").stat().st_mtime_ns

    again = _cli(path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    assert "lost their worker" in err
    rows = _trials(config)
    assert [(r["number"], r["state"]) for r in rows] == [("0", "complete"), ("1", "complete"), ("2", "complete")]
    assert (config.run_dir / "trial-0" / "model" / "model.safetensors").stat().st_mtime_ns == first_model
    assert "trial 0:" not in err  # not run again
    # trial 1 continued from its checkpoint: its log has each step once
    steps = [yaml.safe_load(ln)["step"] for ln in (config.run_dir / "trial-1" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in ln]
    assert steps == sorted(set(steps)) and steps[-1] == 60


def test_sigterm_stops_a_search_as_ctrl_c_does_and_the_trial_continues_from_its_checkpoint(tiny_config, tmp_path):
    from test_resume import _logged_step, _saved_steps, _wait_for

    config = _config(tiny_config, max_steps=40, eval_every=10, checkpoint_every=100000, tune_section={
        "sampler": "grid", "n_trials": None, "space": {"train.learning_rate": [3e-3]}})
    path = tmp_path / "search.yaml"
    path.write_text(dump_config(config))
    trial_dir = config.run_dir / "trial-0"
    proc = _cli(path)  # quiet trials: little output, a pipe does not fill
    reached = _wait_for(lambda: _logged_step(trial_dir) >= 5, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert reached, err[-2000:]
    assert proc.returncode == 143, err[-2000:]
    assert "tune: interrupted in trial 0 (checkpoint saved)" in err and "Traceback" not in err
    (step,) = _saved_steps(trial_dir)
    study = optuna.load_study(study_name=config.name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(config.run_dir / "tune" / "study.journal"))))
    assert study.trials[0].state == optuna.trial.TrialState.WAITING  # back in the queue, not left running

    assert tune(config, quiet=True).states == {"complete": 1}
    steps = [yaml.safe_load(ln)["step"] for ln in (trial_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    assert steps == sorted(set(steps)) and steps[-1] == 40 and 5 <= step < 40


def test_a_trial_whose_folder_another_process_holds_is_left_to_it_and_taken_back_when_it_dies(tiny_config):
    """A worker thought lost may still be running its trial: the trial stays that worker's (not failed, not run
    twice at once), and comes back to the queue once that process is gone."""
    import socket

    from test_runlock import _holder

    config = _config(tiny_config, max_steps=5, eval_every=5, tune_section={
        "sampler": "grid", "n_trials": None, "space": {"train.learning_rate": [3e-3]}})
    holder = _holder(config.run_dir / "trial-0")
    try:
        assert tune(config, quiet=True).states == {"running": 1}
        study = optuna.load_study(study_name=config.name, storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(config.run_dir / "tune" / "study.journal"))))
        assert study.trials[0].user_attrs["worker"] == f"{socket.gethostname()}:{holder.pid}"
    finally:
        holder.kill()
        holder.wait()
    assert tune(config, quiet=True).states == {"complete": 1}


def test_two_workers_share_one_study_exactly(tiny_config, tmp_path):
    config = _config(tiny_config, max_steps=10, eval_every=5, tune_section={
        "n_trials": 5, "space": {"train.learning_rate": {"log_uniform": [1e-4, 1e-2]}}})
    path = tmp_path / "search.yaml"
    path.write_text(dump_config(config))
    workers = [_cli(path), _cli(path)]
    logs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, logs):
        assert w.returncode == 0, err[-2000:]
    rows = _trials(config)
    assert [r["number"] for r in rows] == ["0", "1", "2", "3", "4"] and {r["state"] for r in rows} == {"complete"}
    ran = [ln.split(":")[0] for _, err in logs for ln in err.splitlines() if ln.startswith("trial ")]
    assert sorted(ran) == [f"trial {n}" for n in range(5)]  # each trial run by exactly one worker, once
    study = optuna.load_study(study_name=config.name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(config.run_dir / "tune" / "study.journal"))))
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both worked
    assert len({t.params["train.learning_rate"] for t in study.trials}) == 5  # and drew different values


def test_a_changed_search_is_refused_on_restart(tiny_config):
    config = _config(tiny_config, max_steps=5, eval_every=5, tune_section={"n_trials": 1, "space": {"train.learning_rate": [1e-3]}})
    tune(config, quiet=True)
    raw = yaml.safe_load(dump_config(config))
    raw["tune"]["space"] = {"train.learning_rate": [1e-3, 3e-3]}
    with pytest.raises(Exception, match=r"exists with other settings \(tune.space"):
        tune(load_config(raw), quiet=True)
    raw = yaml.safe_load(dump_config(config))
    raw["tune"]["n_trials"] = 2  # a larger budget adds trials to the same study
    result = tune(load_config(raw), quiet=True)
    assert result.states == {"complete": 2}
    assert not math.isnan(result.best_value)


def test_yaml_ranges_written_as_people_write_them_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: s\ndata: {train: t.csv}\ntune:\n  space:\n    train.learning_rate: {log_uniform: [1e-5, 1e-3]}\n"
                    "    train.weight_decay: [0, 1e-2]\n")
    config = load_config(path)
    assert config.tune.space["train.learning_rate"] == {"log_uniform": [1e-5, 1e-3]}
    assert config.tune.space["train.weight_decay"] == [0, 0.01]


def test_a_database_url_as_storage(tiny_config, tmp_path):
    db = tmp_path / "studies.db"
    config = _config(tiny_config, max_steps=5, eval_every=5, tune_section={
        "n_trials": 2, "storage": f"sqlite:///{db}", "space": {"train.learning_rate": {"log_uniform": [1e-4, 1e-2]}}})
    result = tune(config, quiet=True)
    assert result.states == {"complete": 2} and db.stat().st_size > 0
    assert not (config.run_dir / "tune" / "study.journal").exists()
    assert len(optuna.load_study(study_name=config.name, storage=f"sqlite:///{db}").trials) == 2


def test_a_key_of_a_method_no_trial_uses_is_refused(tiny_config):
    with pytest.raises(ConfigError, match="method.lora.r acts only in 'lora' trials, and no trial uses 'lora'"):
        check_space(_config(tiny_config, tune_section={"space": {"method.lora.r": [4, 8], "train.learning_rate": [1e-3]}}))


def test_tune_cli_mistakes_are_one_clear_line(tiny_config, tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text(dump_config(_config(tiny_config, tune_section={"space": {"train.lerning_rate": [1e-3]}})))
    done = subprocess.run([sys.executable, "-m", "tunelab", "tune", str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and "'train.lerning_rate' does not fit the config" in done.stderr
    assert "Traceback" not in done.stderr
