"""The causal LM's server: tokens per second with concurrent clients against one `generate()` at a time, time to
first token, memory.

On the demo LLM run (examples/demo_llm.yaml: LoRA on the default LLM, SmolLM2-135M-Instruct, trained here if
absent), the user questions of data/demo/llm_test.jsonl after the run's system prompt (sent by the clients, so
that every server reads the same prompt), greedy, at most 64 new tokens each:
  sequential   in-process, the same merged model, one `model.generate()` per question (16 of the c8 questions)
  c1           `tunelab serve` (continuous batching), one streaming client over the last 7 questions: time to first
               token, tokens/s
  c8           the same server, then 8 streaming clients at once over the first 32 questions, once each: total
               tokens/s. Every server is started afresh for its turn: the 8 clients' prompts are new to it (they
               share the chat template and the system prompt, with one another and with the one client's)
  peers        `transformers serve` (transformers' own OpenAI-compatible server, its [serving] extra) on the run's
               merged folder (`tunelab export RUN --merge`), fp32 on the CPU, the same c1 and c8 clients: as it
               starts by default (one generate() per request) and with `--continuous-batching`
  bf16         c8 only: `tunelab serve --precision bf16` against `transformers serve --continuous-batching --dtype
               bfloat16` (serve_bf16_*, transformers_serve_cb_bf16_*)
  no store     c8 only: `tunelab serve` with `prefix_cache_mb: 0`, every prompt read whole (the clients' prompts all
               begin with the chat template and the system prompt: serve_c8_tokens_per_second_no_prefix_cache)
ROUNDS interleaved rounds; medians. Figures (results/llm.json): serve_c8_tokens_per_second_ratio_vs_sequential
(target >= 3), serve_c8_tokens_per_second_ratio_vs_transformers_serve (target >= 2, against the faster of its two
modes), serve_c1_ttft_ms_p50, serve_c1_tokens_per_second, serve_c8_tokens_per_second, sequential_tokens_per_second,
transformers_serve_*, answers_identical_vs_transformers_serve (greedy answers to the questions, the same text from
both servers: the comparison is of the same work), serve_peak_rss_mb (the largest of the rounds).

    .venv/bin/python benchmarks/llm.py          # about 30 minutes on 2 cores, plus the demo training when absent
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from pathlib import Path

import yaml

from _common import REPO, WORK, start_server, status_mb, stop_server, write_results

ROUNDS, NEW_TOKENS, CLIENTS, C8_QUESTIONS = 3, 64, 8, 32
SYSTEM_PROMPT = yaml.safe_load((REPO / "examples" / "demo_llm.yaml").read_text())["task"]["system_prompt"]


def demo_run():
    from tunelab.config import load_config
    from tunelab.training import train

    config = load_config(REPO / "examples" / "demo_llm.yaml", [f"runs_dir={WORK / 'runs'}"])
    if not (config.run_dir / "result.json").exists():
        train(config, overwrite=True, quiet=True)
    return config.run_dir


def questions() -> tuple[list[str], list[str]]:
    """(the one client's questions, the 8 clients' questions): disjoint, so that no prompt of the 8 clients was
    read by the server before (what they share is the chat template and the system prompt)."""
    rows = [json.loads(line) for line in (REPO / "data" / "demo" / "llm_test.jsonl").read_text().splitlines()]
    asked = [r["messages"][0]["content"] for r in rows]
    return asked[C8_QUESTIONS:], asked[:C8_QUESTIONS]


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
    """One streamed chat completion: time to first content, completion tokens (the server's usage chunk), the
    answer, total time."""
    import httpx

    # the run's system prompt, sent: tunelab would add it, `transformers serve` would put its template's default
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    body = {"messages": messages, "temperature": 0, "max_tokens": NEW_TOKENS,
            "stream": True, "stream_options": {"include_usage": True}}
    started, first, used, text = time.perf_counter(), None, 0, []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                used = event["usage"]["completion_tokens"]
            elif event["choices"] and event["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter() - started
                text.append(event["choices"][0]["delta"]["content"])
    return {"ttft": first, "tokens": used, "text": "".join(text), "seconds": time.perf_counter() - started}


def one_client(url: str, asked: list[str]) -> dict:
    started = time.perf_counter()
    answers = [ask(url, q) for q in asked]
    seconds = time.perf_counter() - started
    return {"ttft_ms_p50": 1000 * statistics.median(a["ttft"] for a in answers if a["ttft"] is not None),
            "tokens_per_second": sum(a["tokens"] for a in answers) / seconds}


def many_clients(url: str, asked: list[str]) -> dict:
    work = list(asked)
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


def merged_folder(run_dir):
    """The run as a plain transformers folder (LoRA merged), which `transformers serve` loads."""
    from tunelab.export import merge_run

    folder = run_dir / "export" / "merged"
    if not (folder / "config.json").exists():
        merge_run(run_dir)
    return folder


PEERS = {"transformers_serve": [], "transformers_serve_cb": ["--continuous-batching"]}  # key -> its flags (fp32)
BF16_PEER = "transformers_serve_cb_bf16"  # `--continuous-batching --dtype bfloat16`, beside `tunelab serve --precision bf16`


def start_peer(folder, flags: list[str], dtype: str = "float32"):
    """`transformers serve` on the merged folder on the CPU. Started for its own measurement and stopped after it:
    with --continuous-batching it keeps a process busy (and ~14 GB of cache) even when idle."""
    return start_server([str(Path(sys.executable).parent / "transformers"), "serve", str(folder), "--host", "127.0.0.1",
                         "--device", "cpu", "--dtype", dtype, "--log-level", "warning", *flags], "/health",
                        {"HF_HUB_OFFLINE": "1"})


def turn(server: tuple, asked: tuple[list[str], list[str]], key: str, answers: dict | None, c1: bool = True) -> dict:
    """One server (process, url) warmed up, measured (its greedy answers to the first questions of the one
    client into `answers`, when given) and stopped; its peak memory under `{key}_peak_mb`."""
    proc, url = server
    try:
        ask(url, asked[0][0])  # warm-up
        if answers is not None:
            answers[key] = [ask(url, q)["text"] for q in asked[0][:4]]
        return {**measure(url, asked, key, c1), f"{key}_peak_mb": status_mb("VmHWM", proc.pid)}
    finally:
        stop_server(proc)


def tunelab_server(run_dir, *flags: str) -> tuple:
    """`tunelab serve` on the run, started afresh for each turn: an empty prefix store."""
    return start_server([sys.executable, "-m", "tunelab", "serve", str(run_dir), "--no-monitor", *flags], "/readyz")


def measure(url: str, asked: tuple[list[str], list[str]], key: str, c1: bool = True) -> dict:
    """c1 and c8 figures under `key` (c8 only without `c1`)."""
    one = one_client(url, asked[0]) if c1 else None
    c8 = many_clients(url, asked[1])
    return {**({f"{key}_c1_tps": one["tokens_per_second"], f"{key}_c1_ttft": one["ttft_ms_p50"]} if one else {}),
            f"{key}_c8_tps": c8["tokens_per_second"], f"{key}_c8_ttft": c8["ttft_ms_p50"]}


def main() -> None:
    run_dir = demo_run()
    asked = questions()
    folder = merged_folder(run_dir)
    no_store = WORK / "serve-no-prefix-cache.yaml"
    no_store.write_text("prefix_cache_mb: 0\n")
    rounds, answers = [], {}
    for r in range(ROUNDS):
        first = answers if r == 0 else None
        row = {"sequential": sequential(run_dir, asked[1][:16])["tokens_per_second"],
               **turn(tunelab_server(run_dir), asked, "tunelab", first),
               **turn(tunelab_server(run_dir, "--config", str(no_store)), asked, "tunelab_no_prefix_cache", None, c1=False),
               **turn(tunelab_server(run_dir, "--precision", "bf16"), asked, "tunelab_bf16", first, c1=False),
               **turn(start_peer(folder, ["--continuous-batching"], "bfloat16"), asked, BF16_PEER, first, c1=False)}
        for key, flags in PEERS.items():
            row.update(turn(start_peer(folder, flags), asked, key, first))
        rounds.append(row)
        print(f"round {r + 1}: {row}", file=sys.stderr, flush=True)
    peak = max(row["tunelab_peak_mb"] for row in rounds)

    for key in PEERS:
        for ours, theirs in zip(answers["tunelab"], answers[key]):
            if ours != theirs:
                print(f"answers differ ({key}):\n  tunelab: {ours!r}\n  {key}: {theirs!r}", file=sys.stderr)

    def med(key):
        return round(statistics.median(x[key] for x in rounds), 2)
    peer = max(PEERS, key=lambda k: med(f"{k}_c8_tps"))
    figures = {
        "serve_model": "examples/demo_llm.yaml (LoRA merged into SmolLM2-135M-Instruct), fp32",
        "questions_c1": len(asked[0]), "questions_c8": len(asked[1]), "max_new_tokens": NEW_TOKENS, "rounds": ROUNDS,
        "sequential_tokens_per_second": med("sequential"),
        "serve_c1_tokens_per_second": med("tunelab_c1_tps"), "serve_c1_ttft_ms_p50": med("tunelab_c1_ttft"),
        "serve_c8_tokens_per_second": med("tunelab_c8_tps"), "serve_c8_ttft_ms_p50": med("tunelab_c8_ttft"),
        "serve_c8_tokens_per_second_ratio_vs_sequential": round(med("tunelab_c8_tps") / med("sequential"), 2),
        "serve_c8_tokens_per_second_ratio_vs_transformers_serve": round(med("tunelab_c8_tps") / med(f"{peer}_c8_tps"), 2),
        "transformers_serve_compared_mode": " ".join(["transformers serve", *PEERS[peer]]),
        "answers_identical_vs_transformers_serve": sum(a == b for k in PEERS for a, b in zip(answers["tunelab"], answers[k])),
        "answers_compared": len(PEERS) * len(answers["tunelab"]),
        "serve_peak_rss_mb": round(peak, 1),
        "serve_c8_tokens_per_second_no_prefix_cache": med("tunelab_no_prefix_cache_c8_tps"),
        "serve_c8_no_prefix_cache_ratio_vs_transformers_serve": round(
            med("tunelab_no_prefix_cache_c8_tps") / med(f"{peer}_c8_tps"), 2),
        "serve_bf16_c8_tokens_per_second": med("tunelab_bf16_c8_tps"),
        f"{BF16_PEER}_c8_tokens_per_second": med(f"{BF16_PEER}_c8_tps"),
        "serve_bf16_c8_tokens_per_second_ratio_vs_transformers_serve_bf16": round(
            med("tunelab_bf16_c8_tps") / med(f"{BF16_PEER}_c8_tps"), 2),
        "serve_bf16_c8_tokens_per_second_ratio_vs_transformers_serve": round(
            med("tunelab_bf16_c8_tps") / med(f"{peer}_c8_tps"), 2),
        "answers_identical_bf16_vs_transformers_serve_bf16": sum(
            a == b for a, b in zip(answers["tunelab_bf16"], answers[BF16_PEER])),
        "answers_identical_bf16_vs_fp32": sum(a == b for a, b in zip(answers["tunelab_bf16"], answers["tunelab"])),
    }
    for key in PEERS:
        figures.update({f"{key}_c1_tokens_per_second": med(f"{key}_c1_tps"), f"{key}_c1_ttft_ms_p50": med(f"{key}_c1_ttft"),
                        f"{key}_c8_tokens_per_second": med(f"{key}_c8_tps"), f"{key}_c8_ttft_ms_p50": med(f"{key}_c8_ttft")})
    write_results("llm", figures)


if __name__ == "__main__":
    main()
