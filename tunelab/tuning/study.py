"""The optuna study behind `tunelab tune`: where it is stored, its fixed set of trials, and which worker runs which.

The study is created with exactly `n_trials` queued (WAITING) trials; a worker takes one by the storage's
atomic WAITING -> RUNNING switch, so several workers (processes or machines) sharing one storage never run a
trial twice and the trial count is exact. A trial whose worker died (SIGKILL, lost machine) is put back in
the queue: the next worker continues it from its last checkpoint, in its own folder.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tunelab.errors import TunelabError

HEARTBEAT_SECONDS = 30
STALE_SECONDS = 300  # a running trial without a heartbeat for this long lost its worker


def open_storage(spec: str | None, tune_dir: Path):
    """None -> a journal file in the study folder; a URL -> a database (RDB); anything else -> a journal file."""
    if spec and "://" in spec:
        try:
            return optuna.storages.RDBStorage(spec)
        except Exception as exc:  # bad URL, unreachable server, missing driver: say which
            raise TunelabError(f"tune.storage: cannot open the database {spec.split('@')[-1]!r}: {exc}") from None
    from optuna.storages.journal import JournalFileBackend

    path = Path(spec) if spec else tune_dir / "study.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def open_study(name: str, storage, direction: str, settings: dict, slots: list[dict]):
    """Create the study with its queued trials, or load it; a changed search is refused, naming what changed."""
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        _check_same_settings(study, settings)
        _add_slots(study, slots)
        return study
    study.set_user_attr("settings", settings)
    _add_slots(study, slots)
    study.set_user_attr("ready", True)
    return study


def _check_same_settings(study, settings: dict) -> None:
    for _ in range(120):  # another worker may be creating it right now
        if study.user_attrs.get("ready"):
            break
        time.sleep(0.5)
    saved = study.user_attrs.get("settings", {})
    changed = [f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(saved) | set(settings))
               if saved.get(k) != settings.get(k)]
    if changed:
        raise TunelabError(f"the study '{study.study_name}' exists with other settings ("
                           + "; ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
                           + "). Continue it with the same config, or give the search a new name")


def _add_slots(study, slots: list[dict]) -> None:
    """Queue the trials not queued yet (a larger tune.n_trials on a later start adds the difference)."""
    have = len(study.get_trials(deepcopy=False))
    for i, params in enumerate(slots[have:], start=have):
        study.enqueue_trial(params, user_attrs={"slot": i})


def _alive(worker: str) -> bool | None:
    """Whether the worker process (host:pid) runs; None when it is on another machine."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def requeue_stale(study, storage) -> list[int]:
    """Put running trials whose worker is gone back in the queue; return their numbers."""
    now, back = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker, beat = t.user_attrs.get("worker", ""), t.user_attrs.get("heartbeat", 0)
        if not worker:  # just taken, its owner not written yet (or a worker that died right then)
            started = t.datetime_start.timestamp() if t.datetime_start else 0
            stale = now - started > STALE_SECONDS
        else:
            alive = _alive(worker)
            stale = alive is False or (alive is None and now - beat > STALE_SECONDS)
        if stale:
            put_back(storage, t._trial_id)
            back.append(t.number)
    return back


def put_back(storage, trial_id: int) -> None:
    """Back to the queue; the owner is cleared first, so nobody takes the next owner for a dead one."""
    storage.set_trial_user_attr(trial_id, "worker", "")
    storage.set_trial_state_values(trial_id, TrialState.WAITING)


def take_trial(study, storage) -> optuna.trial.FrozenTrial | None:
    """The next queued trial, now ours (None when the queue is empty)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if not storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                continue  # another worker took it first
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        storage.set_trial_user_attr(t._trial_id, "worker", f"{socket.gethostname()}:{os.getpid()}")
        storage.set_trial_user_attr(t._trial_id, "heartbeat", time.time())
        return t
    return None


class Heartbeat:
    """Stamps the running trial every HEARTBEAT_SECONDS, so workers on other machines can tell it is alive."""

    def __init__(self, storage):
        self.storage, self.trial_id = storage, None
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True, name="tunelab-heartbeat").start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            trial_id = self.trial_id
            if trial_id is not None:
                try:
                    self.storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
                except Exception:  # finished meanwhile, or the database blinked: the next beat tries again
                    pass

    def stop(self) -> None:
        self._stop.set()


def settings_of(raw: dict) -> dict:
    """What must not change between the workers and restarts of one study: the whole config (as a raw dict, its
    tune: section included) but the tune section's budget and storage and where the runs go, flattened to dotted
    keys."""
    from tunelab.config import flat_keys

    raw = {**raw, "tune": dict(raw.get("tune") or {})}
    for key in ("n_trials", "timeout_minutes", "storage"):
        raw["tune"].pop(key, None)
    for key in ("name", "runs_dir", "serve"):
        raw.pop(key, None)
    return {k: json.dumps(v) for k, v in flat_keys(raw).items()}
