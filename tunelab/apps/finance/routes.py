"""The finance app's HTTP routes, added to tunelab's server (`tunelab serve --app finance.yaml`):

    POST /v1/finance/ingest        one item {text, timestamp?, source?, url?} or {"items": [...]}: each scored,
                                   attributed and stored before the answer; a bad item is rejected with its reason
    GET  /v1/finance/index         per company (or sector) and minute/hour/day: texts, share negative, mean score
    GET  /v1/finance/movers        companies whose mean score moved most: the last `hours` vs the week before
    GET  /v1/finance/alerts        the latest negative-surge alerts; /v1/finance/alerts/{id} with their texts
    GET  /v1/finance/texts         the latest texts (optionally about one company)
    GET  /finance                  the page showing all of these

Time windows end at the latest stored text's timestamp (not the clock), so a replayed or delayed feed reads the
same as a live one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import Body, Depends, FastAPI, Query
from fastapi.responses import HTMLResponse, JSONResponse

from tunelab.apps.finance.build import MODELS, NER, SENTIMENT, served_models  # noqa: F401 -- the app's interface (tunelab.apps)

LOGGED = ()  # the app keeps its own record of each text (store.py), not the monitor's
PAGE = "/finance"  # the app's page, named when the server starts


def app_models(config) -> dict:
    return {}  # every model is a tunelab model folder (served_models)


def start(state: dict, config, metrics) -> None:
    """Open the store and rebuild the detector (the server calls this once the models are loaded)."""
    from tunelab.apps.finance.ingest import Finance
    from tunelab.monitor.alerts import Webhook

    webhook = Webhook(config.alerts.webhook_url) if config.alerts.webhook_url else None
    state["finance"] = Finance(config, metrics=metrics, webhook=webhook)


def stop(state: dict) -> None:
    if state.get("finance") is not None:
        state["finance"].close()


def add_routes(app: FastAPI, state: dict, config, authorised, ApiError, metrics) -> None:
    from prometheus_client import Counter

    from tunelab.apps.finance.ingest import parse_items
    from tunelab.serve.batcher import QueueFull

    metrics.finance_texts = Counter("tunelab_finance_texts", "Ingested finance texts by outcome (stored, duplicate, "
                                    "rejected)", ["status"], registry=metrics.registry)
    metrics.finance_alerts = Counter("tunelab_finance_alerts", "Negative-surge alerts by company", ["company"],
                                     registry=metrics.registry)

    def finance():
        """The app's state (tunelab.apps.finance.ingest.Finance), once the models are loaded."""
        if not state["ready"]:
            raise ApiError(503, "not_ready", "the models are still loading", {"Retry-After": "1"})
        return state["finance"]

    async def score(texts: list[str]):
        async def answers(name):
            model = state["models"][name]
            rows = await state["batchers"][name].submit(texts, None)
            return model.decide([r.probs for r in rows], None, [r.context for r in rows])
        try:
            if NER not in state["models"]:
                return await answers(SENTIMENT), None
            sentiment, found = await asyncio.gather(answers(SENTIMENT), answers(NER))  # each model on its own batcher
        except QueueFull:
            raise ApiError(503, "overloaded", "the server is at capacity; retry shortly", {"Retry-After": "1"}) from None
        return sentiment, [a["entities"] for a in found]

    @app.post("/v1/finance/ingest", dependencies=[Depends(authorised)], responses={401: {}, 413: {}, 422: {}, 503: {}})
    async def ingest(body: dict = Body(..., examples=[{"items": [{"text": "Nokia's profit fell 30%.",
                                                                   "timestamp": "2026-03-01T09:30:00Z",
                                                                   "source": "wire"}]}])):
        """Score, attribute and store texts: one item or {"items": [...]}. Each accepted item is in the database
        before this answers (status stored, or duplicate of an earlier text); a bad item is rejected with its
        reason and the others go on. 422 when every item is rejected."""
        app_state = finance()
        raws = body["items"] if set(body) == {"items"} else [body]
        if not isinstance(raws, list) or not raws:
            raise ApiError(422, "invalid_request", "items must be a non-empty list of {text, timestamp?, source?, url?}")
        if len(raws) > config.max_items_per_request:
            raise ApiError(413, "too_many_items", f"{len(raws)} items in one request; at most {config.max_items_per_request}")
        parsed = parse_items(raws, config.max_chars_per_text)
        good = [i for i, p in enumerate(parsed) if not isinstance(p, str)]
        results: list[dict] = [{"index": i, "status": "rejected", "reason": p} for i, p in enumerate(parsed)
                               if isinstance(p, str)]
        app_state.reject(len(results))
        if not good:
            first = results[0]
            return JSONResponse({"error": {"code": "invalid_items", "message": f"items[{first['index']}]: {first['reason']}"},
                                 "results": results}, status_code=422)
        items = [parsed[i] for i in good]
        sentiment, entities = await score([i.text for i in items])
        try:
            stored = await asyncio.to_thread(app_state.commit, items, sentiment, entities)
        except Exception as exc:  # noqa: BLE001 -- nothing was acknowledged: the client may send it again
            raise ApiError(503, "store_unavailable", f"the database did not take these items ({type(exc).__name__}); "
                           "nothing was stored, retry shortly", {"Retry-After": "1"}) from None
        results += [{"index": i, **r} for i, r in zip(good, stored)]
        results.sort(key=lambda r: r["index"])
        counts = {s: sum(r["status"] == s for r in results) for s in ("stored", "duplicate", "rejected")}
        return {**counts, "results": results}

    def window(store, hours: float):
        """The `hours` up to the latest stored text (inclusive)."""
        latest = store.latest_s()
        return (None, None) if latest is None else (int(latest - hours * 3600) + 1, latest + 1)

    @app.get("/v1/finance/index", dependencies=[Depends(authorised)], responses={401: {}, 503: {}})
    async def index(by: str = Query("company", pattern="^(company|sector)$"),
                    bucket: str = Query("hour", pattern="^(minute|hour|day)$"),
                    hours: float = Query(72, gt=0, le=24 * 3650), names: str | None = Query(None, description="Comma-separated.")):
        """The sentiment index: per company (or sector) and bucket, texts, negative texts, share negative, mean score
        (p(positive) - p(negative)), over the `hours` before the latest text."""
        store = finance().store
        since, until = await asyncio.to_thread(window, store, hours)
        rows = [] if since is None else await asyncio.to_thread(
            store.index, by, bucket, since, until, [n.strip() for n in names.split(",")] if names else None)
        return {"by": by, "bucket": bucket, "since_s": since, "until_s": until, "rows": rows}

    @app.get("/v1/finance/movers", dependencies=[Depends(authorised)], responses={401: {}, 503: {}})
    async def movers(hours: float = Query(24, gt=0, le=24 * 365), min_texts: int = Query(3, ge=1),
                     limit: int = Query(10, ge=1, le=1000)):
        """Companies whose mean score moved most: the last `hours` against the 7 days before them."""
        app_state = finance()

        def compute():
            since, until = window(app_state.store, hours)
            if since is None:
                return []
            now, before = app_state.store.totals(since, until), app_state.store.totals(since - 7 * 86400, since)
            out = []
            for company, figures in now.items():
                if figures["texts"] < min_texts:
                    continue
                ref = before.get(company)
                out.append({"company": company, "sector": app_state.watchlist.sector(company), **{k: round(v, 4) for k, v in figures.items()},
                            "score_before": round(ref["score"], 4) if ref else None,
                            "change": round(figures["score"] - ref["score"], 4) if ref else None})
            return sorted(out, key=lambda m: (m["change"] is None, m["change"] if m["change"] is not None else 0))[:limit]
        return {"hours": hours, "movers": await asyncio.to_thread(compute)}

    @app.get("/v1/finance/alerts", dependencies=[Depends(authorised)], responses={401: {}, 503: {}})
    async def list_alerts(limit: int = Query(50, ge=1, le=1000), company: str | None = None):
        """The latest negative-surge alerts (newest first)."""
        return {"alerts": await asyncio.to_thread(finance().store.alerts, limit, company)}

    @app.get("/v1/finance/alerts/{alert_id}", dependencies=[Depends(authorised)], responses={401: {}, 404: {}, 503: {}})
    async def one_alert(alert_id: int):
        """One alert with the texts that caused it (its negative texts first)."""
        found = await asyncio.to_thread(finance().store.alert, alert_id)
        if found is None:
            raise ApiError(404, "unknown_alert", f"no alert {alert_id}")
        return found

    @app.get("/v1/finance/texts", dependencies=[Depends(authorised)], responses={401: {}, 503: {}})
    async def latest_texts(company: str | None = None, limit: int = Query(50, ge=1, le=1000)):
        """The latest texts by timestamp, with their label, score and companies."""
        return {"texts": await asyncio.to_thread(finance().store.texts, company, limit)}

    @app.get("/finance", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        """The finance page: per-company sentiment over time, top movers, latest alerts with their texts."""
        from tunelab.monitor.dashboard import page_html

        return HTMLResponse(page_html(Path(__file__).parent / "finance.html"))
