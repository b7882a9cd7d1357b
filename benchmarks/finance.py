"""The finance app, measured on a replayed news stream (no public timestamped stream is on this machine).

    .venv/bin/python benchmarks/finance.py           # about 25 minutes on 2 cores (the two trainings: 11 of them)
    .venv/bin/python benchmarks/finance.py --sweep   # how the alert defaults were chosen (development seeds), 2 minutes
    .venv/bin/python benchmarks/finance.py --speed   # only step 3 again, into the last run's results (4 minutes)

1. Build, as the shipped example does (examples/finance/finance.yaml): the sentiment run (examples/fpb_50agree.yaml:
   Financial PhraseBank 50agree, split 80/10/10 with seed 42, the classification benchmark's run), then the model
   that scores: its first 4 layers distilled from it (`sentiment_layers: 4`), exported to int8 ONNX; evaluated:
   fpb_50agree_test_accuracy (the scoring model in torch), fpb_50agree_test_accuracy_int8 (the int8 model that
   scores), fpb_50agree_test_accuracy_teacher (the 6-layer sentiment run).
2. The stream (seed 42), made only of the run's held-out sentences (validation + test, never trained on):
   - 20 synthetic companies ("Company A" ... with tickers), each named at the start of every text about it
     ("<Company>: <sentence>"), 30 simulated days from 2026-01-01T00:00Z;
   - each company: texts as a Poisson process of 10 a day, its sentences drawn without replacement from its own
     shuffled copy of the held-out ones (outside episodes at their natural mix: 12% negative by the annotators);
   - 10 negative episodes on 10 different companies, each starting at a uniform time in days 3-26 and lasting
     48 hours, during which that company has 20 texts a day and each is a negative sentence with probability 0.6
     (a non-negative one otherwise). A milder variant (keys `mild_*`): 15 texts a day, probability 0.5;
   - 3% of the texts sent again by another source 0-30 minutes later (the app must count them once).
   Ingested in time order through `POST /v1/finance/ingest` in batches of 100 against `tunelab serve --app`, with
   the default alert settings. An episode is detected when its company alerts between the episode's start and 24 h
   after its end; the delay is the number of texts about the company from the episode's start to the alert's
   text. Any other alert is false.
3. ingest_per_second: texts per second, HTTP batch -> scored by int8 ONNX -> stored, with 4 clients posting the
   stream's batches of 100 at once (a fresh database), beside the same with `--max-batch-size 32`
   (ingest_per_second_max_batch_32: hand-offs of at most 32 texts to the model), three interleaved rounds,
   medians; ingest_per_second_c1: the same for the ordered replay above (one client); ingest_c1_p50_ms: one
   item per request, 200 requests; model_alone_per_second: the int8 model itself on the same texts (the ceiling
   on this machine).
4. restart_lost_items: a client sends batches of 20 while the server is killed with SIGKILL; after a restart, how
   many acknowledged items are missing from the store (target 0).
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml

from _common import REPO, WORK, split_texts, start_server, write_results

T0 = 1767225600  # 2026-01-01T00:00:00Z
DAYS, COMPANIES, RATE, EPISODES = 30, 20, 10.0, 10
EPISODE_HOURS, DUPLICATES = 48, 0.03
SCENARIOS = {"": (0.6, 20.0), "mild_": (0.5, 15.0)}  # key prefix -> (episode share negative, texts a day)
CLIENTS = 4
SPEED_ROUNDS = 3


def configs() -> Path:
    """The benchmark's copy of the shipped example: its own runs folder, a synthetic watchlist, a fresh database."""
    from finance_depth import sentiment_config  # one definition of the sentiment run, so both benchmarks share it

    folder = WORK / "finance"
    folder.mkdir(parents=True, exist_ok=True)
    sentiment = sentiment_config("depth6")
    shipped = yaml.safe_load((REPO / "examples" / "finance" / "finance.yaml").read_text())
    rows = ["name,aliases,ticker,sector"] + [f"Company {chr(65 + i)},,CO{chr(65 + i)},Sector {i % 4}" for i in range(COMPANIES)]
    (folder / "watchlist.csv").write_text("\n".join(rows) + "\n")
    app = {"app": "finance", "name": "finance-bench", "runs_dir": str(WORK / "runs"), "sentiment": str(sentiment),
           "sentiment_layers": shipped["sentiment_layers"], "watchlist": "watchlist.csv"}
    (folder / "finance.yaml").write_text(yaml.safe_dump(app))
    return folder / "finance.yaml"


def with_database(config_path: Path, name: str) -> Path:
    db = config_path.parent / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    raw = yaml.safe_load(config_path.read_text())
    raw["database"] = f"sqlite:///{db}"
    out = config_path.parent / f"{name}.yaml"
    out.write_text(yaml.safe_dump(raw))
    return out


