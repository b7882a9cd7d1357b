"""The OpenAI-compatible API of a causal LM: POST /v1/chat/completions and /v1/completions, streamed as server-sent
events on request, so OpenAI's clients (and the tools built on them) talk to a tunelab model unchanged.

The fields follow OpenAI's: max_tokens (or max_completion_tokens), temperature (default 1, as OpenAI's; 0 is
greedy), top_p, n, stop, seed, stream, stream_options.include_usage (a last chunk with the token counts before
`data: [DONE]`). Text is detokenised incrementally: a piece is sent once it can no longer become the start of a
stop sequence, and never in the middle of a multi-byte character.

With the monitor on, each answer is logged (monitor/generations.py) under the response's id, which
POST /v1/feedback takes with the rating "good" or "bad".
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing
from typing import Literal

from fastapi import Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from tunelab.monitor.generations import Answer, new_response_digits
from tunelab.serve.generation import stream_tokens

MAX_NEW_TOKENS = 4096


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=200_000)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # other OpenAI fields (user, logit_bias, ...) are accepted and unused

    model: str | None = Field(None, description="The model's name (GET /v1/models); optional when one is loaded.")
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS, description="Most tokens to generate (default 256).")
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS, description="The same, by its newer name.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0: greedy; higher: more varied.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Sample from the smallest set of tokens with this much probability.")
    n: int = Field(1, ge=1, le=8, description="Answers to generate.")
    stop: str | list[str] | None = Field(None, description="Up to 4 sequences where the answer ends (not included).")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Seed of the sampling: the same request gives the same answer.")
    stream: bool = Field(False, description="Send the answer as server-sent events as it is generated.")
    stream_options: StreamOptions | None = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s][:4]

    def new_tokens(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 256


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(description="The text to continue (one prompt).")


class _Text:
    """Incremental detokenisation of one answer, cut at the first stop sequence.

    Each new token is decoded with the few before it (from `prefix`), not the whole answer again: the text it adds
    is what the window decodes to beyond what it decoded to without it, once that is whole characters (the
    scheme vLLM and transformers' TextStreamer use; the cost per token stays constant)."""

    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.text = ""
        self.prefix = self.read = 0  # ids[prefix:read] is the context already turned into text
        self.sent = 0
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token: int | None) -> str:
        """The text that can be sent now (all of what is left when `token` is None: the end)."""
        if token is not None:
            self.ids.append(token)
            before = self._decode(self.ids[self.prefix:self.read])
            after = self._decode(self.ids[self.prefix:])
            if len(after) > len(before) and not after.endswith("\ufffd"):  # whole characters only
                self.text += after[len(before):]
                self.prefix, self.read = self.read, len(self.ids)
        text = self.text
        for stop in self.stops:
            at = text.find(stop)
            if at != -1:
                text, self.stopped = text[:at], True
        end = len(text)
        if token is not None and not self.stopped:
            hold = max((len(s) - 1 for s in self.stops), default=0)  # might be the start of a stop sequence
            end = max(self.sent, len(text) - hold)
        piece, self.sent = text[self.sent:end], max(self.sent, end)
        return piece


def response_id(chat: bool, digits: str) -> str:
    """The id of a response as OpenAI's API shapes it; the monitor's log keeps `digits` (feedback names either)."""
    return ("chatcmpl-" if chat else "cmpl-") + digits


