"""Loading a model on a passing thread, so that the thread that decodes with it runs torch's parallel code at full
speed.

torch's OpenMP (libgomp) keeps a team of worker threads for every thread that has run parallel code, for as long as
that thread lives. While the teams' threads outnumber the cores, a worker that finished its part sleeps at once
instead of spinning a short while for the next one; decoding makes a few hundred short parallel calls per token,
each then waiting for a sleeping worker to wake. Decoding 8 rows of SmolLM2-135M on a thread of its own measured
57.0 ms per step with the model loaded on the main thread, 44.3 ms with it loaded on a passing thread (1.29x; 2
cores; benchmarks/decode_thread.py). The server's decoding engine and `Generator.stream` decode on threads of their
own.
"""

from __future__ import annotations

import threading


def on_passing_thread(function, *args, **kwargs):
    """function(*args, **kwargs) run on a new thread that ends when it returns (its parallel team with it); its
    result, or its exception raised here."""
    outcome: list = []

    def run():
        try:
            outcome.append((True, function(*args, **kwargs)))
        except BaseException as exc:  # noqa: BLE001 -- raised in the caller's thread below
            outcome.append((False, exc))
    worker = threading.Thread(target=run, name="tunelab-load", daemon=True)  # daemon: Ctrl-C while loading exits
    worker.start()
    worker.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
