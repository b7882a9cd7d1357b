"""Answers written by the app's causal LM from the best-matching FAQ entries (retrieval-augmented generation).

The entries go into the system message, the customer's message is the user turn, the model's chat template builds
the prompt, and the server's decoding engine (serve/generation.py) generates greedily, batched with whatever else
it is generating. Entries that do not fit the model's context are left out, the least similar first.
"""

from __future__ import annotations

import time
from contextlib import aclosing

from tunelab.errors import TunelabError


def grounded_messages(message: str, entries: list[tuple[str, str]], instructions: str) -> list[dict]:
    """The chat for one answer: the instructions and the (question, answer) entries, then the customer's message."""
    faq = "\n\n".join(f"FAQ {i}. Question: {q}\nAnswer: {a}" for i, (q, a) in enumerate(entries, 1))
    return [{"role": "system", "content": f"{instructions}\n\n{faq}"}, {"role": "user", "content": message}]


def fitting_prompt(model, message: str, entries: list[tuple[str, str]], settings) -> tuple[str, list[int], int]:
    """The prompt with as many of `entries` as fit the model's context beside `settings.max_tokens` answer tokens
    -> (prompt, its token ids, entries used)."""
    limit = model.info["max_position_embeddings"] - settings.max_tokens
    for used in range(len(entries), 0, -1):
        prompt = model.prompt(grounded_messages(message, entries[:used], settings.instructions))
        ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if len(ids) <= limit:
            return prompt, ids, used
    raise TunelabError(f"the message and one FAQ entry take more than the generator's {limit + settings.max_tokens}-"
                       f"token context beside {settings.max_tokens} answer tokens; lower generation.max_tokens")


async def write_answer(model, prompt_ids: list[int], max_tokens: int):
    """Generate greedily from `prompt_ids` -> the monitor's Answer (its text stripped)."""
    from tunelab.monitor.generations import Answer
    from tunelab.serve.generation import stream_tokens

    started, first, ids, reason = time.perf_counter(), None, [], "stop"
    args = {"prompt": prompt_ids, "max_new_tokens": max_tokens, "eos": model.info["eos"],
            "adapter": model.info.get("adapter")}
    async with aclosing(stream_tokens(model.engine, args)) as tokens:  # leaving early cancels the request
        async for token, finish in tokens:
            if token is None:
                if finish and finish.startswith("error"):
                    raise TunelabError(f"the generator failed: {finish}")
                reason = "length" if finish == "length" else "stop"
                break
            if first is None:
                first = time.perf_counter() - started
            ids.append(token)
    text = model.tokenizer.decode(ids, skip_special_tokens=True).strip()
    return Answer(text, reason, len(ids), first, time.perf_counter() - started)
