"""RSS over time of one training run of methods.py's budget, with the phases marked (a diagnostic).

    .venv/bin/python benchmarks/memory_timeline.py sst2 lora [KEY=VALUE ...]

Prints RSS after the model is built, the peak and when it happened, the RSS at the start and end of the
evaluation, model save and monitoring-profile phases, the peak before the model / during the training steps /
after them, and RSS every ~5 s. Samples every 0.1 s from a thread; writes nothing but its run folder.
"""

from __future__ import annotations

import sys
import threading
import time

import methods
from _common import REPO, WORK, sst2_subset_csv, status_mb

START = time.perf_counter()
events: list[tuple[float, str, float]] = []  # (seconds, phase, RSS MB)
samples: list[tuple[float, float]] = []  # (seconds, RSS MB)


def mark(name: str) -> None:
    events.append((time.perf_counter() - START, name, status_mb("VmRSS")))


def sample_forever() -> None:
    while True:
        samples.append((time.perf_counter() - START, status_mb("VmRSS")))
        time.sleep(0.1)


def mark_around(module, name: str) -> None:
    """Replace module.name by a wrapper that marks its start and end."""
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        mark(f"{name} start")
        try:
            return real(*args, **kwargs)
        finally:
            mark(f"{name} end")
    setattr(module, name, wrapped)


def peak_between(start: float, end: float) -> float:
    return max((rss for t, rss in samples if start <= t < end), default=0.0)


def main() -> None:
    import tunelab.monitor.profile as profile
    import tunelab.training.loop as loop
    from tunelab.config import load_config

    dataset, method, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    for name in ("save_checkpoint", "save_model_folder", "iter_probabilities", "_evaluate_and_keep_best"):
        if hasattr(loop, name):
            mark_around(loop, name)
    mark_around(profile, "build_profile")
    apply_method = loop.apply_method

    def apply_and_mark(model, method_config):
        model = apply_method(model, method_config)
        mark("model built")
        return model
    loop.apply_method = apply_and_mark

    example, overrides, _ = methods.DATASETS[dataset]
    if dataset == "sst2":  # the same training data as methods.py's
        overrides = [f"data.train={sst2_subset_csv()}", *overrides]
    config = load_config(REPO / "examples" / example,
                         [f"runs_dir={WORK / 'runs'}", "name=memory-timeline", f"method.name={method}", *overrides, *extra])
    threading.Thread(target=sample_forever, daemon=True).start()
    loop.train(config, overwrite=True, quiet=True)
    mark("done")

    built = next(e for e in events if e[1] == "model built")
    peak_t, peak = max(samples, key=lambda s: s[1])
    print(f"{method} {extra}: rss after model {built[2]:.0f}, peak {peak:.0f} at t={peak_t:.1f}s "
          f"-> train memory {peak - built[2]:.0f} MB")
    for t, name, rss in events:
        print(f"  {t:7.1f}s {name:35s} {rss:.0f}")
    first_eval = next((t for t, name, _ in events if name == "iter_probabilities start"), float("inf"))
    print(f"  peak before model {peak_between(0, built[0]):.0f}; steps {peak_between(built[0], first_eval):.0f}; "
          f"after steps {peak_between(first_eval, float('inf')):.0f}")
    print("  timeline:", " ".join(f"{t:.0f}s:{rss:.0f}" for t, rss in samples[::50]))


if __name__ == "__main__":
    main()
