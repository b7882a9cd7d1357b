"""Monitoring: the training profile, the prediction log (SQLite and PostgreSQL), feedback and live accuracy,
drift statistics, alert rules and their webhook, SIGKILL loss bound, the report and the dashboard."""

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from tunelab.config import AlertRule, ServeConfig
from tunelab.monitor import store
from tunelab.serve.app import create_app
from tunelab.serve.models import load_models

from servers import Server, headless_page, serve_process, wait_until

POSITIVE = ["a good film", "lovely story and superb actor", "great scene", "wonderful plot really", "excellent movie"]
NEGATIVE = ["a bad film", "awful story and poor actor", "terrible scene", "dreadful plot really", "horrible movie"]
POSTGRES_URL = os.environ.get("TUNELAB_TEST_POSTGRES_URL",
                              "postgresql+psycopg://tunelab:tunelab@127.0.0.1:5432/tunelab_test")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def run_dir(served_run):
    return served_run


def monitored(run_dir, db, **monitor):
    settings = ServeConfig(max_wait_ms=0, monitor={"database": db, "check_every_s": 3600, **monitor})
    return create_app(settings=settings, loaded=load_models({"m": str(run_dir)}))


def predict(url, texts):
    r = httpx.post(f"{url}/v1/predict", json={"texts": texts}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def rows(db, table=store.predictions):
    engine = sa.create_engine(db)
    with engine.connect() as conn:
        out = conn.execute(sa.select(table)).mappings().all()
    engine.dispose()
    return out


# ---------------------------------------------------------------- the profile


def test_training_writes_a_profile_of_the_data_and_the_model(run_dir):
    from tunelab.models.predictor import Predictor
    from tunelab.monitor.profile import EMBEDDINGS_FILE, build_profile, load_profile

    profile = load_profile(run_dir / "model")
    assert profile["labels"] == ["negative", "positive"] and sum(profile["train_label_counts"]) == 240
    assert profile["train_label_counts"] == [120, 120] and len(profile["lengths"]) == 240
    assert profile["examples"]["reference"] == 240  # validation has 60 rows, under 100: the train sample stands in
    n = profile["examples"]["reference"]
    assert len(profile["confidence"]) == n and sum(profile["prediction_counts"]) == n
    assert profile["embeddings"].shape == (n, 32)  # the tiny BERT's hidden size
    assert 0.5 <= min(profile["confidence"]) and max(profile["confidence"]) <= 1.0
    assert profile["unknown_rate"] == 0.0  # synthetic English words: all in the vocabulary
    predictor = Predictor(run_dir)
    texts = ["a good film", "a bad film"]
    out = predictor.infer(texts)
    assert np.allclose(out.probs, predictor.probabilities(texts)) and out.embeddings.shape == (2, 32)
    assert list(out.lengths) == [len(predictor.tokenizer(t)["input_ids"]) for t in texts]
    before = (run_dir / "model" / EMBEDDINGS_FILE).read_bytes()
    build_profile(run_dir)  # `tunelab monitor profile RUN` rebuilds the same profile
    again = load_profile(run_dir / "model")
    assert again["prediction_counts"] == profile["prediction_counts"] and (run_dir / "model" / EMBEDDINGS_FILE).read_bytes() == before


def test_onnx_export_carries_embeddings_and_its_own_profile(run_dir, tmp_path):
    import onnxruntime as ort

    from tunelab.export.onnx import export_onnx
    from tunelab.models.predictor import Predictor
    from tunelab.monitor.profile import load_profile

    export_onnx(run_dir, tmp_path / "onnx", quiet=True)
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["logits", "sentence_embedding"]
    torch_out, onnx_out = Predictor(run_dir).infer(POSITIVE), Predictor(tmp_path / "onnx").infer(POSITIVE)
    assert np.abs(torch_out.embeddings - onnx_out.embeddings).max() < 1e-4
    profile = load_profile(tmp_path / "onnx")
    assert profile is not None and profile["embeddings"].shape[1] == 32


# ---------------------------------------------------------------- drift statistics


def test_drift_statistics_separate_same_from_shifted_populations():
    from tunelab.monitor.drift import embedding_auc, label_drift, psi, psi_continuous

    rng = np.random.default_rng(1)
    assert psi([50, 50], [50, 50]) == pytest.approx(0.0)
    assert label_drift([30, 20], [0, 0])["label_chi2_p"] == 0.0  # nothing predicted at all (multi-label): drift
    assert psi([50, 50], [90, 10]) > 0.5
    same, moved = label_drift([300, 300, 400], [31, 29, 40]), label_drift([300, 300, 400], [5, 5, 90])
    assert same["label_psi"] < 0.05 and same["label_chi2_p"] > 0.05
    assert moved["label_psi"] > 0.5 and moved["label_chi2_p"] < 1e-6
    ref = rng.normal(size=2000)
    assert psi_continuous(ref, rng.normal(size=500)) < 0.1 and psi_continuous(ref, rng.normal(1.0, 1, 500)) > 0.3
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(200, 16))
    assert 0.35 < embedding_auc(a, b) < 0.65
    assert embedding_auc(a, b + 1.0) > 0.95


