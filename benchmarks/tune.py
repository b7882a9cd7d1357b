"""Grid vs random vs TPE with median pruning, on Financial PhraseBank 50Agree (fixed 80/10/10 split, seed 42).

The same space for all three (16 configurations of full fine-tuning of the default MiniLM, each trial 200
steps with a validation every 40); grid runs all 16. Random and TPE each get the same budget of training
steps, 40% of what grid spent: each adds trials (continuing its own study) while it has budget left, so
TPE's pruned trials leave room for more configurations. Compute = training steps actually run (a pruned
trial counts the steps it ran) and wall time. Figures: best validation accuracy, the test accuracy of that
trial's model, trials, steps, minutes.

    .venv/bin/python benchmarks/tune.py                  # about 25 minutes on 2 cores
    .venv/bin/python benchmarks/tune.py --only grid
"""

from __future__ import annotations

import argparse
import json
import time

from _common import REPO, WORK, need_data, run_cases, write_results

SPACE = {"train.learning_rate": [2e-5, 5e-5, 1e-4, 2e-4], "train.batch_size": [16, 32], "train.warmup_ratio": [0.0, 0.1]}
TRIAL_STEPS = 200
TRAIN = [f"train.max_steps={TRIAL_STEPS}", "train.eval_every=40", "train.trackers=[]"]
BUDGET_FRACTION = 0.4


def _config(name: str, sampler: str, pruner: str, n_trials: int | None):
    from tunelab.config import load_config

    return load_config(REPO / "examples" / "fpb_50agree.yaml", [
        f"runs_dir={WORK / 'runs'}", f"name=tune-{name}", *TRAIN, f"tune.sampler={sampler}", f"tune.pruner={pruner}",
        f"tune.n_trials={'null' if n_trials is None else n_trials}", f"tune.space={json.dumps(SPACE)}", "tune.seed=42",
        "tune.startup_trials=3"])


def _search(name: str, sampler: str, pruner: str, budget_steps: int | None) -> dict:
    import shutil

    from tunelab.evaluation import evaluate
    from tunelab.tuning import tune

    shutil.rmtree(WORK / "runs" / f"tune-{name}", ignore_errors=True)
    started = time.perf_counter()
    if budget_steps is None:  # grid: the whole grid
        result = tune(_config(name, sampler, pruner, None), quiet=True)
    else:  # one more trial while a whole one still fits in the budget; the study continues each time
        n = 1
        while True:
            result = tune(_config(name, sampler, pruner, n), quiet=True)
            if result.steps + TRIAL_STEPS > budget_steps:
                break
            n += 1
    wall = time.perf_counter() - started
    best_dir = result.study_dir / f"trial-{result.best_trial}"
    test = evaluate(best_dir, "test", write_report=False, quiet=True).metrics
    return {"best_validation": result.best_value, "best_test": test["accuracy"], "best_trial": result.best_trial,
            "trials": sum(result.states.values()), "pruned": result.states.get("pruned", 0),
            "failed": result.states.get("fail", 0), "steps": result.steps, "train_minutes": result.seconds / 60,
            "wall_minutes": wall / 60}


def _grid_steps() -> int:
    cases = json.loads((WORK / "tune_cases.json").read_text())
    return int(cases["grid"]["steps"])


CASES = {
    "grid": lambda: _search("grid", "grid", "none", None),
    "random": lambda: _search("random", "random", "none", int(BUDGET_FRACTION * _grid_steps())),
    "tpe": lambda: _search("tpe", "tpe", "median", int(BUDGET_FRACTION * _grid_steps())),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="comma-separated case names (random and tpe need grid's result)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    need_data("financial_phrasebank", "sentences_50agree", "all.csv")
    results = run_cases(__file__, CASES, args.case, [n for n in args.only.split(",") if n], "tune")
    if results is None:
        return
    flat = {f"{case}_{k}": (round(v, 4) if isinstance(v, float) else v) for case, r in results.items() for k, v in r.items()}
    grid = results.get("grid", {})
    for case in ("random", "tpe"):
        r = results.get(case, {})
        if grid.get("best_validation") is not None and r.get("best_validation") is not None:
            flat[f"{case}_gap_to_grid_points"] = round(100 * (grid["best_validation"] - r["best_validation"]), 2)
            flat[f"{case}_compute_fraction_of_grid"] = round(r["steps"] / grid["steps"], 3)
            flat[f"{case}_wall_fraction_of_grid"] = round(r["wall_minutes"] / grid["wall_minutes"], 3)
    if "tpe_gap_to_grid_points" in flat:
        flat["tpe_target_met"] = flat["tpe_gap_to_grid_points"] <= 0.5 and flat["tpe_compute_fraction_of_grid"] <= 0.4
    write_results("tune", flat)


if __name__ == "__main__":
    main()
