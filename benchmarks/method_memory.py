"""Training-step memory of full fine-tuning vs LoRA, isolated from everything else a run does.

The end-to-end figure in methods.py (peak RSS of a whole training run) also holds the allocator's
fragmentation over variable batch shapes, evaluation and checkpoint writes. Here each method runs 12
optimizer steps on fixed-shape batches (32 x 64 tokens, bf16 autocast, fused AdamW) in its own process;
the figure is peak RSS minus RSS after the model is built. The `*_live` cases run the same steps with
glibc's malloc mapping every block of 64 KB or more on its own (MALLOC_MMAP_THRESHOLD_=65536), so freed
tensors leave RSS at once: their figure is the memory the steps really hold, without the allocator's
kept-free blocks (training so is slower: not a setting to train with).

    .venv/bin/python benchmarks/method_memory.py
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

from _common import status_mb, write_results

CASES = {"full": ("full", False), "lora": ("lora", False), "lora_checkpointing": ("lora", True),
         "full_checkpointing": ("full", True), "full_live": ("full", False), "lora_live": ("lora", False)}
LIVE = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def measure(method: str, checkpointing: bool) -> dict:
    import torch

    from tunelab.config import load_config
    from tunelab.methods.parts import enable_activation_checkpointing
    from tunelab.methods.store import apply_method
    from tunelab.hub import default_model_dir
    from tunelab.tasks.classification import ClassificationTask
    from tunelab.training.optim import build_optimizer

    config = load_config({"name": "m", "data": {"train": "x"}, "method": {"name": method}})
    task = ClassificationTask(["0", "1"], False, False)
    torch.manual_seed(0)
    model = apply_method(task.build_model(str(default_model_dir()), 0.0, attention="eager"), config.method)
    if checkpointing:
        enable_activation_checkpointing(model)
    optimizer = build_optimizer(model, config.train, config.learning_rate)
    after_model = status_mb("VmRSS")
    model.train()
    for _ in range(12):
        batch = {"input_ids": torch.randint(1000, 20000, (32, 64)), "attention_mask": torch.ones(32, 64, dtype=torch.long)}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = task.loss_sum(model(**batch).logits, torch.randint(0, 2, (32,)), None)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rss_after_model_mb": after_model, "step_memory_mb": peak - after_model}


def main() -> None:
    if len(sys.argv) == 3:
        print(json.dumps(measure(sys.argv[1], sys.argv[2] == "1")))
        return
    flat = {}
    for name, (method, ckpt) in CASES.items():
        env = {**os.environ, **(LIVE if name.endswith("_live") else {})}
        out = subprocess.run([sys.executable, __file__, method, "1" if ckpt else "0"], capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(out.stderr[-2000:])
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        flat[f"{name}_step_memory_mb"] = round(figures["step_memory_mb"], 1)
    for name in CASES:
        full = "full_live" if name.endswith("_live") else "full"
        if name != full:
            flat[f"{name}_step_memory_ratio_vs_full"] = round(flat[f"{name}_step_memory_mb"] / flat[f"{full}_step_memory_mb"], 4)
    write_results("method_memory", flat)


if __name__ == "__main__":
    main()
