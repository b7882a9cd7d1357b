"""GGUF export of the demo LLM run: does the file llama.cpp would run answer as the fine-tuned model?

The demo run (examples/demo_llm.yaml: LoRA on the default LLM, SmolLM2-135M-Instruct; trained here if absent) is
exported with `tunelab export RUN --format gguf` as F16 and as Q8_0. Each file is read back by transformers' GGUF
loader and compared with the run's model on the validation conversations (next-token argmax at every position)
and on their prompts (greedy answers of 24 tokens). Figures (results/llm_gguf.json): gguf_f16_argmax_agreement
(target >= 0.97), gguf_q8_0_argmax_agreement, the greedy answers identical, file sizes, export seconds.

    .venv/bin/python benchmarks/llm_gguf.py     # about 4 minutes on 2 cores (the demo training included)
"""

from __future__ import annotations

import time

from _common import WORK, write_results
from llm import demo_run


def main() -> None:
    from tunelab.export.gguf import export_gguf

    run_dir = demo_run()
    figures = {"model": "examples/demo_llm.yaml (LoRA merged into SmolLM2-135M-Instruct)"}
    for kind in ("f16", "q8_0"):
        started = time.perf_counter()
        result = export_gguf(run_dir, WORK / "gguf" / kind, quantize=None if kind == "f16" else kind, min_agreement=0.0)
        p = result.parity
        figures.update({f"gguf_{kind}_argmax_agreement": round(p["argmax_agreement"], 4),
                        f"gguf_{kind}_positions": p["positions"], f"gguf_{kind}_conversations": p["conversations"],
                        f"gguf_{kind}_greedy_identical": f"{p['greedy_identical']}/{p['greedy_prompts']}",
                        f"gguf_{kind}_mb": round(p["bytes"] / 1e6, 1),
                        f"gguf_{kind}_export_seconds": round(time.perf_counter() - started, 1)})
    write_results("llm_gguf", figures)


if __name__ == "__main__":
    main()
