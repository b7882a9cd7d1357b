"""The server's monitor: records every prediction and every generated answer, takes feedback, and every
check_every_s computes drift, live accuracy, latency and errors (for a causal LM: time to first token, tokens/s,
answers cut by max_tokens, live approval), then evaluates the alert rules.

The request path only appends to in-memory windows and the log's pending list (microseconds); database
writes, statistics and webhooks run on threads of their own. With durability: sync, a request then awaits (without
blocking the event loop) the log's commit of its rows.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from tunelab.config import MonitorConfig
from tunelab.errors import TunelabError
from tunelab.models.card import ModelCard
from tunelab.monitor import generations, store
from tunelab.monitor.alerts import AlertRules, Event, Webhook
from tunelab.monitor.drift import load_statistics, window_drift
from tunelab.monitor.profile import label_counts, reference_shares, run_of, shares

log = logging.getLogger("tunelab.monitor")
RECENT_IDS = 200_000  # predictions whose id feedback can name without a database lookup
HISTORY = 720  # checks kept in memory for the dashboard (an hour at the default 5 s)
SERVER = "server"  # the name under which latency and error figures are checked


class FeedbackError(Exception):
    def __init__(self, status: int, code: str, message: str):
        self.status, self.code, self.message = status, code, message


@dataclass
class _Live:
    """One model's sliding window of predictions and feedback."""

    labels: deque
    confidence: deque
    tokens: deque
    unknown: deque
    embeddings: deque  # (text hash, embedding)
    feedback: OrderedDict  # prediction id -> (predicted, true) label strings; the last accuracy_window
    generated: deque  # a causal LM's last answers (their log rows)
    total: int = 0
    seen_at_check: int = -1
    figures: dict = field(default_factory=dict)
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY))


def default_database(models: dict) -> str | None:
    """sqlite:///<run folder of the first model>/monitor.db -- or the model's own folder when its run folder is
    not here or not writable (an export copied elsewhere) -- or None when no model came from a folder."""
    import os

    for served in models.values():
        path = served.info.get("path")
        if not path:
            continue
        model_dir = Path(path)
        for folder in (run_of(model_dir, ModelCard.read(model_dir)), model_dir):
            if folder.is_dir() and os.access(folder, os.W_OK):
                return f"sqlite:///{(folder / 'monitor.db').resolve()}"
        raise TunelabError(f"no writable folder for the monitor's database ({model_dir} is read-only); "
                           "give one: --monitor-db sqlite:///path/monitor.db, or --no-monitor")
    return None


