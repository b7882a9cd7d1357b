"""The recommender: files checked, the time split per user, tags without leaks, full-ranking metrics, the
baselines and the text towers, and a whole build on a small synthetic catalogue (tiny BERT item tower)."""

import json

import numpy as np
import pytest

from tunelab.apps.recommend.data import read_interactions, read_items, split_by_time
from tunelab.apps.recommend.ranking import metrics, ranks
from tunelab.errors import DataError


class Columns:
    user, item, timestamp, rating, tag, item_id = "user_id", "item_id", "timestamp", "rating", "tag", "item_id"
    item_text, list_separator = ["title", "genres"], "|"


ITEMS = "item_id,title,genres\n1,Alpha,Drama|War\n2,Beta,Comedy\n3,Gamma,\n4,Delta,Horror\n"


def test_items_and_interactions_read_split_by_time_and_leave_repeats_out(tmp_path):
    (tmp_path / "items.csv").write_text(ITEMS)
    ids, texts, code = read_items(tmp_path / "items.csv", Columns)
    assert ids == ["1", "2", "3", "4"] and texts[0] == "Alpha. genres: Drama, War" and texts[2] == "Gamma"
    rows = ("user_id,item_id,rating,timestamp\n"
            "u1,1,5,100\nu1,2,4,300\nu1,3,1,200\nu1,4,5,400\nu1,2,5,500\n"  # u1 by time: 1, 3, 2, 4 (2 again: left out)
            "u2,4,3,2020-01-01T00:00:00Z\nu2,1,4,2019-01-01\n")  # two interactions: trained on only
    (tmp_path / "ratings.csv").write_text(rows)
    inter = read_interactions(tmp_path / "ratings.csv", Columns, code, tmp_path / "items.csv", None)
    assert inter.dropped == {"repeated (user, item)": 1} and inter.user_ids == ["u1", "u2"]
    split = split_by_time(inter, len(ids))
    assert split.test.tolist() == [3, -1] and split.validation.tolist() == [1, -1]  # u1: 4 last, 2 before it
    history = split.history("validation")
    assert history[0].tolist() == [0, 2] and history[1].tolist() == [0, 3]  # u2 in time order: 1 then 4
    assert split.history("test")[0].tolist() == [0, 2, 1]
    rated = read_interactions(tmp_path / "ratings.csv", Columns, code, tmp_path / "items.csv", 4.0)
    assert rated.dropped["below min_rating"] == 2


@pytest.mark.parametrize("ratings, items, message", [
    ("user_id,item_id,timestamp\nu,1,10\nu,9,11\n", None, "ratings.csv:line 3: column 'item_id': no item has the id '9'"),
    ("user_id,item_id,timestamp\nu,1,10\nu,2,yesterday\n", None, "ratings.csv:line 3: column 'timestamp': 'yesterday' is not a timestamp"),
    ("user,item_id,timestamp\nu,1,10\n", None, "missing column 'user_id' (user); the header has: 'user', 'item_id', 'timestamp' (set columns.user)"),
    (None, "item_id,title,genres\n1,A,x\n1,B,y\n", "items.csv:line 3: column 'item_id': the id '1' is on line 2 too"),
    (None, "item_id,title,genres\n1,A,x\n2,,\n", "items.csv:line 3: the item '2' has no text in title, genres"),
])
def test_bad_rows_are_named_with_file_line_and_column(tmp_path, ratings, items, message):
    (tmp_path / "items.csv").write_text(items or ITEMS)
    (tmp_path / "ratings.csv").write_text(ratings or "user_id,item_id,timestamp\nu,1,1\n")
    with pytest.raises(DataError) as err:
        _, _, code = read_items(tmp_path / "items.csv", Columns)
        read_interactions(tmp_path / "ratings.csv", Columns, code, tmp_path / "items.csv", None)
    assert message in str(err.value)


