"""API keys: where they come from (an environment variable, a file), how a request shows one, and what the
startup line says about them.

A request shows a key as `Authorization: Bearer KEY`. The API docs (/docs, /openapi.json) also take `?key=KEY`,
so that a browser can open them: the key then sits in the page's address, which is why no other route takes it.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tunelab.config import ServeConfig
from tunelab.errors import ConfigError

# declares the scheme in the OpenAPI schema (the docs page's Authorize button); the check is ours (KeyCheck)
bearer = HTTPBearer(auto_error=False, description="An API key from TUNELAB_API_KEYS or serve.api_keys_file.")


def api_keys(settings: ServeConfig) -> list[bytes]:
    """The accepted keys; none when neither setting is given. A setting that is given but holds no key stops
    the server: a blank variable or an empty file must not mean 'no authentication'."""
    keys: list[str] = []
    raw = os.environ.get(settings.api_keys_env)
    if raw is not None:
        keys = [k.strip() for k in raw.split(",") if k.strip()]
        if not keys:  # only blanks and commas: safe to show
            raise ConfigError(f"{settings.api_keys_env} is set but holds no API key ({raw!r}): give comma-separated "
                              f"keys, or unset {settings.api_keys_env} to serve without keys")
    if settings.api_keys_file:
        path = settings.api_keys_file
        try:
            lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
        except OSError as exc:
            raise ConfigError(f"serve.api_keys_file: cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"serve.api_keys_file {path} is not UTF-8 text (one key per line)") from None
        if not any(lines):
            raise ConfigError(f"serve.api_keys_file {path} holds no API key ({'empty' if not lines else 'only blank lines'}): "
                              "give one key per line, or leave api_keys_file out to serve without keys")
        keys += [ln for ln in lines if ln]
    return [k.encode() for k in keys]


class Unauthorised(Exception):
    def __init__(self, message: str):
        self.message = message


class KeyCheck:
    """FastAPI dependencies that pass a request with an accepted key (every request when there are no keys)."""

    def __init__(self, keys: list[bytes]):
        self.keys = keys

    def accepts(self, given: str | None) -> bool:
        return given is not None and any(hmac.compare_digest(given.strip().encode(), k) for k in self.keys)

    def api(self):
        async def authorised(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
            if self.keys and not self.accepts(credentials.credentials if credentials else None):
                raise Unauthorised("a valid API key is needed: Authorization: Bearer <key>")
        return authorised

    def docs(self):
        async def authorised(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
            if self.keys and not (self.accepts(credentials.credentials if credentials else None)
                                  or self.accepts(request.query_params.get("key"))):
                raise Unauthorised("a valid API key is needed: Authorization: Bearer <key>, or open /docs?key=<key>")
        return authorised


def key_notes(host: str, count: int) -> tuple[str, str | None]:
    """What the startup line says about keys (never the keys), and a warning when the API is open to other machines."""
    if count:
        return f"API keys: on ({count})", None
    if _loopback(host):
        return "API keys: off", None
    return "API keys: off", (f"warning: {host} is reachable from other machines and no API key is set: anyone who can "
                             "reach this port can use the API (set TUNELAB_API_KEYS or serve.api_keys_file)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback  # 127.0.0.0/8, ::1
    except ValueError:  # a host name: it may resolve to anything
        return False
