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
from dataclasses import dataclass
from typing import Any

RANGES = {"uniform": (float, False), "log_uniform": (float, True), "int": (int, False), "log_int": (int, True)}


@dataclass(frozen=True)
class Param:
    key: str
    choices: tuple | None = None  # categorical
    low: float | None = None
    high: float | None = None
    kind: type = float
    log: bool = False
    step: float | None = None

    @property
    def method(self) -> str | None:
        """The method this key belongs to (method.lora.r -> lora), or None when it applies to every trial."""
        parts = self.key.split(".")
        return parts[1] if parts[0] == "method" and len(parts) > 2 else None


def parse_param(key: str, spec: Any) -> Param:
    """One space entry -> Param; ValueError says what is wrong and what is allowed."""
    if isinstance(spec, list):
        if not spec:
            raise ValueError("an empty list of choices")
        if len({repr(v) for v in spec}) != len(spec):
            raise ValueError(f"repeated choices in {spec}")
        return Param(key, choices=tuple(spec))
    if not isinstance(spec, dict):
        raise ValueError(f"give a list of choices or one of {{{', '.join(f'{k}: [low, high]' for k in RANGES)}}}")
    kinds = [k for k in spec if k in RANGES]
    unknown = [k for k in spec if k not in RANGES and k != "step"]
    if len(kinds) != 1 or unknown:
        raise ValueError(f"a range is one of {', '.join(RANGES)} (plus an optional step); got keys {', '.join(spec)}")
    kind, log = RANGES[kinds[0]]
    bounds = spec[kinds[0]]
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds)):
        raise ValueError(f"{kinds[0]} needs [low, high], got {bounds!r}")
    low, high = bounds
    if not low < high:
        raise ValueError(f"low must be below high, got [{low}, {high}]")
    if log and low <= 0:
        raise ValueError(f"{kinds[0]} needs a positive low bound, got {low}")
    if kind is int and not (float(low).is_integer() and float(high).is_integer()):
        raise ValueError(f"{kinds[0]} needs whole-number bounds, got [{low}, {high}]")
    step = spec.get("step")
    if step is not None and (log or not isinstance(step, (int, float)) or step <= 0):
        raise ValueError("step must be a positive number, and cannot go with a log range")
    if step is not None and kind is int and not float(step).is_integer():
        raise ValueError(f"{kinds[0]} needs a whole-number step, got {step}")
    return Param(key, low=low, high=high, kind=kind, log=log, step=step)


def parse_space(space: dict) -> list[Param]:
    """The space in sampling order: method.name first, since the method decides which keys apply."""
    params = [parse_param(k, v) for k, v in space.items()]
    return sorted(params, key=lambda p: p.key != "method.name")


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
