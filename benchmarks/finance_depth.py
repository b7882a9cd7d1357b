"""How deep the finance app's sentiment model is: accuracy against texts per second, side by side.

The app's sentiment run (examples/fpb_50agree.yaml: Financial PhraseBank 50agree, split 80/10/10 with seed 42)
trained with the default MiniLM-L6 cut to its first N layers (`model.layers: N`; 6 is the whole model), and the
same with knowledge distillation from the whole model (`train.distill`, teacher = the 6-layer run, weight 0.5,
temperature 2: the defaults, as the app's `sentiment_layers` trains it), each exported to int8 ONNX as the app
scores with it, then, per variant <v>:
  - test accuracy of the torch model and of the int8 export (`<v>_test_accuracy`, `<v>_test_accuracy_int8`), and
    the validation accuracy at the step the run kept (`<v>_validation_accuracy`);
  - texts per second of the int8 model alone on the FPB held-out sentences (named as the finance benchmark's
    stream names them) in calls of 100, as the finance benchmark measures it (`<v>_texts_per_second`;
    interleaved rounds, medians), and its speed-up over the whole model (`<v>_speedup`).
Results: results/finance_depth.json.

    .venv/bin/python benchmarks/finance_depth.py     # about 35 minutes on 2 cores (the trainings: 30)
"""

from __future__ import annotations

import json
import statistics
import time

import yaml

from _common import REPO, WORK, need_data, split_texts, write_results

ROUNDS = 3
VARIANTS = {"depth6": (6, False), "depth5": (5, False), "depth5_distilled": (5, True), "depth4_distilled": (4, True),
            "depth3_distilled": (3, True), "depth3": (3, False)}  # key -> (layers, distilled from depth6)


def sentiment_config(variant: str):
    depth, distilled = VARIANTS[variant]
    raw = yaml.safe_load((REPO / "examples" / "fpb_50agree.yaml").read_text())
    raw["name"] = "fpb-50agree" if variant == "depth6" else f"fpb-50agree-{variant.replace('_', '-')}"
    raw["runs_dir"] = str(WORK / "runs")
    raw["data"]["train"] = str(need_data("financial_phrasebank", "sentences_50agree", "all.csv"))
    if depth != 6:
        raw["model"]["layers"] = depth
    if distilled:
        raw.setdefault("train", {})["distill"] = {"teacher": str(WORK / "runs" / "fpb-50agree")}
    path = WORK / "finance_depth" / f"{raw['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def texts_per_second(predictor, texts: list[str]) -> float:
    began = time.perf_counter()
    for start in range(0, len(texts), 100):
        predictor.infer(texts[start:start + 100], None, False)
    return len(texts) / (time.perf_counter() - began)


def main() -> None:
    from pathlib import Path

    from tunelab.apps.runs import build_run
    from tunelab.evaluation.run import score_file
    from tunelab.models.predictor import Predictor

    figures, predictors, texts = {}, {}, None
    for variant in VARIANTS:
        entry = build_run(sentiment_config(variant), "sentiment", "classification", "onnx-int8", False, True, "")
        run_dir = Path(entry["run"])
        predictors[variant] = Predictor(entry["export"])
        manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
        int8 = score_file(predictors[variant], run_dir / "data" / manifest["files"]["test"])
        figures[f"{variant}_test_accuracy"] = round(entry["test"]["accuracy"], 4)
        figures[f"{variant}_validation_accuracy"] = round(  # at the step the run kept
            json.loads((run_dir / "result.json").read_text())["validation"]["accuracy"], 4)
        figures[f"{variant}_test_accuracy_int8"] = round(int8["accuracy"], 4)
        figures[f"{variant}_steps"] = entry["steps"]
        if texts is None:
            held_out = [split_texts(run_dir, s)[0] for s in ("validation", "test")]
            texts = [f"Company {chr(65 + i % 20)}: {t}" for i, t in enumerate(held_out[0] + held_out[1])]
        print(variant, figures, flush=True)
    speeds = {v: [] for v in VARIANTS}
    for p in predictors.values():
        p.infer(texts[:100], None, False)  # warm-up
    for _ in range(ROUNDS):
        for variant, predictor in predictors.items():
            speeds[variant].append(texts_per_second(predictor, texts))
    for variant in VARIANTS:
        figures[f"{variant}_texts_per_second"] = round(statistics.median(speeds[variant]), 1)
        figures[f"{variant}_speedup"] = round(statistics.median(speeds[variant]) / statistics.median(speeds["depth6"]), 2)
    figures["texts"] = len(texts)
    write_results("finance_depth", figures)


if __name__ == "__main__":
    main()