def test_tags_count_only_training_time_and_never_a_users_held_out_items(tmp_path):
    from tunelab.apps.recommend.data import item_tags

    (tmp_path / "items.csv").write_text(ITEMS)
    ids, _, code = read_items(tmp_path / "items.csv", Columns)
    (tmp_path / "r.csv").write_text("user_id,item_id,timestamp\nu,1,10\nu,2,20\nu,3,30\nu,4,40\n")
    inter = read_interactions(tmp_path / "r.csv", Columns, code, tmp_path / "items.csv", None)
    split = split_by_time(inter, 4)  # u: train 1, 2; validation 3; test 4
    (tmp_path / "tags.csv").write_text("user_id,item_id,tag,timestamp\n"
                                       "u,1,Classic,15\n"  # training time: counted (lower-cased)
                                       "u,2,late,35\n"  # after u's last training interaction: not counted
                                       "u,4,spoiler,15\n"  # on u's test item: not counted
                                       "v,4,scary,5\nw,4,scary,6\nw,4,fun,7\n"  # others, before the end: counted
                                       "v,3,future,99\n")  # a user with no interactions, after the data's end
    tags = item_tags(tmp_path / "tags.csv", Columns, code, {"u": 0}, split, np.array([20]), per_item=5)
    assert tags == [["classic"], [], [], ["scary", "fun"]]


def test_ranks_skip_the_history_and_break_ties_against_the_target():
    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.5, 0.5, 0.5, 0.5]])
    histories = [np.array([0]), np.array([], dtype=np.int64)]
    rank = ranks(lambda users: scores[users], np.array([0, 1]), np.array([2, 3]), histories)
    assert rank.tolist() == [1, 3]  # item 0 is in user 0's history; a four-way tie puts the target last
    m = metrics(rank, ks=(2,))
    assert m["recall_at_2"] == 0.5 and m["ndcg_at_2"] == pytest.approx(0.5 / np.log2(3))


def test_item_knn_recommends_what_similar_users_took_and_factorisation_runs_seeded():
    from tunelab.apps.recommend.baselines import fit

    histories = [np.array([0, 1]), np.array([0, 1]), np.array([2, 3]), np.array([2, 3]), np.array([0])]
    knn = fit("item_knn", histories, 5, {"neighbours": 2})
    assert knn(np.array([4]))[0].argmax() == 1  # took 0; those who took 0 took 1
    als = [fit("als", histories, 5, {"factors": 4, "regularization": 0.01, "alpha": 1.0, "iterations": 5}, seed=1)(np.arange(5))
           for _ in range(2)]
    assert np.allclose(als[0], als[1])


def test_user_tower_weights_recent_items_and_hybrid_standardises_both_sides():
    from tunelab.apps.recommend.towers import hybrid_scorer, sequence_pairs, user_vectors

    vectors = np.eye(3, dtype=np.float32)
    users = user_vectors([np.array([0, 1]), np.array([], dtype=np.int64)], vectors, recent=2, decay=0.5)
    assert np.allclose(users[0], np.array([0.5, 1, 0]) / np.linalg.norm([0.5, 1, 0])) and not users[1].any()
    assert np.allclose(user_vectors([np.array([0, 1])], vectors, recent=1, decay=1.0)[0], [0, 1, 0])
    text = lambda u: np.array([[1.0, 2.0, 3.0]])  # noqa: E731
    collaborative = lambda u: np.array([[300.0, 200.0, 100.0]])  # noqa: E731 -- another scale entirely
    assert hybrid_scorer(text, collaborative, 0.5)(None)[0] == pytest.approx([0, 0, 0], abs=1e-5)
    assert hybrid_scorer(text, collaborative, 0.8)(None)[0].argmax() == 2
    pairs = sequence_pairs([np.array([0, 1, 1, 2])], ["a", "b", "c"], 10, 0)
    assert pairs == [("a", "b", "1"), ("b", "c", "2")]  # an item followed by itself is no pair