def stream(texts: list[str], labels: list[str], share: float, rate: float, seed: int = 42) -> tuple[list[dict], list[dict]]:
    """The replayed stream and its episodes (the module docstring states the generator)."""
    rng = random.Random(seed)
    names = [f"Company {chr(65 + i)}" for i in range(COMPANIES)]
    episodes = [{"company": c, "start": T0 + rng.uniform(3, 26) * 86400} for c in rng.sample(names, EPISODES)]
    for e in episodes:
        e["end"] = e["start"] + EPISODE_HOURS * 3600
    items = []
    for name in names:
        # each company draws from its own shuffled copy of the held-out sentences, without putting them back: none
        # of its texts repeats by chance; outside episodes a negative sentence comes at the held-out share
        deck = list(zip(texts, labels))
        rng.shuffle(deck)
        negative = [t for t, y in deck if y == "negative"]
        other = [t for t, y in deck if y != "negative"]
        rng.shuffle(deck)
        t = T0
        while True:
            episode = next((e for e in episodes if e["company"] == name and e["start"] <= t < e["end"]), None)
            t += rng.expovariate((rate if episode else RATE) / 86400)
            if t >= T0 + DAYS * 86400:
                break
            episode = next((e for e in episodes if e["company"] == name and e["start"] <= t < e["end"]), None)
            if episode:
                pool = negative if rng.random() < share else other
            else:
                pool = negative if deck.pop()[1] == "negative" else other  # the natural mix
            sentence = pool.pop()
            items.append({"text": f"{name}: {sentence}", "timestamp": round(t, 3), "source": "wire", "company": name})
    for item in rng.sample(items, int(len(items) * DUPLICATES)):
        items.append({**item, "timestamp": round(item["timestamp"] + rng.uniform(0, 1800), 3), "source": "copy"})
    items.sort(key=lambda i: i["timestamp"])
    return items, episodes


def post(client: httpx.Client, url: str, items: list[dict]) -> dict:
    body = {"items": [{k: v for k, v in i.items() if k != "company"} for i in items]}
    response = client.post(f"{url}/v1/finance/ingest", json=body, timeout=120)
    response.raise_for_status()
    return response.json()


def score_alerts(alerts: list[dict], episodes: list[dict], items: list[dict]) -> dict:
    detected, delays, false = set(), [], 0
    for alert in sorted(alerts, key=lambda a: a["at_s"]):
        match = next((i for i, e in enumerate(episodes) if e["company"] == alert["company"]
                      and e["start"] <= alert["at_s"] <= e["end"] + 86400), None)
        if match is None:
            false += 1
            continue
        if match in detected:
            continue
        detected.add(match)
        e = episodes[match]
        seen = {i["text"] for i in items if i["company"] == e["company"] and e["start"] <= i["timestamp"] <= alert["at_s"]}
        delays.append(len(seen))
    return {"episodes_detected": len(detected), "median_detection_delay_texts": statistics.median(delays) if delays else None,
            "detection_delays_texts": delays, "false_alerts": false}


