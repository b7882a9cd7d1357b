"""The causal LM's server: tokens per second with concurrent clients against one `generate()` at a time, time to
first token, memory.

On the demo LLM run (examples/demo_llm.yaml: LoRA on the default LLM, SmolLM2-135M-Instruct, trained here if
absent), the user questions of data/demo/llm_test.jsonl, greedy, at most 64 new tokens each:
  sequential   in-process, the same merged model, one `model.generate()` per question, one after the other
  c1           `tunelab serve` (continuous batching), one streaming client: time to first token, tokens/s
  c8           the same server, 8 streaming clients at once over the questions twice over: total tokens/s
ROUNDS interleaved rounds; medians. Figures (results/llm.json): serve_c8_tokens_per_second_ratio_vs_sequential
(target >= 3), serve_c1_ttft_ms_p50, serve_c1_tokens_per_second, serve_c8_tokens_per_second,
sequential_tokens_per_second, serve_peak_rss_mb.

    .venv/bin/python benchmarks/llm.py          # about 6 minutes on 2 cores (the demo training included)
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time

from _common import REPO, WORK, start_server, status_mb, stop_server, write_results

ROUNDS, NEW_TOKENS, CLIENTS = 3, 64, 8


def demo_run():
    from tunelab.config import load_config
    from tunelab.training import train

    config = load_config(REPO / "examples" / "demo_llm.yaml", [f"runs_dir={WORK / 'runs'}"])
    if not (config.run_dir / "result.json").exists():
        train(config, overwrite=True, quiet=True)
    return config.run_dir


def questions() -> list[str]:
    rows = [json.loads(line) for line in (REPO / "data" / "demo" / "llm_test.jsonl").read_text().splitlines()]
    return [r["messages"][0]["content"] for r in rows][:16]


def sequential(run_dir, asked: list[str]) -> dict:
    import torch

    from tunelab.models.generate import Generator

    generator = Generator(run_dir)
    model = generator.model.merge_and_unload().eval()
    prompts = [generator.tokenizer(generator.prompt([{"role": "user", "content": q}]), add_special_tokens=False,
                                   return_tensors="pt") for q in asked]
    tokens, started = 0, time.perf_counter()
    with torch.inference_mode():
        for p in prompts:
            out = model.generate(input_ids=p["input_ids"], attention_mask=p["attention_mask"], max_new_tokens=NEW_TOKENS,
                                 do_sample=False, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=generator.tokenizer.pad_token_id)
            tokens += out.shape[1] - p["input_ids"].shape[1]
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}


def ask(url: str, question: str) -> dict:
    """One streamed chat completion: time to first content, completion tokens, total time."""
    import httpx

    body = {"messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": NEW_TOKENS,
            "stream": True, "stream_options": {"include_usage": True}}
    started, first, used = time.perf_counter(), None, 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                used = event["usage"]["completion_tokens"]
            elif first is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
    return {"ttft": first, "tokens": used, "seconds": time.perf_counter() - started}


def one_client(url: str, asked: list[str]) -> dict:
    started = time.perf_counter()
    answers = [ask(url, q) for q in asked]
    seconds = time.perf_counter() - started
    return {"ttft_ms_p50": 1000 * statistics.median(a["ttft"] for a in answers if a["ttft"] is not None),
            "tokens_per_second": sum(a["tokens"] for a in answers) / seconds}


def many_clients(url: str, asked: list[str]) -> dict:
    work = list(asked) * 2
    lock, answers = threading.Lock(), []

    def client():
        while True:
            with lock:
                if not work:
                    return
                q = work.pop()
            a = ask(url, q)
            with lock:
                answers.append(a)
    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    return {"tokens_per_second": sum(a["tokens"] for a in answers) / seconds,
            "ttft_ms_p50": 1000 * statistics.median(a["ttft"] for a in answers if a["ttft"] is not None)}


def main() -> None:
    run_dir = demo_run()
    asked = questions()
    proc, url = start_server([sys.executable, "-m", "tunelab", "serve", str(run_dir), "--no-monitor"], "/readyz")
    rounds = []
    try:
        ask(url, asked[0])  # warm-up
        for r in range(ROUNDS):
            seq = sequential(run_dir, asked)
            c1 = one_client(url, asked)
            c8 = many_clients(url, asked)
            rounds.append({"sequential": seq["tokens_per_second"], "c1_tps": c1["tokens_per_second"],
                           "c1_ttft": c1["ttft_ms_p50"], "c8_tps": c8["tokens_per_second"], "c8_ttft": c8["ttft_ms_p50"]})
            print(f"round {r + 1}: {rounds[-1]}", file=sys.stderr, flush=True)
        peak = status_mb("VmHWM", proc.pid)
    finally:
        stop_server(proc)

    def med(key):
        return round(statistics.median(x[key] for x in rounds), 2)
    write_results("llm", {
        "serve_model": "examples/demo_llm.yaml (LoRA merged into SmolLM2-135M-Instruct), fp32",
        "questions": len(asked), "max_new_tokens": NEW_TOKENS, "rounds": ROUNDS,
        "sequential_tokens_per_second": med("sequential"),
        "serve_c1_tokens_per_second": med("c1_tps"), "serve_c1_ttft_ms_p50": med("c1_ttft"),
        "serve_c8_tokens_per_second": med("c8_tps"), "serve_c8_ttft_ms_p50": med("c8_ttft"),
        "serve_c8_tokens_per_second_ratio_vs_sequential": round(med("c8_tps") / med("sequential"), 2),
        "serve_peak_rss_mb": round(peak, 1),
    })


if __name__ == "__main__":
    main()
