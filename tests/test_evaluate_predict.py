"""Evaluation reports, prediction files, multi-label thresholds and streaming memory."""

import base64
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import sentiment_rows, write_csv
from tunelab.evaluation import evaluate
from tunelab.models.predictor import Predictor
from tunelab.tasks.classification.metrics import best_threshold, single_label_metrics
from tunelab.training import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, sentiment_files):
    from tunelab.config import load_config

    root = tmp_path_factory.mktemp("trained")
    config = load_config({"name": "eval", "runs_dir": str(root), "data": {k: str(v) for k, v in sentiment_files.items()},
                          "model": {"name": str(tiny_model_dir), "max_length": 32},
                          "train": {"learning_rate": 3e-3, "batch_size": 16, "epochs": 6, "min_steps": 0,
                                    "min_steps_per_label": 0}})
    train(config, quiet=True)
    return config.run_dir


def test_evaluate_writes_json_html_and_pngs(trained):
    result = evaluate(trained, "test", quiet=True)
    m = result.metrics
    assert result.out_dir == trained / "eval"
    assert m["examples"] == 60 and sum(map(sum, m["confusion_matrix"])) == 60
    assert m["accuracy"] == pytest.approx(np.trace(m["confusion_matrix"]) / 60)
    assert set(m["per_class"]) == {"negative", "positive"} and 0 <= m["ece"] <= 1 and "roc_auc" in m
    saved = json.loads((result.out_dir / "report.json").read_text())
    assert saved["accuracy"] == m["accuracy"]
    page = (result.out_dir / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3  # confusion matrix, reliability, training curves: embedded, no external files
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "http" not in page  # self-contained
    for png in ("confusion_matrix.png", "reliability.png", "curves.png"):
        assert (result.out_dir / png).stat().st_size > 1000


def test_evaluate_a_file_and_other_splits(trained, tmp_path):
    path = write_csv(tmp_path / "extra.csv", sentiment_rows(40, seed=9))
    result = evaluate(trained, str(path), quiet=True)
    assert result.metrics["examples"] == 40 and result.out_dir == trained / "eval" / "extra"
    assert evaluate(trained, "validation", quiet=True).out_dir == trained / "eval" / "validation"
    bad = write_csv(tmp_path / "bad.csv", [("fine text", "positive"), ("odd one", "neutral")])
    from tunelab.errors import DataError

    with pytest.raises(DataError, match=r"bad.csv:line 3: column 'label': unknown label 'neutral'"):
        evaluate(trained, str(bad), quiet=True)


def test_metrics_agree_with_a_direct_computation():
    y = np.array([0, 1, 1, 2, 2, 2])
    pred = np.array([0, 1, 2, 2, 2, 0])
    conf = np.array([0.9, 0.8, 0.6, 0.7, 0.9, 0.5], dtype=np.float32)
    m = single_label_metrics(y, np.stack([pred.astype(np.float32), conf], 1), ["a", "b", "c"], bins=5)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["c"] == {"precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3),
                                   "f1": pytest.approx(2 / 3), "support": 3}
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [1, 0, 2]]
    # ECE by hand: bins of width 0.2; [0.4,0.6): conf .5 acc 0; [0.6,0.8): .6 wrong, .7 right; [0.8,1]: .9 .8 .9 right
    ece = (1 * abs(0 - 0.5) + 2 * abs(0.5 - 0.65) + 3 * abs(1 - (0.9 + 0.8 + 0.9) / 3)) / 6
    assert m["ece"] == pytest.approx(ece, abs=1e-6)


def test_best_threshold_maximises_micro_f1():
    rng = np.random.default_rng(0)
    y = rng.random((400, 3)) < 0.3
    probs = np.where(y, 0.35, 0.2) + rng.random((400, 3)) * 0.1  # positives sit in [0.35, 0.45), negatives below 0.3
    t = best_threshold(y, probs.astype(np.float32))
    assert 0.3 <= t <= 0.35


def test_multilabel_training_picks_and_stores_a_threshold(tiny_config, tmp_path):
    rows = []
    for text, label in sentiment_rows(300, seed=3):
        labs = [label] + (["long"] if len(text.split()) > 8 else [])
        rows.append({"text": text, "label": labs})
    path = tmp_path / "ml.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    config = tiny_config(name="ml", data={"train": str(path), "validation": None, "test": None, "multi_label": True},
                         epochs=10)
    result = train(config, quiet=True)
    meta = json.loads((result.model_dir / "tunelab.json").read_text())
    assert meta["multi_label"] and meta["labels"] == ["long", "negative", "positive"]
    assert 0.05 <= meta["threshold"] <= 0.95 and meta["validation"]["threshold"] == meta["threshold"]
    m = evaluate(config.run_dir, "test", quiet=True).metrics
    assert {"subset_accuracy", "micro_f1", "macro_f1", "per_label"} <= set(m) and m["micro_f1"] > 0.7
    pred = Predictor(config.run_dir).predict(["the movie was superb and the story was really quite lovely"])[0]
    assert "positive" in pred["labels"] and set(pred["scores"]) == {"long", "negative", "positive"}


