"""The server over real HTTP (uvicorn on a loopback port): contract, batching, limits, auth, overload, crashes,
graceful shutdown, and schemathesis against the OpenAPI schema."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tunelab.config import ServeConfig
from tunelab.models.predictor import Predictor
from tunelab.serve.app import create_app
from tunelab.serve.models import ServedModel
from tunelab.training import train

from servers import Server, serve_process, wait_until

TEXTS = ["a wonderful film", "the plot was dreadful and the actor poor", "quite good really", "bad", "superb story"]


@pytest.fixture(scope="module")
def run_dir(served_run):
    return served_run


@pytest.fixture(scope="module")
def predictor(run_dir):
    return Predictor(run_dir)


def served(predictor, name="m", delay=0.0, fail_on=None, calls=None):
    """A ServedModel over the real tiny predictor, optionally slow or failing on one text."""
    def infer(texts, pairs, embeddings=True):
        if calls is not None:
            calls.append(list(texts))
        if fail_on is not None and fail_on in texts:
            raise RuntimeError("backend crashed")
        time.sleep(delay)
        return predictor.infer(texts, pairs, embeddings)
    return ServedModel(name, infer, predictor.decide, predictor.tokenizer, predictor.max_length, False,
                       {"labels": predictor.labels, "path": str(predictor.model_dir)}, task=predictor.task)


def post_all(url: str, bodies: list[bytes], path="/v1/predict") -> list[httpx.Response]:
    """POST the raw JSON bodies all at once (one thread each, released together); the responses in order."""
    out: list = [None] * len(bodies)
    go = threading.Barrier(len(bodies))

    def ask(i):
        go.wait()
        out[i] = httpx.post(f"{url}{path}", content=bodies[i], headers={"Content-Type": "application/json"}, timeout=60)
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _metric(text: str, name: str) -> float:
    match = re.search(rf'^{name}{{model="m"}} ([0-9.e+]+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_cli_server_answers_like_tunelab_predict(run_dir, predictor, tmp_path):
    proc, url = serve_process(f"sentiment={run_dir}")
    try:
        assert proc.poll() is None, proc.stderr.read()
        r = httpx.post(f"{url}/v1/predict", json={"texts": TEXTS, "top_k": 2})
        assert r.status_code == 200, r.text
        got = r.json()
        expected = predictor.predict(TEXTS, top_k=2)
        assert got["model"] == "sentiment" and len(got["predictions"]) == len(TEXTS)
        for g, e in zip(got["predictions"], expected):
            assert g["label"] == e["label"] and [t["label"] for t in g["top_k"]] == [t["label"] for t in e["top_k"]]
            assert max(abs(g["scores"][k] - e["scores"][k]) for k in e["scores"]) < 1e-5
        models = httpx.get(f"{url}/v1/models").json()["models"]
        assert models[0]["name"] == "sentiment" and models[0]["labels"] == predictor.labels
        assert "path" not in models[0]  # where the server keeps its files is not the clients' business
        assert models[0]["method"] == "full" and "accuracy" in models[0]["metrics"] and models[0]["backend"] == "torch-fp32"
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{url}/openapi.json").json()["paths"]["/v1/predict"]
        metrics = httpx.get(f"{url}/metrics").text
        assert 'tunelab_requests_total{route="/v1/predict",status="200"} 1.0' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its graceful shutdown
        stderr = proc.stderr.read()
        assert "Traceback" not in stderr and f"serving sentiment on {url} (API keys: off;" in stderr
        assert "warning" not in stderr  # loopback: no exposure warning
    finally:
        if proc.poll() is None:
            proc.kill()


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(predictor):
    calls = []
    app = create_app(settings=ServeConfig(max_batch_size=16, max_wait_ms=100), loaded={"m": served(predictor, delay=0.05, calls=calls)})
    texts = [f"{w} film number {i}" for i, w in enumerate(["good", "awful", "lovely", "poor"] * 4)]
    results = {}
    with Server(app) as s:
        def ask(text):
            results[text] = httpx.post(f"{s.url}/v1/predict", json={"texts": [text]}, timeout=30).json()["predictions"][0]
        threads = [threading.Thread(target=ask, args=(t,)) for t in texts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        metrics = httpx.get(f"{s.url}/metrics").text
    assert _metric(metrics, "tunelab_batch_size_sum") == 16
    assert _metric(metrics, "tunelab_batch_size_count") == len(calls) - 1 < 16  # -1: the warm-up call
    alone = predictor.predict(texts)
    for text, expected in zip(texts, alone):  # each request got the row of its own text
        assert results[text]["label"] == expected["label"]
        assert abs(results[text]["score"] - expected["score"]) < 1e-5


def test_a_request_of_the_most_texts_allowed_reaches_the_model_in_one_hand_off(predictor):
    calls = []  # each hand-off pauses the model: a batch of many texts must not be cut into several by default
    settings = ServeConfig()
    app = create_app(settings=settings, loaded={"m": served(predictor, calls=calls)})
    texts = [f"text number {i} was {'good' if i % 2 else 'bad'}" for i in range(settings.max_texts_per_request)]
    with Server(app) as s:
        calls.clear()  # the warm-up call
        r = httpx.post(f"{s.url}/v1/predict", json={"texts": texts}, timeout=60)
    assert r.status_code == 200 and len(r.json()["predictions"]) == len(texts)
    assert calls == [texts]


def test_limits_auth_and_errors_return_the_documented_codes(predictor, monkeypatch):
    monkeypatch.setenv("TUNELAB_API_KEYS", "k-one, k-two")
    app = create_app(settings=ServeConfig(max_texts_per_request=3, max_chars_per_text=50, max_body_bytes=2000,
                                          too_long="reject"), loaded={"m": served(predictor)})
    good = {"Authorization": "Bearer k-two"}
    with Server(app) as s:
        post = lambda body, headers=good, **kw: httpx.post(f"{s.url}/v1/predict", json=body, headers=headers, **kw)  # noqa: E731
        r = post({"texts": ["fine"]}, headers={})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and r.json()["error"]["code"] == "unauthorised"
        assert post({"texts": ["fine"]}, headers={"Authorization": "Bearer k-three"}).status_code == 401
        assert post({"texts": ["fine"]}).status_code == 200
        assert httpx.get(f"{s.url}/v1/models").status_code == 401 and httpx.get(f"{s.url}/healthz").status_code == 200
        r = post({"texts": ["a", "b", "c", "d"]})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_texts"
        r = post({"texts": ["x" * 51]})
        assert r.status_code == 422 and "texts[0] has 51 characters" in r.json()["error"]["message"]
        r = post({"texts": ["ok", "!" * 40]})  # 40 characters, 42 tokens: over max_length 32
        assert r.status_code == 422 and "texts[1] is" in r.json()["error"]["message"] and "tokens" in r.json()["error"]["message"]
        r = httpx.post(f"{s.url}/v1/predict", content=json.dumps({"texts": ["y" * 40] * 60}), headers={**good, "Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        chunks = (b'{"texts": ["' + b"y" * 500 + b'"' for _ in range(6))  # no Content-Length: counted as it streams
        r = httpx.post(f"{s.url}/v1/predict", content=chunks, headers={**good, "Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        assert httpx.get(f"{s.url}/no/such/route").json()["error"]["code"] == "not_found"
        r = httpx.post(f"{s.url}/v1/predict", content=b"{not json", headers={**good, "Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
        assert post({"texts": "not a list"}).status_code == 422
        r = post({"texts": ["fine"], "model": "other"})
        assert r.status_code == 404 and "loaded: m" in r.json()["error"]["message"]
        assert post({"texts": ["fine"], "text_pairs": ["x"]}).status_code == 422
        assert post({"texts": [" "]}).status_code == 422


def test_a_body_must_be_json_with_strict_types(predictor):
    app = create_app(settings=ServeConfig(max_wait_ms=0), loaded={"m": served(predictor)})
    with Server(app) as s:
        r = httpx.post(f"{s.url}/v1/predict", content=b'{"texts": ["fine"]}', headers={"Content-Type": "text/plain"})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        assert "Content-Type: application/json" in r.json()["error"]["message"] and "text/plain" in r.json()["error"]["message"]
        for top_k in ("2", True, 2.0):
            r = httpx.post(f"{s.url}/v1/predict", json={"texts": ["fine"], "top_k": top_k})
            assert r.status_code == 422 and r.json()["error"]["message"].startswith("top_k: "), (top_k, r.text)
        r = httpx.post(f"{s.url}/v1/predict", json={"texts": ["fine", 7]})
        assert r.status_code == 422 and r.json()["error"]["message"].startswith("texts[1]: ")
        assert httpx.post(f"{s.url}/v1/predict", json={"texts": ["fine"], "top_k": 2}).status_code == 200


def test_a_lone_surrogate_is_refused_at_the_edge_and_fails_no_other_request(predictor):
    """A lone surrogate is valid JSON but not text (the tokenizer raises on it): every 4th request holds one."""
    calls = []
    app = create_app(settings=ServeConfig(max_batch_size=64, max_wait_ms=300), loaded={"m": served(predictor, calls=calls)})
    bad = b'{"texts": ["fine", "x \\ud800"]}'
    bodies = [bad if i % 4 == 3 else json.dumps({"texts": [f"a good film {i}"]}).encode() for i in range(16)]
    with Server(app) as s:
        got = post_all(s.url, bodies)
        pair = httpx.post(f"{s.url}/v1/predict", content=b'{"texts": ["ok"], "text_pairs": ["\\udfff"]}',
                          headers={"Content-Type": "application/json"})
        feedback = httpx.post(f"{s.url}/v1/feedback", content=b'{"id": "\\ud800", "label": "x"}',
                              headers={"Content-Type": "application/json"})
    for body, r in zip(bodies, got):
        if body == bad:
            assert r.status_code == 422 and r.json()["error"]["message"].startswith("texts[1]: "), r.text
            assert "surrogate" in r.json()["error"]["message"]
        else:
            assert r.status_code == 200, r.text
    assert pair.status_code == 422 and pair.json()["error"]["message"].startswith("text_pairs[0]: ")
    assert feedback.status_code == 422 and feedback.json()["error"]["message"].startswith("id: ")
    assert all("x \ud800" not in c for c in calls)


def test_a_model_failing_on_one_text_fails_only_that_request_and_logs_it(predictor, caplog):
    calls = []
    app = create_app(settings=ServeConfig(max_batch_size=64, max_wait_ms=300),
                     loaded={"m": served(predictor, fail_on="boom", calls=calls)})
    bodies = [json.dumps({"texts": ["boom" if i == 5 else f"a good film {i}"]}).encode() for i in range(12)]
    with caplog.at_level(logging.ERROR, logger="tunelab.serve"), Server(app) as s:
        got = post_all(s.url, bodies)
    assert [r.status_code for r in got] == [500 if i == 5 else 200 for i in range(12)], [r.text for r in got]
    assert got[5].json()["error"]["code"] == "model_error"
    assert any("boom" in c and len(c) > 1 for c in calls)  # it was batched with good texts
    logged = [r for r in caplog.records if r.name == "tunelab.serve" and r.levelno >= logging.ERROR]
    assert len(logged) == 1 and "backend crashed" in str(logged[0].exc_info[1]) and "500" in logged[0].getMessage()


def test_an_api_key_setting_that_holds_no_key_refuses_to_start(predictor, monkeypatch, tmp_path):
    from tunelab.errors import ConfigError

    for blank in (" , ", ""):
        monkeypatch.setenv("TUNELAB_API_KEYS", blank)
        with pytest.raises(ConfigError, match=re.escape(f"TUNELAB_API_KEYS is set but holds no API key ({blank!r})")):
            create_app(settings=ServeConfig(), loaded={"m": served(predictor)})
    monkeypatch.delenv("TUNELAB_API_KEYS")
    empty = tmp_path / "keys.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ConfigError, match=f"serve.api_keys_file {re.escape(str(empty))} holds no API key"):
        create_app(settings=ServeConfig(api_keys_file=empty), loaded={"m": served(predictor)})
    from tunelab.serve.auth import key_notes

    assert key_notes("127.0.0.1", 0) == ("API keys: off", None)
    assert key_notes("0.0.0.0", 2) == ("API keys: on (2)", None)
    for host in ("localhost", "::1", "127.0.0.5"):
        assert key_notes(host, 0)[1] is None, host
    for host in ("0.0.0.0", "::", "192.168.1.4", "example.org"):
        assert "reachable from other machines" in key_notes(host, 0)[1], host


def test_with_keys_the_docs_need_a_key_and_load_without_the_internet(predictor, monkeypatch):
    monkeypatch.setenv("TUNELAB_API_KEYS", "k-one")
    app = create_app(settings=ServeConfig(max_wait_ms=0), loaded={"m": served(predictor)})
    bearer = {"Authorization": "Bearer k-one"}
    with Server(app) as s:
        def get(path, **kw):
            return httpx.get(s.url + path, **kw)
        for path in ("/docs", "/openapi.json", "/docs?key=wrong", "/openapi.json?key=wrong", "/v1/models?key=k-one"):
            assert get(path).status_code == 401, path
        assert get("/redoc").status_code == 404
        schema = get("/openapi.json", headers=bearer).json()
        assert schema["paths"]["/v1/predict"] and schema["components"]["securitySchemes"]  # Swagger's Authorize button
        assert get("/openapi.json?key=k-one").status_code == 200 and get("/docs", headers=bearer).status_code == 200
        page = get("/docs?key=k-one")
        assert page.status_code == 200 and "'/openapi.json?key=k-one'" in page.text
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert len(assets) == 3 and all(a.startswith("/static/docs/") for a in assets), assets  # no CDN
        assert all(get(a).status_code == 200 for a in assets)
        assert len(get("/static/docs/swagger-ui-bundle.js").content) > 1_000_000
        models = get("/v1/models", headers=bearer).json()["models"]
        assert models[0]["labels"] == predictor.labels and "path" not in models[0]
        assert httpx.head(f"{s.url}/healthz").status_code == 200 and httpx.head(f"{s.url}/readyz").status_code == 200


def test_a_full_queue_gives_503_with_retry_after(predictor):
    calls = []
    app = create_app(settings=ServeConfig(max_batch_size=1, max_wait_ms=0, max_queue=2),
                     loaded={"m": served(predictor, delay=0.6, calls=calls)})
    codes = {}
    with Server(app) as s:
        calls.clear()  # the warm-up call at startup: the wait below is for the first request's text

        def ask(key, n):
            r = httpx.post(f"{s.url}/v1/predict", json={"texts": ["fine"] * n}, timeout=30)
            codes[key] = (r.status_code, r.headers.get("retry-after"))
        first = threading.Thread(target=ask, args=("running", 1))
        first.start()
        wait_until(lambda: calls, what="the first text reaching the model")  # the queue is empty again
        second = threading.Thread(target=ask, args=("queued", 2))
        second.start()
        wait_until(lambda: app.state.tunelab["batchers"]["m"].queue.qsize() == 2, what="two texts queued")
        ask("refused", 1)
        first.join()
        second.join()
    assert codes == {"running": (200, None), "queued": (200, None), "refused": (503, "1")}


def test_a_model_crash_fails_only_its_batch(predictor):
    app = create_app(settings=ServeConfig(max_wait_ms=0), loaded={"m": served(predictor, fail_on="boom")})
    with Server(app) as s:
        r = httpx.post(f"{s.url}/v1/predict", json={"texts": ["boom"]})
        assert r.status_code == 500 and r.json()["error"]["code"] == "model_error"
        assert httpx.post(f"{s.url}/v1/predict", json={"texts": ["fine"]}).status_code == 200
        assert httpx.get(f"{s.url}/readyz").status_code == 200


def test_graceful_shutdown_finishes_accepted_requests(predictor):
    calls = []
    app = create_app(settings=ServeConfig(max_wait_ms=0), loaded={"m": served(predictor, delay=1.0, calls=calls)})
    got = {}
    server = Server(app)
    with server as s:
        def ask():
            got["r"] = httpx.post(f"{s.url}/v1/predict", json={"texts": ["fine", "bad"]}, timeout=30)
        t = threading.Thread(target=ask)
        t.start()
        wait_until(lambda: ["fine", "bad"] in calls, what="the request reaching the model")  # accepted, in the model
        # (not just any call: a warm-up at start-up calls the model too)
        server.server.should_exit = True  # what SIGTERM does
        t.join(30)
    assert got["r"].status_code == 200 and len(got["r"].json()["predictions"]) == 2


def test_no_request_the_schema_allows_makes_a_500(predictor):
    """schemathesis generates requests from the OpenAPI schema (valid and invalid bodies) for every route."""
    from hypothesis import given

    app = create_app(settings=ServeConfig(max_wait_ms=0, max_texts_per_request=8, max_chars_per_text=200),
                     loaded={"m": served(predictor)})
    with Server(app) as s:
        schema = schemathesis.openapi.from_url(f"{s.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/v1/predict", "/v1/models", "/healthz", "/readyz", "/metrics"}
        for op in operations:
            @given(case=op.as_strategy())
            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
            def no_server_error(case):
                response = case.call()
                assert response.status_code < 500, (case.path, case.body, response.text)
            no_server_error()


def test_several_models_and_shared_base_adapters_in_one_server(predictor, tiny_model_dir, sentiment_files, tmp_path):
    from tunelab.config import load_config

    raw = {"name": "lora", "runs_dir": str(tmp_path), "data": {k: str(v) for k, v in sentiment_files.items()},
           "model": {"name": str(tiny_model_dir), "max_length": 32}, "method": {"name": "lora"},
           "train": {"learning_rate": 1e-2, "batch_size": 16, "max_steps": 20, "trackers": [], "precision": "fp32"}}
    lora_run = train(load_config(raw), quiet=True).run_dir
    app = create_app({"full": str(predictor.model_dir)}, ServeConfig(max_wait_ms=0), base=str(tiny_model_dir),
                     adapters={"review-lora": str(lora_run)})
    with Server(app) as s:
        names = [m["name"] for m in httpx.get(f"{s.url}/v1/models").json()["models"]]
        assert names == ["full", "review-lora"]
        r = httpx.post(f"{s.url}/v1/predict", json={"texts": TEXTS})
        assert r.status_code == 422 and "name one: full, review-lora" in r.json()["error"]["message"]
        by_adapter = httpx.post(f"{s.url}/v1/predict", json={"texts": TEXTS, "model": "review-lora"}).json()
        by_full = httpx.post(f"{s.url}/v1/predict", json={"texts": TEXTS, "model": "full"}).json()
    alone = Predictor(lora_run).predict(TEXTS)
    assert by_adapter["model"] == "review-lora" and by_full["model"] == "full"
    for got, expected in zip(by_adapter["predictions"], alone):
        assert got["label"] == expected["label"] and abs(got["score"] - expected["score"]) < 1e-5
    assert [p["score"] for p in by_full["predictions"]] != [p["score"] for p in by_adapter["predictions"]]


def test_load_generator_refuses_other_machines_and_measures_a_local_server(predictor):
    from tunelab.errors import TunelabError
    from tunelab.serve.loadgen import bench

    with pytest.raises(TunelabError, match="only loads servers on this machine"):
        bench("http://example.com:8000", TEXTS, 1, 5)
    app = create_app(settings=ServeConfig(max_wait_ms=1), loaded={"m": served(predictor)})
    with Server(app) as s:
        r = bench(s.url, TEXTS, concurrency=4, requests=40, seconds=30, warmup=4)
    assert r["requests"] == 40 and r["errors"] == 0 and r["throughput"] > 0
    assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]


def test_serve_cli_mistakes_are_one_clear_line(run_dir, tmp_path):
    bad_yaml = tmp_path / "serve.yaml"
    bad_yaml.write_text("serve: {port: [\n")
    texts = tmp_path / "texts.txt"
    texts.write_text("one\ntwo\n")
    cases = [(["serve", str(tmp_path / "nowhere")], "no trained model here"),
             (["serve", str(run_dir), "--config", str(bad_yaml)], "is not valid YAML"),
             (["serve", str(run_dir), "--port", "70000"], "serve.port"),
             (["serve", "--adapter", f"a={run_dir}"], "--adapter needs --base"),
             (["serve", str(run_dir), "--monitor-db", "nosuchdb://x"], "monitor database"),
             (["bench-serve", "http://127.0.0.1:1", "-i", str(texts), "--concurrency", "8,x"], "--concurrency")]
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    cases += [(["serve", str(run_dir), "--port", str(port)], f"port {port} on 127.0.0.1 is in use"),
              (["serve", str(run_dir)], "TUNELAB_API_KEYS is set but holds no API key (' , ')", {"TUNELAB_API_KEYS": " , "})]
    def cli(args, env=None):
        return subprocess.run([sys.executable, "-m", "tunelab", *args], capture_output=True, text=True, timeout=120,
                              env={**os.environ, **(env or {})})

    try:  # side by side: each is mostly interpreter start-up and imports
        with ThreadPoolExecutor(4) as pool:
            runs = [(args, message, pool.submit(cli, args, *env)) for args, message, *env in cases]
            for args, message, future in runs:
                done = future.result()
                assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, (args, done.stderr[-800:])
                assert "serving" not in done.stderr, args
    finally:
        busy.close()
