"""ONNX export: a folder plain onnxruntime runs, equal to the torch model; int8 guarded by label agreement."""

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.export import export_onnx
from tunelab.models.predictor import Predictor
from tunelab.training import train

TEXTS = ["a wonderful film", "the plot was dreadful and the actor poor", "quite good", "x"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, sentiment_files):
    from tunelab.config import load_config

    root = tmp_path_factory.mktemp("runs")

    def make(run, method="full"):
        raw = {"name": run, "runs_dir": str(root), "data": {k: str(v) for k, v in sentiment_files.items()},
               "model": {"name": str(tiny_model_dir), "max_length": 32},
               "train": {"learning_rate": 3e-3, "batch_size": 16, "max_steps": 30, "eval_every": 15,
                         "trackers": [], "precision": "fp32"}, "method": {"name": method}}
        return train(load_config(raw), quiet=True).run_dir
    return {"full": make("full"), "lora": make("lora", "lora")}


@pytest.mark.parametrize("method", ["full", "lora"])
def test_onnx_folder_runs_in_plain_onnxruntime_and_equals_torch(runs, method):
    result = export_onnx(runs[method], quiet=True)
    parity, out = result.parity, runs[method] / "export" / "onnx"
    assert json.loads((out / "parity.json").read_text()) == parity
    # validation (60 texts) topped up with the whole training split (240): parity is model against model
    assert result.out == out and parity["examples"] == 300 and parity["label_agreement"] == 1.0
    assert parity["texts"] == {"validation": 60, "train": 240} and parity["disagreements"] == 0
    assert parity["max_abs_prob_diff"] <= 1e-4
    assert json.loads((out / "parity.json").read_text())["max_abs_prob_diff"] == parity["max_abs_prob_diff"]
    # fused into onnxruntime's kernels, one of each per layer, as the model card says
    import onnx

    layers = json.loads((runs["full"] / "model" / "config.json").read_text())["num_hidden_layers"]
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    fused = json.loads((out / "tunelab.json").read_text())["onnx"]["fused"]
    assert ops.count("MultiHeadAttention") == layers and "skip_layer_normalization" not in fused, ops
    assert "Erf" not in ops and ops.count("BiasGelu") + ops.count("Gelu") == layers  # GELU's Erf arithmetic fused
    # the residual + LayerNorm pairs stay unfused in the file and in tunelab's sessions (the fused kernel is slower)
    from tunelab.models.predictor import onnx_session

    assert ops.count("LayerNormalization") >= 2 * layers and "SkipLayerNormalization" not in ops, ops
    onnx_session(out / "model.onnx", 1, optimized_to=out.parent / "as-run.onnx")
    as_run = [n.op_type for n in onnx.load(str(out.parent / "as-run.onnx")).graph.node]
    assert "SkipLayerNormalization" not in as_run and "MultiHeadAttention" in as_run
    # plain onnxruntime + the saved tokenizer, no tunelab: same logits as the torch model
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(TEXTS, padding=True, return_tensors="np")
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {i.name: enc[i.name].astype(np.int64) for i in sess.get_inputs()})[0]
    reference = Predictor(runs[method])
    probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
    assert np.abs(probs - reference.probabilities(TEXTS)).max() < 1e-4
    assert np.abs(Predictor(out).probabilities(TEXTS) - reference.probabilities(TEXTS)).max() < 1e-4


def test_portable_export_keeps_standard_onnx_ops_and_the_same_outputs(runs):
    import onnx

    result = export_onnx(runs["full"], runs["full"] / "export" / "portable", portable=True, quiet=True)
    graph = onnx.load(str(result.out / "model.onnx")).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}  # no com.microsoft kernels
    assert json.loads((result.out / "tunelab.json").read_text())["onnx"]["fused"] == {}
    assert result.parity["disagreements"] == 0 and result.parity["max_abs_prob_diff"] <= 1e-4
    assert np.abs(Predictor(result.out).probabilities(TEXTS) - Predictor(runs["full"]).probabilities(TEXTS)).max() < 1e-4


def test_parallel_onnx_calls_give_each_row_its_own_result(runs):
    from tunelab.models.predictor import OnnxModel

    out = runs["full"] / "export" / "onnx-parallel"
    export_onnx(runs["full"], out=out, quiet=True)
    predictor = Predictor(out, batch_size=4)
    predictor.onnx = OnnxModel(out / "model.onnx", threads=3)  # 3 calls at once, whatever the machine's cores
    texts = [" ".join(["good"] * (i % 7 + 1) + ["bad"] * (i % 5)) + f" {i}" for i in range(41)]
    together = predictor.infer(texts)  # >= 11 batches of at most 4, cut by length, run 3 at a time
    alone = [predictor.infer([t]) for t in texts]
    assert np.abs(together.probs - np.vstack([a.probs for a in alone])).max() < 1e-5
    assert np.abs(together.embeddings - np.vstack([a.embeddings for a in alone])).max() < 1e-4
    assert list(together.lengths) == [int(a.lengths[0]) for a in alone]


