"""Applications built from tunelab's stages: each is a template a company points at its own data.

An application is a config file (its `app:` key names which) and a routes module that the server mounts:

    MODELS                                           the names its models are served under
    LOGGED                                           those whose answers it logs in the monitor (they keep the
                                                     embeddings drift compares)
    PAGE                                             the path of its web page, or None
    served_models(config) -> {name: folder}         the tunelab model folders `tunelab serve --app` loads for it
    app_models(config) -> {name: ServedModel}        the models it builds itself (serve/models.py ServedModel)
    add_routes(app, state, config, authorised, ApiError, metrics)
    start(state, config, metrics)                    once the models are loaded (opens its store)
    stop(state)                                      at shutdown, after the last request

A new application is added in APPS, in one place.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from tunelab.errors import ConfigError

APPS = {  # app name -> (config loader, routes module, the search `tunelab tune` runs over its settings or None)
    "finance": ("tunelab.apps.finance.config:load_finance_config", "tunelab.apps.finance.routes", None),
    "support": ("tunelab.apps.support.config:load_support_config", "tunelab.apps.support.routes", None),
    "recommend": ("tunelab.apps.recommend.config:load_recommend_config", "tunelab.apps.recommend.routes",
                  "tunelab.apps.recommend.tune:search"),
}


def load_app_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()):
    """The application config at `path`, read by its own loader (picked by its `app:` key)."""
    from tunelab.config import read_yaml

    try:
        raw = read_yaml(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"--app {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 -- unreadable or not YAML: one line naming the file
        raise ConfigError(f"--app {path}: cannot read it as YAML ({type(exc).__name__})") from None
    name = raw.get("app") if isinstance(raw, dict) else None
    if name not in APPS:
        raise ConfigError(f"--app {path}: 'app:' must name an application ({', '.join(APPS)}), got {name!r}")
    module, _, function = APPS[name][0].partition(":")
    return getattr(importlib.import_module(module), function)(path, overrides)


def is_app_config(path: str | Path) -> bool:
    """Whether the YAML at `path` is an application's (it has an `app:` key); False when it cannot be read."""
    from tunelab.config import read_yaml

    try:
        raw = read_yaml(Path(path).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 -- the caller's own loader says what is wrong with the file
        return False
    return isinstance(raw, dict) and "app" in raw


def app_search(config):
    """The Search (tuning/run.py) over an application config's settings, from its `tune:` section."""
    target = APPS[config.app][2]
    if target is None:
        raise ConfigError(f"{config.source}: the {config.app} app has no search of its own; tune its models' run "
                          f"configs with tunelab tune RUN.yaml (they are ordinary tunelab runs)")
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)(config)


def app_routes(config):
    """The routes module of the application `config` is for."""
    return importlib.import_module(APPS[config.app][1])
