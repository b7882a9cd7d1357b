"""Decoding on a thread of its own, the model loaded on the main thread or on a passing thread (tunelab/threads.py).

torch's OpenMP (libgomp) keeps a team of worker threads for every thread that ran parallel code while that thread
lives; with more of them than cores, a worker that finished its part sleeps at once instead of spinning for the next
one. The server's engine decodes on a thread of its own; here the default LLM (SmolLM2-135M-Instruct, linear layers
packed as the server packs them) decodes 8 rows after an 80-token prompt, 60 timed steps on a new thread, with the
model loaded (and the prompt read) either on the main thread, which keeps its workers, or on a passing thread,
which takes its workers with it when it ends. Each variant runs in a process of its own (a thread's workers last as
long as the process's thread does; on jemalloc, as `tunelab serve` runs), ROUNDS alternating processes per variant, medians. Keys:
step_ms_loaded_on_<main|passing>_thread, passing_vs_main_step_speedup.

    .venv/bin/python benchmarks/decode_thread.py      # about 2 minutes
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time

from _common import write_results
from tunelab.allocator import jemalloc_env

ROUNDS, ROWS, PROMPT, STEPS = 3, 8, 80, 60


def one(where: str) -> float:
    """Milliseconds per decoding step, measured in this process."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.models.default_llm import default_llm_dir
    from tunelab.serve import kv_cache
    from tunelab.serve.packed_linear import pack_linears
    from tunelab.threads import on_passing_thread

    def load():
        model = AutoModelForCausalLM.from_pretrained(default_llm_dir()).eval()
        pack_linears(model)
        with torch.inference_mode():
            model(input_ids=torch.randint(0, 1000, (ROWS, PROMPT)))  # a prompt read where the model is loaded
        return model
    model = load() if where == "main" else on_passing_thread(load)
    timing: list[float] = []

    def decode():
        generator = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            cache, mask = kv_cache.new_cache(), torch.ones(ROWS, PROMPT, dtype=torch.long)
            model(input_ids=torch.randint(0, 1000, (ROWS, PROMPT), generator=generator), attention_mask=mask,
                  cache=cache, use_cache=True, logits_to_keep=1)
            for step in range(5 + STEPS):
                if step == 5:
                    began = time.perf_counter()
                mask = torch.cat([mask, torch.ones(ROWS, 1, dtype=torch.long)], 1)
                model(input_ids=torch.randint(0, 1000, (ROWS, 1), generator=generator), attention_mask=mask,
                      position_ids=torch.full((ROWS, 1), PROMPT + step), cache=cache, use_cache=True, logits_to_keep=1)
            timing.append((time.perf_counter() - began) / STEPS * 1e3)
    worker = threading.Thread(target=decode)
    worker.start()
    worker.join()
    return timing[0]


def main() -> None:
    if len(sys.argv) == 2:
        print(json.dumps(one(sys.argv[1])))
        return
    times: dict[str, list[float]] = {"main": [], "passing": []}
    for r in range(ROUNDS):
        for where in (("main", "passing") if r % 2 == 0 else ("passing", "main")):
            out = subprocess.run([sys.executable, __file__, where], capture_output=True, text=True, check=True,
                                 env={**os.environ, **jemalloc_env()})  # on jemalloc, as `tunelab serve` runs
            times[where].append(round(json.loads(out.stdout.strip().splitlines()[-1]), 1))
            print(f"round {r + 1}, loaded on the {where} thread: {times[where][-1]} ms per step", flush=True)
    figures = {f"step_ms_loaded_on_{where}_thread": statistics.median(t) for where, t in times.items()}
    figures.update({f"step_ms_loaded_on_{where}_thread_rounds": t for where, t in times.items()})
    figures["passing_vs_main_step_speedup"] = round(figures["step_ms_loaded_on_main_thread"]
                                                    / figures["step_ms_loaded_on_passing_thread"], 2)
    figures.update({"rows": ROWS, "prompt_tokens": PROMPT, "steps": STEPS})
    write_results("decode_thread", figures)


if __name__ == "__main__":
    main()
