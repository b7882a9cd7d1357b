"""The HTTP API (FastAPI): /v1/predict, /v1/models, /healthz, /readyz, /metrics, OpenAPI docs at /docs.

    create_app({"sentiment": "runs/sst2"}, ServeConfig(...))      # an ASGI app; `tunelab serve` runs it in uvicorn

Errors are JSON: {"error": {"code": ..., "message": ...}} with 401 (API key), 404 (unknown model), 413 (body or
text count), 422 (invalid request, text too long), 503 (queue full: Retry-After; or not ready), 500 (the model
failed on this batch; the server stays up).
"""

from __future__ import annotations

import hmac
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.config import ServeConfig
from tunelab.errors import TunelabError
from tunelab.serve.batcher import Batcher, QueueFull
from tunelab.serve.metrics import Metrics
from tunelab.serve.models import ServedModel, load_models


class PredictRequest(BaseModel):
    texts: list[str] = Field(description="Texts to classify (the first sentence of each pair for pair models).")
    text_pairs: list[str] | None = Field(None, description="Second sentences, one per text (sentence-pair models only).")
    model: str | None = Field(None, description="Which loaded model; may be left out when only one is loaded.")
    top_k: int | None = Field(None, ge=1, le=1000, description="Also list the k best labels with their scores.")


class Prediction(BaseModel):
    label: str | None = None
    labels: list[str] | None = None
    score: float | None = None
    scores: dict[str, float]
    top_k: list[dict] | None = None


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def api_keys(settings: ServeConfig) -> list[bytes]:
    keys = [k.strip() for k in os.environ.get(settings.api_keys_env, "").split(",") if k.strip()]
    if settings.api_keys_file:
        try:
            keys += [ln.strip() for ln in Path(settings.api_keys_file).read_text().splitlines() if ln.strip()]
        except OSError as exc:
            raise TunelabError(f"serve.api_keys_file: cannot read {settings.api_keys_file}: {exc.strerror}") from None
    return [k.encode() for k in keys]


