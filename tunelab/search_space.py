"""What a search-space entry of the config is (`tune.space`), parsed and checked when the config loads.

The sampling itself (which values a trial gets, the grid) lives in tuning/space.py; this part is the config's
schema, kept below the stages so that config.py needs nothing above it.
"""

from __future__ import annotations

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


