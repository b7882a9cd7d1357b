"""The serve settings from a YAML file and command-line options, with the config's clear errors."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from tunelab.config import ServeConfig, read_yaml
from tunelab.errors import ConfigError


def serve_settings(path: Path | None, options: dict) -> ServeConfig:
    raw: dict = {}
    if path is not None:
        try:
            raw = read_yaml(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"--config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
        if isinstance(raw, dict) and "serve" in raw:
            raw = raw["serve"] or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"--config {path}: expected a mapping of serve settings (host, port, max_batch_size, ...)")
    raw.update({k: v for k, v in options.items() if v is not None})
    try:
        return ServeConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  serve.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid serve settings:\n" + "\n".join(lines)) from None