class _BodyLimit:
    """ASGI middleware: a request body over max_bytes gets 413 before it is read into memory."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        message = f"the request body is over {self.max_bytes} bytes"
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _error(413, "body_too_large", message)(scope, receive, send)
        if length is not None:  # the server (h11/httptools) holds the client to its Content-Length
            return await self.app(scope, receive, send)
        body, more = b"", True  # streamed without a length: read it here, at most max_bytes, then hand it on
        while more:
            chunk = await receive()
            if chunk["type"] != "http.request":
                return
            body += chunk.get("body", b"")
            more = chunk.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _error(413, "body_too_large", message)(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return await self.app(scope, replay, send)


def create_app(models: dict[str, str | Path] | None = None, settings: ServeConfig | None = None,
               base: str | None = None, adapters: dict[str, str | Path] | None = None,
               loaded: dict[str, ServedModel] | None = None) -> FastAPI:
    """The ASGI app serving `models` ({name: run or export folder}) and/or `adapters` over `base`.

    `loaded`: already loaded models instead (tests, embedding). Models load and warm up at startup;
    /readyz answers 200 once they have.
    """
    settings = settings or ServeConfig()
    keys = api_keys(settings)
    metrics = Metrics()
    state: dict = {"ready": False, "models": {}, "batchers": {}}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import asyncio

        try:
            served = loaded if loaded is not None else await asyncio.to_thread(
                load_models, models or {}, settings.precision, base, adapters, settings.threads)
            for name, model in served.items():
                await asyncio.to_thread(model.probabilities, ["warm up"], ["warm up"] if model.pair else None)
                batcher = Batcher(model, settings.max_batch_size, settings.max_wait_ms, settings.max_queue, metrics)
                batcher.start()
                state["batchers"][name] = batcher
        except BaseException:
            for batcher in state["batchers"].values():
                await batcher.stop()
            raise
        state["models"], state["ready"] = served, True
        yield
        state["ready"] = False
        for batcher in state["batchers"].values():
            await batcher.stop()

    app = FastAPI(title="tunelab", version=_version(), lifespan=lifespan,
                  description="Text classification with models fine-tuned by tunelab.")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}" if where else first.get("msg", "invalid request"))

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response

    def authorised(request: Request) -> None:
        if not keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        ok = scheme.lower() == "bearer" and any(hmac.compare_digest(given.strip().encode(), k) for k in keys)
        if not ok:
            raise ApiError(401, "unauthorised", "a valid API key is needed: Authorization: Bearer <key>",
                           {"WWW-Authenticate": "Bearer"})

    def choose(name: str | None) -> str:
        served = state["models"]
        if not state["ready"]:
            raise ApiError(503, "not_ready", "the models are still loading", {"Retry-After": "1"})
        if name is None:
            if len(served) > 1:
                raise ApiError(422, "model_required", f"several models are loaded; name one: {', '.join(served)}")
            return next(iter(served))
        if name not in served:
            raise ApiError(404, "unknown_model", f"no model '{name}'; loaded: {', '.join(served)}")
        return name

    @app.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True, dependencies=[Depends(authorised)],
              responses={401: {}, 404: {}, 413: {}, 422: {}, 500: {}, 503: {}})
    async def predict(body: PredictRequest) -> PredictResponse:
        """Labels and scores for each text, in the order given."""
        name = choose(body.model)
        model: ServedModel = state["models"][name]
        _check(body, model, settings)
        try:
            probs = await state["batchers"][name].submit(body.texts, body.text_pairs)
        except QueueFull:
            raise ApiError(503, "overloaded", "the server is at capacity; retry shortly", {"Retry-After": "1"}) from None
        except Exception as exc:
            raise ApiError(500, "model_error", f"the model failed on this batch: {type(exc).__name__}") from None
        return PredictResponse(model=name, predictions=model.decide(probs, body.top_k) if len(body.texts) else [])

    @app.get("/v1/models", dependencies=[Depends(authorised)], responses={401: {}})
    async def list_models() -> dict:
        """The loaded models: labels, base model, method, validation metrics, backend."""
        return {"models": [{"name": n, **m.info} for n, m in state["models"].items()]}

    @app.get("/healthz")
    async def healthz() -> dict:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {}})
    async def readyz():
        """200 once every model is loaded and warmed up."""
        if not state["ready"]:
            return _error(503, "not_ready", "the models are still loading")
        return {"status": "ready", "models": list(state["models"])}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        """Prometheus metrics: requests, latency, batch sizes, queue depth, inference time."""
        body, content_type = metrics.render()
        return PlainTextResponse(body, media_type=content_type)

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(_BodyLimit, max_bytes=settings.max_body_bytes)
    return app


def _check(body: PredictRequest, model: ServedModel, settings: ServeConfig) -> None:
    n = len(body.texts)
    if n > settings.max_texts_per_request:
        raise ApiError(413, "too_many_texts", f"{n} texts in one request; at most {settings.max_texts_per_request}")
    if model.pair != (body.text_pairs is not None):
        raise ApiError(422, "pairs", "this model classifies sentence pairs: give text_pairs, one per text" if model.pair
                       else "this model classifies single texts: leave text_pairs out")
    if body.text_pairs is not None and len(body.text_pairs) != n:
        raise ApiError(422, "pairs", f"{len(body.text_pairs)} text_pairs for {n} texts; give one per text")
    for field, texts in (("texts", body.texts), ("text_pairs", body.text_pairs or [])):
        for i, text in enumerate(texts):
            if len(text) > settings.max_chars_per_text:
                raise ApiError(422, "text_too_long", f"{field}[{i}] has {len(text)} characters; at most {settings.max_chars_per_text}")
            if not text.strip():
                raise ApiError(422, "empty_text", f"{field}[{i}] is empty")
    if settings.too_long == "reject":
        args = (body.texts, body.text_pairs) if body.text_pairs is not None else (body.texts,)
        lengths = [len(ids) for ids in model.tokenizer(*args, truncation=False)["input_ids"]]
        over = [i for i, length in enumerate(lengths) if length > model.max_length]
        if over:
            raise ApiError(422, "text_too_long", f"texts[{over[0]}] is {lengths[over[0]]} tokens; the model reads at most "
                           f"{model.max_length} (serve.too_long: truncate cuts such texts instead)")


def _version() -> str:
    from tunelab import __version__

    return __version__
