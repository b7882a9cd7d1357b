"""The HTTP API (FastAPI): /v1/predict, /v1/feedback, /v1/models, /v1/monitor, /dashboard, /healthz, /readyz,
/metrics, OpenAPI docs at /docs.

    create_app({"sentiment": "runs/sst2"}, ServeConfig(...))      # an ASGI app; `tunelab serve` runs it in uvicorn

Errors are JSON: {"error": {"code": ..., "message": ...}} with 401 (API key), 404 (unknown model or prediction id), 413 (body or
text count), 415 (the body is not JSON), 422 (invalid request, text too long), 503 (queue full: Retry-After; not
ready; or, with serve.monitor.durability: sync, the log did not take the predictions), 500 (the model failed on
a text of this request; the server and the other requests go on).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.config import ServeConfig
from tunelab.monitor.live import FeedbackError, Monitor, create_monitor
from tunelab.serve.auth import KeyCheck, Unauthorised, api_keys
from tunelab.serve.batcher import Batcher, QueueFull
from tunelab.serve.docs import add_docs
from tunelab.serve.metrics import Metrics
from tunelab.serve.models import ServedModel, load_models
from tunelab.threads import on_passing_thread

log = logging.getLogger("tunelab.serve")
_SURROGATE = re.compile("[\ud800-\udfff]")
INTERNAL_INFO = {"path", "eos", "max_queue", "adapter"}  # ServedModel.info keys for the server's own use (the monitor's default database), not clients'


def _text(value: str) -> str:
    """A lone surrogate (JSON allows "\\ud800") is not text: the tokenizer, UTF-8 and the database all refuse it."""
    found = _SURROGATE.search(value)
    if found:
        raise PydanticCustomError("surrogate", "holds a lone surrogate (U+{code} at character {at}), which is not valid "
                                  "Unicode text", {"code": f"{ord(found.group()):04X}", "at": found.start()})
    return value


Text = Annotated[str, AfterValidator(_text)]


class PredictRequest(BaseModel):
    model_config = ConfigDict(strict=True)  # "2" is not a number, nor 1 a text: a client's mistake, said at once

    texts: list[Text] = Field(description="Texts to classify (the first sentence of each pair for pair models).")
    text_pairs: list[Text] | None = Field(None, description="Second sentences, one per text (sentence-pair models only).")
    model: Text | None = Field(None, description="Which loaded model; may be left out when only one is loaded.")
    top_k: int | None = Field(None, ge=1, le=1000, description="Also list the k best labels with their scores.")


class Entity(BaseModel):
    start: int = Field(description="Character offset of the entity's first character in the text sent.")
    end: int = Field(description="Character offset just after its last character: text[start:end] is the entity.")
    label: str = Field(description="The entity type.")
    score: float = Field(description="The mean probability of its words' tags.")
    text: str = Field(description="text[start:end].")


class Prediction(BaseModel):
    """One answer: classification models give label (labels for multi-label), score and scores; token-classification
    models give entities."""

    id: str | None = Field(None, description="The prediction's id in the monitor's log: name it in POST /v1/feedback.")
    label: str | None = None
    labels: list[str] | None = None
    score: float | None = None
    scores: dict[str, float] | None = None
    top_k: list[dict] | None = None
    entities: list[Entity] | None = Field(None, description="Token-classification models: the entities found.")


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction]


class EntitySpan(BaseModel):
    model_config = ConfigDict(strict=True)

    start: int = Field(ge=0, description="Character offset of the entity's first character.")
    end: int = Field(ge=1, description="Character offset just after its last character.")
    label: Text = Field(description="The entity type.")


class FeedbackItem(BaseModel):
    model_config = ConfigDict(strict=True)

    id: Text = Field(max_length=64, description="A prediction's id, as /v1/predict returned it; or a generated answer's: "
                     "the id of the /v1/chat/completions or /v1/completions response (`<id>:<i>` for its choice i).")
    label: Text | list[Text] | None = Field(None, description="The true label (a list of labels for multi-label models); "
                                            "for a generated answer, its rating: good or bad.")
    entities: list[EntitySpan] | None = Field(
        None, max_length=10000, description="Token-classification models: the corrected entities (all of the text's).")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    id: Text | None = Field(None, max_length=64, description="One prediction's or generated answer's id (or give `items`).")
    label: Text | list[Text] | None = Field(None, description="Its true label; for a generated answer: good or bad.")
    entities: list[EntitySpan] | None = Field(
        None, max_length=10000, description="Token-classification models: its corrected entities (instead of label).")
    items: list[FeedbackItem] | None = Field(None, max_length=10000, description="Several (id, label or entities) at once.")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _where(loc: tuple) -> str:
    """('body', 'items', 0, 'label', 'str') -> 'items[0].label': field names and indexes, without pydantic's names
    of union branches ('str', 'list[...]', 'function-after[...]')."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "body" and part.isidentifier() and part not in ("str", "int", "float", "bool", "list", "dict"):
            out += ("." if out else "") + part
    return out