def test_every_alert_rule_fires_once_and_resolves():
    from tunelab.config import DEFAULT_ALERTS
    from tunelab.monitor.alerts import AlertRules

    from tunelab.config import PAIRED_TESTS

    rules = AlertRules([AlertRule(**a) for a in DEFAULT_ALERTS] + [AlertRule(name="p", metric="label_chi2_p", below=0.001)])
    for rule in rules.rules:
        limit = rule.above if rule.above is not None else rule.below
        bad = limit * 2 + 1 if rule.above is not None else limit / 10
        good = limit / 2 if rule.above is not None else limit * 10 + 0.5
        if rule.p_value_below is not None:  # a large PSI that could be chance (p = 0.2) does not fire
            assert rules.evaluate("m", {rule.metric: bad, PAIRED_TESTS[rule.metric]: 0.2}, "t0") == [], rule
            bad = {rule.metric: bad, PAIRED_TESTS[rule.metric]: rule.p_value_below / 10}
        else:
            bad = {rule.metric: bad}
        events = rules.evaluate("m", bad, "t1")
        assert [(e.rule, e.state) for e in events] == [(rule.name, "firing")], rule
        assert rules.evaluate("m", bad, "t2") == []  # still firing: no new event
        assert rules.evaluate("m", {}, "t3") == []  # figure not computable: no change
        assert [(e.rule, e.state) for e in rules.evaluate("m", {rule.metric: good}, "t4")] == [(rule.name, "resolved")]
    from tunelab.errors import ConfigError
    from tunelab.serve.settings import serve_settings

    with pytest.raises(ConfigError, match="give exactly one of above / below"):
        serve_settings(None, {"monitor": {"alerts": [{"name": "x", "metric": "label_psi", "above": 1, "below": 0}]}})
    with pytest.raises(ConfigError, match="p_value_below applies to label_psi"):
        serve_settings(None, {"monitor": {"alerts": [{"name": "x", "metric": "embedding_auc", "above": 0.8, "p_value_below": 0.01}]}})
    with pytest.raises(ConfigError, match="serve.monitor.alerts.0.metric"):
        serve_settings(None, {"monitor": {"alerts": [{"name": "x", "metric": "psi_of_labels", "above": 1}]}})


# ---------------------------------------------------------------- the log


def _database_urls():
    return ["sqlite", "postgresql"]


