"""Checkpoints: a run killed with SIGKILL (or stopped with Ctrl-C) and resumed ends as if never stopped."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
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


def _saved_steps(run_dir):
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*"))


def _logged_step(run_dir) -> int:
    log = run_dir / "metrics.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return max((json.loads(ln)["step"] for ln in lines if ln.endswith("}")), default=0)


def _stop_midway(config, path, signum, at_step, **popen):
    """`tunelab train` of `config` in a child, sent `signum` once it has logged step `at_step`: (returncode, stderr)."""
    path.write_text(dump_config(config))
    with open(path.with_suffix(".err"), "w+") as err:  # a file, not a pipe: a full pipe would stall the child
        proc = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(path)], stdout=subprocess.DEVNULL,
                                stderr=err, **popen)
        try:
            reached = _wait_for(lambda: _logged_step(config.run_dir) >= at_step, proc)
            proc.send_signal(signum)
            proc.wait(timeout=120)
        finally:
            proc.kill()  # when the signal was not enough (no-op once it ended)
            proc.wait()
        err.seek(0)
        assert reached, f"the run ended before step {at_step}; nothing was interrupted:\n{err.read()[-2000:]}"
        return proc.returncode, err.read()


def test_ctrl_c_saves_a_checkpoint_and_exits_130_even_with_sigint_ignored_at_start(tiny_config, tmp_path):
    """A run started in the background from a script (`&`, nohup) inherits SIGINT ignored: it still stops on it."""
    config = tiny_config(name="interrupted", max_steps=100000, checkpoint_every=100000, eval_every=100000)
    code, err = _stop_midway(config, tmp_path / "int.yaml", signal.SIGINT, 5,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert code == 130, err[-2000:]
    assert "checkpoint saved" in err and "--resume" in err and "Traceback" not in err
    assert _saved_steps(config.run_dir)[-1] >= 5


def test_sigterm_saves_a_checkpoint_exits_143_and_resume_equals_an_uninterrupted_run(tiny_config, tmp_path):
    """Slurm, Kubernetes and `kill` stop with SIGTERM: handled as Ctrl-C, at the step reached."""
    settings = dict(max_steps=40, eval_every=10, checkpoint_every=100000, precision="fp32", dropout=0.1)
    straight = train(tiny_config(name="straight", **settings), quiet=True)
    config = tiny_config(name="terminated", **settings)
    code, err = _stop_midway(config, tmp_path / "term.yaml", signal.SIGTERM, 5)
    assert code == 143, err[-2000:]
    (step,) = _saved_steps(config.run_dir)  # the only checkpoint: the one SIGTERM saved
    assert 5 <= step < 40 and f"interrupted by SIGTERM at step {step}; checkpoint saved" in err
    assert "--resume" in err and "Traceback" not in err
    resumed = train(config, resume=True, quiet=True)
    assert resumed.steps == straight.steps == 40 and resumed.best_step == straight.best_step
    w_straight, w_resumed = _final(straight.run_dir)[0], _final(config.run_dir)[0]
    assert max(float((w_straight[k] - w_resumed[k]).abs().max()) for k in w_straight) < 1e-5


def test_a_stop_signal_during_a_step_waits_for_its_end_and_handlers_come_back():
    from tunelab.signals import Stopped, step_in_progress, stop_on_signals

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    done = []
    with pytest.raises(Stopped) as stopped:
        with stop_on_signals():
            with step_in_progress():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("the rest of the step")  # runs: the signal waits
            done.append("the next step")  # does not
    assert done == ["the rest of the step"] and stopped.value.signum == signal.SIGTERM
    assert {s: signal.getsignal(s) for s in before} == before
    with pytest.raises(KeyboardInterrupt):  # outside a step: at once, as Ctrl-C
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("after the signal")
    assert done == ["the rest of the step"]


def test_a_half_written_checkpoint_is_ignored(tiny_config):
    from tunelab.training.checkpoint import checkpoints

    config = tiny_config(name="partial", max_steps=20, checkpoint_every=10)
    train(config, quiet=True)
    root = config.run_dir / "checkpoints"
    (root / ".tmp-step-20").mkdir()
    (root / "step-30").mkdir()  # no loop_state.json: never completed
    assert [p.name for p in checkpoints(root)] == ["step-10"]


def test_resume_refuses_a_changed_config(tiny_config):
    from tunelab.errors import TunelabError

    train(tiny_config(name="changed", max_steps=4, checkpoint_every=2), quiet=True)
    with pytest.raises(TunelabError, match=r"train.learning_rate: 0.003 -> 0.001"):
        train(tiny_config(name="changed", max_steps=4, checkpoint_every=2, learning_rate=1e-3), resume=True, quiet=True)


def test_resume_takes_a_run_from_before_a_setting_existed_when_the_setting_is_at_its_default(tiny_config):
    """A run folder's config.yaml from an older tunelab lacks the settings added since: at their defaults they
    change nothing, so the run resumes (and apps reuse it); set otherwise, they are a change like any other."""
    import yaml

    from tunelab.errors import TunelabError

    config = tiny_config(name="older", max_steps=4, checkpoint_every=2)
    train(config, quiet=True)
    saved = yaml.safe_load((config.run_dir / "config.yaml").read_text())
    del saved["train"]["fsdp"], saved["train"]["lazy_embeddings"]
    (config.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    (config.run_dir / "result.json").unlink()
    with pytest.raises(TunelabError, match=r"train.lazy_embeddings: None -> False\)"):
        train(tiny_config(name="older", max_steps=4, checkpoint_every=2, lazy_embeddings=False), resume=True, quiet=True)
    assert train(config, resume=True, quiet=True).steps == 4