def test_a_lone_call_runs_on_every_core_when_measured_faster_and_the_cores_are_not_shared(runs, monkeypatch):
    import time as clock

    from tunelab.models import predictor as module

    out = runs["full"] / "export" / "onnx-lone"
    export_onnx(runs["full"], out=out, quiet=True)
    made = []

    class Timed:  # a session whose calls take a set time, and say which session ran
        def __init__(self, threads, seconds):
            self.threads, self.seconds = threads, seconds

        def run(self, names, inputs):
            clock.sleep(self.seconds)
            made.append(self.threads)
            return [np.zeros((1, 2), np.float32)]

    for one, wide, chosen in ((0.002, 0.0005, 2), (0.0005, 0.002, 1)):
        monkeypatch.setattr(module._Calls, "overlapped_at", float("-inf"))  # no calls ran at once lately
        model = module.OnnxModel(out / "model.onnx", threads=2)
        model.session = Timed(1, one)
        monkeypatch.setattr(model, "_session", lambda threads: Timed(threads, wide))
        batch = {name: torch.ones((1, 4), dtype=torch.long) for name in model.inputs}
        made.clear()
        for _ in range(2 * module.TRIAL_CALLS):  # the first lone calls: the two sessions in turn
            model.outputs(batch, lone=True)
        assert made[:4] == [1, 2, 1, 2] and made.count(1) == made.count(2) == module.TRIAL_CALLS
        model.outputs(batch, lone=True)
        assert made[-1] == chosen  # the faster, until RETRY_AFTER lone calls later both are tried again
        model.since_trial = module.RETRY_AFTER
        made.clear()
        model.outputs(batch, lone=True)
        model.outputs(batch, lone=True)
        assert made == [1, 2] and model.lone_session is None
        for _ in range(2 * module.TRIAL_CALLS - 2):
            model.outputs(batch, lone=True)
        if chosen == 2:
            with module.WIDE:  # another model's lone call holds every core: this one takes a single thread
                model.outputs(batch, lone=True)
            assert made[-1] == 1
            model.outputs(batch)  # one of several batches: always the one-thread session
            assert made[-1] == 1
            model.outputs(batch, lone=True)
            assert made[-1] == 2
            with module._Calls.lock:
                module._Calls.running += 1  # another model's call is running: the cores are shared from now on
            try:
                model.outputs(batch, lone=True)
            finally:
                module._Calls.leave()
            model.outputs(batch, lone=True)  # alone again, but calls ran side by side less than SHARED_FOR_S ago
            assert made[-2:] == [1, 1] and module._Calls.running == 0


def test_int8_export_reports_agreement_and_refuses_below_the_floor(runs, monkeypatch):
    parity = export_onnx(runs["full"], quantize="int8", quiet=True).parity
    out = runs["full"] / "export" / "onnx-int8"
    assert parity["quantize"] == "int8" and parity["label_agreement"] >= 0.99
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops or "DynamicQuantizeMatMul" in ops, ops  # int8 matmuls

    def fp32_weight_matmuls(path):
        graph = onnx.load(str(path)).graph
        weights = {i.name for i in graph.initializer}
        return sum(n.op_type == "MatMul" and n.input[1] in weights for n in graph.node)
    assert fp32_weight_matmuls(out / "model.onnx") == 0  # every weight matmul int8 by default
    kept = export_onnx(runs["full"], runs["full"] / "export" / "int8-ffn", quantize="int8", quiet=True, ffn_down_fp32=True).parity
    layers = json.loads((runs["full"] / "model" / "config.json").read_text())["num_hidden_layers"]
    assert fp32_weight_matmuls(runs["full"] / "export" / "int8-ffn" / "model.onnx") == layers  # one GELU-fed each
    assert kept["label_agreement"] >= 0.99
    before = (out / "model.onnx").stat().st_mtime_ns
    import tunelab.export.onnx as onnx_export

    # under the floor with every matmul in int8, over it with the GELU-fed ones in fp32: the second is kept, said so
    agreements = iter([0.95, 1.0])
    monkeypatch.setattr(onnx_export, "_parity", lambda *a: {"examples": 60, "label_agreement": next(agreements), "disagreements": 3, "max_abs_prob_diff": 0.2})
    retried = export_onnx(runs["full"], runs["full"] / "export" / "int8-retried", quantize="int8", quiet=True).parity
    assert retried["ffn_down_fp32"] is True and retried["all_int8_label_agreement"] == 0.95
    assert json.loads((runs["full"] / "export" / "int8-retried" / "tunelab.json").read_text())["onnx"]["ffn_down_fp32"] is True
    assert fp32_weight_matmuls(runs["full"] / "export" / "int8-retried" / "model.onnx") == layers
    # under the floor both ways: refused, nothing written
    monkeypatch.setattr(onnx_export, "_parity", lambda *a: {"examples": 60, "label_agreement": 0.95, "disagreements": 3, "max_abs_prob_diff": 0.2})
    with pytest.raises(TunelabError, match=r"int8: the labels differ on 3 of 60 texts \(60 validation, 240 training\): "
                       r"95.00% agree, under the floor of 99% \(every matmul in int8: 95.00%\); nothing written.*"
                       r"--min-agreement 0.95"):
        export_onnx(runs["full"], quantize="int8", quiet=True)
    assert (out / "model.onnx").stat().st_mtime_ns == before  # the earlier export is untouched
    assert not (runs["full"] / "export" / "onnx-int8.tmp").exists()


def test_export_cli_mistakes_are_one_clear_line(runs):
    for args, message in [(["--format", "tflite"], "not a format tunelab exports"),
                          (["--quantize", "int8"], "add --format onnx"),
                          (["--format", "onnx", "--ffn-down-fp32"], "an int8 setting: add --quantize int8"),
                          (["--merge", "--portable"], "an ONNX setting: add --format onnx"),
                          ([], "say what to export")]:
        done = subprocess.run([sys.executable, "-m", "tunelab", "export", str(runs["full"]), *args],
                              capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
