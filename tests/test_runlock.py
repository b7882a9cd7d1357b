"""One process at a time per run folder: train, prepare and export refuse a run another process holds, naming it;
a lock left by a killed process never blocks."""

import json
import signal
import subprocess
import sys
import textwrap

import pytest
from test_resume import _wait_for

from tunelab.config import dump_config
from tunelab.runlock import LOCK_FILE, RunInUse, run_lock
from tunelab.training import train

HOLD = textwrap.dedent("""
    import sys
    from tunelab.runlock import run_lock
    with run_lock(sys.argv[1], sys.argv[2]):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes stdin (or kills this process)
""")


def _holder(run_dir, stage="train"):
    """A child process holding `run_dir`'s lock, returned once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), stage], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_train_prepare_and_export_refuse_a_run_in_use_naming_its_holder(tiny_config):
    from tunelab.data import prepare
    from tunelab.export import export_onnx, merge_run

    config = tiny_config(name="busy", max_steps=2, method={"name": "lora"}, learning_rate=1e-2)
    train(config, quiet=True)
    holder = _holder(config.run_dir)
    try:
        named = rf"{config.run_dir} is in use by tunelab train \(pid {holder.pid}, started \d\d:\d\d:\d\d\); wait for it or stop it"
        with pytest.raises(RunInUse, match=named):
            train(config, overwrite=True, quiet=True)
        with pytest.raises(RunInUse, match=named):
            prepare(config, force=True, quiet=True)
        with pytest.raises(RunInUse, match=named):
            merge_run(config.run_dir)
        with pytest.raises(RunInUse, match=named):
            export_onnx(config.run_dir, quiet=True)
    finally:
        holder.stdin.close()
        holder.wait()
    assert not (config.run_dir / "export").exists()
    assert json.loads((config.run_dir / "model" / "tunelab.json").read_text())["method"]["name"] == "lora"
    assert train(config, overwrite=True, quiet=True).steps == 2  # free once its holder is done


def test_a_lock_left_by_a_killed_process_does_not_block(tiny_config):
    config = tiny_config(name="orphan", max_steps=2)
    holder = _holder(config.run_dir)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert str(holder.pid) in (config.run_dir / LOCK_FILE).read_text()  # the file stays, naming the dead holder
    assert train(config, quiet=True).steps == 2


def test_the_lock_is_reentrant_in_one_process_and_taken_by_the_main_process_of_a_launch_only(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "x"
    with run_lock(run_dir, "train"):
        with run_lock(run_dir, "prepare"):  # train calls prepare
            pass
        assert json.loads((run_dir / LOCK_FILE).read_text())["stage"] == "train"  # still the outer holder's
    assert (run_dir / LOCK_FILE).read_text() == ""  # released
    holder = _holder(run_dir)
    try:
        monkeypatch.setenv("RANK", "1")  # the second process of an `accelerate launch` works under rank 0's lock
        with run_lock(run_dir, "train"):
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RunInUse):
            with run_lock(run_dir, "train"):
                pass
    finally:
        holder.stdin.close()
        holder.wait()


def test_a_second_training_of_a_running_run_is_refused_and_the_first_goes_on_untouched(tiny_config, tmp_path):
    config = tiny_config(name="twice", max_steps=100000, eval_every=100000, checkpoint_every=100000)
    path = tmp_path / "twice.yaml"
    path.write_text(dump_config(config))
    with open(tmp_path / "first.err", "w+") as err:  # a file, not a pipe: nothing blocks on a full pipe
        first = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(path)], stdout=subprocess.DEVNULL,
                                 stderr=err)
        log = config.run_dir / "metrics.jsonl"
        try:
            assert _wait_for(lambda: log.exists() and log.stat().st_size > 0, first)
            with pytest.raises(RunInUse, match=rf"is in use by tunelab train \(pid {first.pid}, started "):
                # the run has no checkpoint nor model yet: unlocked, this would train beside the first
                train(tiny_config(name="twice", max_steps=1), quiet=True)
            assert first.poll() is None  # still training
        finally:
            first.send_signal(signal.SIGINT)
            first.wait(timeout=120)
        err.seek(0)
        assert first.returncode == 130, err.read()[-2000:]
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == sorted(set(steps))  # one run's lines only
