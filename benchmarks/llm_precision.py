"""A causal LM's decoding in fp32 and in bf16 weights (`tunelab serve --precision bf16`), each with its linear layers
on weights packed for oneDNN (as the server runs them, serve/packed_linear.py) and as plain nn.Linear, side by side.

The server's continuous-batching engine (tunelab/serve/generation.py) called in-process, without HTTP, on the
default LLM (SmolLM2-135M-Instruct) and the 39 user questions of data/demo/llm_test.jsonl through its chat
template: CLIENTS requests at a time (a finished one is replaced at once by the next), ROUNDS passes over the
questions, at most 64 new tokens each, greedy; the four models take turns, the order reversed every other round,
medians. Keys: engine_c8_tokens_per_second_<fp32|bf16>[_unpacked], packed_vs_unpacked_tokens_per_second_ratio_*,
packed_answers_identical_to_unpacked_*. Also: how many
greedy answers bf16 gives identical to fp32 (bf16 rounds every weight to 8 bits of mantissa), and the share of
fp32's answer tokens bf16 repeats before it first differs.

    .venv/bin/python benchmarks/llm_precision.py      # about 8 minutes
"""

from __future__ import annotations

import json
import statistics
import threading
import time

import torch

from _common import REPO, write_results

CLIENTS, ROUNDS, NEW_TOKENS = 8, 3, 64


def prompts(tokenizer) -> list[list[int]]:
    rows = [json.loads(line) for line in (REPO / "data" / "demo" / "llm_test.jsonl").read_text().splitlines() if line.strip()]
    return [tokenizer.apply_chat_template([m for m in row["messages"] if m["role"] != "assistant"],
                                          add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            for row in rows]


def decode_all(model, eos: int, questions: list[list[int]]) -> tuple[float, list[list[int]]]:
    """(generated tokens per second, the answers) with CLIENTS requests running at once."""
    from tunelab.serve.generation import Engine, Request

    engine = Engine(model, max_batch=16)
    engine.start()
    answers: list[list[int]] = [[] for _ in questions]
    finished = threading.Semaphore(0)
    lock, taken = threading.Lock(), [0]

    def submit() -> None:
        with lock:
            i, taken[0] = taken[0], taken[0] + 1
        if i >= len(questions):
            return

        def emit(token, reason):
            if token is not None:
                answers[i].append(token)
            else:
                finished.release()
                submit()
        engine.submit(Request(questions[i], NEW_TOKENS, emit, eos=(eos,)))
    began = time.perf_counter()
    for _ in range(CLIENTS):
        submit()
    for _ in questions:
        finished.acquire()
    seconds = time.perf_counter() - began
    engine.stop()
    return sum(map(len, answers)) / seconds, answers


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.models.default_llm import default_llm_dir

    folder = default_llm_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    questions = prompts(tokenizer)
    from tunelab.serve.packed_linear import pack_linears

    from tunelab.threads import on_passing_thread

    def load(dtype, packed: bool):  # on a passing thread, as the server loads: the engine's thread decodes at full speed
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        assert not packed or pack_linears(model) > 0, "oneDNN packing is not available on this machine"
        return model
    models = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        models[f"{precision}_unpacked"] = on_passing_thread(load, dtype, False)
        models[precision] = on_passing_thread(load, dtype, True)
    rates: dict[str, list[float]] = {name: [] for name in models}
    answers = {}
    for i in range(ROUNDS):
        for name in (list(models) if i % 2 == 0 else list(models)[::-1]):
            rate, answers[name] = decode_all(models[name], tokenizer.eos_token_id, questions)
            rates[name].append(round(rate, 1))
            print(f"round {i + 1} {name}: {rate:.1f} tokens/s", flush=True)
    figures = {}
    for name in models:
        figures[f"engine_c8_tokens_per_second_{name}"] = statistics.median(rates[name])
        figures[f"engine_c8_tokens_per_second_{name}_rounds"] = rates[name]
    figures["bf16_vs_fp32_tokens_per_second_ratio"] = round(figures["engine_c8_tokens_per_second_bf16"]
                                                            / figures["engine_c8_tokens_per_second_fp32"], 2)
    figures["bf16_answers_identical_to_fp32"] = sum(a == b for a, b in zip(answers["fp32"], answers["bf16"]))
    figures["answers"] = len(questions)
    figures["bf16_tokens_before_first_difference_mean_share"] = round(statistics.mean(
        next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) / max(len(a), 1)
        for a, b in zip(answers["fp32"], answers["bf16"])), 3)
    for precision in ("fp32", "bf16"):
        figures[f"packed_vs_unpacked_tokens_per_second_ratio_{precision}"] = round(
            figures[f"engine_c8_tokens_per_second_{precision}"] / figures[f"engine_c8_tokens_per_second_{precision}_unpacked"], 2)
        figures[f"packed_answers_identical_to_unpacked_{precision}"] = sum(
            a == b for a, b in zip(answers[precision], answers[f"{precision}_unpacked"]))
    write_results("llm_precision", figures)


if __name__ == "__main__":
    main()
