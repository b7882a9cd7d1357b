"""`tunelab app recommend build CONFIG`: the data read and split, the baselines tuned and measured, the item tower
trained, the user towers (mean of recent items; sequence transformer) and the hybrid tuned, everything measured on
the same test cases; one report.

Protocol (written into the report): leave-last-out by time per user (data.py); each model's settings are chosen on
the validation cases with the models fitted on training interactions; the chosen settings are then refitted on
training plus validation interactions (the text encoder and the sequence tower are not retrained: they read the
longer histories as they are) and ranked on the test cases. Ranking is
over every item the user has not interacted with (ranking.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunelab.apps.recommend.data import Split

ENCODER, VECTORS, ITEMS = "item-encoder", "item_vectors.npy", "items.json"
HISTORIES, USERS, SIMILARITY, SERVING = "histories.npz", "users.json", "similarity.npz", "serving.json"


@dataclass
class Prepared:
    item_ids: list[str]
    texts: list[str]
    split: Split
    user_ids: list[str]
    interactions: int
    dropped: dict


def command(config) -> str:
    return f"tunelab app recommend build {config.source}"


def init(folder: str | Path, interactions: str | Path | None = None, items: str | Path | None = None,
         tags: str | Path | None = None) -> Path:
    """Write folder/recommend.yaml for the user's files (default: the shipped MovieLens example). The items'
    text columns are every column but the id, in file order. Refuses to overwrite an existing config."""
    import csv
    import os

    import yaml

    from tunelab.errors import TunelabError

    from tunelab.apps.config import new_config

    folder = Path(folder)
    target = new_config(folder, "recommend.yaml", {"--interactions": interactions, "--items": items, "--tags": tags})
    if (interactions is None) != (items is None):
        raise TunelabError("give both --interactions and --items (or neither, for the MovieLens example)")
    if interactions is None:
        shared = Path(os.environ.get("TUNELAB_DATA", "../shared/data")).resolve() / "movielens" / "ml-latest-small"
        interactions, items, tags = shared / "ratings.csv", shared / "movies.csv", shared / "tags.csv"
        if not interactions.is_file():
            raise TunelabError(f"the MovieLens example is not at {shared} (set TUNELAB_DATA); give your own files: "
                               "--interactions FILE --items FILE")

    def header(path) -> list[str]:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            return next(csv.reader(f), [])

    columns: dict = {}
    seen = header(interactions)
    if "userId" in seen and "movieId" in seen:  # MovieLens' names
        columns.update(user="userId", item="movieId", item_id="movieId")
    item_id = columns.get("item_id", "item_id")
    text = [c for c in header(items) if c != item_id] if Path(items).suffix.lower() == ".csv" else ["title"]
    if text:
        columns["item_text"] = text
    config = {"app": "recommend", "name": "recommend", "runs_dir": "runs",
              "interactions": str(Path(interactions).resolve()), "items": str(Path(items).resolve()),
              **({"tags": str(Path(tags).resolve())} if tags is not None else {}), "columns": columns}
    folder.mkdir(parents=True, exist_ok=True)
    target.write_text("# tunelab app recommend: every key and its meaning in docs/apps/recommend.md\n"
                      + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return target


def prepare(config) -> Prepared:
    """Read, check and split the files; item texts with their training tags."""
    from tunelab.apps.recommend.data import item_tags, read_interactions, read_items, split_by_time, training_rows

    c = config.columns
    ids, texts, code = read_items(config.items, c)
    interactions = read_interactions(config.interactions, c, code, config.items, config.min_rating)
    split = split_by_time(interactions, len(ids))
    if config.tags is not None and config.tags_per_item:
        last = np.full(split.users, np.iinfo(np.int64).min)
        train_times = interactions.times[training_rows(interactions)]
        np.maximum.at(last, split.train_users, train_times)
        user_code = {u: i for i, u in enumerate(interactions.user_ids)}
        tags = item_tags(config.tags, c, code, user_code, split, last, config.tags_per_item)
        texts = [f"{t}. tags: {', '.join(g)}" if g else t for t, g in zip(texts, tags)]
    return Prepared(ids, texts, split, interactions.user_ids, len(interactions.users), interactions.dropped)


def evaluate(score, users, targets, histories, cold: np.ndarray) -> dict:
    from tunelab.apps.recommend.ranking import metrics, ranks

    rank = ranks(score, users, targets, histories)
    out = metrics(rank)
    if cold.any():
        out.update({f"cold_{k}": v for k, v in metrics(rank[cold]).items()})
    return out


def build(config, retrain: bool = False, quiet: bool = False) -> dict:
    """Everything above; writes app_dir/report.json and report.md, the item vectors and the trained encoder."""
    from tunelab.apps.recommend import baselines as cf, sequence
    from tunelab.apps.recommend.ranking import coverage
    from tunelab.apps.recommend.towers import hybrid_scorer, text_scorer
    from tunelab.errors import TunelabError

    say = (lambda m: None) if quiet else (lambda m: print(m, flush=True))
    started = time.perf_counter()
    data = prepare(config)
    split, items = data.split, len(data.item_ids)
    users = np.flatnonzero(split.test >= 0)
    if not len(users):
        raise TunelabError(f"{config.interactions}: no user has 3 or more interactions, so none can be held out")
    hv, ht = split.history("validation"), split.history("test")
    seen = np.zeros(items, dtype=bool)
    seen[np.concatenate(ht)] = True
    cold = ~seen[split.test[users]]  # test cases whose item nobody took in training or validation
    app_dir = config.app_dir
    app_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"users": split.users, "items": items, "interactions": data.interactions, "dropped": data.dropped,
                    "test_cases": int(len(users)), "cold_test_cases": int(cold.sum()),
                    "items_without_training_interactions": int((~seen).sum()),
                    "density": data.interactions / max(split.users * items, 1),
                    "protocol": "leave-last-out by time per user; settings chosen on validation, refitted on training "
                                "+ validation, full ranking over the items the user has not taken"}
    models: dict = {}

    def measure(name: str, scorer_for, grid: list[dict]):
        """Choose `name`'s settings on validation, refit them on training + validation, measure on test."""
        best, best_ndcg = None, -1.0
        for settings in grid:
            ndcg = evaluate(scorer_for(hv, settings), users, split.validation[users], hv, np.zeros(0, bool))["ndcg_at_10"]
            if ndcg > best_ndcg:
                best, best_ndcg = settings, ndcg
        scorer = scorer_for(ht, best)
        figures = evaluate(scorer, users, split.test[users], ht, cold)
        figures.update(settings=best, validation_ndcg_at_10=best_ndcg,
                       catalogue_coverage_at_10=coverage(scorer, users, ht, items))
        say(f"{name}: test NDCG@10 {figures['ndcg_at_10']:.4f}, Recall@10 {figures['recall_at_10']:.4f} ({best})")
        models[name] = (scorer_for, best)
        return figures

    for name in config.baselines:
        report[name] = measure(name, lambda h, s, n=name: cf.fit(n, h, items, s, config.seed), cf.GRIDS[name])

    encoder = _item_encoder(config, hv, data.texts, retrain, quiet, report)
    say(f"text: embedding {items} items")
    vectors = encoder.encode(data.texts)
    t = config.tower
    grid = [{"recent": r, "decay": d} for r in t.recent for d in t.decay]
    report["text"] = measure("text", lambda h, s: text_scorer(h, vectors, **s), grid)
    side, model = "text", None  # the hybrid's text side: the mean, or the sequence tower where it validates better
    if config.sequence.epochs:
        def on_validation(model):
            scores = sequence.scorer(model, hv)
            return evaluate(scores, users, split.validation[users], hv, np.zeros(0, bool))["ndcg_at_10"]

        model = _sequence_tower(config, hv, vectors, on_validation, retrain, quiet, report)
        report["sequence"] = measure("sequence", lambda h, s: sequence.scorer(model, h), [config.sequence.model_dump()])
        if report["sequence"]["validation_ndcg_at_10"] > report["text"]["validation_ndcg_at_10"]:
            side = "sequence"

    def text_side(h):
        return sequence.scorer(model, h) if side == "sequence" else text_scorer(h, vectors, **models["text"][1])

    serving = {"text": models["text"][1], "side": side, "weight": 1.0, "knn": None}
    if "item_knn" in report:  # the hybrid's partner: it scores any history (a new user's too) without refitting
        knn_settings = models["item_knn"][1]

        def hybrid_for(h, s):
            return hybrid_scorer(text_side(h), cf.fit("item_knn", h, items, knn_settings, config.seed), s["weight"])
        report["hybrid"] = measure("hybrid", hybrid_for, [{"text_side": side, "weight": w} for w in config.hybrid_weights])
        serving.update(weight=models["hybrid"][1]["weight"], knn=knn_settings)
    write_serving(config, data, vectors, serving)
    report["serving"] = serving
    report["seconds"] = round(time.perf_counter() - started, 1)
    (app_dir / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    (app_dir / "report.md").write_text(_markdown(report), encoding="utf-8")
    return report


def _item_encoder(config, histories, texts, retrain: bool, quiet: bool, report: dict):
    """The item tower as served: trained (reused when there is one; an interrupted training resumes) or the base
    encoder, exported for the backend (int8 ONNX by default, checked against torch). -> an Encoder."""
    from tunelab.apps.recommend.towers import sequence_pairs
    from tunelab.apps.encoder import Encoder, export_unless_current, train_encoder
    from tunelab.hub import resolve_model

    t = config.tower
    source, fresh = Path(resolve_model(t.model)), False
    if t.epochs:
        source = config.app_dir / ENCODER
        if retrain or not (source / "modules.json").is_file():
            pairs = sequence_pairs(histories, texts, t.max_pairs, config.seed)
            if not quiet:
                print(f"text: fine-tuning {t.model} on {len(pairs)} consecutive-interaction pairs ({t.epochs} epochs)")
            report["tower_training"] = train_encoder(t.model, pairs, source, t, quiet=quiet, retrain=retrain, name="item tower")
            fresh = True
    folder = encoder_folder(config)  # with backend torch: `source` itself
    if config.backend != "torch":
        sample = [texts[i] for i in np.random.default_rng(config.seed).choice(len(texts), min(500, len(texts)),
                                                                              replace=False)]
        report["tower_export"] = export_unless_current(source, folder, "int8" if config.backend == "onnx-int8" else None,
                                                       sample, t.max_length, fresh or retrain)
    return Encoder(folder, t.max_length)


def _sequence_tower(config, histories, vectors: np.ndarray, validate, retrain: bool, quiet: bool, report: dict):
    """The sequence user tower, trained on the training histories (early-stopped by `validate`) and saved beside
    the report; a saved one trained on the same histories, vectors, settings and seed is reused."""
    from types import SimpleNamespace

    from tunelab.apps.recommend import sequence

    settings = config.sequence.model_dump()
    key = sequence.fingerprint(histories, vectors, settings, config.seed)
    about = sequence.saved_about(config.app_dir)
    if not retrain and about and about.get("fingerprint") == key:
        report["sequence_training"] = {**about["training"], "reused": True}
        return sequence.load(config.app_dir, vectors)
    if not quiet:
        print(f"sequence: training the user tower on {len(histories)} histories (at most {settings['epochs']} epochs)")
    model, info = sequence.train_sequence(histories, vectors, validate, SimpleNamespace(**settings), config.seed, quiet)
    sequence.save(model, config.app_dir, {"fingerprint": key, "training": info})
    report["sequence_training"] = info
    return model


def encoder_folder(config) -> Path:
    """Where the served item tower is: its export for the backend, or the torch folder."""
    from tunelab.hub import resolve_model

    if config.backend == "torch":
        return config.app_dir / ENCODER if config.tower.epochs else Path(resolve_model(config.tower.model))
    return config.app_dir / f"{ENCODER}-{config.backend.removesuffix('-fp32')}"


def write_serving(config, data: Prepared, vectors: np.ndarray, serving: dict) -> None:
    """What the server loads: the items and their vectors, every user's history (all interactions, time order),
    the item-kNN similarity over all interactions, the chosen settings."""
    import scipy.sparse as sp

    from tunelab.apps.recommend import baselines as cf

    split = data.split
    histories = [np.append(h, t) if t >= 0 else h for h, t in zip(split.history("test"), split.test)]
    app_dir = config.app_dir
    np.save(app_dir / VECTORS, vectors)
    (app_dir / ITEMS).write_text(json.dumps({"ids": data.item_ids, "texts": data.texts}, ensure_ascii=False),
                                 encoding="utf-8")
    np.savez(app_dir / HISTORIES, items=np.concatenate(histories), starts=np.cumsum([0] + [len(h) for h in histories]))
    (app_dir / USERS).write_text(json.dumps(data.user_ids), encoding="utf-8")
    if serving["knn"] is not None:
        sp.save_npz(app_dir / SIMILARITY, cf.knn_similarity(histories, len(data.item_ids),
                                                            serving["knn"]["neighbours"]))
    (app_dir / SERVING).write_text(json.dumps(serving, indent=1))


MODEL_NAMES = {"popularity": "popularity", "item_knn": "item-kNN", "als": "ALS (implicit)", "bpr": "BPR (implicit)",
               "text": "text two-tower", "sequence": "sequence tower", "hybrid": "hybrid (text + collaborative)"}


def _markdown(report: dict) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    lines = ["# Recommender build", "",
             f"{report['users']} users, {report['items']} items, {report['interactions']} interactions (density "
             f"{report['density']:.4%}); {report['test_cases']} test cases, {report['cold_test_cases']} of them on "
             "an item with no training interactions (cold).", "", f"Protocol: {report['protocol']}.", "",
             "| model | NDCG@10 | Recall@10 | NDCG@20 | Recall@20 | cold Recall@10 | coverage@10 | settings |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for key, name in MODEL_NAMES.items():
        if key in report:
            r = report[key]
            lines.append(f"| {name} | {f(r['ndcg_at_10'])} | {f(r['recall_at_10'])} | {f(r['ndcg_at_20'])} | "
                         f"{f(r['recall_at_20'])} | {f(r.get('cold_recall_at_10'))} | {f(r['catalogue_coverage_at_10'])} "
                         f"| {r['settings']} |")
    return "\n".join(lines) + "\n"
