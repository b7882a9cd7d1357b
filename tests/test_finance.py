"""The finance app: watchlist matching, item validation, the surge detector, the store, and the whole app served
(tiny 3-class sentiment model built by `build`: trained, exported to int8 ONNX, evaluated)."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from servers import Server, free_port, headless_page, wait_until
from tunelab.apps.finance.detector import SurgeDetector
from tunelab.apps.finance.ingest import Item, parse_item
from tunelab.apps.finance.store import FinanceStore, Scored
from tunelab.apps.finance.watchlist import read_watchlist
from tunelab.errors import TunelabError

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WATCHLIST = """name,aliases,ticker,sector
Nokia,Nokia Oyj|Nokia Corporation,NOKIA,Technology
Stora Enso,,STERV,Materials
Fiskars,,FSKRS,Consumer
UPM-Kymmene,UPM,UPM,Materials
"""
NEGATIVE = ["profit fell sharply", "shares plunged", "loss widened", "cuts hundreds of jobs", "warns on weak sales"]
POSITIVE = ["profit rose strongly", "shares jumped", "record sales", "raises its guidance", "wins a large order"]
NEUTRAL = ["holds its annual meeting", "appoints a board member", "publishes its report", "moves its office",
           "presents at a conference"]
FIRMS = ["Acme", "Borealis", "Corvid", "Dunlin", "Egret", "Fulmar"]


def finance_rows(n: int, seed: int = 0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label, phrases = [("negative", NEGATIVE), ("neutral", NEUTRAL), ("positive", POSITIVE)][i % 3]
        rows.append((f"{rng.choice(FIRMS)} {rng.choice(phrases)} in quarter {i}", label))
    return rows


# ---------------------------------------------------------------- watchlist


def test_watchlist_matches_names_aliases_and_tickers_on_word_boundaries(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text(WATCHLIST, encoding="utf-8")
    w = read_watchlist(path)
    assert w.find("NOKIA OYJ's results beat forecasts; Stora-Enso slips") == ["Nokia", "Stora Enso"]
    assert w.find("nokia corporation and upm") == ["Nokia", "UPM-Kymmene"]
    assert w.find("Nokian Tyres rallied") == []  # a longer word is another company
    assert w.find("traders said $fskrs rose") == ["Fiskars"]  # a cashtag in any case
    assert w.find("FSKRS rose") == ["Fiskars"] and w.find("fskrs rose") == []  # a bare ticker only as written
    assert w.find("UPM-Kymmene and UPM") == ["UPM-Kymmene"]  # once per text
    assert w.sector("Stora Enso") == "Materials" and w.link("Nokia Oyj") == "Nokia" and w.link("Nokia Tyres") is None


@pytest.mark.parametrize("content, message", [
    ("company,ticker\nNokia,NOKIA\n", "needs a 'name' column"),
    ("name,aliases\nNokia,\nNokia,\n", "line 3: Nokia is listed twice"),
    ("name,aliases\nNokia,\n,x\n", "line 3: name is empty"),
    ("name,aliases\nNokia,Fiskars\nFiskars,\n", "'Fiskars' names both Nokia and Fiskars"),
    ("name,rating\nNokia,A\n", "unknown column(s) rating"),
    ("name,ticker\nNokia,NO KIA\n", "line 2: ticker 'NO KIA'"),
    ("name\n", "names no company"),
])
def test_watchlist_errors_name_the_line(tmp_path, content, message):
    path = tmp_path / "w.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TunelabError, match=None) as err:
        read_watchlist(path)
    assert message in str(err.value)


# ---------------------------------------------------------------- items


def test_items_are_checked_one_by_one_with_a_reason():
    assert parse_item({"text": "x", "timestamp": "2026-03-01T09:30:00Z"}).published_s == 1772357400
    assert parse_item({"text": "x", "timestamp": "2026-03-01T09:30:00"}).published_s == 1772357400  # no zone: UTC
    assert parse_item({"text": "x", "timestamp": "2026-03-01T10:30:00+01:00"}).published_s == 1772357400
    assert parse_item({"text": "x", "timestamp": 1772357400.7}).published_s == 1772357400
    assert parse_item({"text": "x"}, now_s=5.0) == Item("x", 5)
    assert "milliseconds" in parse_item({"text": "x", "timestamp": 1772357400000})
    assert "not an ISO 8601 time" in parse_item({"text": "x", "timestamp": "yesterday"})
    assert "unknown field(s) sentiment" in parse_item({"text": "x", "sentiment": 1})
    assert parse_item({"text": "  "}) == "text is only whitespace"
    assert parse_item({"texts": "x"}).startswith("unknown field(s) texts")
    assert "lone surrogate" in parse_item({"text": "a\ud800b"})
    assert "JSON object" in parse_item(["x"])
    assert "timestamp must be" in parse_item({"text": "x", "timestamp": True})


# ---------------------------------------------------------------- detector


def _stream(detector, company, shares, seed=0, start=0):
    rng = random.Random(seed)
    fired = []
    for i, share in enumerate(shares):
        surge = detector.observe(company, start + i, rng.random() < share, (start + i) * 600.0)
        if surge is not None:
            fired.append((i, surge))
    return fired


def test_detector_is_quiet_in_control_and_fires_early_in_a_surge():
    d = SurgeDetector(prior_share=0.12)
    assert _stream(d, "A", [0.12] * 600, seed=1) == []  # 600 texts at the usual share: nothing
    fired = _stream(d, "A", [0.6] * 60, seed=2, start=600)
    assert len(fired) == 1  # one surge, one alert (the cooldown holds the rest of it)
    i, surge = fired[0]
    assert i < 30 and surge.negative >= 4 and surge.share_negative > 0.4 and 0.05 < surge.baseline < 0.3
    assert len(surge.text_ids) == surge.texts and surge.text_ids[:surge.negative] == sorted(surge.text_ids[:surge.negative])


def test_detector_judges_each_company_against_its_own_baseline():
    d = SurgeDetector(prior_share=0.12)
    assert _stream(d, "gloomy", [0.45] * 400, seed=3) == []  # always this negative: its baseline, not a surge
    assert _stream(d, "calm", [0.05] * 300, seed=4)  == []
    assert len(_stream(d, "calm", [0.45] * 80, seed=5, start=300)) == 1  # the same share is a surge for a calm one


def test_a_burst_of_bad_news_alerts_on_its_rate_where_the_share_barely_moves():
    def run(rate_factor):
        d = SurgeDetector(prior_share=0.12, rate_factor=rate_factor)
        rng, fired, t = random.Random(11), [], 0.0
        for i in range(400):  # a text an hour, 12% negative
            t += 3600
            d.observe("A", i, rng.random() < 0.12, t)
        for i in range(400, 460):  # then a text every two minutes, 20% negative
            t += 120
            if d.observe("A", i, rng.random() < 0.2, t) is not None:
                fired.append(i - 400)
        return fired
    share_only, both = run(None), run(4.0)
    assert len(both) == 1 and both[0] + 10 <= (share_only or [60])[0], (share_only, both)


def test_detector_needs_min_negative_texts():
    d = SurgeDetector(threshold=1.0, min_negative=3)
    assert d.observe("A", 1, True, 0) is None and d.observe("A", 2, True, 1) is None  # sum over 1, but 2 negatives
    assert d.observe("A", 3, True, 2) is not None


# ---------------------------------------------------------------- store


def scored(text, t, negative=False, companies=(("Nokia", "Technology"),), score=None):
    score = score if score is not None else (-0.8 if negative else 0.5)
    return Scored(text, t, None, None, "negative" if negative else "positive", score, {}, negative, list(companies))


def test_store_dedups_by_text_and_groups_the_index_by_bucket(tmp_path):
    store = FinanceStore(f"sqlite:///{tmp_path / 'f.db'}")
    day = 86400 * 20000
    got = store.add([scored("Nokia  profit fell", day + 10, True), scored("Nokia profit fell", day + 20, True),
                     scored("Nokia wins order", day + 3700), scored("Nokia profit rose", day + 86400 + 5, score=0.9)])
    assert [new for _, new in got] == [True, False, True, True] and got[1][0] == got[0][0]  # spacing: same text
    again = store.add([scored("Nokia wins order", day + 99999)])
    assert again == [(got[2][0], False)] and store.count() == 3
    hours = store.index("company", "hour", day, day + 2 * 86400)
    assert [(r["start_s"] - day, r["texts"], r["negative"]) for r in hours] == [(0, 1, 1), (3600, 1, 0), (86400, 1, 0)]
    days = store.index("sector", "day", day, day + 2 * 86400)
    assert [(r["name"], r["texts"], r["share_negative"], r["score"]) for r in days] == [
        ("Technology", 2, 0.5, round((-0.8 + 0.5) / 2, 4)), ("Technology", 1, 0.0, 0.9)]
    assert store.index("company", "day", day, day + 2 * 86400, names=["Fiskars"]) == []


def test_retention_deletes_old_texts_with_their_mentions(tmp_path):
    import time

    store = FinanceStore(f"sqlite:///{tmp_path / 'f.db'}")
    now = int(time.time())
    store.add([scored("old news", now - 40 * 86400), scored("new news", now - 86400)])
    assert store.purge(30, every_s=0) == 1
    assert [t["text"] for t in store.texts()] == ["new news"]
    assert [r["texts"] for r in store.index("company", "day", 0)] == [1]


# ---------------------------------------------------------------- the app, built and served


def _app_folder(folder: Path, tiny_model_dir, steps: int) -> Path:
    """`tunelab app finance init` over synthetic 3-class phrases, the sentiment run set to the tiny model."""
    from tunelab.apps.finance.build import init

    from conftest import write_csv

    data = write_csv(folder / "sentiment.csv", finance_rows(450))
    watchlist = folder / "companies.csv"
    watchlist.write_text(WATCHLIST, encoding="utf-8")
    config_path = init(folder / "app", data=data, watchlist=watchlist)
    sentiment = folder / "app" / "sentiment.yaml"
    text = sentiment.read_text().replace("name: default", f"name: {tiny_model_dir}").replace("max_length: 128", "max_length: 32")
    sentiment.write_text(text + f"train:\n  learning_rate: 0.003\n  batch_size: 16\n  max_steps: {steps}\n  eval_every: 100\n"
                         "  trackers: []\n  precision: fp32\n")
    return config_path


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir):
    """A finance app over a tiny 3-class model, built once: trained, exported to int8 ONNX, evaluated."""
    from tunelab.apps.finance import load_finance_config
    from tunelab.apps.finance.build import build

    config_path = _app_folder(tmp_path_factory.mktemp("finance"), tiny_model_dir, 400)
    assert "sentiment_layers: 4" in config_path.read_text()  # as the shipped example; here the run itself scores
    config_path.write_text(config_path.read_text().replace("sentiment_layers: 4", "sentiment_layers: null"))
    config = load_finance_config(config_path)
    result = build(config, quiet=True)
    return config_path, config, result


def test_build_trains_exports_and_reports(built):
    config_path, config, result = built
    report = json.loads((result.app_dir / "report.json").read_text())
    assert report["watchlist_companies"] == 4 and "sentiment_teacher" not in report
    assert report["sentiment"]["test"]["accuracy"] >= 0.9  # the synthetic phrases decide the label
    assert report["sentiment"]["export"].endswith("onnx-int8") and report["sentiment"]["export_parity"]["quantize"] == "int8"
    assert "test split: accuracy" in (result.app_dir / "report.md").read_text()


def test_build_again_reuses_the_trained_model(built):
    from tunelab.apps.finance.build import build

    config_path, config, result = built
    model = Path(result.report["sentiment"]["run"]) / "model" / "model.safetensors"
    before = model.stat().st_mtime_ns
    assert build(config, quiet=True).report["sentiment"]["steps"] == result.report["sentiment"]["steps"]
    assert model.stat().st_mtime_ns == before


def test_sentiment_layers_scores_with_a_shallower_model_distilled_from_the_sentiment_run(tmp_path, tiny_model_dir):
    from transformers import AutoConfig

    from tunelab.apps.finance import load_finance_config
    from tunelab.apps.finance.build import build, served_models

    config_path = _app_folder(tmp_path, tiny_model_dir, 800)  # one layer of a tiny random model learns slower
    config = load_finance_config(config_path, ["sentiment_layers=1", "backend=torch"])  # of the tiny model's 2
    report = build(config, quiet=True).report
    teacher, scorer = Path(report["sentiment_teacher"]["run"]), Path(report["sentiment"]["run"])
    assert AutoConfig.from_pretrained(teacher / "model").num_hidden_layers == 2
    assert AutoConfig.from_pretrained(scorer / "model").num_hidden_layers == 1
    card = json.loads((scorer / "model" / "tunelab.json").read_text())
    assert card["distilled_from"] == str((teacher / "model").resolve())
    assert report["sentiment"]["test"]["accuracy"] >= 0.9
    assert served_models(config)["finance-sentiment"] == scorer / "model"
    text = (config.app_dir / "report.md").read_text()
    assert "## sentiment teacher" in text and "test split: accuracy" in text
    (tmp_path / "app" / "runs").rename(tmp_path / "trained")  # the mistake is caught before any training
    with pytest.raises(TunelabError, match="sentiment_layers is 2, but the sentiment model has 2 layers"):
        build(load_finance_config(config_path, ["sentiment_layers=2"]), quiet=True)
    assert not (tmp_path / "app" / "runs").exists()


def _app(config, **monitor):
    from tunelab.config import ServeConfig
    from tunelab.serve.app import create_app

    return create_app(settings=ServeConfig(monitor={"enabled": False, **monitor}), app_config=config)


def _item(text, t, source=None):
    return {"text": text, "timestamp": t, **({"source": source} if source else {})}


def test_served_app_ingests_scores_attributes_and_alerts(built, tmp_path):
    from tunelab.apps.finance import load_finance_config

    config = load_finance_config(built[0], [f"database=sqlite:///{tmp_path / 'served.db'}", "name=served"])
    rng = random.Random(7)
    start = 1772323200  # 2026-03-01
    calm = [_item(f"Nokia {rng.choice(POSITIVE + NEUTRAL)} in quarter {500 + i}", start + i * 3600) for i in range(40)]
    surge = [_item(f"Nokia {rng.choice(NEGATIVE)} in quarter {600 + i}", start + (40 + i) * 3600) for i in range(12)]
    with Server(_app(config)) as s:
        bad = httpx.post(f"{s.url}/v1/finance/ingest", json={"items": [
            {"text": "Fiskars shares jumped", "timestamp": start}, {"text": ""}, {"text": "x", "timestamp": "soon"},
            {"text": "Fiskars  shares jumped", "source": "other wire", "timestamp": start}]})
        body = bad.json()
        assert bad.status_code == 200 and (body["stored"], body["duplicate"], body["rejected"]) == (1, 1, 2)
        assert [r["status"] for r in body["results"]] == ["stored", "rejected", "rejected", "duplicate"]
        assert body["results"][1]["reason"] == "text is missing or empty" and "ISO 8601" in body["results"][2]["reason"]
        assert body["results"][0]["companies"] == ["Fiskars"] and body["results"][3]["id"] == body["results"][0]["id"]
        assert body["results"][0]["label"] == "positive"
        allbad = httpx.post(f"{s.url}/v1/finance/ingest", json={"text": "x", "timestamp": -5})
        assert allbad.status_code == 422 and "items[0]: timestamp -5" in allbad.json()["error"]["message"]
        assert httpx.post(f"{s.url}/v1/finance/ingest", json={"items": []}).status_code == 422

        for chunk in (calm[:20], calm[20:], surge):
            assert httpx.post(f"{s.url}/v1/finance/ingest", json={"items": chunk}).json()["stored"] == len(chunk)
        alerts = httpx.get(f"{s.url}/v1/finance/alerts").json()["alerts"]
        assert [a["company"] for a in alerts] == ["Nokia"]
        alert = httpx.get(f"{s.url}/v1/finance/alerts/{alerts[0]['id']}").json()
        assert alert["negative"] >= 4 and all(t["label"] == "negative" for t in alert["texts"][:alert["negative"]])
        assert len({t["text"] for t in alert["texts"][:alert["negative"]]} & {i["text"] for i in surge}) >= 4
        assert httpx.get(f"{s.url}/v1/finance/alerts/999").status_code == 404

        index = httpx.get(f"{s.url}/v1/finance/index", params={"bucket": "day", "hours": 24 * 30, "names": "Nokia"}).json()
        assert sum(r["texts"] for r in index["rows"]) == 52 and {r["name"] for r in index["rows"]} == {"Nokia"}
        last_day = index["rows"][-1]
        assert last_day["share_negative"] > index["rows"][0]["share_negative"]
        sectors = httpx.get(f"{s.url}/v1/finance/index", params={"by": "sector", "bucket": "day", "hours": 24 * 30}).json()
        assert {r["name"] for r in sectors["rows"]} == {"Technology", "Consumer"}
        movers = httpx.get(f"{s.url}/v1/finance/movers", params={"hours": 12}).json()["movers"]
        assert movers[0]["company"] == "Nokia" and movers[0]["change"] < 0
        texts = httpx.get(f"{s.url}/v1/finance/texts", params={"company": "Fiskars"}).json()["texts"]
        assert [t["text"] for t in texts] == ["Fiskars shares jumped"]
        metrics = httpx.get(f"{s.url}/metrics").text
        assert 'tunelab_finance_alerts_total{company="Nokia"} 1.0' in metrics
        assert 'tunelab_finance_texts_total{status="rejected"} 3.0' in metrics


def test_a_restart_keeps_every_acknowledged_item_and_the_detector_state(built, tmp_path):
    """kill -9 of `tunelab serve --app` between acknowledged batches: everything acknowledged is there after the
    restart, and the detector, rebuilt from the store, stands where the first server's stood."""
    from tunelab.apps.finance import load_finance_config
    from tunelab.apps.finance.ingest import Finance

    config_path, config, _ = built
    db = tmp_path / "kill.db"
    config_path = copy_config(config, tmp_path, f"sqlite:///{db}")
    port = free_port()
    cmd = [sys.executable, "-m", "tunelab", "serve", "--app", str(config_path), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url) or proc.poll() is not None, timeout=120, what="the app server")
        assert proc.poll() is None, proc.stderr.read()
        acknowledged = set()
        for b in range(6):
            items = [_item(f"Nokia {NEGATIVE[i % 5] if b >= 3 else NEUTRAL[i % 5]} batch {b} item {i}", 1772323200 + b * 100 + i)
                     for i in range(10)]
            got = httpx.post(f"{url}/v1/finance/ingest", json={"items": items}).json()
            acknowledged |= {r["id"] for r in got["results"] if r["status"] == "stored"}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    config = load_finance_config(config_path)
    again = Finance(config)
    assert {t["id"] for t in again.store.texts(limit=1000)} == acknowledged and len(acknowledged) == 60
    replayed = SurgeDetector.from_config(config.alerts)
    for text_id, company, negative, at in again.store.replay():
        replayed.observe(company, text_id, negative, at)
    assert again.detector.companies["Nokia"].cusum == pytest.approx(replayed.companies["Nokia"].cusum)