def test_predict_cli_writes_csv_and_jsonl_matching_the_predictor(trained, tmp_path):
    texts = ["the film was superb", "an awful plot and a poor actor", "really quite lovely"]
    src = write_csv(tmp_path / "in.csv", [(t, "") for t in texts])
    out = tmp_path / "out.csv"
    res = subprocess.run([sys.executable, "-m", "tunelab", "predict", str(trained), "-i", str(src), "-o", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    import csv

    rows = list(csv.DictReader(open(out)))
    expected = Predictor(trained).predict(texts)
    assert [r["label"] for r in rows] == [e["label"] for e in expected]
    assert all(abs(float(r["score_positive"]) - e["scores"]["positive"]) < 1e-5 for r, e in zip(rows, expected))
    res = subprocess.run([sys.executable, "-m", "tunelab", "predict", str(trained), "-i", "-"], input="\n".join(texts),
                         capture_output=True, text=True)
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [x["label"] for x in lines] == [e["label"] for e in expected]


def test_predict_errors_are_clear(trained, tmp_path):
    res = subprocess.run([sys.executable, "-m", "tunelab", "predict", str(tmp_path), "-i", "-"], input="x",
                         capture_output=True, text=True)
    assert res.returncode == 2 and "no trained model here" in res.stderr and "Traceback" not in res.stderr
    src = write_csv(tmp_path / "in.csv", [("ok text", ""), ("", "")])
    src.write_text("review\nok text\n\n")
    res = subprocess.run([sys.executable, "-m", "tunelab", "predict", str(trained), "-i", str(src)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "missing column 'text'" in res.stderr


def test_evaluation_memory_does_not_grow_with_the_split(trained, tmp_path):
    """Evaluating 12k rows holds no more than evaluating 2k (chunks of 1000 rows here, 8192 by default): one
    chunk at a time, a few bytes per row kept.

    Measured as the peak of Python-level allocations (numpy included) with tracemalloc: process RSS on this
    machine drifts by ~20 MB between such runs from allocator fragmentation, streaming or not."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {}
    for n in (2_000, 12_000):
        rows = sentiment_rows(n, seed=n)
        paths[n] = tmp_path / f"eval{n}.parquet"
        pq.write_table(pa.table({"text": [r[0] for r in rows], "label": [r[1] for r in rows]}), paths[n],
                       row_group_size=1000)  # row groups of a chunk, as the data stage writes its splits
    code = ("import sys, tracemalloc, pathlib; import tunelab.evaluation.run as r; "
            "r.resolve_split = lambda run, split: ('big', pathlib.Path(split)); r.CHUNK_ROWS = 1000; "
            f"run = lambda path: r.evaluate({str(trained)!r}, path, write_report=False, quiet=True).metrics; "
            # one evaluation untraced first: the libraries it imports on first use (tracing them took 10 s a process)
            "run(sys.argv[1]); tracemalloc.start()\n"
            "for path, n in zip(sys.argv[1:], (2000, 12000)):\n"
            "    tracemalloc.reset_peak(); assert run(path)['examples'] == n; print(tracemalloc.get_traced_memory()[1])")
    res = subprocess.run([sys.executable, "-c", code, str(paths[2_000]), str(paths[12_000])], capture_output=True,
                         text=True, env={**os.environ})
    assert res.returncode == 0, res.stderr[-2000:]
    peaks = dict(zip((2_000, 12_000), (int(v) / 2**20 for v in res.stdout.split()[-2:])))
    # MB. Reading the whole split at once (texts and token ids as Python objects) adds ~40 MB per 40k rows (measured),
    # ~10 MB here.
    assert peaks[12_000] - peaks[2_000] < 3, peaks


def test_bf16_prediction_pads_to_steps_of_16_tokens_and_fp32_to_the_longest_text(trained, monkeypatch):
    """bf16 matmuls compile a oneDNN kernel per shape: a server meeting a new width at every call grew without
    end; widths in steps of 16 bound the shapes. fp32 pads to the longest text, as before."""
    import tunelab.models.inference as inference

    widths = []
    real = inference.collate

    def spy(*args, **kwargs):
        batch = real(*args, **kwargs)
        widths.append(batch["input_ids"].shape[1])
        return batch
    monkeypatch.setattr(inference, "collate", spy)
    texts = ["good", "a long and rather wonderful film about nothing much at all, really", "bad plot"]
    fp32 = Predictor(trained).probabilities(texts)
    longest = max(widths)
    assert longest % 16  # fp32: the longest text's own width (not a multiple of 16 here, so the next check bites)
    widths.clear()
    bf16 = Predictor(trained, precision="bf16").probabilities(texts)
    assert widths and all(w % 16 == 0 for w in widths) and max(widths) == -(-longest // 16) * 16
    assert np.abs(bf16 - fp32).max() < 0.02  # the padding is masked: bf16 rounding only


# ----------------------------------------------------------------- bad input to evaluate and predict

def test_evaluate_accepts_the_model_folder_of_a_run(trained, tmp_path):
    import shutil

    from tunelab.errors import TunelabError

    result = evaluate(trained / "model", "test", quiet=True, write_report=False)
    assert result.out_dir == trained / "eval" and result.metrics["examples"] == 60
    loose = shutil.copytree(trained / "model", tmp_path / "loose-model")
    with pytest.raises(TunelabError, match="no config.yaml beside this model folder; evaluate needs the run folder"):
        evaluate(loose, "test", quiet=True)


def test_evaluate_a_file_with_invalid_unicode_or_no_rows(trained, tmp_path):
    from tunelab.errors import DataError

    path = tmp_path / "odd.jsonl"
    path.write_text('{"text": "the film was superb", "label": "positive"}\n'
                    '{"text": "broken \\ud800", "label": "negative"}\n')
    with pytest.raises(DataError, match=r"odd.jsonl:line 2: column 'text': not valid Unicode: a lone surrogate U\+D800"):
        evaluate(trained, str(path), quiet=True)
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(DataError, match=r"empty.csv: no data rows; nothing to evaluate"):
        evaluate(trained, str(empty), quiet=True)


def test_predict_checks_its_output_before_loading_the_model(trained, tmp_path, monkeypatch):
    import tunelab.models.predict_file as predict_module
    from tunelab.errors import TunelabError

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")
    monkeypatch.setattr(predict_module, "Predictor", no_model)
    src = write_csv(tmp_path / "in.csv", [("the film was superb", "")])
    cases = [(tmp_path / "missing" / "out.csv", f"--output: folder {tmp_path / 'missing'} does not exist"),
             (tmp_path / "out.txt", "must end in .csv or .jsonl"),
             (tmp_path, "must end in .csv or .jsonl")]
    (tmp_path / "dir.csv").mkdir()
    cases.append((tmp_path / "dir.csv", "is a folder; give a file name ending in .csv or .jsonl"))
    for out, message in cases:
        with pytest.raises(TunelabError, match=re.escape(message)):
            predict_module.predict_file(trained, str(src), str(out))


def test_a_failed_prediction_leaves_no_output_file(trained, tmp_path, monkeypatch):
    import tunelab.models.predict_file as predict_module

    real = Predictor.predict
    calls = []

    def fail_on_second_chunk(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Predictor, "predict", fail_on_second_chunk)
    monkeypatch.setattr(predict_module, "CHUNK", 2)
    src = write_csv(tmp_path / "in.csv", [(f"text number {i}", "") for i in range(5)])
    out = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        predict_module.predict_file(trained, str(src), str(out))
    assert len(calls) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_predict_reads_txt_files_and_names_its_own_formats(trained, tmp_path):
    from tunelab.models.predict_file import predict_file

    texts = ["the film was superb", "an awful plot and a poor actor"]
    src = tmp_path / "lines.txt"
    src.write_text(f"{texts[0]}\n\n{texts[1]}\r\n")
    out = tmp_path / "out.jsonl"
    assert predict_file(trained, str(src), str(out)) == 2
    assert [json.loads(line)["label"] for line in out.read_text().splitlines()] == [
        e["label"] for e in Predictor(trained).predict(texts)]
    from tunelab.data.texts import read_texts
    from tunelab.errors import DataError

    with pytest.raises(DataError) as err:
        read_texts(write_csv(tmp_path / "in.xlsx", []))
    assert "use .csv, .tsv, .jsonl, .json, .parquet or .txt (one text per line)" in str(err.value)
    assert "data.format" not in str(err.value)


def test_predict_refuses_text_that_is_not_valid_unicode(trained, tmp_path, monkeypatch):
    """Checked before the model loads; stdin is read as bytes, so an undecodable line is named, not a traceback."""
    import io

    import tunelab.models.predict_file as predict_module
    from tunelab.errors import DataError

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")
    monkeypatch.setattr(predict_module, "Predictor", no_model)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"the film was superb\nbad \xff\xfe bytes\n")))
    with pytest.raises(DataError, match="stdin:line 2: bytes that are not valid UTF-8 at byte 5 of the line"):
        predict_module.predict_file(trained, "-")
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "fine"}\n{"text": "broken \\udc80"}\n{"text": 7}\n')
    with pytest.raises(DataError) as err:
        predict_module.predict_file(trained, str(src))
    assert f"{src}:line 2: column 'text': not valid Unicode: a lone surrogate U+DC80" in str(err.value)
    assert f"{src}:line 3: column 'text': text must be a string, got a number" in str(err.value)
