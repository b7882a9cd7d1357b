"""Reading an application's YAML: overrides and ${ENV} applied, validated by its schema, paths taken from the file's
folder (so a config written by `tunelab app NAME init DIR` works from any working directory)."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from tunelab.errors import ConfigError


def read_app_config(path: str | Path, overrides, schema, paths: tuple[str, ...], files: tuple[str, ...]):
    """`schema` validated from the YAML at `path`. `paths`: the fields holding paths (relative ones are taken from
    the file's folder); `files`: those of them that must exist (when set)."""
    from tunelab.config import _expand_env, _explain, apply_override, read_yaml

    path = Path(path)
    app = schema.model_fields["app"].default
    try:
        raw = read_yaml(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 -- yaml errors: one line naming the file
        raise ConfigError(f"config file {path} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a mapping (app: {app}, ...)")
    if raw.get("app", app) != app:
        raise ConfigError(f"{path}: app: {raw['app']!r} is not the {app} app's config")
    for override in overrides:
        apply_override(raw, override)
    raw = _expand_env(raw)
    try:
        config = schema.model_validate(raw)
    except ValidationError as exc:
        raise _explain(exc, str(path), schema) from None
    here = path.resolve().parent
    for key in paths:
        value = getattr(config, key)
        if value is not None and not value.is_absolute():
            setattr(config, key, (here / value).resolve())
    config.source = path.resolve()
    for key in files:
        if getattr(config, key) is not None and not getattr(config, key).is_file():
            raise ConfigError(f"{path}: {key}: {getattr(config, key)} does not exist")
    return config


def new_config(folder: str | Path, name: str, options: dict[str, str | Path | None]) -> Path:
    """The path of a config `init` is about to write in `folder`: refused when it exists (it is the user's now), or
    when one of the `options` ({"--flag": path}) names a file that does not exist."""
    from tunelab.errors import TunelabError

    target = Path(folder) / name
    if target.exists():
        raise TunelabError(f"{target} exists; edit it, or init another folder")
    for option, path in options.items():
        if path is not None and not Path(path).is_file():
            raise TunelabError(f"{option} {path} does not exist")
    return target