def _is_json(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()  # as FastAPI decides whether to parse the body as JSON
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


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


class _Observe:
    """ASGI middleware: request count and latency by route and status (and the monitor's error rate).

    Plain ASGI, not @app.middleware("http"): that one (Starlette's BaseHTTPMiddleware) runs the app in
    another task through memory streams, a cost on every request that shows at concurrency 1."""

    def __init__(self, app, metrics: Metrics, state: dict):
        self.app, self.metrics, self.state = app, metrics, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # an unhandled error is a 500 for the error rate too

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            seconds = time.perf_counter() - started
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(seconds)
            monitor = self.state["monitor"]
            if monitor is not None and path == "/v1/predict":
                monitor.record_request(status, seconds)


def create_app(models: dict[str, str | Path] | None = None, settings: ServeConfig | None = None,
               base: str | None = None, adapters: dict[str, str | Path] | None = None,
               loaded: dict[str, ServedModel] | None = None, app_config=None) -> FastAPI:
    """The ASGI app serving `models` ({name: run or export folder}) and/or `adapters` over `base`.

    `loaded`: already loaded models instead (tests, embedding). `app_config`: an application's config
    (tunelab.apps): its models are loaded too and its routes added. Models load and warm up at startup;
    /readyz answers 200 once they have.
    """
    settings = settings or ServeConfig()
    application = None
    if app_config is not None:
        from tunelab.apps import app_routes

        application = app_routes(app_config)
        if loaded is None:
            models = {**(models or {}), **application.served_models(app_config)}
    keys = KeyCheck(api_keys(settings))
    metrics = Metrics()
    state: dict = {"ready": False, "models": {}, "batchers": {}, "monitor": None}
    unlogged = set(application.MODELS) - set(application.LOGGED) if application is not None else set()  # no drift embeddings

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            served = loaded if loaded is not None else await asyncio.to_thread(
                load_models, models or {}, settings.precision, base, adapters, settings.threads, settings.max_queue,
                application.app_models(app_config) if application is not None else None, settings.prefix_cache_mb)
            monitor = await asyncio.to_thread(create_monitor, settings.monitor, served, metrics)
            for name, model in served.items():
                if model.engine is not None:  # a causal LM: its decoding thread
                    model.engine.start()
                    continue
                # on a passing thread, as the models were loaded: the batcher's thread keeps the cores' workers
                await asyncio.to_thread(on_passing_thread, model.probabilities, ["warm up"],
                                        ["warm up"] if model.pair else None)
                batcher = Batcher(model, settings.max_batch_size, settings.max_wait_ms, settings.max_queue, metrics,
                                  embeddings=monitor is not None and name not in unlogged)
                batcher.start()
                state["batchers"][name] = batcher
        except BaseException:
            for batcher in state["batchers"].values():
                await batcher.stop()
            await asyncio.to_thread(_stop_engines, loaded or {})
            raise
        if monitor is not None:
            monitor.start()
        if application is not None:
            await asyncio.to_thread(application.start, state, app_config, metrics)
        state["models"], state["monitor"], state["ready"] = served, monitor, True
        yield
        state["ready"] = False
        for batcher in state["batchers"].values():
            await batcher.stop()
        if application is not None:
            await asyncio.to_thread(application.stop, state)
        await asyncio.to_thread(_stop_engines, served)  # the running answers finish first
        if monitor is not None:  # after the batchers: every answered prediction is in the log
            await asyncio.to_thread(monitor.stop)

    app = FastAPI(title="tunelab", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  description="Text classification, named-entity recognition and text generation (OpenAI-compatible) with "
                  "models fine-tuned by tunelab.")  # docs: add_docs, below
    app.state.tunelab = state  # models, batchers, monitor: for code embedding the app (and tests)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(Unauthorised)
    async def _unauthorised(request: Request, exc: Unauthorised):
        return _error(401, "unauthorised", exc.message, {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        content_type = request.headers.get("content-type")
        if content_type is not None and not _is_json(content_type):  # FastAPI then validated the raw bytes
            return _error(415, "unsupported_media_type", f"the body must be JSON, sent with Content-Type: application/json "
                          f"(this request's Content-Type: {content_type})")
        first = exc.errors()[0] if exc.errors() else {}
        where = _where(first.get("loc", ()))
        return _error(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}" if where else first.get("msg", "invalid request"))

    authorised = keys.api()

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
        """Labels and scores for each text, in the order given (with ids for feedback when monitoring)."""
        started = time.perf_counter()
        name = choose(body.model)
        model: ServedModel = state["models"][name]
        if model.engine is not None:
            raise ApiError(422, "generative_model", f"model '{name}' generates text: use /v1/chat/completions or /v1/completions")
        _check(body, model, settings)
        try:
            rows = await state["batchers"][name].submit(body.texts, body.text_pairs)
        except QueueFull:
            raise ApiError(503, "overloaded", "the server is at capacity; retry shortly", {"Retry-After": "1"}) from None
        except Exception as exc:  # the batcher fails only the requests whose own texts the model fails on
            log.error("500 on /v1/predict: model %s failed on a request of %d texts", name, len(body.texts), exc_info=exc)
            raise ApiError(500, "model_error", f"the model failed on a text of this request: {type(exc).__name__}") from None
        if not rows:
            return PredictResponse(model=name, predictions=[])
        results = model.decide([r.probs for r in rows], body.top_k, [r.context for r in rows])
        monitor: Monitor | None = state["monitor"]
        if monitor is not None:
            ids, written = monitor.record(name, body.texts, rows, results, time.perf_counter() - started)
            for result, pid in zip(results, ids):
                result["id"] = pid
            if written is not None:  # durability: sync -- answer once the log has committed these rows
                try:
                    await asyncio.wrap_future(written)
                except Exception as exc:  # noqa: BLE001 -- whatever the database said, these predictions are not logged
                    raise ApiError(503, "log_unavailable", "the prediction log did not take this request's predictions "
                                   f"({type(exc).__name__}); retry shortly", {"Retry-After": "1"}) from None
        return PredictResponse(model=name, predictions=results)

    @app.post("/v1/feedback", dependencies=[Depends(authorised)], responses={401: {}, 404: {}, 422: {}, 503: {}})
    async def post_feedback(body: FeedbackRequest) -> dict:
        """The true label of earlier predictions (one, or a batch in `items`; corrected entities for token-classification
        models): live accuracy (entity F1) comes from these. A generated answer is rated good or bad: live approval."""
        monitor: Monitor | None = state["monitor"]
        if monitor is None:
            raise ApiError(503, "monitor_off", "monitoring is off on this server (serve.monitor.enabled)")
        def answer(item):  # a label, or corrected entities
            if (item.label is None) == (item.entities is None):
                raise ApiError(422, "invalid_request", "give the true label (label) or, for a token-classification "
                               "model, the corrected entities (entities), one of the two")
            return item.label if item.label is not None else [e.model_dump() for e in item.entities]

        if (body.items is None) == (body.id is None):
            raise ApiError(422, "invalid_request", "give either id and label, or items: [{id, label}, ...]")
        items = [(i.id, answer(i)) for i in body.items] if body.items is not None else [(body.id, answer(body))]
        if not items:
            raise ApiError(422, "invalid_request", "items is empty")
        try:
            return await asyncio.to_thread(monitor.add_feedback, items)
        except FeedbackError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None

    @app.get("/v1/monitor", dependencies=[Depends(authorised)], responses={401: {}, 503: {}})
    async def monitor_state() -> dict:
        """What the dashboard shows: request rate, latency, errors, label shares vs training, drift figures with
        their thresholds, live accuracy, alerts."""
        if state["monitor"] is None:
            raise ApiError(503, "monitor_off", "monitoring is off on this server (serve.monitor.enabled)")
        return state["monitor"].snapshot()

    @app.get("/dashboard", response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        """The monitoring dashboard (a self-contained page that polls /v1/monitor)."""
        from tunelab.monitor.dashboard import dashboard_html

        return HTMLResponse(dashboard_html())

    @app.get("/v1/models", dependencies=[Depends(authorised)], responses={401: {}})
    async def list_models() -> dict:
        """The loaded models: labels, base model, method, validation metrics, backend."""
        return {"models": [{"name": n, **{k: v for k, v in m.info.items() if k not in INTERNAL_INFO}}
                           for n, m in state["models"].items()]}

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

    for path, probe in (("/healthz", healthz), ("/readyz", readyz)):  # HEAD: what many health checkers send
        app.add_api_route(path, probe, methods=["HEAD"], include_in_schema=False)
    from tunelab.serve.openai_api import add_routes  # here: it takes this module's errors

    add_routes(app, state, authorised, choose, ApiError, metrics)
    if application is not None:
        application.add_routes(app, state, app_config, authorised, ApiError, metrics)
    add_docs(app, keys.docs())
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(_Observe, metrics=metrics, state=state)
    app.add_middleware(_BodyLimit, max_bytes=settings.max_body_bytes)
    return app


def _stop_engines(served: dict) -> None:
    for model in served.values():
        if model.engine is not None and model.engine.thread.is_alive():
            model.engine.stop()


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
    if settings.too_long == "reject" and getattr(model.task, "truncates", True):  # token classification reads in windows
        args = (body.texts, body.text_pairs) if body.text_pairs is not None else (body.texts,)
        lengths = [len(ids) for ids in model.tokenizer(*args, truncation=False)["input_ids"]]
        over = [i for i, length in enumerate(lengths) if length > model.max_length]
        if over:
            raise ApiError(422, "text_too_long", f"texts[{over[0]}] is {lengths[over[0]]} tokens; the model reads at most "
                           f"{model.max_length} (serve.too_long: truncate cuts such texts instead)")


def _version() -> str:
    from tunelab import __version__

    return __version__
