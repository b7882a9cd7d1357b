"""Checkpoints: a run killed with SIGKILL (or stopped with Ctrl-C) and resumed ends as if never stopped."""

import os
import signal
import subprocess
import sys
import time

import yaml
from safetensors.torch import load_file

from tunelab.config import dump_config
from tunelab.training import train


def _write_config(config, path):
    path.write_text(dump_config(config))
    return path


def _wait_for(predicate, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def _final(run_dir):
    return load_file(run_dir / "model" / "model.safetensors"), yaml.safe_load((run_dir / "model" / "tunelab.json").read_text())


def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny_config, tmp_path):
    settings = dict(max_steps=120, eval_every=30, checkpoint_every=10, keep_checkpoints=2, precision="fp32", dropout=0.1)
    straight = train(tiny_config(name="straight", **settings), quiet=True)

    config = tiny_config(name="killed", **settings)
    cfg_path = _write_config(config, tmp_path / "killed.yaml")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(cfg_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = config.run_dir / "checkpoints" / "step-50"
    reached = _wait_for(ckpt.exists, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert reached, "the run ended before step 50; nothing was interrupted"
    done = subprocess.run([sys.executable, "-m", "tunelab", "train", str(cfg_path), "--resume"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stderr

    w_straight, meta_straight = _final(straight.run_dir)
    w_resumed, meta_resumed = _final(config.run_dir)
    assert meta_resumed["best_step"] == meta_straight["best_step"]
    assert abs(meta_resumed["validation"]["accuracy"] - meta_straight["validation"]["accuracy"]) < 1e-6
    assert max(float((w_straight[k] - w_resumed[k]).abs().max()) for k in w_straight) < 1e-5
    # the log has each step once, even though steps 51.. ran twice
    steps = [yaml.safe_load(line)["step"] for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == sorted(set(steps))


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tiny_config, tmp_path):
    config = tiny_config(name="interrupted", max_steps=100000, checkpoint_every=100000, eval_every=100000)
    cfg_path = _write_config(config, tmp_path / "int.yaml")
    # a runner started in the background (nohup, `&`) passes SIGINT on as ignored: give the child the default
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(cfg_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = config.run_dir / "metrics.jsonl"
    assert _wait_for(lambda: log.exists() and log.stat().st_size > 0, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "checkpoint saved" in err and "--resume" in err and "Traceback" not in err
    saved = sorted((config.run_dir / "checkpoints").glob("step-*"))
    assert saved and int(saved[-1].name.split("-")[1]) >= 5


def test_a_half_written_checkpoint_is_ignored(tiny_config):
    from tunelab.training.checkpoint import checkpoints

    config = tiny_config(name="partial", max_steps=20, checkpoint_every=10)
    train(config, quiet=True)
    root = config.run_dir / "checkpoints"
    (root / ".tmp-step-20").mkdir()
    (root / "step-30").mkdir()  # no loop_state.json: never completed
    assert [p.name for p in checkpoints(root)] == ["step-10"]


def test_resume_refuses_a_changed_config(tiny_config):
    import pytest

    from tunelab.errors import TunelabError

    train(tiny_config(name="changed", max_steps=4, checkpoint_every=2), quiet=True)
    with pytest.raises(TunelabError, match=r"train.learning_rate: 0.003 -> 0.001"):
        train(tiny_config(name="changed", max_steps=4, checkpoint_every=2, learning_rate=1e-3), resume=True, quiet=True)
