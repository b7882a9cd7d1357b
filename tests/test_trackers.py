"""Experiment trackers beside TensorBoard (optional extras): MLflow and W&B get the training's metrics, each run in
its own run folder unless the environment names a server."""

import json
import os
import struct

import pytest

from tunelab.errors import TunelabError
from tunelab.training import train

SETTINGS = dict(max_steps=10, eval_every=5, log_every=5)


def _same_as_logged(logged: list[tuple[int, float]], run_dir) -> bool:
    """(step, loss) pairs as metrics.jsonl has them (to float32 rounding)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    ours = [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]
    return len(ours) == 2 and [s for s, _ in logged] == [s for s, _ in ours] \
        and [v for _, v in logged] == pytest.approx([v for _, v in ours], rel=1e-6)


def test_mlflow_gets_each_runs_metrics_in_that_runs_own_store(tiny_config, monkeypatch):
    pytest.importorskip("mlflow", reason="MLflow is an optional extra: pip install 'tunelab[mlflow]'")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # two trainings in one process (a search, a notebook): the second must not log into the first one's store
    results = [train(tiny_config(name=name, trackers=["mlflow"], **SETTINGS), quiet=True) for name in ("first", "second")]
    assert "MLFLOW_TRACKING_URI" not in os.environ  # set for the training only
    for result in results:
        client = MlflowClient(f"sqlite:///{result.run_dir / 'mlflow.db'}")
        (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
        loss = client.get_metric_history(run.info.run_id, "train/loss")
        assert _same_as_logged([(m.step, m.value) for m in loss], result.run_dir)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "validation/accuracy")] == [5, 10]
        assert run.data.params["learning_rate"] == "0.003"


def _wandb_history(path) -> list[dict]:
    """The history rows of an offline W&B run file (run-<id>.wandb). wandb has no reader of its own for it any more;
    the file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then records in 32 KiB blocks, each
    record a 7-byte header (crc32c, length, type: 1 whole, 2 first, 3 middle, 4 last piece) and a protobuf Record."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, pos, pieces, rows = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        pieces += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pieces)
            pieces = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def test_wandb_offline_run_in_the_run_folder_holds_the_logged_metrics(tiny_config, monkeypatch):
    pytest.importorskip("wandb", reason="Weights & Biases is an optional extra: pip install 'tunelab[wandb]'")
    for key in ("WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(key, raising=False)
    result = train(tiny_config(name="wb", trackers=["wandb"], **SETTINGS), quiet=True)
    assert "WANDB_DIR" not in os.environ and "WANDB_MODE" not in os.environ  # set for the training only
    (path,) = (result.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    history = _wandb_history(path)
    loss = [(row["_step"], row["train/loss"]) for row in history if "train/loss" in row]
    assert _same_as_logged(loss, result.run_dir)
    assert [row["_step"] for row in history if "validation/accuracy" in row] == [5, 10]


def test_a_tracker_whose_package_is_missing_is_one_clear_error(tiny_config, monkeypatch):
    import accelerate.tracking

    # accelerate itself leaves a missing tracker out without a word: the run would log nowhere
    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: ["tensorboard"])
    config = tiny_config(name="untracked", max_steps=2, trackers=["tensorboard", "mlflow"])
    with pytest.raises(TunelabError, match=r"train.trackers: mlflow is not installed; install with "
                                           r"pip install 'tunelab\[mlflow\]', or leave it out of train.trackers"):
        train(config, quiet=True)
    assert not config.run_dir.exists()
