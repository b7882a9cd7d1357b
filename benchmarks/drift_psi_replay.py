"""Why the default PSI alert rules also ask for a significant test: a replay of the drift statistics.

The FPB model of drift.py (benchmarks/work/runs/fpb-50agree/export/onnx, made by drift.py) predicts the held-out
FPB sentences, SST-2 validation sentences and FPB without the positive class once; then 100 windows of 500 requests
are drawn (with replacement) from the held-out sentences, and label, length and confidence drift are computed as
the monitor does after every 25 requests from the 100th. Counted, for four rules: windows in which any fired (false
alarms), and the request at which each fired on SST-2 and on FPB without positives.
  P0: PSI > 0.2                       P1: PSI > 0.2 and the paired test's p < 0.01 (the default)
  P2: PSI > 0.2 from 200 requests     P3: P1 from 200 requests

    .venv/bin/python benchmarks/drift_psi_replay.py      # about a minute, after drift.py
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from _common import DATA, WORK, split_texts, write_results

from tunelab.models.predictor import Predictor
from tunelab.monitor import drift
from tunelab.monitor.profile import load_profile

PAIRS = (("label_psi", "label_chi2_p"), ("length_psi", "length_ks_p"), ("confidence_psi", "confidence_ks_p"))
POLICIES = {"P0": (100, None), "P1": (100, 0.01), "P2": (200, None), "P3": (200, 0.01)}  # (first check, p level)


def main() -> None:
    run = WORK / "runs" / "fpb-50agree"
    folder = run / "export" / "onnx"
    predictor, profile = Predictor(folder), load_profile(folder)
    held, labels = split_texts(run, "test")
    sst2 = pd.read_csv(DATA / "sst2" / "validation.csv")["text"].astype(str).tolist()[:500]

    def features(texts):
        out = predictor.infer(texts, embeddings=False)
        return out.probs.argmax(1), out.probs.max(1), out.lengths

    def fired(feats, rows, policy):
        start, level = POLICIES[policy]
        first = {}
        for n in range(start, len(rows) + 1, 25):
            lab, conf, length = (f[rows[:n]] for f in feats)
            figures = drift.label_drift(profile["prediction_counts"], np.bincount(lab, minlength=len(profile["labels"])).tolist())
            figures.update(drift.continuous_drift("length", np.asarray(profile["lengths"]), length))
            figures.update(drift.continuous_drift("confidence", np.asarray(profile["confidence"]), conf))
            for psi, p in PAIRS:
                if figures[psi] > 0.2 and (level is None or figures[p] < level):
                    first.setdefault(psi, n)
        return first

    held_f, sst2_f = features(held), features(sst2)
    rng = np.random.default_rng(0)
    windows = [rng.integers(0, len(held), 500) for _ in range(100)]
    no_positive = rng.choice([i for i, y in enumerate(labels) if y != "positive"], 500)
    results = {}
    for policy in POLICIES:
        results[f"{policy}_false_alarm_windows_of_100"] = sum(bool(fired(held_f, w, policy)) for w in windows)
        sst2_first = fired(sst2_f, np.arange(len(sst2)), policy)
        label_first = fired(held_f, no_positive, policy)
        results[f"{policy}_sst2_label_drift_requests"] = sst2_first.get("label_psi")
        results[f"{policy}_no_positive_label_drift_requests"] = label_first.get("label_psi")
        print(policy, results, flush=True)
    write_results("drift_psi_replay", results)


if __name__ == "__main__":
    main()