def copy_config(config, folder, database):
    """The built app's config with another database, as a file of its own."""
    import yaml

    raw = {"app": "finance", "name": config.name, "runs_dir": str(config.runs_dir), "sentiment": str(config.sentiment),
           "watchlist": str(config.watchlist), "database": database}
    path = folder / "finance.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _ready(url):
    try:
        return httpx.get(f"{url}/readyz").status_code == 200
    except httpx.TransportError:
        return False


def test_ingest_command_reads_a_file_and_names_bad_lines(built, tmp_path):
    config_path = copy_config(built[1], tmp_path, f"sqlite:///{tmp_path / 'cli.db'}")
    feed = tmp_path / "feed.jsonl"
    feed.write_text("\n".join([json.dumps(_item("Nokia shares plunged today", "2026-03-02T10:00:00Z")),
                               "{not json", json.dumps({"text": "Fiskars record sales"}),
                               json.dumps(_item("Nokia shares plunged today", "2026-03-02T11:00:00Z", "copy"))]) + "\n")
    done = subprocess.run([sys.executable, "-m", "tunelab", "app", "finance", "ingest", str(config_path), str(feed)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{feed}, line 2: not JSON" in done.stderr and "Traceback" not in done.stderr
    assert "2 stored, 1 duplicate, 1 rejected" in done.stdout
    missing = subprocess.run([sys.executable, "-m", "tunelab", "app", "finance", "ingest", str(config_path),
                              str(tmp_path / "nope.jsonl")], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "nope.jsonl does not exist" in missing.stderr


def test_follow_reads_lines_as_they_are_written_and_ctrl_c_stops_cleanly(built, tmp_path):
    from tunelab.apps.finance.store import FinanceStore

    db = tmp_path / "follow.db"
    config_path = copy_config(built[1], tmp_path, f"sqlite:///{db}")
    feed = tmp_path / "live.jsonl"
    feed.write_text(json.dumps(_item("Nokia shares jumped at the open", 1772323200)) + "\n")
    # started with SIGINT ignored, as a job started with `&` from a script is: Ctrl-C (SIGINT) must stop it all the same
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "app", "finance", "ingest", str(config_path), str(feed),
                             "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        def count() -> int:
            import sqlite3

            try:
                with sqlite3.connect(db) as conn:
                    return conn.execute("SELECT count(*) FROM finance_texts").fetchone()[0]
            except sqlite3.Error:  # not created yet
                return 0
        wait_until(lambda: count() == 1 or proc.poll() is not None, timeout=120, what="the first line stored")
        line = json.dumps(_item("Fiskars record sales this year", 1772323260))
        with open(feed, "a") as f:  # a line written in two parts is read once it is whole
            f.write(line[:20])
            f.flush()
            wait_until(lambda: proc.poll() is not None or count() == 1, timeout=5)
            f.write(line[20:] + "\n")
        wait_until(lambda: count() == 2 or proc.poll() is not None, timeout=60, what="the appended line stored")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "2 stored, 0 duplicate, 0 rejected" in out and "Traceback" not in err
    assert sorted(t["text"] for t in FinanceStore(f"sqlite:///{db}").texts()) == [
        "Fiskars record sales this year", "Nokia shares jumped at the open"]


def test_init_and_config_mistakes_are_one_clear_line(tmp_path):
    from tunelab.apps.finance import load_finance_config
    from tunelab.apps.finance.build import init
    from tunelab.errors import ConfigError

    path = init(tmp_path / "mine")
    config = load_finance_config(path)
    assert config.watchlist == (tmp_path / "mine" / "watchlist.csv").resolve() and config.alerts.threshold == 8.0
    with pytest.raises(TunelabError, match="exists"):
        init(tmp_path / "mine")
    (tmp_path / "mine" / "finance.yaml").write_text(path.read_text().replace("shift: 0.3", "shift: 3"))
    with pytest.raises(ConfigError, match="alerts.shift"):
        load_finance_config(path)
    (tmp_path / "mine" / "finance.yaml").write_text(path.read_text().replace("shift: 3", "shfit: 0.3"))
    with pytest.raises(ConfigError, match="alerts.shfit: unknown key; allowed here: shift"):
        load_finance_config(path)


def test_finance_page_in_headless_chromium_shows_the_index_and_alert_texts(built, tmp_path):
    from tunelab.apps.finance import load_finance_config

    config = load_finance_config(built[0], [f"database=sqlite:///{tmp_path / 'page.db'}"])
    hostile = '<img src=x onerror="window.pwned=1">'
    start = 1772323200
    items = [_item(f"Nokia {NEUTRAL[i % 5]} day {i}", start + i * 7200) for i in range(30)]
    items += [_item(f"Nokia {NEGATIVE[i % 5]} {hostile} {i}", start + (30 + i) * 7200) for i in range(12)]
    with Server(_app(config)) as s:
        assert httpx.post(f"{s.url}/v1/finance/ingest", json={"items": items}).json()["stored"] == 42
        with headless_page(1280, 1000) as page:
            page.goto(f"{s.url}/finance")
            page.wait_for_function("window.tunelabFinance.index !== null && document.querySelectorAll('tr.alert').length > 0")
            state = page.evaluate("() => window.tunelabFinance")
            rows = [r for r in state["index"]["rows"] if r["name"] == "Nokia"]
            assert sum(r["texts"] for r in rows) == 42
            data = page.evaluate("() => Array.from(document.querySelector('#chart-company canvas') ? [1] : [])")
            assert data == [1]
            page.click("tr.alert")
            page.wait_for_selector("tr.texts")
            shown = page.inner_text("tr.texts")
            assert hostile in shown and page.evaluate("window.pwned") is None
            assert page.inner_text("#alerts tbody tr.alert td:nth-child(2)") == "Nokia"
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "finance.png"), full_page=True)