SEQUENCE = "sequence:\n  dim: 16\n  heads: 2\n  layers: 1\n  max_len: 8\n  dropout: 0.0\n  learning_rate: 0.01\n" \
           "  epochs: 30\n  patience: 10\n  batch_size: 16\n"


def _synthetic(folder, users=60, seed=0):
    """Two tastes (war films, comedies); each user takes 8 films of theirs in series order (film i, then i + 1, ...,
    round the 20 of the taste), from a random first one: what comes next is in the order, not in the titles."""
    rng = np.random.default_rng(seed)
    films = [(i, f"{kind} film number {i}", kind) for i, kind in enumerate(["war"] * 20 + ["comedy"] * 20)]
    (folder / "items.csv").write_text("item_id,title,genres\n" + "".join(f"{i},{t},{g}\n" for i, t, g in films))
    rows = []
    for u in range(users):
        first, start = (0 if u % 2 else 20), int(rng.integers(20))
        for t in range(8):
            rows.append(f"u{u},{first + (start + t) % 20},{1000 + 10 * t}\n")
    (folder / "ratings.csv").write_text("user_id,item_id,timestamp\n" + "".join(rows))


@pytest.fixture(scope="module")
def built_recommender(tmp_path_factory, tiny_model_dir):
    """The synthetic catalogue built once through init's config (tiny BERT item tower, exported to int8 ONNX; a
    small sequence tower)."""
    from tunelab.apps.recommend.build import build, init
    from tunelab.apps.recommend.config import load_recommend_config

    folder = tmp_path_factory.mktemp("recommend")
    _synthetic(folder)
    path = init(folder / "app", folder / "ratings.csv", folder / "items.csv")
    path.write_text(path.read_text() + f"baselines: [popularity, item_knn]\ntower:\n  model: {tiny_model_dir}\n"
                    "  epochs: 1\n  batch_size: 8\n  max_pairs: 200\n  recent: [3]\n  decay: [1.0]\n"
                    "hybrid_weights: [0.0, 0.5, 0.8, 1.0]\n" + SEQUENCE)
    config = load_recommend_config(path)
    return config, build(config, quiet=True)


def test_build_measures_every_model_on_the_same_cases_and_writes_its_report(built_recommender):
    from tunelab.apps.recommend.build import ITEMS as ITEMS_FILE, VECTORS, build

    config, report = built_recommender
    assert report["test_cases"] == 60 and report["users"] == 60 and report["items"] == 40
    for name in ("popularity", "item_knn", "text", "sequence", "hybrid"):
        r = report[name]
        assert 0 <= r["ndcg_at_10"] <= r["recall_at_10"] <= r["recall_at_20"] <= 1 and "settings" in r
    # item-kNN knows the two tastes: better than popularity, which cannot tell them apart
    assert report["item_knn"]["recall_at_10"] > report["popularity"]["recall_at_10"]
    # what comes next is in the order, which the sequence tower reads and a mean of (untrained) title vectors cannot
    assert report["sequence"]["ndcg_at_10"] >= 0.9 > report["text"]["ndcg_at_10"]
    assert report["serving"]["side"] == report["hybrid"]["settings"]["text_side"] == "sequence"
    assert report["serving"]["knn"] == report["item_knn"]["settings"] and report["tower_training"]["pairs"] == 200
    assert report["sequence_training"]["best_epoch"] <= report["sequence_training"]["epochs_run"] <= 30
    assert np.load(config.app_dir / VECTORS).shape[0] == 40
    assert len(json.loads((config.app_dir / ITEMS_FILE).read_text())["ids"]) == 40
    assert "| sequence tower |" in (config.app_dir / "report.md").read_text()
    again = build(config, quiet=True)  # the same data and settings: both trained towers are reused, figures equal
    assert again["sequence_training"]["reused"] and "tower_training" not in again
    assert again["hybrid"]["ndcg_at_10"] == report["hybrid"]["ndcg_at_10"]