@pytest.fixture(params=_database_urls())
def database(request, tmp_path):
    """A fresh database per test: a SQLite file, or a PostgreSQL schema of the test's own (the server may be shared
    with other test runs at the same time; the URL's search_path keeps each run's tables apart)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'monitor.db'}"
        return
    schema = f"t_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL.split('@')[-1]} ({type(exc).__name__}); "
                    "start one with scripts/test-services.sh or set TUNELAB_TEST_POSTGRES_URL")
    yield f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


def test_every_prediction_is_logged_and_graceful_shutdown_loses_none(run_dir, database):
    app = monitored(run_dir, database, flush_interval_s=30)  # nothing flushes on its own during the test
    ids = []
    with Server(app) as s:
        for i in range(40):
            ids += [p["id"] for p in predict(s.url, [f"{POSITIVE[i % 5]} {i}", f"{NEGATIVE[i % 5]} {i}"])]
        assert len(rows(database)) == 0  # still pending: written off the request path
    logged = {r["id"]: r for r in rows(database)}
    assert set(logged) == set(ids) and len(ids) == 80
    row = logged[ids[0]]
    assert row["model"] == "m" and row["text"] == f"{POSITIVE[0]} 0" and row["label"] in ("negative", "positive")
    assert len(row["text_sha256"]) == 64 and row["latency_ms"] > 0 and row["tokens"] > 2
    assert set(row["scores"]) == {"negative", "positive"} and row["score"] == max(row["scores"].values())


def test_a_row_the_database_refuses_does_not_stop_the_log(run_dir, database):
    engine = store.open_database(database)
    log = store.PredictionLog(engine)
    good = [{"id": f"{i:032d}", "created_at": store.now(), "model": "m", "text_sha256": "0" * 64, "text": f"t{i}",
             "label": "positive", "score": 0.9, "scores": {"positive": 0.9}, "latency_ms": 1.0, "tokens": 3} for i in range(3)]
    bad = {**good[0], "id": "x" * 40}  # longer than the id column: PostgreSQL refuses it (SQLite stores it)
    log.add([good[0], bad, good[1], {**good[1]}, good[2]])  # and a duplicate id: refused everywhere
    log.flush()
    assert sorted(r["id"] for r in rows(database) if r["id"] != bad["id"]) == [g["id"] for g in good]
    assert log.dropped >= 1 and log.pending == []
    engine.dispose()


def test_texts_can_be_left_out_and_old_rows_are_purged(run_dir, tmp_path):
    db = f"sqlite:///{tmp_path / 'private.db'}"
    with Server(monitored(run_dir, db, store_text=False)) as s:
        predict(s.url, POSITIVE)
    logged = rows(db)
    assert len(logged) == 5 and all(r["text"] is None for r in logged)
    import hashlib

    assert {r["text_sha256"] for r in logged} == {hashlib.sha256(t.encode()).hexdigest() for t in POSITIVE}
    engine = store.open_database(db)
    with engine.begin() as conn:
        conn.execute(sa.update(store.predictions).where(store.predictions.c.text_sha256 == logged[0]["text_sha256"])
                     .values(created_at=store.now() - __import__("datetime").timedelta(days=40)))
    assert store.PredictionLog(engine, retention_days=30).purge() == 1
    assert len(rows(db)) == 4


def test_sigkill_loses_at_most_the_last_flush_interval(run_dir, tmp_path):
    db = tmp_path / "killed.db"
    config = tmp_path / "serve.yaml"
    config.write_text(f"serve:\n  monitor:\n    database: sqlite:///{db}\n    flush_interval_s: 1.0\n")
    proc, url = serve_process(f"m={run_dir}", "--config", str(config))
    try:
        assert proc.poll() is None, proc.stderr.read()
        answered = []  # (time answered, id)
        with httpx.Client() as client:
            started = time.time()
            while time.time() - started < 3.5:
                got = client.post(f"{url}/v1/predict", json={"texts": [POSITIVE[len(answered) % 5]]}).json()
                answered.append((time.time(), got["predictions"][0]["id"]))
        killed = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    logged = {r["id"] for r in rows(f"sqlite:///{db}")}
    lost = [t for t, pid in answered if pid not in logged]
    assert len(answered) > 20 and len(logged) > 0
    assert all(t > killed - 1.0 - 0.5 for t in lost), (len(lost), [killed - t for t in lost][:5])  # 0.5 s: one write's time


def test_sync_durability_commits_each_answer_before_sending_it(run_dir, tmp_path):
    db = f"sqlite:///{tmp_path / 'sync.db'}"
    engine = sa.create_engine(db)
    missing = []

    def ask(i):  # right after each answer, before any flush interval (30 s), its ids must be in the database
        ids = [p["id"] for p in predict(s.url, [f"{POSITIVE[i % 5]} {i}", f"{NEGATIVE[i % 5]} {i}"])]
        with engine.connect() as conn:
            found = conn.execute(sa.select(store.predictions.c.id).where(store.predictions.c.id.in_(ids))).scalars().all()
        missing.extend(set(ids) - set(found))
    with Server(monitored(run_dir, db, flush_interval_s=30, durability="sync")) as s:
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(rows(db)) == 24 and missing == []
    engine.dispose()
    with Server(monitored(run_dir, f"sqlite:///{tmp_path / 'async.db'}", flush_interval_s=30)) as s:  # the default
        predict(s.url, POSITIVE)
        assert rows(f"sqlite:///{tmp_path / 'async.db'}") == []  # answered first, written within flush_interval_s


def test_sigkill_under_sync_durability_loses_no_answered_prediction(run_dir, tmp_path):
    db = tmp_path / "killed-sync.db"
    config = tmp_path / "serve.yaml"
    config.write_text(f"serve:\n  monitor:\n    database: sqlite:///{db}\n    flush_interval_s: 30\n    durability: sync\n")
    proc, url = serve_process(f"m={run_dir}", "--config", str(config))
    answered, stop = [], threading.Event()

    def client(k):
        with httpx.Client() as c:
            while not stop.is_set():
                try:
                    got = c.post(f"{url}/v1/predict", json={"texts": [f"{POSITIVE[k]} {len(answered)}"]}, timeout=10)
                except httpx.TransportError:
                    return
                answered.append(got.json()["predictions"][0]["id"])
    try:
        assert proc.poll() is None, proc.stderr.read()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        deadline = time.time() + 30
        while len(answered) < 60 and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # while the clients are still sending
        proc.wait(30)
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    logged = {r["id"] for r in rows(f"sqlite:///{db}")}
    assert len(answered) >= 60 and set(answered) <= logged


def test_the_monitor_database_is_readable_only_by_its_owner(run_dir, tmp_path):
    db = tmp_path / "private.db"
    old = os.umask(0o022)  # the usual umask: files are created 0644 unless asked otherwise
    try:
        with Server(monitored(run_dir, f"sqlite:///{db}")) as s:
            predict(s.url, POSITIVE)
            s.monitor.log.flush()
            files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
            assert all(f.exists() for f in files)  # WAL mode: the log and its index sit beside the database
            assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: "0o600" for f in files}
    finally:
        os.umask(old)


# ---------------------------------------------------------------- feedback, drift, alerts, webhook


class Receiver:
    """A local webhook receiver; `delay` makes it slow."""

    def __init__(self, delay=0.0):
        events, pause = [], delay

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(pause)
                events.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.events = events
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def test_feedback_gives_live_accuracy_and_rejects_unknown_ids_and_labels(run_dir, tmp_path):
    db = f"sqlite:///{tmp_path / 'fb.db'}"
    with Server(monitored(run_dir, db, min_feedback=5, accuracy_window=100)) as s:
        preds = predict(s.url, POSITIVE + NEGATIVE)
        truth = ["positive"] * 5 + ["negative"] * 5
        expected = np.mean([p["label"] == t for p, t in zip(preds, truth)])
        r = httpx.post(f"{s.url}/v1/feedback", json={"items": [{"id": p["id"], "label": t} for p, t in zip(preds, truth)]})
        assert r.status_code == 200 and r.json()["accepted"] == 10
        assert r.json()["live"]["m"]["live_accuracy"] == pytest.approx(expected)
        s.monitor.check()
        figures = httpx.get(f"{s.url}/v1/monitor").json()["models"]["m"]["figures"]
        assert figures["live_accuracy"] == pytest.approx(expected)
        r = httpx.post(f"{s.url}/v1/feedback", json={"id": "0" * 32, "label": "positive"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_prediction"
        r = httpx.post(f"{s.url}/v1/feedback", json={"id": preds[0]["id"], "label": "neutral"})
        assert r.status_code == 422 and "its labels: negative, positive" in r.json()["error"]["message"]
        r = httpx.post(f"{s.url}/v1/feedback", json={"id": preds[0]["id"]})
        assert r.status_code == 422
        wrong = "negative" if truth[0] == preds[0]["label"] else "positive"  # correct one answer: it replaces the first
        assert httpx.post(f"{s.url}/v1/feedback", json={"id": preds[0]["id"], "label": wrong}).status_code == 200
        again = [{"id": preds[1]["id"], "label": "negative"}, {"id": preds[1]["id"], "label": truth[1]}]  # last wins
        r = httpx.post(f"{s.url}/v1/feedback", json={"items": again})
        assert r.status_code == 200 and r.json()["accepted"] == 1
        corrected = np.mean([p["label"] == t for p, t in zip(preds, [wrong] + truth[1:])])
        assert r.json()["live"]["m"]["live_accuracy"] == pytest.approx(corrected)  # 10 answers, none counted twice
    stored = rows(db, store.feedback)
    assert len(stored) == 10 and {r["label"] for r in stored if r["prediction_id"] == preds[0]["id"]} == {wrong}


def test_label_drift_fires_resolves_and_reaches_the_webhook_without_slowing_predictions(run_dir, tmp_path):
    slow = Receiver(delay=3.0)
    db = f"sqlite:///{tmp_path / 'drift.db'}"
    app = monitored(run_dir, db, window=40, min_window=20, webhook_url=slow.url, webhook_retries=0, webhook_timeout_s=10,
                    alerts=[{"name": "label_drift", "metric": "label_psi", "above": 0.5}])
    try:
        with Server(app) as s:
            for i in range(8):  # as in training: half and half
                predict(s.url, [f"{POSITIVE[i % 5]} {i}", f"{NEGATIVE[i % 5]} {i}"] * 3)
            assert s.monitor.check() == []
            for i in range(40):
                predict(s.url, [f"{POSITIVE[i % 5]} again {i}"])  # only one class now
            events = s.monitor.check()
            assert [(e.rule, e.state) for e in events] == [("label_drift", "firing")]
            started = time.perf_counter()  # the webhook is now busy for 3 s: predictions must not wait for it
            for i in range(10):
                predict(s.url, [NEGATIVE[i % 5], POSITIVE[i % 5]])
            assert time.perf_counter() - started < 2.0
            for i in range(20):
                predict(s.url, [f"{NEGATIVE[i % 5]} {i}", f"{POSITIVE[i % 5]} {i}"])
            assert [(e.rule, e.state) for e in s.monitor.check()] == [("label_drift", "resolved")]
            state = httpx.get(f"{s.url}/v1/monitor").json()
            assert [e["state"] for e in state["alerts"]["recent"]] == ["firing", "resolved"]
            metrics = httpx.get(f"{s.url}/metrics").text
            assert 'tunelab_alert_firing{model="m",rule="label_drift"} 0.0' in metrics
            assert 'tunelab_monitor{metric="label_psi",model="m"}' in metrics
            deadline = time.time() + 15
            while len(slow.events) < 2 and time.time() < deadline:
                time.sleep(0.1)
        assert [e["state"] for e in slow.events] == ["firing", "resolved"] and slow.events[0]["rule"] == "label_drift"
        assert [r["state"] for r in rows(db, store.alerts)] == ["firing", "resolved"]
    finally:
        slow.close()


def test_monitor_report_from_the_log(run_dir, tmp_path):
    db = run_dir / "monitor.db"
    with Server(monitored(run_dir, None, min_window=10)) as s:  # default database: monitor.db in the run folder
        for i in range(6):
            predict(s.url, [f"{POSITIVE[i % 5]} {i}", f"{NEGATIVE[i % 5]} {i}"])
        s.monitor.check()
    assert db.is_file()
    done = subprocess.run([sys.executable, "-m", "tunelab", "monitor", "report", str(run_dir), "--since", "1h",
                           "--out", str(tmp_path / "report")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "report" / "report.html").read_text()
    assert "predictions" in page and "data:image/png;base64," in page and (tmp_path / "report" / "traffic.png").is_file()
    for args, message in [(["--since", "yesterday"], "give a duration"), (["--database", "sqlite:////nonexistent/dir/x.db"], "monitor database")]:
        done = subprocess.run([sys.executable, "-m", "tunelab", "monitor", "report", str(run_dir), *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


# ---------------------------------------------------------------- the dashboard in a browser


def test_dashboard_in_headless_chromium_shows_what_the_api_reports(run_dir, tmp_path):
    db = f"sqlite:///{tmp_path / 'dash.db'}"
    hostile = '<img src=x onerror="window.pwned=1">'  # names and messages reach the page: they must stay text
    alerts = [{"name": hostile, "metric": "label_psi", "above": 0.0}, {"name": "drift", "metric": "embedding_auc", "above": 0.75}]
    with Server(monitored(run_dir, db, min_window=10, check_every_s=1, min_feedback=3, accuracy_window=50, alerts=alerts)) as s:
        for i in range(12):
            got = predict(s.url, [f"{POSITIVE[i % 5]} {i}", f"{NEGATIVE[i % 5]} {i}", POSITIVE[i % 5]])
            httpx.post(f"{s.url}/v1/feedback", json={"id": got[0]["id"], "label": "positive"})
        wait_until(lambda: len(httpx.get(f"{s.url}/v1/monitor").json()["models"]["m"]["history"]) >= 2,
                   what="two checks (history to chart)")
        with headless_page(1280, 1100) as page:
            page.goto(f"{s.url}/dashboard")
            page.wait_for_function("window.tunelabState !== null && window.tunelabState.models.m.history.length >= 2"
                                   " && window.tunelabCharts && window.tunelabCharts['chart-drift']")
            state, chart = page.evaluate("""() => { const c = window.tunelabCharts['chart-drift'];
                return [window.tunelabState, {series: c.series.map(s => s.label), data: c.data.map(a => Array.from(a))}]; }""")
            api = httpx.get(f"{s.url}/v1/monitor").json()
            assert state["server"]["requests"] == api["server"]["requests"] == 12  # predict requests (not feedback)
            assert page.inner_text("#requests") == str(state["server"]["requests"])
            assert page.inner_text("#predictions") == "36"
            figures = state["models"]["m"]["figures"]
            for metric in ("label_psi", "length_psi", "confidence_psi", "embedding_auc", "live_accuracy"):
                cell = page.inner_text(f'#drift-table tr[data-metric="{metric}"] .value')
                assert cell == f"{figures[metric]:.4f}", metric
            assert page.inner_text("#live-accuracy") == f"{figures['live_accuracy']:.4f}"
            live = state["models"]["m"]["label_shares"]["live"]
            assert page.inner_text('#label-table tr[data-label="positive"] .live') == f"{live['positive']:.3f}"
            history = state["models"]["m"]["history"]
            column = chart["series"].index("label_psi")
            assert chart["data"][column] == [h.get("label_psi") for h in history]
            assert len(chart["data"][0]) == len(history) >= 2
            assert page.locator("#chart-drift canvas").count() >= 1
            assert page.evaluate("window.pwned") is None and hostile in page.inner_text("#alert-table")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
