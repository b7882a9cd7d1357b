"""What a search optimises (the metric and its direction) and each trial's whole config."""

from __future__ import annotations

import yaml

from tunelab.config import Config, dump_config, set_key


def metric_of(config: Config) -> str:
    from tunelab.tasks import task_class

    return config.tune.metric or config.train.metric or task_class(config.task.name).metric_for(config)


def direction_of(config: Config) -> str:
    if config.tune.direction != "auto":
        return config.tune.direction
    return "minimize" if metric_of(config) in ("loss", "perplexity", "ece") else "maximize"


def base_raw(config: Config) -> dict:
    raw = yaml.safe_load(dump_config(config))
    raw.pop("tune")
    return raw


def trial_raw(config: Config, values: dict) -> dict:
    """A trial's whole config (raw dict) from the search's config and the trial's values. Built, not read from the
    trial's folder: with a shared database the trial may have run on another machine."""
    raw = base_raw(config)
    set_key(raw, "train.metric", metric_of(config))
    for key, value in values.items():
        set_key(raw, key, value)
    return raw
