"""Servers for tests: the app in a uvicorn thread, or `tunelab serve` as a process, on free loopback ports."""

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn


class Server:
    """uvicorn in a thread on a free loopback port: `with Server(app) as s: httpx.get(s.url + ...)`."""

    def __init__(self, app, shutdown_timeout=10):
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    timeout_graceful_shutdown=shutdown_timeout))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started and time.time() < deadline:
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"
        return self

    @property
    def monitor(self):
        return self.app.state.tunelab["monitor"]

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_process(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`tunelab serve ARGS --port P` as a process, once /readyz answers (or it exited: the caller checks poll()).
    `env`: variables added to this process's environment."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "serve", *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    return proc, url


def wait_until(condition, timeout: float = 30.0, what: str = "the condition") -> None:
    """Poll `condition()` until it is true; fail after `timeout` seconds (no fixed sleeps in tests)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.01)


@contextmanager
def headless_page(width: int = 1280, height: int = 1000):
    """A page in headless Chromium (the system's: scripts/test-services.sh installs it); the test skips without it."""
    import pytest

    chromium = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
    if chromium is None:
        pytest.skip("no Chromium at /usr/bin/chromium (scripts/test-services.sh installs it)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()
