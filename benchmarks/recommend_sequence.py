"""Where the recommender's sequence-tower defaults come from (tunelab/apps/recommend/config.py, SequenceConfig): two
settings trained on the MovieLens protocol, the better on validation kept and measured alone and blended with
item-kNN, against item-kNN, side by side in one run.

Same data, split and full ranking as benchmarks/recommend.py (leave-last-out by time, 610 test cases). Item text
vectors: the item tower that benchmarks/recommend.py built (its item_vectors.npy: run that first). The tower: 2
causal transformer layers over the last 50 items, id embedding + text projection per item, id dropout 0.2, softmax
over the whole catalogue, AdamW, batches of 128 windows, early-stopped on validation NDCG@10 (patience 6, at most 60
epochs); two settings tried (width 64, dropout 0.2, learning rate 1e-3; width 128, dropout 0.3, learning rate 2e-3),
the better on validation NDCG@10 kept; then read from training + validation histories for the test cases without
retraining. Item-kNN: the settings benchmarks/recommend.py chose on validation, refitted on training + validation.
Blend: standardised scores, sequence weight chosen on validation from 0.3-0.9.

    .venv/bin/python benchmarks/recommend_sequence.py      # about 10 minutes on 2 cores

Figures (results/recommend_sequence.json): ndcg_at_10_sequence, recall_at_10_sequence, recall_at_20_sequence,
ndcg_at_10_item_knn, ndcg_at_10_blend, blend_weight, ndcg_at_10_ratio_blend_vs_item_knn (the app's target is 1.10),
cold_item_recall_at_10_sequence, train_seconds.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np

from _common import WORK, machine, need_data, write_results

BASE = dict(layers=2, heads=2, max_len=50, weight_decay=0.0, epochs=60, patience=6, batch_size=128, id_dropout=0.2)
GRID = [dict(BASE, dim=64, dropout=0.2, learning_rate=1e-3), dict(BASE, dim=128, dropout=0.3, learning_rate=2e-3)]
WEIGHTS = (0.3, 0.5, 0.7, 0.8, 0.9)


def main() -> None:
    from tunelab.apps.recommend import baselines as cf
    from tunelab.apps.recommend.build import evaluate, prepare
    from tunelab.apps.recommend.config import load_recommend_config
    from tunelab.apps.recommend.sequence import train_sequence
    from tunelab.apps.recommend.towers import hybrid_scorer

    need_data("movielens", "ml-latest-small", "ratings.csv")
    config = load_recommend_config(WORK / "recommend.yaml")
    if not (config.app_dir / "report.json").is_file():
        sys.exit(f"{config.app_dir} has no build: run benchmarks/recommend.py first")
    report = json.loads((config.app_dir / "report.json").read_text())
    vectors = np.load(config.app_dir / "item_vectors.npy")
    data = prepare(config)
    split, items = data.split, len(data.item_ids)
    users = np.flatnonzero(split.test >= 0)
    hv, ht = split.history("validation"), split.history("test")
    seen = np.zeros(items, bool)
    seen[np.concatenate(ht)] = True
    cold, none = ~seen[split.test[users]], np.zeros(0, bool)

    def on_validation(score):
        return evaluate(score, users, split.validation[users], hv, none)["ndcg_at_10"]

    tried = []
    for settings in GRID:  # the tower kept is the one with the best validation NDCG@10
        model, info = train_sequence(hv, vectors, lambda m: on_validation(lambda us: m.scores([hv[u] for u in us])),
                                     SimpleNamespace(**settings), config.seed)
        tried.append((info["validation_ndcg_at_10"], settings, model, info))
    _, settings, model, info = max(tried, key=lambda t: t[0])
    sequence_v = lambda us: model.scores([hv[u] for u in us])  # noqa: E731
    sequence_t = lambda us: model.scores([ht[u] for u in us])  # noqa: E731
    knn_settings = report["item_knn"]["settings"]
    knn_v, knn_t = cf.fit("item_knn", hv, items, knn_settings), cf.fit("item_knn", ht, items, knn_settings)
    weight = max(WEIGHTS, key=lambda w: on_validation(hybrid_scorer(sequence_v, knn_v, w)))
    alone = evaluate(sequence_t, users, split.test[users], ht, cold)
    knn = evaluate(knn_t, users, split.test[users], ht, cold)
    blend = evaluate(hybrid_scorer(sequence_t, knn_t, weight), users, split.test[users], ht, cold)
    results = {"machine": machine(), "test_cases": int(len(users)), "settings": settings,
               "validation_ndcg_at_10_tried": [round(t[0], 4) for t in tried],
               "ndcg_at_10_sequence": round(alone["ndcg_at_10"], 4), "recall_at_10_sequence": round(alone["recall_at_10"], 4),
               "recall_at_20_sequence": round(alone["recall_at_20"], 4),
               "cold_item_recall_at_10_sequence": round(alone.get("cold_recall_at_10", 0.0), 4),
               "ndcg_at_10_item_knn": round(knn["ndcg_at_10"], 4), "recall_at_20_item_knn": round(knn["recall_at_20"], 4),
               "ndcg_at_10_blend": round(blend["ndcg_at_10"], 4), "blend_weight": weight,
               "ndcg_at_10_ratio_blend_vs_item_knn": round(blend["ndcg_at_10"] / knn["ndcg_at_10"], 3),
               "best_epoch": info["best_epoch"], "validation_ndcg_at_10_sequence": round(info["validation_ndcg_at_10"], 4),
               "train_seconds": info["seconds"]}
    write_results("recommend_sequence", results)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
