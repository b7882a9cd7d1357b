"""Paired comparison behind `train.ema_steps` (the moving average of the weights that is evaluated and saved).

One training run per data set with the last weights kept (`train.ema_steps: null`); beside the steps, moving
averages of the same trajectory are kept and scored at every evaluation, on validation and on test:
`default` (tunelab's rule: time constant 500 steps, at most a tenth of the run), `0.998` (time constant 500
steps whatever the run's length), `tenth` (a tenth of the run's steps) and `adapt` (TensorFlow's num_updates rule,
decay (1+t)/(10+t)), each a tunelab WeightAverage (started at zero, bias-corrected). For each, the checkpoint that
best-validation selection keeps, and its test score. The training itself is the same for all of them: one run, no
seed noise between the rows. The averages here are updated every step (the default updates every 4th).

    .venv/bin/python benchmarks/weight_average.py [--only sst2_20k,fpb_50agree]

Figures: results/weight_average.json (`<case>_<variant>_{validation,test}_accuracy`, `<case>_<variant>_best_step`).
"""

from __future__ import annotations

import argparse
import json
import sys

from _common import REPO, WORK, need_data, read_results, run_cases, sst2_subset_csv, write_results

VARIANTS = ("raw", "default", "0.998", "tenth", "adapt")
CASES_SPEC = {  # case: (example config, overrides)
    "sst2": ("sst2.yaml", []),
    "sst2_20k": ("sst2.yaml", ["train.epochs=1", "train.min_steps=0", "train.batch_size=32"]),
    "fpb_50agree": ("fpb_50agree.yaml", []),
    "fpb_allagree": ("fpb_allagree.yaml", []),
    "banking77": ("banking77.yaml", []),
}


def run_case(case: str) -> dict:
    import numpy as np

    import tunelab.training.loop as loop
    from tunelab.config import load_config
    from tunelab.training.weight_average import WeightAverage

    example, overrides = CASES_SPEC[case]
    if case == "sst2_20k":
        overrides = [f"data.train={sst2_subset_csv()}", *overrides]
    config = load_config(REPO / "examples" / example, [f"runs_dir={WORK / 'runs'}", f"name=ema-{case}",
                                                        "train.ema_steps=null", *overrides])
    s = {"t": 0, "test": None, "history": []}

    def decay(variant, t):
        return {"adapt": (1 + t) / (10 + t), "tenth": 1 - 1 / max(1.0, 0.1 * s["total"]),
                "default": 1 - 1 / max(1.0, min(500, 0.1 * s["total"]))}.get(variant, 0.998)

    real_scheduler = loop.build_scheduler

    def build_scheduler(optimizer, cfg, total):  # the hook point where the optimizer and the step count are known
        s["total"] = total
        params = [p for g in optimizer.param_groups for p in g["params"] if p.shape[0] < 20000]  # not the word embedding
        s["avg"] = {v: WeightAverage(params, decay(v, 1)) for v in VARIANTS[1:]}

        def update(*_):
            s["t"] += 1
            for v, average in s["avg"].items():
                average.decay = decay(v, s["t"])  # adapt's changes with t
                average.update(s["t"])
        optimizer.register_step_post_hook(update)
        return real_scheduler(optimizer, cfg, total)

    real_iter = loop.iter_probabilities

    def accuracy(model, enc, task, args, kwargs):
        right = sum(int((p.argmax(1) == np.asarray(enc.targets)[rows]).sum()) for rows, p in real_iter(model, enc, task, *args, **kwargs))
        return right / len(enc)

    def scored(model, enc, task, *args, **kwargs):  # the loop's validation pass: score the averages, then go on as usual
        test = _test_split(config, task, s)
        record = {"step": s["t"]}
        for v, average in s["avg"].items():
            with average.applied():
                record[f"{v}_validation"] = accuracy(model, enc, task, args, kwargs)
                record[f"{v}_test"] = accuracy(model, test, task, args, kwargs)
        record["raw_test"] = accuracy(model, test, task, args, kwargs)
        right = 0
        for rows, probs in real_iter(model, enc, task, *args, **kwargs):
            right += int((probs.argmax(1) == np.asarray(enc.targets)[rows]).sum())
            yield rows, probs
        record["raw_validation"] = right / len(enc)
        s["history"].append(record)
        print(json.dumps(record), file=sys.stderr, flush=True)

    loop.build_scheduler, loop.iter_probabilities = build_scheduler, scored
    loop.train(config, overwrite=True, quiet=True)
    out = {"steps": s["t"], "evaluations": len(s["history"])}
    for v in VARIANTS:  # best-validation selection, the first best as the loop keeps it
        best = max(s["history"], key=lambda r: (r[f"{v}_validation"], -r["step"]))
        out.update({f"{v}_validation_accuracy": best[f"{v}_validation"], f"{v}_test_accuracy": best[f"{v}_test"],
                    f"{v}_best_step": best["step"]})
    return out


def _test_split(config, task, s):
    if s["test"] is None:
        from tunelab.data import prepare
        from tunelab.hub import load_tokenizer
        from tunelab.tasks.encoding import cached_encode

        files = prepare(config, quiet=True).files
        tokenizer = load_tokenizer(config.model.name, config.model.revision, config.model.trust_remote_code)
        s["test"] = cached_encode(files["test"], config.run_dir / "data" / "tokens", tokenizer, task,
                                  config.model.max_length, f"{config.model.name}@{config.model.revision}")
    return s["test"]


CASES = {case: (lambda case=case: run_case(case)) for case in CASES_SPEC}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="comma-separated cases: " + ",".join(CASES))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    need_data("sst2", "train.csv")
    need_data("financial_phrasebank")
    need_data("banking77")
    only = [c for c in args.only.split(",") if c]
    results = run_cases(__file__, CASES, args.case, only, "weight_average")
    if results is None:  # the child process of one case
        return
    flat = read_results("weight_average") if only else {}
    for case, figures in results.items():
        flat.update({f"{case}_{k}": (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()
                     if k != "case_wall_seconds"})
    write_results("weight_average", flat)


if __name__ == "__main__":
    main()