class Monitor:
    def __init__(self, settings: MonitorConfig, models: dict, metrics, database: str):
        self.settings, self.models, self.metrics, self.database = settings, models, metrics, database
        self.engine = store.open_database(database)
        self.log = store.PredictionLog(self.engine, settings.flush_interval_s, settings.retention_days,
                                       durable=settings.durability == "sync")
        self.generation_log = store.PredictionLog(self.engine, settings.flush_interval_s, settings.retention_days,
                                                  durable=settings.durability == "sync", table=store.generations)
        self.rules = AlertRules(settings.alerts)
        self.webhook = Webhook(settings.webhook_url, settings.webhook_timeout_s, settings.webhook_retries) \
            if settings.webhook_url else None
        w = settings.window
        self.live = {name: _Live(deque(maxlen=w), deque(maxlen=w), deque(maxlen=w), deque(maxlen=w), deque(maxlen=w),
                                 OrderedDict(), deque(maxlen=w)) for name in models}
        self.requests: deque = deque(maxlen=max(w, 1000))  # (time, latency ms, status) of /v1/predict
        self.request_total = 0
        self.last_rate = (time.monotonic(), 0)  # (when, request_total) at the previous check
        self.server_figures: dict = {}
        self.server_history: deque = deque(maxlen=HISTORY)
        self.recent: OrderedDict[str, tuple[str, str]] = OrderedDict()  # id -> (model, predicted label)
        self.events: deque = deque(maxlen=200)
        self.lock = threading.RLock()  # the windows, figures, histories and alert state: request path vs checks
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="monitor-checks", daemon=True)
        self._restore()
        load_statistics()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.log.start()
        self.generation_log.start()
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(30)
        self.log.stop()
        self.generation_log.stop()
        if self.webhook:
            self.webhook.stop()
        self.engine.dispose()

    def _restore(self) -> None:
        """Feedback and recent alerts survive a restart (predictions' windows start afresh)."""
        a = store.alerts.c
        with self.engine.connect() as conn:
            for name, live in self.live.items():
                rows = conn.execute(sa.select(store.feedback.c.prediction_id, store.feedback.c.predicted, store.feedback.c.label)
                                    .where(store.feedback.c.model == name)
                                    .order_by(store.feedback.c.created_at.desc()).limit(self.settings.accuracy_window)).all()
                for pid, predicted, true in reversed(rows):
                    live.feedback[pid] = (predicted, true)
            events = conn.execute(sa.select(store.alerts).order_by(a.id.desc()).limit(50)).mappings().all()
            latest = conn.execute(sa.select(store.alerts).where(a.id.in_(
                sa.select(sa.func.max(a.id)).group_by(a.rule, a.model)))).mappings().all()
        for row in reversed(events):
            self.events.append(_event_dict(row))
        names = {rule.name for rule in self.rules.rules}
        for row in latest:  # an alert firing when the server stopped is still firing: it will resolve, not fire again
            if row["state"] == "firing" and row["rule"] in names:
                self.rules.firing[(row["rule"], row["model"])] = Event(
                    row["rule"], row["model"], "firing", row["metric"], row["value"], row["limit_value"], row["message"],
                    _event_dict(row)["time"])
                self.metrics.alert_firing.labels(row["rule"], row["model"]).set(1)

    # ------------------------------------------------------------------ the request path

    def record(self, name: str, texts: list[str], rows: list, results: list[dict], latency_s: float):
        """Log one request's predictions -> (their ids, for feedback; with durability: sync, the Future done once
        they are committed, else None)."""
        served = self.models[name]
        task = served.task
        created, latency_ms = store.now(), latency_s * 1000
        ids, records = [], []
        live = self.live[name]
        with self.lock:
            for text, row, result in zip(texts, rows, results):
                pid = uuid.uuid4().hex
                digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
                label, score, scores = task.log_fields(result)
                ids.append(pid)
                records.append({"id": pid, "created_at": created, "model": name, "text_sha256": digest,
                                "text": text.replace("\x00", "") if self.settings.store_text else None, "label": label,
                                "score": score, "scores": scores, "latency_ms": latency_ms, "tokens": row.tokens})
                key, sure = task.observe(row.probs, served.threshold)
                live.labels.append(key)
                live.confidence.append(sure)
                live.tokens.append(row.tokens)
                live.unknown.append(row.unknown)
                if row.embedding is not None:
                    live.embeddings.append((digest, row.embedding))
                self.recent[pid] = (name, label)
            live.total += len(texts)
            self._forget_old_ids()
        return ids, self.log.add(records)

    def record_generation(self, name: str, endpoint: str, digits: str, prompt: str, prompt_tokens: int,
                          answers: list[generations.Answer]):
        """Log one response's generated answers (`digits`: of its id) -> with durability: sync, the Future done once
        they are committed, else None."""
        records = generations.rows(name, endpoint, digits, prompt, prompt_tokens, answers, store.now(),
                                   self.settings.store_text)
        live = self.live[name]
        with self.lock:
            for row in records:
                live.generated.append(row)
                self.recent[row["id"]] = (name, row["finish_reason"])
            live.total += len(records)
            self._forget_old_ids()
        return self.generation_log.add(records)

    def _forget_old_ids(self) -> None:
        """Keep the last RECENT_IDS answered ids in memory (older ones are looked up in the log); under the lock."""
        while len(self.recent) > RECENT_IDS:
            self.recent.popitem(last=False)

    def record_request(self, status: int, latency_s: float) -> None:
        with self.lock:
            self.requests.append((time.time(), latency_s * 1000, status))
            self.request_total += 1

    # ------------------------------------------------------------------ feedback

    def add_feedback(self, items: list[tuple[str, str | list[str]]]) -> dict:
        """[(prediction id, true label or labels)] -> stored; errors name the first bad item. The same id twice:
        the last answer counts (also over earlier requests)."""
        items = list({generations.log_id(pid): label for pid, label in items}.items())
        known = {}
        missing = [pid for pid, _ in items if pid not in self.recent]
        try:
            if missing:
                p, g = store.predictions.c, store.generations.c
                with self.engine.connect() as conn:
                    found = conn.execute(sa.select(p.id, p.model, p.label).where(p.id.in_(missing))
                                         .union_all(sa.select(g.id, g.model, g.finish_reason).where(g.id.in_(missing)))).all()
                known = {pid: (model, label) for pid, model, label in found}
            rows = self._feedback_rows(items, known)
            with self.engine.begin() as conn:  # a second answer for the same prediction replaces the first
                conn.execute(store.feedback.delete().where(store.feedback.c.prediction_id.in_([r["prediction_id"] for r in rows])))
                conn.execute(store.feedback.insert(), rows)
        except sa.exc.SQLAlchemyError as exc:
            raise FeedbackError(503, "database_unavailable", f"the monitor database did not take the feedback "
                                f"({type(exc).__name__}); retry shortly") from None
        with self.lock:
            for row in rows:
                window = self.live[row["model"]].feedback
                window.pop(row["prediction_id"], None)
                window[row["prediction_id"]] = (row["predicted"], row["label"])
                while len(window) > self.settings.accuracy_window:
                    window.popitem(last=False)
            live = {m: _accuracy(self.models[m].task, list(self.live[m].feedback.values()), self.settings.min_feedback)
                    for m in {r["model"] for r in rows}}
        return {"accepted": len(rows), "live": live}

    def _feedback_rows(self, items: list, known: dict) -> list[dict]:
        rows = []
        for i, (pid, label) in enumerate(items):
            where = f"feedback[{i}]" if len(items) > 1 else "feedback"
            hit = self.recent.get(pid) or known.get(pid)
            if hit is None:
                raise FeedbackError(404, "unknown_prediction", f"{where}: no prediction or answer with id '{pid}' "
                                    "(ids come with each prediction and answer; old ones are removed after the retention)")
            model, predicted = hit
            served = self.models.get(model)
            if served is None:
                raise FeedbackError(422, "unknown_label", f"{where}: prediction '{pid}' was made by model '{model}', "
                                    "which this server does not serve")
            text, problem = served.task.feedback_label(label)
            if problem is not None:
                raise FeedbackError(422, "unknown_label", f"{where}: {problem} (model '{model}')")
            rows.append({"prediction_id": pid, "model": model, "label": text, "predicted": predicted,
                         "created_at": store.now()})
        return rows

    # ------------------------------------------------------------------ checks

    def _run(self) -> None:
        from threadpoolctl import ThreadpoolController

        pools = ThreadpoolController()  # once: building it scans the loaded libraries (measured: half a check's CPU)
        while not self.stopping.wait(self.settings.check_every_s):
            try:
                with pools.limit(limits=1):  # statistics on one core: the model keeps the others
                    self.check()
            except Exception:  # noqa: BLE001 -- a failed check must not end monitoring
                log.exception("monitor check failed")

    def check(self) -> list:
        """Compute every figure now, store it, update the gauges, evaluate the alert rules; return events."""
        when = store.now()
        stamp = when.isoformat()
        events, rows = [], []
        for name, live in self.live.items():
            try:
                figures = self._model_figures(name, live)  # the statistics: outside the lock
            except Exception:  # noqa: BLE001 -- one model's failing statistic must not stop the others' checks
                log.exception("monitor: check of model %s failed", name)
                continue
            figures = {k: v for k, v in figures.items() if v == v and abs(v) != float("inf")}  # JSON has no NaN
            window = len(live.generated) if self.models[name].engine is not None else len(live.labels)
            for metric, value in figures.items():
                if isinstance(value, float) and value == value:
                    rows.append({"created_at": when, "model": name, "metric": metric, "value": value,
                                 "window": window})
                    self.metrics.monitor.labels(name, metric).set(value)
            with self.lock:
                live.figures = figures
                live.history.append({"time": stamp, **figures, "label_shares": self._shares(name, live)})
                events += self.rules.evaluate(name, figures, stamp)
        server = self._server_figures()
        for metric, value in server.items():
            self.metrics.monitor.labels(SERVER, metric).set(value)
        with self.lock:
            self.server_figures = server
            self.server_history.append({"time": stamp, **server})
            events += self.rules.evaluate(SERVER, server, stamp)
        for metric in ("p95_latency_ms", "error_rate"):
            if metric in self.server_figures:
                rows.append({"created_at": when, "model": SERVER, "metric": metric, "value": self.server_figures[metric],
                             "window": len(self.requests)})
        for event in events:  # first: a database outage must not swallow an alert
            (log.warning if event.state == "firing" else log.info)("alert %s", event.message)
            self.metrics.alert_firing.labels(event.rule, event.model).set(1 if event.state == "firing" else 0)
            with self.lock:
                self.events.append(event.as_dict())
            if self.webhook:
                self.webhook.send(event)
        try:
            with self.engine.begin() as conn:
                if rows:
                    conn.execute(store.checks.insert(), rows)
                if events:
                    conn.execute(store.alerts.insert(), [
                        {"created_at": when, "rule": e.rule, "model": e.model, "state": e.state, "metric": e.metric,
                         "value": e.value, "limit_value": e.limit, "message": e.message} for e in events])
        except sa.exc.SQLAlchemyError as exc:
            log.warning("monitor: could not store this check's figures and %d events (%s)", len(events), type(exc).__name__)
        return events

    def _model_figures(self, name: str, live: _Live) -> dict:
        served = self.models[name]
        if served.engine is not None:  # a causal LM: its answers' figures and the approval from feedback
            with self.lock:
                window, feedback = list(live.generated), list(live.feedback.values())
            return {**generations.window_figures(window), **_accuracy(served.task, feedback, self.settings.min_feedback)}
        with self.lock:
            n = len(live.labels)
            fresh = live.total != live.seen_at_check
            snapshot = (list(live.labels), np.array(live.confidence), np.array(live.tokens), np.array(live.unknown),
                        list(live.embeddings)) if fresh else None
            live.seen_at_check = live.total
        figures = {k: v for k, v in live.figures.items() if k not in ("live_accuracy", "live_macro_f1", "accuracy_drop")}
        profile = served.profile
        if snapshot is not None and profile is not None and n >= self.settings.min_window:
            labels, conf, tokens, unknown, embedded = snapshot
            counts = label_counts(labels, bool(profile.get("multi_label")), len(profile["labels"]))
            unique = list({digest: emb for digest, emb in embedded}.values())  # repeated texts once
            figures = window_drift(profile, counts, conf, tokens, float(unknown.sum() / max(tokens.sum(), 1)),
                                   np.stack(unique) if unique else None)
        figures["window"] = float(n)
        with self.lock:
            feedback = list(live.feedback.values())
        figures.update(_accuracy(served.task, feedback, self.settings.min_feedback))
        reference = served.info.get("metrics", {}).get("accuracy") or (profile or {}).get("reference_accuracy")
        if "live_accuracy" in figures and reference is not None:
            figures["accuracy_drop"] = float(reference) - figures["live_accuracy"]
        return figures

    def _server_figures(self) -> dict:
        with self.lock:
            recent = list(self.requests)
        if not recent:
            return {}
        latency = np.array([r[1] for r in recent])
        now_, (then, total_then) = time.monotonic(), self.last_rate
        self.last_rate = (now_, self.request_total)
        return {"p50_latency_ms": float(np.percentile(latency, 50)), "p95_latency_ms": float(np.percentile(latency, 95)),
                "p99_latency_ms": float(np.percentile(latency, 99)),
                "error_rate": float(np.mean([r[2] >= 500 for r in recent])),
                "requests_per_s": (self.request_total - total_then) / max(now_ - then, 1e-9)}

    def _shares(self, name: str, live: _Live) -> dict:
        labels = self.models[name].info.get("labels") or (self.models[name].profile or {}).get("labels") or []
        with self.lock:
            window = list(live.labels)
        return shares(labels, label_counts(window, bool(self.models[name].info.get("multi_label")), len(labels)))

    def snapshot(self) -> dict:
        """Everything the dashboard shows (GET /v1/monitor)."""
        with self.lock:
            return self._snapshot()

    def _snapshot(self) -> dict:
        models = {}
        for name, live in self.live.items():
            served = self.models[name]
            profile = served.profile
            labels = served.info.get("labels", [])
            models[name] = {"kind": "generation" if served.engine is not None else "prediction",
                            "predictions": live.total, "window": len(live.labels), "feedback": len(live.feedback),
                            "profile": profile is not None, "labels": labels, "figures": live.figures,
                            "label_shares": {"reference": reference_shares(profile), "live": self._shares(name, live)},
                            "history": list(live.history)}
        thresholds = {}
        for rule in self.rules.rules:
            thresholds.setdefault(rule.metric, []).append(
                {"rule": rule.name, "above": rule.above, "below": rule.below, "p_value_below": rule.p_value_below})
        return {"models": models,
                "server": {"requests": self.request_total, **self.server_figures, "history": list(self.server_history)},
                "thresholds": thresholds,
                "alerts": {"firing": [e.as_dict() for e in self.rules.firing.values()], "recent": list(self.events)[-50:]},
                "log": {"database": store._safe(self.database), "durability": self.settings.durability,
                        "written": self.log.written + self.generation_log.written,
                        "commits": self.log.commits + self.generation_log.commits,
                        "pending": len(self.log.pending) + len(self.generation_log.pending)},
                "check_every_s": self.settings.check_every_s}


def _accuracy(task, feedback: list, min_feedback: int) -> dict:
    """The task's live figures (accuracy, ...) over the feedback window, once it holds min_feedback answers."""
    if len(feedback) < min_feedback:
        return {}
    return {**task.live_figures(feedback), "feedback_window": float(len(feedback))}


def _event_dict(row) -> dict:
    return {"rule": row["rule"], "model": row["model"], "state": row["state"], "metric": row["metric"],
            "value": row["value"], "limit": row["limit_value"], "message": row["message"],
            "time": row["created_at"].isoformat() if row["created_at"] else None}


def create_monitor(settings: MonitorConfig, models: dict, metrics) -> Monitor | None:
    """The monitor for these models, or None when it is off (or nothing says where its database goes)."""
    if not settings.enabled:
        return None
    database = settings.database or default_database(models)
    if database is None:
        raise TunelabError("serve.monitor: no run folder to keep monitor.db in; set serve.monitor.database "
                           "(e.g. sqlite:///monitor.db) or serve.monitor.enabled: false")
    return Monitor(settings, models, metrics, database)
