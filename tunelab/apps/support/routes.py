"""The support app's HTTP routes, added to tunelab's server (`tunelab serve --app support.yaml`):

    POST /v1/support/answer                     {message, conversation_id?} -> the FAQ answer with its sources and
                                                confidence, or a hand-off with the candidates; the intent
    GET  /v1/support/conversations/{id}         a conversation's exchanges, oldest first (for the person taking over)
    GET  /v1/support/stats                      exchanges and hand-offs so far
    GET  /support                               the chat page

Each answer is logged by the monitor as a prediction of the `support-faq` model (and of `support-intent`): POST
/v1/feedback with the answer's id and the right entry's id gives live accuracy on the dashboard. With a generator
(a causal-LM run), the answer is written by it from the best entries (`generated`), logged as a generation of
`support-llm`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from tunelab.apps.support.build import FAQ, INTENT, LLM, MODELS, served_models  # noqa: F401 -- the app's interface
from tunelab.apps.support.serving import app_models  # noqa: F401 -- the app's interface
from tunelab.data.clean import clean_text

LOGGED = (FAQ, INTENT)  # the monitor logs these answers as predictions: their batchers keep the drift embeddings
PAGE = "/support"  # the app's page, named when the server starts


class AnswerRequest(BaseModel):
    message: str = Field(min_length=1, description="The customer's message.",
                         examples=["How do I delete my Facebook account?"])
    conversation_id: str | None = Field(None, max_length=200, description="Groups the exchanges of one conversation; "
                                        "a new one is made when absent.")
    generate: bool = Field(True, description="With the app's generator: write the answer from the best entries "
                           "(false: the best entry's answer as it is).")


def start(state: dict, config, metrics) -> None:
    import json

    from tunelab.apps.support.exchanges import ExchangeStore
    from tunelab.apps.support.matcher import FAQ_FILE

    faq = json.loads((config.app_dir / "faq" / FAQ_FILE).read_text(encoding="utf-8"))  # what the index was built from
    state["support_faq"] = {entry: (question, answer) for entry, question, answer in
                            zip(faq["ids"], faq["questions"], faq["answers"])}
    state["support"] = ExchangeStore(config.database_url())


def stop(state: dict) -> None:
    if state.get("support") is not None:
        state["support"].close()


def add_routes(app: FastAPI, state: dict, config, authorised, ApiError, metrics) -> None:
    from prometheus_client import Counter

    from tunelab.serve.batcher import QueueFull

    metrics.support_answers = Counter("tunelab_support_answers", "Support answers by outcome (answered, handed_off)",
                                      ["outcome"], registry=metrics.registry)

    def store():
        if not state["ready"]:
            raise ApiError(503, "not_ready", "the models are still loading", {"Retry-After": "1"})
        return state["support"]

    async def run(name: str, message: str):
        rows = await state["batchers"][name].submit([message], None)
        return rows, state["models"][name].decide([r.probs for r in rows], None, [r.context for r in rows])

    @app.post("/v1/support/answer", dependencies=[Depends(authorised)], responses={401: {}, 422: {}, 503: {}})
    async def answer(body: AnswerRequest) -> dict:
        """The FAQ entry that answers the message, with its sources and confidence; below the app's threshold the
        message is handed to an agent (`handed_off`), with the candidates. The intent, when the app has an intent
        model. `id` is the key for feedback (POST /v1/feedback with the right entry's id as `label`)."""
        started = time.perf_counter()
        exchanges = store()
        message = clean_text(body.message)  # as the build cleaned the questions it trained and calibrated on
        if not message:
            raise ApiError(422, "invalid_request", "message: is only whitespace")
        if len(message) > config.max_chars:
            raise ApiError(422, "message_too_long", f"message: {len(message)} characters; at most {config.max_chars}")
        with_intent = INTENT in state["models"]
        try:
            done = await asyncio.gather(run(FAQ, message), *([run(INTENT, message)] if with_intent else []))
        except QueueFull:
            raise ApiError(503, "overloaded", "the server is at capacity; retry shortly", {"Retry-After": "1"}) from None
        (faq_rows, (found,)) = done[0]
        seconds = time.perf_counter() - started
        monitor, written = state["monitor"], []
        exchange_id = uuid.uuid4().hex
        if monitor:
            (exchange_id,), future = monitor.record(FAQ, [message], faq_rows, [found], seconds)
            written.append(future)
        intent = None
        if with_intent:
            intent_rows, (guess,) = done[1]
            intent = {"label": guess["label"], "score": round(guess["score"], 4)}
            if monitor:
                (intent["id"],), future = monitor.record(INTENT, [message], intent_rows, [guess], seconds)
                written.append(future)
        await committed(written)
        entries = state["support_faq"]
        sources = [{"faq_id": c["label"], "question": entries[c["label"]][0], "score": round(c["score"], 4)}
                   for c in found["top_k"]]
        handed_off = found["handed_off"]
        reply = None if handed_off else entries[found["label"]][1]
        generated = not handed_off and body.generate and LLM in state["models"]
        if generated:
            reply = await grounded_reply(message, [c["label"] for c in found["top_k"]], sources)
        conversation = body.conversation_id or uuid.uuid4().hex
        try:
            await asyncio.to_thread(exchanges.add, {
                "id": exchange_id, "conversation_id": conversation, "message": message, "faq_id": found["label"],
                "confidence": found["score"], "handed_off": handed_off, "intent": intent and intent["label"],
                "answer": reply, "generated": generated})
        except Exception as exc:  # noqa: BLE001 -- the answer is not given unless the exchange is kept
            raise ApiError(503, "store_unavailable", f"the database did not take this exchange ({type(exc).__name__}); "
                           "retry shortly", {"Retry-After": "1"}) from None
        metrics.support_answers.labels("handed_off" if handed_off else "answered").inc()
        return {"id": exchange_id, "conversation_id": conversation, "handed_off": handed_off, "answer": reply,
                "generated": generated, "faq_id": None if handed_off else found["label"],
                "confidence": round(found["score"], 4), "similarity": round(found["similarity"], 4),
                "sources": sources, "intent": intent}

    async def committed(futures) -> None:
        """With serve.monitor.durability: sync, the answer waits until the log has committed it."""
        try:
            for future in futures:
                if future is not None:
                    await asyncio.wrap_future(future)
        except Exception as exc:  # noqa: BLE001 -- whatever the database said, this answer is not logged
            raise ApiError(503, "log_unavailable", "the monitor's log did not take this answer "
                           f"({type(exc).__name__}); retry shortly", {"Retry-After": "1"}) from None

    async def grounded_reply(message: str, best: list[str], sources: list[dict]) -> str:
        """The generator's answer from the best entries; the sources it was given are marked `used`."""
        from tunelab.apps.support.generate import fitting_prompt, write_answer
        from tunelab.errors import TunelabError
        from tunelab.serve.generation import EngineStopped
        from tunelab.monitor.generations import new_response_digits

        model, settings = state["models"][LLM], config.generation
        entries = state["support_faq"]
        try:
            prompt, ids, used = await asyncio.to_thread(
                fitting_prompt, model, message, [entries[e] for e in best[: settings.sources]], settings)
        except TunelabError as exc:
            raise ApiError(422, "context_length_exceeded", str(exc)) from None
        if model.engine.pending.qsize() + model.engine.running >= model.info["max_queue"]:
            raise ApiError(503, "overloaded", "the server is at capacity; retry shortly", {"Retry-After": "1"})
        try:
            written = await write_answer(model, ids, settings.max_tokens)
        except EngineStopped:
            raise ApiError(503, "not_ready", "the server is stopping", {"Retry-After": "1"}) from None
        except TunelabError as exc:
            raise ApiError(500, "generation_failed", str(exc)) from None
        metrics.tokens_generated.labels(LLM).inc(written.completion_tokens)
        if written.ttft_s is not None:
            metrics.time_to_first_token.labels(LLM).observe(written.ttft_s)
        if state["monitor"] is not None:
            await committed([state["monitor"].record_generation(LLM, "support", new_response_digits(), prompt,
                                                                len(ids), [written])])
        for i, source in enumerate(sources):
            source["used"] = i < used
        return written.text

    @app.get("/v1/support/conversations/{conversation_id}", dependencies=[Depends(authorised)],
             responses={401: {}, 404: {}, 503: {}})
    async def conversation(conversation_id: str) -> dict:
        """A conversation's exchanges, oldest first: what a person taking over sees."""
        found = await asyncio.to_thread(store().conversation, conversation_id)
        if not found:
            raise ApiError(404, "unknown_conversation", f"no conversation '{conversation_id}'")
        return {"conversation_id": conversation_id, "exchanges": found}

    @app.get("/v1/support/stats", dependencies=[Depends(authorised)], responses={401: {}, 503: {}})
    async def stats() -> dict:
        """Exchanges so far, and how many were handed off."""
        return await asyncio.to_thread(store().totals)

    @app.get("/support", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        """The chat page: type a question, see the answer, its sources, or the hand-off."""
        from tunelab.monitor.dashboard import page_html

        return HTMLResponse(page_html(Path(__file__).parent / "support.html"))
