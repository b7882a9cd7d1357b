"""Alert rules over the monitored figures: firing / resolved events, and their webhook.

A rule fires when its figure crosses the limit at a check and resolves at the first check where it is
back; a figure that cannot be computed yet (too few predictions or feedback) changes nothing. Each event
is logged, stored, shown as a Prometheus gauge and POSTed to the webhook by a thread of its own, so a slow
or dead receiver never slows predictions.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from tunelab.config import PAIRED_TESTS

log = logging.getLogger("tunelab.monitor")


@dataclass
class Event:
    rule: str
    model: str
    state: str  # firing | resolved
    metric: str
    value: float | None
    limit: float
    message: str
    time: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class AlertRules:
    def __init__(self, rules):
        self.rules = list(rules)
        self.firing: dict[tuple[str, str], Event] = {}

    def evaluate(self, model: str, figures: dict, when: str) -> list[Event]:
        """Compare one model's figures with every rule; return the state changes."""
        events = []
        for rule in self.rules:
            value = figures.get(rule.metric)
            if value is None or value != value:  # not computable yet (or NaN): no change
                continue
            limit = rule.above if rule.above is not None else rule.below
            crossed = value > limit if rule.above is not None else value < limit
            if crossed and rule.p_value_below is not None:  # large enough and unlikely to be chance
                p = figures.get(PAIRED_TESTS[rule.metric])
                crossed = p is not None and p < rule.p_value_below
            key = (rule.name, model)
            if crossed and key not in self.firing:
                side = "above" if rule.above is not None else "below"
                event = Event(rule.name, model, "firing", rule.metric, float(value), float(limit),
                              f"{rule.name}: {model} {rule.metric} = {value:.4g}, {side} {limit:g}", when)
                self.firing[key] = event
                events.append(event)
            elif not crossed and key in self.firing:
                del self.firing[key]
                events.append(Event(rule.name, model, "resolved", rule.metric, float(value), float(limit),
                                    f"{rule.name}: {model} {rule.metric} = {value:.4g}, back within {limit:g}", when))
        return events


class Webhook:
    """POSTs events as JSON from its own thread: bounded queue, timeout, retries with backoff."""

    def __init__(self, url: str, timeout_s: float = 5.0, retries: int = 3, max_queue: int = 1000):
        self.url, self.timeout, self.retries = url, timeout_s, retries
        self.queue: queue.Queue = queue.Queue(max_queue)
        self.delivered, self.failed, self.dropped = 0, 0, 0
        self.thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self.thread.start()

    def send(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event.as_dict())
        except queue.Full:  # the receiver has been away for a long time: drop, never block
            self.dropped += 1
            log.warning("alert webhook: queue full, event dropped: %s", event.message)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout) as client:
            while True:
                payload = self.queue.get()
                if payload is None:
                    return
                for attempt in range(self.retries + 1):
                    try:
                        client.post(self.url, json=payload).raise_for_status()
                        self.delivered += 1
                        break
                    except Exception as exc:  # noqa: BLE001 -- any failure: retry, then log; the thread lives on
                        if attempt == self.retries:
                            self.failed += 1
                            log.warning("alert webhook: %s failed after %d tries (%s)", self.url, attempt + 1,
                                        type(exc).__name__)
                        else:
                            time.sleep(2 ** attempt)

    def stop(self, wait_s: float = 2.0) -> None:
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass
        self.thread.join(wait_s)
