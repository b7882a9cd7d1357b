"""The recommender's HTTP routes, added to tunelab's server (`tunelab serve --app recommend.yaml`):

    POST /v1/recommend          {user_id | history, k, exclude} -> the top k items with their scores
    POST /v1/items              {items: [{item_id, text}]} -> added to the catalogue, embedded now, no retraining
    GET  /v1/recommend/stats    requests, catalogue size, catalogue coverage so far

Prometheus: tunelab_recommend_requests_total{kind}, tunelab_recommend_seconds (latency),
tunelab_recommend_catalogue_coverage (share of the catalogue recommended at least once since start).
"""

from __future__ import annotations

import asyncio
import time

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field, model_validator

MODELS: tuple[str, ...] = ()  # the recommender is the app's own, not a tunelab model folder the server batches
LOGGED: tuple[str, ...] = ()
PAGE = None


def served_models(config) -> dict:
    return {}


def app_models(config) -> dict:
    return {}


class RecommendRequest(BaseModel):
    user_id: str | None = Field(None, max_length=200, description="A user of the interactions file: their history.",
                                examples=["1"])
    history: list[str] | None = Field(None, max_length=1000, description="Or a history of item ids, oldest first "
                                      "(a new user, a session).")
    k: int = Field(10, ge=1, le=100, description="How many items.")
    exclude: list[str] = Field([], max_length=10_000, description="Item ids never to recommend (besides the history).")

    @model_validator(mode="after")
    def one_history(self):
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give user_id or history (one of the two)")
        return self


class NewItem(BaseModel):
    item_id: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=5000, description="What the item tower reads: title, genres, ...")


class ItemsRequest(BaseModel):
    items: list[NewItem] = Field(min_length=1, max_length=1000)


def start(state: dict, config, metrics) -> None:
    import numpy as np

    from tunelab.apps.recommend.serving import Recommender

    state["recommender"] = Recommender(config)
    state["recommended"] = np.zeros(len(state["recommender"].ids), dtype=bool)
    state["recommend_requests"] = 0


def stop(state: dict) -> None:
    if state.get("recommender") is not None:
        state["recommender"].close()


def add_routes(app: FastAPI, state: dict, config, authorised, ApiError, metrics) -> None:
    import numpy as np
    from prometheus_client import Counter, Gauge, Histogram

    metrics.recommend_requests = Counter("tunelab_recommend_requests", "Recommendation requests by kind (user, "
                                         "history)", ["kind"], registry=metrics.registry)
    metrics.recommend_seconds = Histogram("tunelab_recommend_seconds", "Time to score a recommendation request",
                                          registry=metrics.registry,
                                          buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1))
    metrics.recommend_coverage = Gauge("tunelab_recommend_catalogue_coverage", "Share of the catalogue recommended "
                                       "at least once since the server started", registry=metrics.registry)

    def recommender():
        if not state["ready"]:
            raise ApiError(503, "not_ready", "the recommender is still loading", {"Retry-After": "1"})
        return state["recommender"]

    @app.post("/v1/recommend", dependencies=[Depends(authorised)], responses={401: {}, 404: {}, 422: {}, 503: {}})
    async def recommend(body: RecommendRequest) -> dict:
        """The top `k` items for a known user (their whole history) or for a given history, never an item of the
        history or of `exclude`. Item ids the catalogue does not have are listed in `unknown_items`."""
        started = time.perf_counter()
        r = recommender()
        if body.user_id is not None:
            history, unknown = r.history_of(body.user_id), []
            if history is None:
                raise ApiError(404, "unknown_user", f"no user '{body.user_id}' in the interactions; send their "
                               "history instead")
        else:
            history, unknown = r.codes(body.history)
            if not len(history):
                raise ApiError(422, "unknown_items", f"history: none of its {len(body.history)} items is in the "
                               "catalogue")
        exclude, unknown_excluded = r.codes(body.exclude)
        found = await asyncio.to_thread(r.recommend, history, body.k, exclude)
        seconds = time.perf_counter() - started
        kind = "user" if body.user_id is not None else "history"
        metrics.recommend_requests.labels(kind).inc()
        metrics.recommend_seconds.observe(seconds)
        shown = state["recommended"]
        if len(shown) < len(r.ids):  # items were added
            state["recommended"] = shown = np.concatenate([shown, np.zeros(len(r.ids) - len(shown), bool)])
        shown[[r.code[i] for i, _ in found]] = True
        metrics.recommend_coverage.set(float(shown.mean()))
        state["recommend_requests"] += 1
        return {"items": [{"item_id": i, "score": round(s, 4)} for i, s in found], "history_length": int(len(history)),
                "unknown_items": unknown + unknown_excluded}

    @app.post("/v1/items", dependencies=[Depends(authorised)], responses={401: {}, 409: {}, 422: {}, 503: {}})
    async def add_items(body: ItemsRequest) -> dict:
        """New items, recommendable at once: their text is embedded by the item tower (no retraining). An id the
        catalogue has (or one given twice) refuses the whole request: nothing is added."""
        r = recommender()
        ids = [item.item_id for item in body.items]
        taken = sorted({i for i in ids if i in r.code} | {i for i in ids if ids.count(i) > 1})
        if taken:
            raise ApiError(409, "item_exists", f"items already in the catalogue or given twice: {', '.join(taken[:10])}"
                           + (f" and {len(taken) - 10} more" if len(taken) > 10 else "") + "; nothing added")
        try:
            await asyncio.to_thread(r.add, [(item.item_id, item.text.strip()) for item in body.items])
        except Exception as exc:  # noqa: BLE001 -- nothing is added unless it is stored
            raise ApiError(503, "store_unavailable", f"the database did not take the items ({type(exc).__name__}); "
                           "retry shortly", {"Retry-After": "1"}) from None
        return {"added": len(ids), "catalogue": len(r.ids)}

    @app.get("/v1/recommend/stats", dependencies=[Depends(authorised)], responses={401: {}, 503: {}})
    async def stats() -> dict:
        """Requests since start, the catalogue's size and the share of it recommended at least once."""
        r = recommender()
        shown = state["recommended"]
        return {"requests": state["recommend_requests"], "catalogue": len(r.ids),
                "catalogue_coverage": float(shown.sum() / max(len(r.ids), 1))}
