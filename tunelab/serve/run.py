"""`tunelab serve` as a function: bind the port, load the models, check the log's database, run uvicorn."""

from __future__ import annotations

from tunelab.config import ServeConfig
from tunelab.errors import TunelabError


def run_server(models: dict[str, str], settings: ServeConfig | None = None, base: str | None = None,
               adapters: dict[str, str] | None = None, say=print, app_config=None) -> bool:
    """Serve `models` ({name: run or export folder}) and `adapters` ({name: run} over `base`), and the application
    `app_config` is for (tunelab.apps), until stopped (Ctrl-C, SIGTERM: accepted requests finish first). Every
    mistake is one TunelabError before anything listens. Returns whether the server started."""
    settings = settings or ServeConfig()
    adapters = adapters or {}
    built = None
    if app_config is not None:
        from tunelab.apps import app_routes

        application = app_routes(app_config)
        models = {**models, **application.served_models(app_config)}  # not built yet: one line, now
        built = application.app_models(app_config)
        settings.monitor.database = settings.monitor.database or app_config.database_url()  # one database
    from tunelab.allocator import bound_onednn_cache

    bound_onednn_cache()  # a batch shape per call: unbounded, oneDNN's kernels grow the server (allocator.py)
    import logging

    import uvicorn

    from tunelab.serve.app import create_app
    from tunelab.serve.auth import api_keys, key_notes
    from tunelab.serve.models import load_models

    keys = api_keys(settings)  # a key setting that holds no key: one line now, before the models load
    if adapters and base is None:
        raise TunelabError("--adapter needs --base (the model the adapters were trained on)")
    if not models and not adapters and not built and app_config is None:
        raise TunelabError("nothing to serve: give a run or export folder, e.g. tunelab serve runs/sentiment-demo")
    sock = bind(settings.host, settings.port)  # first: a busy port is one clear error, and no "serving" line
    loaded = load_models(models, settings.precision, base, adapters, settings.threads,  # mistakes: one line, no server
                         settings.max_queue, built, settings.prefix_cache_mb)
    monitored = settings.monitor.enabled and any(m.engine is None for m in loaded.values())  # causal LMs: not yet
    if monitored:  # a bad database URL: one line now, not a failed server start
        from tunelab.monitor.live import default_database
        from tunelab.monitor.store import open_database

        settings.monitor.database = settings.monitor.database or default_database(loaded)
        if settings.monitor.database is None:
            raise TunelabError("no run folder to keep monitor.db in: give --monitor-db URL or --no-monitor")
        open_database(settings.monitor.database).dispose()
    app = create_app(settings=settings, loaded=loaded, app_config=app_config)
    host_in_url = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host_in_url}:{sock.getsockname()[1]}"  # the port bound (port 0: the one the system chose)
    keys_note, warning = key_notes(settings.host, len(keys))
    page = f"; the {app_config.app} page at {url}{application.PAGE}" if app_config is not None and application.PAGE else ""
    say(f"serving {', '.join(loaded)} on {url} ({keys_note}; API docs at {url}/docs{page}"
        + (f", dashboard at {url}/dashboard; log in {settings.monitor.database})" if monitored else ")"))
    if warning:
        say(warning)
    # uvicorn configures only its own loggers: this sends tunelab's (a model's 500, the monitor's) to stderr too
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(name)s: %(message)s")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=settings.shutdown_timeout_s))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown: done, as uvicorn.run() does
        pass
    return bool(server.started)


def bind(host: str, port: int):
    """The server's socket, bound (not yet listening) before anything loads."""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise TunelabError(f"serve.host: cannot listen on '{host}': {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait out TIME_WAIT
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise TunelabError(f"port {port} on {host} is in use (by another server?): stop it, or choose --port") from None
        raise TunelabError(f"cannot listen on {host} port {port}: {exc.strerror}") from None
    return sock
