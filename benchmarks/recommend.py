"""The recommender on its shipped example (examples/recommend/movielens.yaml): tunelab's hybrid, its text
two-tower and its sequence tower against popularity, item-kNN, ALS and BPR, all tuned on validation and measured
on the same test cases; cold items; the served latency.

Protocol. MovieLens ml-latest-small (../shared/data/movielens: 610 users, 9,742 movies, 100,836 ratings; every
rating is an interaction), leave-last-out by time per user: each user's last rating is the test case, the one
before it the validation case (610 of each). Every model ranks all items the user has not rated. Settings are
chosen on validation NDCG@10 with the models fitted on training interactions, then refitted on training plus
validation and measured on test (the item encoder is not retrained). Grids: item-kNN neighbours 5-200 x recency
window (all, 20, 5, 2 last items); ALS factors 32-256 x regularisation 0.001-0.1 x alpha 1, 10 (15 iterations);
BPR factors 32-128 x learning rate 0.01, 0.05 x regularisation 0.001, 0.01 (100 iterations); text user tower:
last 1-50 items x decay 0.8-1.0; sequence tower: the app's default setting, early-stopped on validation (its
defaults come from benchmarks/recommend_sequence.py); hybrid: text weight 0-1 with item-kNN, its text side the
sequence tower or the mean tower, whichever validates better. Item text: title, genres and the 5 most
frequent tags given by training time (none from a user's held-out movies). The item tower: the default MiniLM
fine-tuned for one epoch on 20,000 (movie, next movie of the same user) training pairs with in-batch negatives,
exported to ONNX int8, which embeds the catalogue for both the measurement and the server. The untuned MiniLM
(int8) is measured the same way for scale.

    .venv/bin/python benchmarks/recommend.py          # about 20 minutes on 2 cores (6 with the item tower already trained)

Figures (results/recommend.json): ndcg_at_10, recall_at_10 (the hybrid: tunelab's default model), the same for
each baseline, for the text tower alone and for the sequence tower alone, ndcg_at_10_ratio_vs_best_baseline (target >= 1.10),
cold_item_recall_at_10 with cold_test_cases, catalogue_coverage_at_10, recommend_c1_p50_ms (<= 20).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import numpy as np

from _common import REPO, WORK, machine, need_data, start_server, stop_server, write_results

CONFIG = REPO / "examples" / "recommend" / "movielens.yaml"
TUNELAB = str(REPO / ".venv" / "bin" / "tunelab")
BASELINES = ("popularity", "item_knn", "als", "bpr")


def untuned(config) -> dict:
    """The text tower with the base MiniLM (exported to int8 the same way), its user tower tuned on validation."""
    from tunelab.apps.recommend.build import evaluate, prepare
    from tunelab.apps.recommend.towers import text_scorer
    from tunelab.apps.encoder import Encoder, export_encoder
    from tunelab.hub import default_model_dir

    data = prepare(config)
    split = data.split
    folder = WORK / "minilm-int8"
    if not folder.is_dir():
        export_encoder(default_model_dir(), folder, "int8", data.texts[:500], config.tower.max_length)
    vectors = Encoder(folder, config.tower.max_length).encode(data.texts)
    users = np.flatnonzero(split.test >= 0)
    hv, ht = split.history("validation"), split.history("test")
    none = np.zeros(0, bool)
    grid = [(r, d) for r in config.tower.recent for d in config.tower.decay]
    best = max(grid, key=lambda s: evaluate(text_scorer(hv, vectors, *s), users, split.validation[users], hv, none)["ndcg_at_10"])
    return evaluate(text_scorer(ht, vectors, *best), users, split.test[users], ht, none)


def latency(config_path, users: list[str]) -> dict:
    import httpx

    proc, url = start_server([TUNELAB, "serve", "--app", str(config_path), "--host", "127.0.0.1"], "/readyz")
    try:
        with httpx.Client() as client:
            for u in users[:50]:
                client.post(f"{url}/v1/recommend", json={"user_id": u})
            rounds = []
            for _ in range(3):
                times = []
                for u in (users * 2)[:400]:
                    started = time.perf_counter()
                    assert client.post(f"{url}/v1/recommend", json={"user_id": u, "k": 10}).status_code == 200
                    times.append((time.perf_counter() - started) * 1000)
                rounds.append(statistics.median(times))
        return {"recommend_c1_p50_ms": round(statistics.median(rounds), 2),
                "recommend_c1_p50_ms_rounds": [round(r, 2) for r in rounds]}
    finally:
        stop_server(proc)


def main() -> None:
    from tunelab.apps.recommend.config import load_recommend_config

    need_data("movielens", "ml-latest-small", "ratings.csv")
    WORK.mkdir(exist_ok=True)
    config_path = WORK / "recommend.yaml"  # the shipped example, its app folder under benchmarks/work
    config_path.write_text(CONFIG.read_text().replace("runs_dir: ../../runs", f"runs_dir: {WORK / 'runs'}"))
    started = time.perf_counter()
    subprocess.run([TUNELAB, "app", "recommend", "build", str(config_path)], check=True, cwd=REPO)
    build_seconds = time.perf_counter() - started
    config = load_recommend_config(config_path)
    report = json.loads((config.app_dir / "report.json").read_text())
    best = max(BASELINES, key=lambda n: report[n]["ndcg_at_10"])
    hybrid = report["hybrid"]
    results = {"machine": machine(), "protocol": report["protocol"], "test_cases": report["test_cases"],
               "ndcg_at_10": round(hybrid["ndcg_at_10"], 4), "recall_at_10": round(hybrid["recall_at_10"], 4),
               "ndcg_at_20": round(hybrid["ndcg_at_20"], 4), "recall_at_20": round(hybrid["recall_at_20"], 4),
               "best_baseline": best,
               "ndcg_at_10_ratio_vs_best_baseline": round(hybrid["ndcg_at_10"] / report[best]["ndcg_at_10"], 3),
               "cold_test_cases": report["cold_test_cases"],
               "cold_item_recall_at_10": round(hybrid.get("cold_recall_at_10", 0.0), 4),
               "cold_item_recall_at_10_text": round(report["text"].get("cold_recall_at_10", 0.0), 4),
               "catalogue_coverage_at_10": round(hybrid["catalogue_coverage_at_10"], 4),
               "hybrid_settings": hybrid["settings"], "build_seconds": round(build_seconds, 1),
               "sequence_epochs_run": report["sequence_training"]["epochs_run"],
               "sequence_train_seconds": report["sequence_training"]["seconds"]}
    for name in (*BASELINES, "text", "sequence"):
        r = report[name]
        results.update({f"{k}_{name}": round(r[k], 4) for k in ("ndcg_at_10", "recall_at_10", "ndcg_at_20", "recall_at_20")})
        results[f"catalogue_coverage_at_10_{name}"] = round(r["catalogue_coverage_at_10"], 4)
        results[f"settings_{name}"] = r["settings"]
        if "cold_recall_at_10" in r:
            results[f"cold_item_recall_at_10_{name}"] = round(r["cold_recall_at_10"], 4)
    results.update({f"{k}_text_untuned": round(v, 4) for k, v in untuned(config).items()
                    if k in ("ndcg_at_10", "recall_at_10", "cold_recall_at_10")})
    users = json.loads((config.app_dir / "users.json").read_text())
    results.update(latency(config_path, users))
    write_results("recommend", results)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