def add_routes(app, state: dict, authorised, choose, api_error, metrics) -> None:
    """POST /v1/chat/completions and /v1/completions on `app` (the server's own state, keys and errors)."""

    def model_for(name: str | None):
        chosen = choose(name)
        model = state["models"][chosen]
        if model.engine is None:
            raise api_error(422, "not_generative", f"model '{chosen}' is a {model.info.get('task')} model: use /v1/predict")
        return chosen, model

    def prepare(body: _Sampling, model, prompt_ids: list[int]) -> list[dict]:
        if not prompt_ids:
            raise api_error(422, "invalid_request", "prompt: empty; give the text to continue")
        limit = model.info["max_position_embeddings"]
        if len(prompt_ids) + body.new_tokens() > limit:
            raise api_error(422, "context_length_exceeded",
                            f"the prompt has {len(prompt_ids)} tokens and max_tokens is {body.new_tokens()}: over the "
                            f"model's {limit}-token context; shorten the prompt or lower max_tokens")
        if model.engine.pending.qsize() + model.engine.running >= model.info["max_queue"]:
            raise api_error(503, "overloaded", "the server is at capacity; retry shortly", {"Retry-After": "1"})
        return [{"prompt": prompt_ids, "max_new_tokens": body.new_tokens(), "temperature": body.temperature,
                 "top_p": body.top_p, "seed": None if body.seed is None else body.seed + i, "eos": model.info["eos"],
                 "adapter": model.info.get("adapter")}
                for i in range(body.n)]

    async def answer(model, args: dict, stops: list[str], started: float, on_piece=None) -> Answer:
        """One answer (from the request that arrived at `started`); `on_piece(text)` as text becomes final."""
        text = _Text(model.tokenizer, stops)
        out, reason, ttft = [], "stop", None
        if model.engine.stopping:
            raise api_error(503, "not_ready", "the server is stopping", {"Retry-After": "1"})
        async with aclosing(stream_tokens(model.engine, args)) as tokens:  # leaving early cancels the request
            async for token, finish in tokens:
                if token is not None and len(text.ids) == 0:
                    ttft = time.perf_counter() - started
                    metrics.time_to_first_token.labels(model.name).observe(ttft)
                piece = text.add(token)
                if piece:
                    out.append(piece)
                    if on_piece is not None:
                        await on_piece(piece)
                if token is None:
                    if finish and finish.startswith("error"):
                        raise api_error(500, "generation_failed", finish)
                    reason = "length" if finish == "length" else "stop"
                    break
                if text.stopped:
                    reason = "stop"
                    break
        metrics.tokens_generated.labels(model.name).inc(len(text.ids))
        return Answer("".join(out), reason, len(text.ids), ttft, time.perf_counter() - started)

    def log(name: str, chat: bool, digits: str, prompt: str, prompt_ids: list[int], answers: list[Answer]):
        """The answers into the monitor's log -> with durability: sync, the Future of their commit."""
        monitor = state["monitor"]
        if monitor is None:
            return None
        return monitor.record_generation(name, "chat" if chat else "completion", digits, prompt, len(prompt_ids), answers)

    async def respond(body: _Sampling, model, name: str, prompt: str, prompt_ids: list[int], chat: bool):
        started = time.perf_counter()
        requests = prepare(body, model, prompt_ids)
        stops = body.stops()
        digits = new_response_digits()
        created, rid = int(time.time()), response_id(chat, digits)
        kind = "chat.completion" if chat else "text_completion"
        if not body.stream:
            tasks = [asyncio.create_task(answer(model, r, stops, started)) for r in requests]
            try:
                results = await asyncio.gather(*tasks)
            except Exception as exc:
                if getattr(exc, "code", None) == "generation_failed":  # the model failed: the log counts it
                    log(name, chat, digits, prompt, prompt_ids, [Answer("", "error", 0, None, time.perf_counter() - started)])
                raise
            finally:  # one failed (or the client left): the others leave the batch too
                for t in tasks:
                    t.cancel()
            await _logged(log(name, chat, digits, prompt, prompt_ids, results))
            choices = [({"index": i, "message": {"role": "assistant", "content": a.text}, "finish_reason": a.finish_reason}
                        if chat else {"index": i, "text": a.text, "finish_reason": a.finish_reason, "logprobs": None})
                       for i, a in enumerate(results)]
            used = sum(a.completion_tokens for a in results)
            return {"id": rid, "object": kind, "created": created, "model": name, "choices": choices,
                    "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": used, "total_tokens": len(prompt_ids) + used}}
        return StreamingResponse(_events(body, model, name, prompt, prompt_ids, chat, requests, stops, digits, created, started),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _logged(written) -> None:
        """With durability: sync, wait until the answers are committed (or say they are not)."""
        if written is None:
            return
        try:
            await asyncio.wrap_future(written)
        except Exception as exc:  # noqa: BLE001 -- whatever the database said, these answers are not logged
            raise api_error(503, "log_unavailable", "the monitor's log did not take this request's answers "
                            f"({type(exc).__name__}); retry shortly", {"Retry-After": "1"}) from None

    async def _events(body, model, name, prompt, prompt_ids, chat, requests, stops, digits, created, started):
        rid = response_id(chat, digits)
        kind = "chat.completion.chunk" if chat else "text_completion"
        chunks: asyncio.Queue = asyncio.Queue()

        def chunk(index: int, piece: str | None, reason: str | None = None, first: bool = False) -> str:
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({"content": piece} if piece is not None else {})
                choice = {"index": index, "delta": delta, "finish_reason": reason}
            else:
                choice = {"index": index, "text": piece or "", "finish_reason": reason, "logprobs": None}
            return _sse({"id": rid, "object": kind, "created": created, "model": name, "choices": [choice]})

        async def run(index: int, args: dict):
            async def on_piece(piece: str):
                chunks.put_nowait(chunk(index, piece))
            try:
                done = await answer(model, args, stops, started, on_piece)
                chunks.put_nowait(chunk(index, None, done.finish_reason))
                return done
            except Exception as exc:  # noqa: BLE001 -- a stream cannot change its status any more: say it in-band
                chunks.put_nowait(_sse({"error": {"code": "generation_failed", "message": str(getattr(exc, "message", exc))}}))
                return Answer("", "error", 0, None, time.perf_counter() - started)
            finally:
                chunks.put_nowait(None)  # this answer is over

        if chat:
            for i in range(len(requests)):
                yield chunk(i, None, first=True)
        tasks = [asyncio.create_task(run(i, r)) for i, r in enumerate(requests)]
        try:
            running = len(tasks)
            while running:  # one awaited get per chunk: no task or wait set per token
                item = await chunks.get()
                if item is None:
                    running -= 1
                else:
                    yield item
            answers = [t.result() for t in tasks]
            try:
                await _logged(log(name, chat, digits, prompt, prompt_ids, answers))
            except Exception as exc:  # noqa: BLE001 -- in-band, as any failure once the stream has begun
                yield _sse({"error": {"code": "log_unavailable", "message": str(getattr(exc, "message", exc))}})
            if body.stream_options is not None and body.stream_options.include_usage:
                used = sum(a.completion_tokens for a in answers)
                yield _sse({"id": rid, "object": kind, "created": created, "model": name, "choices": [],
                            "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": used,
                                      "total_tokens": len(prompt_ids) + used}})
            yield "data: [DONE]\n\n"
        finally:
            for t in tasks:  # a client that went away: its requests leave the batch at the next step
                t.cancel()

    @app.post("/v1/chat/completions", dependencies=[Depends(authorised)],
              responses={401: {}, 404: {}, 422: {}, 500: {}, 503: {}})
    async def chat_completions(body: ChatCompletionRequest):
        """An assistant's answer to a conversation (OpenAI's chat completions), through the model's chat template."""
        name, model = model_for(body.model)
        messages = [m.model_dump() for m in body.messages]
        prompt = model.prompt(messages)
        return await respond(body, model, name, prompt, model.tokenizer(prompt, add_special_tokens=False)["input_ids"], True)

    @app.post("/v1/completions", dependencies=[Depends(authorised)],
              responses={401: {}, 404: {}, 422: {}, 500: {}, 503: {}})
    async def completions(body: CompletionRequest):
        """The continuation of a text, as it is (no chat template)."""
        name, model = model_for(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise api_error(422, "invalid_request", "prompt: one prompt per request (send several requests; they are batched)")
        return await respond(body, model, name, prompts[0], model.tokenizer(prompts[0])["input_ids"], False)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