def throughput(config_path: Path, cmd: list[str], items: list[dict], clients: int, serve_args: tuple = ()) -> float:
    """Texts per second with `clients` clients each posting batches of 100 (the stream dealt out in turn)."""
    from concurrent.futures import ThreadPoolExecutor

    proc, url = start_server([*cmd, "--app", str(config_path), *serve_args], "/readyz")
    batches = [items[i:i + 100] for i in range(0, len(items), 100)]
    try:
        with httpx.Client() as warm:
            post(warm, url, [{**i, "text": "warm-up " + i["text"]} for i in items[:100]])

        def run(share):
            with httpx.Client() as client:
                return sum(len(post(client, url, b)["results"]) for b in share)
        began = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            done = sum(pool.map(run, [batches[k::clients] for k in range(clients)]))
        return round(done / (time.perf_counter() - began), 1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def replay(config_path: Path, cmd: list[str], items: list[dict], latency: bool) -> dict:
    """The stream in time order, batches of 100, one client; then (latency) 200 one-item requests."""
    proc, url = start_server([*cmd, "--app", str(config_path)], "/readyz")
    try:
        with httpx.Client() as client:
            post(client, url, [{**i, "text": "warm-up " + i["text"]} for i in items[:100]])  # one-off costs
            counts = {"stored": 0, "duplicate": 0, "rejected": 0}
            began = time.perf_counter()
            for start in range(0, len(items), 100):
                got = post(client, url, items[start:start + 100])
                for k in counts:
                    counts[k] += got[k]
            ingest_s = time.perf_counter() - began
            alerts = [a for a in client.get(f"{url}/v1/finance/alerts", params={"limit": 1000}).json()["alerts"]]
            single = []
            for i in range(200 if latency else 0):
                t = time.perf_counter()
                post(client, url, [{"text": f"Company B: latency probe {i} {items[i]['text']}", "timestamp": T0 + DAYS * 86400 + i}])
                single.append((time.perf_counter() - t) * 1000)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    out = {"alerts": alerts, "stream_texts": len(items), "stream_duplicates_sent": sum(i["source"] == "copy" for i in items),
           "stream_duplicates_counted": counts["duplicate"], "ingest_per_second_c1": round(len(items) / ingest_s, 1)}
    if single:
        out.update(ingest_c1_p50_ms=round(statistics.median(single), 2),
                   ingest_c1_p95_ms=round(statistics.quantiles(single, n=20)[18], 2))
    return out


def model_alone(folder: Path, texts: list[str]) -> float:
    """The int8 model's own texts per second on the same texts, in calls of 100 (the server's work without HTTP,
    parsing, storage or detection): the ceiling of the ingest rate on this machine."""
    from tunelab.models.predictor import Predictor

    predictor = Predictor(folder)
    predictor.infer(texts[:100], None, False)
    began = time.perf_counter()
    for start in range(0, len(texts), 100):
        predictor.infer(texts[start:start + 100], None, False)
    return round(len(texts) / (time.perf_counter() - began), 1)


def restart_test(config_path: Path, cmd: list[str]) -> dict:
    proc, url = start_server([*cmd, "--app", str(config_path)], "/readyz")
    acknowledged: set[int] = set()
    stop = threading.Event()

    def client():
        n = 0
        with httpx.Client() as c:
            while not stop.is_set():
                items = [{"text": f"Company A: restart probe {n} item {i}", "timestamp": T0 + n} for i in range(20)]
                n += 1
                try:
                    got = post(c, url, items)
                except httpx.HTTPError:
                    return
                acknowledged.update(r["id"] for r in got["results"] if r["status"] == "stored")

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(3.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    stop.set()
    thread.join(30)
    proc, url = start_server([*cmd, "--app", str(config_path)], "/readyz")  # restarts on the same database
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    database = yaml.safe_load(config_path.read_text())["database"].removeprefix("sqlite:///")
    with sqlite3.connect(database) as db:
        stored = {row[0] for row in db.execute("SELECT id FROM finance_texts")}
    return {"restart_acknowledged_items": len(acknowledged), "restart_lost_items": len(acknowledged - stored),
            "restart_stored_unacknowledged_items": len(stored - acknowledged)}


def main() -> None:
    from tunelab.apps.finance import load_finance_config
    from tunelab.apps.finance.build import build

    config_path = configs()
    config = load_finance_config(config_path)
    report = build(config).report  # `tunelab app finance build` on the same config trains it the same way, faster
    sentiment = report["sentiment"]
    run_dir = Path(sentiment["run"])
    int8 = json.loads((run_dir / "export" / "onnx-int8" / "parity.json").read_text())

    from tunelab.evaluation.run import score_file
    from tunelab.models.predictor import Predictor
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    int8_test = score_file(Predictor(run_dir / "export" / "onnx-int8"), run_dir / "data" / manifest["files"]["test"])

    held_out = [split_texts(run_dir, s) for s in ("validation", "test")]
    texts = held_out[0][0] + held_out[1][0]
    labels = held_out[0][1] + held_out[1][1]
    cmd = [sys.executable, "-m", "tunelab", "serve"]
    figures = {"fpb_50agree_test_accuracy": round(sentiment["test"]["accuracy"], 4),
               "fpb_50agree_test_accuracy_int8": round(int8_test["accuracy"], 4),
               "fpb_50agree_test_accuracy_teacher": round(report["sentiment_teacher"]["test"]["accuracy"], 4),
               "sentiment_layers": config.sentiment_layers,
               "int8_label_agreement": int8.get("label_agreement"),
               "held_out_sentences": len(texts), "held_out_negative_share": round(labels.count("negative") / len(labels), 4)}
    for prefix, (share, rate) in SCENARIOS.items():
        items, episodes = stream(texts, labels, share, rate)
        replayed = replay(with_database(config_path, f"replay-{prefix or 'main'}"), cmd, items, latency=not prefix)
        figures.update({prefix + k: v for k, v in {**score_alerts(replayed.pop("alerts"), episodes, items), **replayed}.items()})
        figures[prefix + "episodes"] = [{"company": e["company"], "start_day": round((e["start"] - T0) / 86400, 2)} for e in episodes]
    figures.update(speed(config_path, run_dir, texts, labels))
    figures.update(restart_test(with_database(config_path, "restart"), cmd))
    write_results("finance", figures)


def speed(config_path: Path, run_dir: Path, texts: list[str], labels: list[str]) -> dict:
    """ingest_per_second with the server's defaults, beside the same with hand-offs of at most 32 texts to the model
    (`--max-batch-size 32`) and the model alone: SPEED_ROUNDS interleaved rounds, medians."""
    cmd = [sys.executable, "-m", "tunelab", "serve"]
    items, _ = stream(texts, labels, *SCENARIOS[""])
    rounds: dict[str, list] = {"ingest_per_second": [], "ingest_per_second_max_batch_32": [], "model_alone_per_second": []}
    for _ in range(SPEED_ROUNDS):
        rounds["ingest_per_second"].append(throughput(with_database(config_path, "clients"), cmd, items, CLIENTS))
        rounds["ingest_per_second_max_batch_32"].append(
            throughput(with_database(config_path, "clients"), cmd, items, CLIENTS, ("--max-batch-size", "32")))
        rounds["model_alone_per_second"].append(model_alone(run_dir / "export" / "onnx-int8", [i["text"] for i in items]))
        print({k: v[-1] for k, v in rounds.items()}, flush=True)
    figures = {k: round(statistics.median(v), 1) for k, v in rounds.items()}
    figures.update({f"{k}_rounds": v for k, v in rounds.items()})
    figures["ingest_vs_model_alone"] = round(figures["ingest_per_second"] / figures["model_alone_per_second"], 3)
    return figures


def scoring_run(config_path: Path) -> Path:
    """The run folder of the model that scores (built by main(): reused here, not retrained)."""
    from tunelab.apps.finance import load_finance_config
    from tunelab.apps.finance.build import build

    return Path(build(load_finance_config(config_path), quiet=True).report["sentiment"]["run"])


def speed_only() -> None:
    """`--speed`: the speed figures again, into the last full run's results (its model and stream)."""
    figures = json.loads((Path(__file__).parent / "results" / "finance.json").read_text())
    config_path = configs()
    run_dir = scoring_run(config_path)
    held_out = [split_texts(run_dir, s) for s in ("validation", "test")]
    figures.update(speed(config_path, run_dir, held_out[0][0] + held_out[1][0], held_out[0][1] + held_out[1][1]))
    write_results("finance", {k: v for k, v in figures.items() if k not in ("date", "machine")})


def sweep() -> None:
    """How the alert defaults were chosen: the detector alone (no server) on development streams, seeds 1-8 of each
    scenario (never the benchmark's 42), over the int8 model's labels of the held-out sentences."""
    from tunelab.apps.finance.detector import SurgeDetector
    from tunelab.models.predictor import Predictor

    run_dir = scoring_run(configs())
    held_out = [split_texts(run_dir, s) for s in ("validation", "test")]
    texts, labels = held_out[0][0] + held_out[1][0], held_out[0][1] + held_out[1][1]
    negative = {t: a["label"] == "negative" for t, a in zip(texts, Predictor(run_dir / "export" / "onnx-int8").predict(texts))}
    streams = {prefix: [stream(texts, labels, share, rate, seed) for seed in range(1, 9)]
               for prefix, (share, rate) in SCENARIOS.items()}
    rows = []
    for shift, threshold, rate_factor in [(0.3, 7, None), (0.3, 6, 4), (0.3, 7, 4), (0.3, 8, 4), (0.3, 9, 4), (0.25, 8, 4),
                                          (0.2, 6, 4)]:
        row = {"shift": shift, "threshold": threshold, "rate_factor": rate_factor}
        for prefix, cases in streams.items():
            found, false = [], []
            for items, episodes in cases:
                detector, alerts, seen = SurgeDetector(shift, threshold, rate_factor=rate_factor), [], set()
                for n, item in enumerate(items):
                    if item["text"] not in seen:
                        seen.add(item["text"])
                        surge = detector.observe(item["company"], n, negative[item["text"].split(": ", 1)[1]], item["timestamp"])
                        if surge is not None:
                            alerts.append({"company": surge.company, "at_s": surge.at})
                scored = score_alerts(alerts, episodes, items)
                found.append(scored["episodes_detected"])
                false.append(scored["false_alerts"])
            row[prefix + "episodes_detected_mean"] = statistics.mean(found)
            row[prefix + "false_alerts_mean"] = statistics.mean(false)
        rows.append(row)
        print(row, flush=True)
    write_results("finance_sweep", {"rows": rows})


if __name__ == "__main__":
    if "--sweep" in sys.argv:
        sweep()
    elif "--speed" in sys.argv:
        speed_only()
    else:
        main()
