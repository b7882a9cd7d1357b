"""`accelerate launch --multi_gpu --num_processes 2` (torchrun; gloo on CPU) trains the same model as one
process with the same global batch. (Without --multi_gpu, accelerate starts one process on a GPU-less machine.)"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tunelab.allocator import find_jemalloc
from tunelab.config import dump_config
from tunelab.training import train


def _weights(model_dir: Path) -> dict:
    from tunelab.monitor.profile import EMBEDDINGS_FILE

    (path,) = [p for p in model_dir.glob("*.safetensors") if p.name != EMBEDDINGS_FILE]  # model, adapter_model or method_weights
    return load_file(path)


@pytest.mark.parametrize("method,fsdp", [("full", False), ("lora", False), ("full", True)])
def test_two_processes_match_one(tiny_config, tmp_path, method, fsdp):
    """DDP, and FSDP (train.fsdp: BERT's embeddings are in its _no_split_modules, which accelerate's default unit
    choice would shard twice)."""
    launcher = Path(sys.executable).with_name("accelerate")
    if not launcher.exists() and not shutil.which("accelerate"):
        pytest.skip("the accelerate launcher is not installed")
    settings = dict(max_steps=16, eval_every=16, precision="fp32", batch_size=16,  # one evaluation: best = last
                    method={"name": method}, learning_rate=3e-3 if method == "full" else 1e-2,
                    # sharded, the word embeddings take the dense update (lazy_rows.py: equal to it up to eps)
                    lazy_embeddings=not fsdp)
    single = train(tiny_config(name="single", **settings), quiet=True)
    config = tiny_config(name="ddp", fsdp=fsdp, **settings)
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(dump_config(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([str(launcher if launcher.exists() else "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_port", str(29613 + 10 * (method != "full") + 20 * fsdp), "-m", "tunelab", "train", str(cfg_path)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es)" in res.stderr and ("(FSDP: weights, gradients and optimizer state sharded)" in res.stderr) == fsdp
    # the launched main process restarted itself on jemalloc where it is there (tunelab/allocator.py) and says so
    assert f"allocator {'jemalloc' if find_jemalloc() else 'system'} (oneDNN kernel cache " in res.stderr
    a, b = _weights(single.run_dir / "model"), _weights(config.run_dir / "model")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    meta_a = yaml.safe_load((single.run_dir / "model" / "tunelab.json").read_text())
    meta_b = yaml.safe_load((config.run_dir / "model" / "tunelab.json").read_text())
    assert abs(meta_a["validation"]["accuracy"] - meta_b["validation"]["accuracy"]) <= 1 / 60 + 1e-9
