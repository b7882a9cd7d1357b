"""Reading an application's YAML: overrides and ${ENV} applied, validated by its schema, paths taken from the file's
folder (so a config written by `tunelab app NAME init DIR` works from any working directory)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError

from tunelab.errors import ConfigError
from tunelab.settings import Section


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


class EncoderTraining(Section):
    """Contrastive fine-tuning of a sentence encoder with in-batch negatives (apps/encoder.py)."""

    model: str = Field("default", description="Base encoder: a folder or hub id of a sentence-transformers model "
                       "with mean pooling; 'default' is the bundled MiniLM.")
    epochs: int = Field(3, ge=0, description="Passes over the training questions; 0: the base encoder as it is.")
    batch_size: int = Field(32, ge=2, description="Questions per step; each is scored against the others' entries "
                            "(in-batch negatives): larger batches, harder negatives.")
    learning_rate: float = Field(2e-5, gt=0, description="AdamW's peak learning rate (linear warm-up, then decay).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of the steps spent warming up.")
    scale: float = Field(20.0, gt=0, description="Cosine similarities are multiplied by this before the softmax "
                         "(the loss's and the confidence's).")
    max_length: int = Field(128, ge=8, description="Tokens kept of a question or entry.")
    seed: int = Field(42, description="Batch order and initialisation.")