def test_init_reads_the_headers_and_build_writes_what_the_server_loads(built_recommender, tmp_path):
    from tunelab.apps.recommend.build import HISTORIES, SERVING, SIMILARITY, init

    config, report = built_recommender
    assert config.columns.item_text == ["title", "genres"] and config.tags is None
    assert report["tower_export"]["quantize"] == "int8" and report["tower_export"]["min_cosine"] >= 0.98
    serving = json.loads((config.app_dir / SERVING).read_text())
    assert serving["knn"] == report["item_knn"]["settings"] and serving["weight"] == report["hybrid"]["settings"]["weight"]
    with np.load(config.app_dir / HISTORIES) as h:
        assert len(h["items"]) == 60 * 8  # every interaction, held-out ones included: the server knows them all
    assert (config.app_dir / SIMILARITY).is_file()
    from tunelab.errors import TunelabError

    with pytest.raises(TunelabError, match="exists; edit it"):
        init(config.source.parent, tmp_path / "x.csv")
    with pytest.raises(TunelabError, match="--interactions .* does not exist"):
        init(tmp_path / "new", tmp_path / "x.csv", tmp_path / "y.csv")


@pytest.mark.parametrize("app", ["recommend", "support", "finance"])
def test_an_apps_build_command_takes_overrides_as_train_does(app, tmp_path):
    """`tunelab app NAME build CFG KEY=VALUE`: the overrides reach the config loader, which names a bad key."""
    from typer.testing import CliRunner

    from tunelab.cli import app as cli
    from tunelab.errors import ConfigError

    config = tmp_path / f"{app}.yaml"
    config.write_text(f"app: {app}\n", encoding="utf-8")
    done = CliRunner().invoke(cli, ["app", app, "build", str(config), "no_such_key=1"])
    assert isinstance(done.exception, ConfigError) and "no_such_key" in str(done.exception)


def test_served_recommendations_for_users_histories_and_new_items(built_recommender, tmp_path):
    import httpx

    from servers import Server
    from tunelab.apps.recommend.build import HISTORIES, USERS
    from tunelab.config import ServeConfig
    from tunelab.serve.app import create_app

    config, _ = built_recommender
    config = config.model_copy(update={"database": f"sqlite:///{tmp_path / 'rec.db'}"})
    users = json.loads((config.app_dir / USERS).read_text())
    with np.load(config.app_dir / HISTORIES) as h:
        first = h["items"][h["starts"][0]:h["starts"][1]]
    settings = ServeConfig(monitor={"enabled": False})
    with Server(create_app(settings=settings, app_config=config)) as s:
        got = httpx.post(f"{s.url}/v1/recommend", json={"user_id": users[0], "k": 5}).json()
        ids = [i["item_id"] for i in got["items"]]
        assert len(ids) == 5 and not {str(i) for i in first} & set(ids) and got["history_length"] == 8
        scores = [i["score"] for i in got["items"]]
        assert scores == sorted(scores, reverse=True)
        series = httpx.post(f"{s.url}/v1/recommend", json={"history": ["3", "4", "5"], "k": 1}).json()["items"]
        assert series[0]["item_id"] == "6"  # the sequence tower serves what comes next in the order
        history = httpx.post(f"{s.url}/v1/recommend", json={"history": ["1", "2", "zzz"], "k": 3, "exclude": ["3"]}).json()
        assert history["unknown_items"] == ["zzz"] and not {"1", "2", "3"} & {i["item_id"] for i in history["items"]}
        added = httpx.post(f"{s.url}/v1/items", json={"items": [{"item_id": "new-1", "text": "war film number 99"}]})
        assert added.status_code == 200 and added.json()["catalogue"] == 41
        everything = httpx.post(f"{s.url}/v1/recommend", json={"history": ["1"], "k": 40}).json()["items"]
        assert "new-1" in {i["item_id"] for i in everything}  # recommendable at once, from its text alone
        again = httpx.post(f"{s.url}/v1/items", json={"items": [{"item_id": "new-1", "text": "again"}, {"item_id": "n2", "text": "x"}]})
        assert again.status_code == 409 and "new-1" in again.json()["error"]["message"]
        assert httpx.post(f"{s.url}/v1/recommend", json={"user_id": "nobody"}).status_code == 404
        assert httpx.post(f"{s.url}/v1/recommend", json={"user_id": users[0], "history": ["1"]}).status_code == 422
        assert httpx.post(f"{s.url}/v1/recommend", json={"history": ["zzz"]}).json()["error"]["code"] == "unknown_items"
        stats = httpx.get(f"{s.url}/v1/recommend/stats").json()
        assert stats["requests"] == 4 and stats["catalogue"] == 41 and 0 < stats["catalogue_coverage"] <= 1
        assert "tunelab_recommend_catalogue_coverage" in httpx.get(f"{s.url}/metrics").text
    with Server(create_app(settings=settings, app_config=config)) as s:  # added items are kept
        assert httpx.get(f"{s.url}/v1/recommend/stats").json()["catalogue"] == 41



