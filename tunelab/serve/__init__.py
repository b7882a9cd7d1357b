"""Serving: `tunelab serve` / `create_app` -- FastAPI with dynamic batching, limits, API keys and metrics."""


def __getattr__(name):  # lazy: FastAPI is imported only by those who serve
    if name in ("create_app", "load_models"):
        from tunelab.serve import app

        return getattr(app, name)
    raise AttributeError(name)
