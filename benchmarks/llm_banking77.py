"""Banking77 as label generation with the default LLM, next to the encoder classifier.

examples/banking77_llm.yaml: LoRA SFT of SmolLM2-135M-Instruct to answer each customer message with its intent
label (250 steps of 16 conversations, 4000 of the 8997 training messages, seed 42), then `tunelab evaluate` on the
3080 test messages with decoding constrained to the 77 training labels; before fine-tuning, the same constrained
decoding gives the zero-shot figure (the prompt does not list the intents: the labels' own words are all the base
model has). Figures (results/llm_banking77.json): banking77_gen_test_accuracy, banking77_gen_test_macro_f1,
banking77_gen_zero_shot_accuracy, banking77_gen_train_seconds, train_peak_rss_mb; and the encoder classifier's
banking77_test_accuracy from results/classification.json, for the table.

    .venv/bin/python benchmarks/llm_banking77.py     # about an hour on 2 cores (training 26-29 min, two test passes 11-13 min each)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from _common import HERE, REPO, WORK, need_data, status_mb, write_results


def main() -> None:
    need_data("banking77")
    runs = WORK / "runs"
    started = time.perf_counter()
    train = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(REPO / "examples" / "banking77_llm.yaml"),
                              f"runs_dir={runs}", "--overwrite"], cwd=REPO)
    peak = 0.0
    while train.poll() is None:  # the training's peak resident memory, from outside
        try:
            peak = max(peak, status_mb("VmHWM", train.pid))
        except (OSError, RuntimeError):  # it has just ended
            pass
        time.sleep(1)
    if train.returncode:
        sys.exit(f"training failed ({train.returncode})")
    train_seconds = time.perf_counter() - started
    run = runs / "banking77-llm"
    subprocess.run([sys.executable, "-m", "tunelab", "evaluate", str(run), "--split", "test"], cwd=REPO, check=True)
    metrics = json.loads((run / "eval" / "report.json").read_text())["metrics"]
    encoder = json.loads((HERE / "results" / "classification.json").read_text())
    write_results("llm_banking77", {
        "model": "examples/banking77_llm.yaml (LoRA on SmolLM2-135M-Instruct, 250 steps of 16 conversations)",
        "decoding": metrics["decoding"], "test_messages": metrics["generated_examples"],
        "banking77_gen_test_accuracy": round(metrics["accuracy"], 4),
        "banking77_gen_test_macro_f1": round(metrics["macro_f1"], 4),
        "banking77_gen_zero_shot_accuracy": round(metrics["accuracy_before"], 4),
        "banking77_gen_zero_shot_macro_f1": round(metrics["macro_f1_before"], 4),
        "banking77_gen_test_loss": round(metrics["loss"], 4),
        "banking77_gen_train_seconds": round(train_seconds, 1),
        "train_peak_rss_mb": round(peak, 1),
        "banking77_encoder_test_accuracy": encoder.get("banking77_test_accuracy"),
        "banking77_encoder_machine": encoder.get("machine"),
    })


if __name__ == "__main__":
    main()