def test_tune_searches_the_recommenders_settings_each_trial_a_build(built_recommender):
    """`tunelab tune recommend.yaml`: a grid over the sequence tower's width, each trial a build scored by the
    served model's validation NDCG@10, the trained item tower reused, best.yaml a config that builds the best."""
    import csv

    from typer.testing import CliRunner

    from tunelab.apps import app_search, load_app_config
    from tunelab.apps.recommend.config import load_recommend_config
    from tunelab.apps.recommend.tune import served_validation
    from tunelab.cli import app as cli
    from tunelab.errors import ConfigError, TunelabError
    from tunelab.tuning.run import run_search

    config, _ = built_recommender
    path = config.source.parent / "search.yaml"  # the same app folder: trials start from its trained towers
    path.write_text(config.source.read_text() + "tune:\n  sampler: grid\n  space:\n    sequence.dim: [8, 16]\n")
    result = run_search(app_search(load_app_config(path)), quiet=True)
    assert result.states == {"complete": 2}
    rows = list(csv.DictReader(open(config.app_dir / "tune" / "trials.csv", encoding="utf-8")))
    for row in rows:
        trial = json.loads((config.app_dir / f"trial-{row['number']}" / "report.json").read_text())
        assert float(row["value"]) == pytest.approx(served_validation(trial))
        assert "tower_training" not in trial  # the app's trained item tower, reused
        same = int(row["sequence.dim"]) == config.sequence.dim  # the app's own sequence tower, where it fits
        assert trial["sequence_training"].get("reused", False) is same
        assert json.loads((config.app_dir / f"trial-{row['number']}" / "sequence.json").read_text())["shape"]["dim"] == int(row["sequence.dim"])
    best = max(rows, key=lambda r: float(r["value"]))
    rebuilt = load_recommend_config(config.app_dir / "tune" / "best.yaml")
    assert rebuilt.sequence.dim == int(best["sequence.dim"]) and rebuilt.name == "recommend-best" and rebuilt.tune is None
    again = CliRunner().invoke(cli, ["tune", str(path)])  # the command: the study is done, nothing runs again
    assert again.exit_code == 0 and "2 trials (2 complete); 0." in again.output, again.output
    assert f"best: trial {best['number']}, validation ndcg_at_10" in again.output

    path.write_text(config.source.read_text() + "tune:\n  space:\n    sequence.dimm: [8]\n")
    with pytest.raises(ConfigError, match="'sequence.dimm' does not fit the recommender's config"):
        app_search(load_app_config(path))
    path.write_text(config.source.read_text() + "tune:\n  space:\n    interactions: [a.csv]\n")
    with pytest.raises(ConfigError, match="interactions cannot be searched"):
        app_search(load_app_config(path))
    done = CliRunner().invoke(cli, ["tune", str(path), "--retrain-best"])
    assert isinstance(done.exception, TunelabError) and "tunelab app NAME build" in str(done.exception)
