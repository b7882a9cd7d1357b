"""What the monitor keeps of a causal LM's answers: the log rows (prompt, completion, token counts, time to first
token, decoding rate, why it ended) and the figures of the live window (time-to-first-token percentiles, tokens/s,
answers cut by max_tokens, failures).

Ids: a response's id is its prefix (chatcmpl-, cmpl-) and 32 hex digits ending in 00; choice i of it is logged
under those digits with the last two replaced by i in hex, so feedback names an answer by the response id
(choice 0) or by `<response id>:<i>`.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import numpy as np

PREFIXES = ("chatcmpl-", "cmpl-")


@dataclass
class Answer:
    """One generated choice, as the API produced it."""

    text: str
    finish_reason: str  # stop | length | error
    completion_tokens: int
    ttft_s: float | None  # from the request to its first token; None: none came
    seconds: float  # from the request to its end


def new_response_digits() -> str:
    return uuid.uuid4().hex[:30] + "00"


def choice_id(digits: str, index: int) -> str:
    return digits[:30] + f"{index:02x}"


def log_id(given: str) -> str:
    """The log row a feedback id names: a response id (its choice 0), `<response id>:<i>`, or a row id as logged."""
    for prefix in PREFIXES:
        if given.startswith(prefix):
            digits, _, index = given[len(prefix):].partition(":")
            if index.isdigit() and len(digits) == 32:
                return choice_id(digits, int(index))
            return digits
    return given


def rows(name: str, endpoint: str, digits: str, prompt: str, prompt_tokens: int, answers: list[Answer],
         created, store_text: bool) -> list[dict]:
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
    out = []
    for i, a in enumerate(answers):
        decode_s = a.seconds - (a.ttft_s or 0.0)
        out.append({"id": choice_id(digits, i), "created_at": created, "model": name, "endpoint": endpoint,
                    "prompt_sha256": digest, "prompt": prompt.replace("\x00", "") if store_text else None,
                    "completion": a.text.replace("\x00", "") if store_text else None, "finish_reason": a.finish_reason,
                    "prompt_tokens": prompt_tokens, "completion_tokens": a.completion_tokens,
                    "ttft_ms": None if a.ttft_s is None else a.ttft_s * 1000, "latency_ms": a.seconds * 1000,
                    "tokens_per_s": (a.completion_tokens - 1) / decode_s if a.completion_tokens > 1 and decode_s > 0 else None})
    return out


def window_figures(window: list[dict]) -> dict:
    """The figures of the last answers (rows as `rows` makes them): what alerts and the dashboard watch."""
    if not window:
        return {}
    ttft = np.array([r["ttft_ms"] for r in window if r["ttft_ms"] is not None])
    rate = np.array([r["tokens_per_s"] for r in window if r["tokens_per_s"] is not None])
    reasons = [r["finish_reason"] for r in window]
    figures = {"generations_window": float(len(window)),
               "completion_tokens_mean": float(np.mean([r["completion_tokens"] for r in window])),
               "prompt_tokens_mean": float(np.mean([r["prompt_tokens"] for r in window])),
               "length_stop_rate": reasons.count("length") / len(reasons),
               "generation_error_rate": reasons.count("error") / len(reasons)}
    if len(ttft):
        figures.update(ttft_p50_ms=float(np.percentile(ttft, 50)), ttft_p95_ms=float(np.percentile(ttft, 95)))
    if len(rate):
        figures["tokens_per_s_p50"] = float(np.percentile(rate, 50))
    return figures
