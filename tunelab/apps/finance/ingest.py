"""From raw items to stored, scored, attributed texts, and the alerts they raise.

    items = parse_items(raw, max_chars)        # each a valid Item or the reason it is rejected
    results = finance.commit(items, outputs)   # stored (one transaction) before this returns, then detected

`outputs` are the sentiment model's answers (ServedModel.decide: label and scores), one per item, and
optionally the NER model's entities. The server scores through its batchers; `tunelab app finance ingest` calls
the models directly (score_texts).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from tunelab.apps.finance.detector import CompanyState, SurgeDetector
from tunelab.apps.finance.store import FinanceStore, Scored
from tunelab.apps.finance.watchlist import Watchlist

log = logging.getLogger("tunelab.finance")
FIELDS = {"text", "timestamp", "source", "url"}
LATEST_S = 4102444800  # 2100-01-01: a larger number is milliseconds or a mistake


@dataclass
class Item:
    text: str
    published_s: int
    source: str | None = None
    url: str | None = None


def parse_item(raw, max_chars: int = 20000, now_s: float | None = None) -> Item | str:
    """A valid Item, or why not (one sentence). timestamp: ISO 8601 (a time without zone is UTC) or Unix seconds;
    absent: the time of arrival."""
    if not isinstance(raw, dict):
        return f"an item is a JSON object with text (and timestamp, source, url), not {type(raw).__name__}"
    unknown = set(raw) - FIELDS
    if unknown:
        return f"unknown field(s) {', '.join(sorted(map(str, unknown)))}; an item has text, timestamp, source, url"
    text = raw.get("text")
    if not isinstance(text, str) or not text.strip():
        return "text is missing or empty" if not isinstance(text, str) or not text else "text is only whitespace"
    if len(text) > max_chars:
        return f"text has {len(text)} characters; at most {max_chars}"
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        return "text holds a lone surrogate, which is not valid Unicode"
    for key in ("source", "url"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > (200 if key == "source" else 2000)):
            return f"{key} must be a string of at most {200 if key == 'source' else 2000} characters"
    stamp = raw.get("timestamp")
    if stamp is None:
        published = now_s if now_s is not None else time.time()
    elif isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
        if not math.isfinite(stamp) or not 0 <= stamp < LATEST_S:
            return (f"timestamp {stamp} is not Unix seconds between 1970 and 2100"
                    + (" (milliseconds? divide by 1000)" if math.isfinite(stamp) and stamp >= LATEST_S else ""))
        published = float(stamp)
    elif isinstance(stamp, str):
        try:
            when = datetime.fromisoformat(stamp.strip())
        except ValueError:
            return f"timestamp {stamp!r} is not an ISO 8601 time (e.g. 2026-03-01T09:30:00Z) or Unix seconds"
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        published = when.timestamp()
        if not 0 <= published < LATEST_S:
            return f"timestamp {stamp!r} is outside 1970-2100"
    else:
        return "timestamp must be an ISO 8601 string or Unix seconds"
    return Item(text, int(published), raw.get("source"), raw.get("url"))


def parse_items(raws: list, max_chars: int = 20000) -> list[Item | str]:
    now_s = time.time()
    return [parse_item(raw, max_chars, now_s) for raw in raws]


class Finance:
    """The app's state: store, watchlist, detector; `commit` is the one way in."""

    def __init__(self, config, store: FinanceStore | None = None, watchlist: Watchlist | None = None,
                 metrics=None, webhook=None):
        from tunelab.apps.finance.watchlist import read_watchlist

        self.config = config
        self.store = store or FinanceStore(config.database_url())
        self.watchlist = watchlist or read_watchlist(config.watchlist)
        self.detector = SurgeDetector.from_config(config.alerts)
        self.metrics, self.webhook = metrics, webhook
        self.lock = threading.Lock()  # store and detect in arrival order: a restart replays that order
        self._rebuild()

    def _rebuild(self) -> None:
        """The detector's state after a restart: the stored mentions replayed in arrival order (no alert is raised
        twice: the cooldowns restart from the stored alerts)."""
        for company, at_s in self.store.last_alerts().items():
            self.detector.companies.setdefault(company, CompanyState()).quiet_until = at_s + self.detector.cooldown_s
        for text_id, company, negative, published_s in self.store.replay():
            self.detector.observe(company, text_id, bool(negative), published_s)

    def companies_of(self, text: str, entities: list[dict] | None = None) -> list[tuple[str, str | None]]:
        names = self.watchlist.find(text)
        for entity in entities or []:
            if entity.get("label") == self.config.ner_label:
                linked = self.watchlist.link(entity.get("text") or text[entity["start"]:entity["end"]])
                if linked and linked not in names:
                    names.append(linked)
        return [(n, self.watchlist.sector(n)) for n in names]

    def commit(self, items: list[Item], answers: list[dict], entities: list[list[dict]] | None = None) -> list[dict]:
        """Store the scored items (committed before this returns), then run the detector over the new ones."""
        negative_label, positive_label = self.config.negative_label, self.config.positive_label
        scored = []
        for i, (item, answer) in enumerate(zip(items, answers)):
            scores = answer["scores"]
            score = float(scores.get(positive_label, 0.0) - scores.get(negative_label, 0.0))
            scored.append(Scored(item.text, item.published_s, item.source, item.url, answer["label"], score,
                                 {k: round(float(v), 5) for k, v in scores.items()}, answer["label"] == negative_label,
                                 self.companies_of(item.text, entities[i] if entities else None)))
        with self.lock:
            stored = self.store.add(scored)
            results = []
            for item, (text_id, new) in zip(scored, stored):
                results.append({"id": text_id, "status": "stored" if new else "duplicate", "label": item.label,
                                "score": round(item.score, 4), "companies": [c for c, _ in item.companies]})
                if not new:
                    continue
                for company, sector in sorted(item.companies):  # the order replay() gives after a restart
                    surge = self.detector.observe(company, text_id, item.negative, item.published_s)
                    if surge is not None:
                        self._alert(surge, sector)
        new = sum(r["status"] == "stored" for r in results)
        if self.metrics is not None:
            self.metrics.finance_texts.labels("stored").inc(new)
            self.metrics.finance_texts.labels("duplicate").inc(len(results) - new)
        self.store.purge(self.config.retention_days)
        return results

    def _alert(self, surge, sector: str | None) -> None:
        alert_id = self.store.add_alert(surge, sector)
        message = (f"negative surge: {surge.company} {surge.negative} of {surge.texts} texts negative "
                   f"(baseline {surge.baseline:.0%})")
        log.warning("finance alert %d: %s", alert_id, message)
        if self.metrics is not None:
            self.metrics.finance_alerts.labels(surge.company).inc()
        if self.webhook is not None:
            from tunelab.monitor.alerts import Event

            self.webhook.send(Event("finance_negative_surge", surge.company, "firing", "share_negative",
                                    surge.share_negative, surge.baseline, message,
                                    datetime.fromtimestamp(surge.at, timezone.utc).isoformat()))

    def close(self) -> None:
        if self.webhook is not None:
            self.webhook.stop()
        self.store.engine.dispose()

    def reject(self, n: int) -> None:
        if self.metrics is not None and n:
            self.metrics.finance_texts.labels("rejected").inc(n)


def load_scorers(config, threads: int | None = None) -> dict:
    """The app's models as the server names them (build.served_models), loaded (the export the backend names)."""
    from tunelab.apps.finance.build import served_models
    from tunelab.serve.models import load_models

    return load_models(served_models(config), threads=threads)


def score_texts(models: dict, texts: list[str]) -> tuple[list[dict], list[list[dict]] | None]:
    """The sentiment answers (and NER entities) of `texts`, by calling the models directly."""
    from tunelab.apps.finance.build import NER, SENTIMENT

    def answers(name):
        out = models[name].infer(texts, None, False)
        return models[name].decide(list(out.probs), None, out.contexts)
    return answers(SENTIMENT), ([r["entities"] for r in answers(NER)] if NER in models else None)
