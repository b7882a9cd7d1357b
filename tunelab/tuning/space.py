"""The search space: dotted config keys mapped to choices or ranges, and how a trial samples them.

    space:
      method.name: [full, lora]                  # a list: categorical choices
      method.lora.r: [4, 8, 16]                  # applies only to trials whose method is lora
      train.learning_rate: {log_uniform: [1e-5, 1e-3]}
      train.warmup_ratio: {uniform: [0.0, 0.2]}
      train.batch_size: {int: [8, 64], step: 8}  # also {log_int: [lo, hi]}

Keys under `method.<name>.` are conditional: they are sampled only in trials that use that method, so the
sampler, the trials table and best.yaml never carry a value that did not act.
"""

from __future__ import annotations

import itertools

from tunelab.search_space import Param


def applies(param: Param, method: str) -> bool:
    return param.method is None or param.method == method


def suggest(trial, params: list[Param], base_method: str) -> dict:
    """Sample one trial's values (optuna define-by-run): {dotted key: value}, only keys that apply."""
    values: dict = {}
    for p in params:
        if not applies(p, values.get("method.name", base_method)):
            continue
        if p.choices is not None:
            values[p.key] = trial.suggest_categorical(p.key, list(p.choices))
        elif p.kind is int:
            values[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            values[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
    return values


def grid(params: list[Param], base_method: str) -> list[dict]:
    """Every distinct combination of the choices, keys that do not apply left out (no config run twice)."""
    ranges = [p.key for p in params if p.choices is None]
    if ranges:
        raise ValueError(f"grid search needs a list of values for every key; {', '.join(ranges)} "
                         "is a range (write e.g. [1e-5, 3e-5, 1e-4], or use sampler random or tpe)")
    points, seen = [], set()
    for combo in itertools.product(*(p.choices for p in params)):
        chosen = dict(zip((p.key for p in params), combo))
        method = chosen.get("method.name", base_method)
        point = {p.key: chosen[p.key] for p in params if applies(p, method)}
        marker = repr(sorted(point.items()))
        if marker not in seen:
            seen.add(marker)
            points.append(point)
    return points


def example_value(param: Param):
    """A value of the param's type, used to check up front that the key exists in the config."""
    if param.choices is not None:
        return param.choices[0]
    return param.kind(param.low)
