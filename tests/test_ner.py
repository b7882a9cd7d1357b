"""Token classification (NER) through every stage: data, training, evaluation, prediction, export, serving,
monitoring and search, on a tiny BERT and synthetic tagged sentences."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from tunelab.errors import DataError, TunelabError

PER = ["John Smith", "Mary", "Angela Merkel", "Bob", "Alice Jones"]
LOC = ["Paris", "New York", "Berlin", "Tokyo", "London"]
ORG = ["Acme Corp", "Reuters", "the United Nations", "Google"]
FILL = "the a said on in visited met with today yesterday and from to".split()


def tagged_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Filler words and entities of three types, IOB2-tagged."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(2, 6)):
            r = rng.random()
            kind, entity = (("PER", rng.choice(PER)) if r < 0.25 else ("LOC", rng.choice(LOC)) if r < 0.5
                            else ("ORG", rng.choice(ORG)) if r < 0.6 else (None, rng.choice(FILL)))
            parts = entity.split()
            words += parts
            tags += ["O"] * len(parts) if kind is None else [f"B-{kind}"] + [f"I-{kind}"] * (len(parts) - 1)
        out.append((words, tags))
    return out


def write_conll(path, sentences, to=lambda tags: tags):
    path.write_text("".join("".join(f"{w} {t}\n" for w, t in zip(words, to(tags))) + "\n" for words, tags in sentences))
    return path


@pytest.fixture(scope="module")
def ner_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ner")
    return {"train": write_conll(folder / "train.conll", tagged_sentences(300, 1)),
            "validation": write_conll(folder / "dev.conll", tagged_sentences(60, 2)),
            "test": write_conll(folder / "test.conll", tagged_sentences(60, 3))}


def ner_config(root, tiny_model_dir, files, name="ner", method="full", **train):
    from tunelab.config import load_config

    raw = {"name": name, "runs_dir": str(root), "task": {"name": "token_classification"},
           "data": {k: str(v) for k, v in files.items()}, "model": {"name": str(tiny_model_dir), "max_length": 32},
           "method": {"name": method},
           "train": {"learning_rate": 3e-3, "batch_size": 16, "max_steps": 150, "eval_every": 75, "trackers": [],
                     "precision": "fp32", **train}}
    return load_config(raw)


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory, tiny_model_dir, ner_files):
    from tunelab.training import train

    return train(ner_config(tmp_path_factory.mktemp("runs"), tiny_model_dir, ner_files), quiet=True)


# ------------------------------------------------------------ data


def test_conll_is_read_checked_converted_and_reported(tmp_path, tiny_model_dir, ner_files):
    from tunelab.data import prepare

    files = {"train": write_conll(tmp_path / "t.conll", tagged_sentences(200, 4))}  # validation, test split from it
    config = ner_config(tmp_path / "runs", tiny_model_dir, files)
    prepared = prepare(config, quiet=True)
    assert prepared.labels == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert prepared.task_options == {"scheme": "IOB2"} and set(prepared.files) == {"train", "validation", "test"}
    report = prepared.report
    assert sum(s["sentences"] for s in report["splits"].values()) + report["rows_removed"] == 200
    assert {"LOC", "ORG", "PER"} == set(report["splits"]["train"]["entities"])
    assert "| split | source | sentences |" in (prepared.dir / "report.md").read_text()


def test_other_schemes_and_formats_become_iob2(tmp_path, tiny_model_dir):
    from tunelab.data import prepare
    from tunelab.tasks.encoding import read_split
    from tunelab.tasks.ner.schemes import from_iob2

    sentences = tagged_sentences(120, 5)
    lines = [json.dumps({"tokens": w, "tags": from_iob2(t, "IOBES")}) for w, t in sentences]
    files = {"train": tmp_path / "t.jsonl"}
    files["train"].write_text("\n".join(lines) + "\n")
    prepared = prepare(ner_config(tmp_path / "r1", tiny_model_dir, files), quiet=True)
    assert prepared.task_options == {"scheme": "IOBES"}
    written = read_split(prepared.files["train"])
    gold = {tuple(w): t for w, t in sentences}
    assert all(gold[tuple(w)] == list(t) for w, t in zip(written["tokens"], written["tags"]))  # back in IOB2

    text = "Mary visited New York."
    files = {"train": tmp_path / "e.jsonl"}
    files["train"].write_text(json.dumps({"text": text, "entities": [{"start": 0, "end": 4, "label": "PER"},
                                                                      {"start": 13, "end": 21, "label": "LOC"}]}) + "\n")
    from tunelab.tasks.ner.data import read

    got, problems, scheme = read(files["train"], ner_config(tmp_path / "r2", tiny_model_dir, files), "auto")
    assert not problems and got.tokens[0] == ["Mary", "visited", "New", "York", "."]
    assert got.tags[0] == ["B-PER", "O", "B-LOC", "I-LOC", "O"] and got.offsets[0][2] == (13, 16)


def test_an_invalid_tag_sequence_names_file_and_line_and_drop_lists_it(tmp_path, tiny_model_dir, ner_files):
    from tunelab.data import prepare

    good = tagged_sentences(100, 6)
    bad = write_conll(tmp_path / "bad.conll", good[:3] + [(["Bob", "Paris"], ["B-PER", "I-LOC"])] + good[3:])
    line = sum(len(w) + 1 for w, _ in good[:3]) + 2  # the second word of the fourth sentence
    files = {"train": bad, "validation": ner_files["validation"], "test": ner_files["test"]}
    with pytest.raises(DataError, match=rf"bad.conll:line {line}: 'Paris': I-LOC after B-PER"):
        prepare(ner_config(tmp_path / "r", tiny_model_dir, files), quiet=True)
    config = ner_config(tmp_path / "r", tiny_model_dir, files)
    config.data.on_bad_rows = "drop"
    report = prepare(config, quiet=True).report
    assert report["removed"].get("invalid_tag_sequence") == 1
    assert any(r["reason"] == "invalid_tag_sequence" and r["line"] == line for r in report["removed_rows"])


# ------------------------------------------------------------ training, evaluation, prediction


def test_training_learns_the_entities_and_evaluation_reports_by_type(ner_run):
    from tunelab.evaluation import evaluate

    assert ner_run.validation["entity_f1"] >= 0.9, ner_run.validation
    card = json.loads((ner_run.model_dir / "tunelab.json").read_text())
    assert card["task"] == "token_classification" and card["task_options"] == {"scheme": "IOB2"}
    result = evaluate(ner_run.run_dir, "test", quiet=True)
    m = result.metrics
    assert m["entity_f1"] >= 0.9 and set(m["per_type"]) == {"LOC", "ORG", "PER"}
    assert m["confusion_labels"][-1] == "O" and len(m["confusion_matrix"]) == 4
    html = (result.out_dir / "report.html").read_text()
    assert "Entities by type" in html and (result.out_dir / "confusion_matrix.png").is_file()


def test_predictions_are_entities_with_offsets_into_the_text_sent(ner_run):
    from tunelab.models.predictor import Predictor

    text = "  Angela Merkel   visited Berlin with Bob "
    (result,) = Predictor(ner_run.run_dir).predict([text])
    found = {(e["text"], e["label"]) for e in result["entities"]}
    assert found == {("Angela Merkel", "PER"), ("Berlin", "LOC"), ("Bob", "PER")}
    assert all(text[e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1 for e in result["entities"])


def test_a_sentence_longer_than_max_length_is_read_in_windows_not_cut(ner_run):
    from tunelab.models.predictor import Predictor

    predictor = Predictor(ner_run.run_dir)
    words = ["the"] * 100 + ["Paris"]
    enc = predictor.task.encode_inputs(predictor.tokenizer, [" ".join(words)], None, predictor.max_length)
    assert len(enc) > 3  # several windows of at most 32 tokens
    out = predictor.infer(" ".join(words).split("\n"))
    assert len(out.probs[0]) == len(words)  # one row per word
    (result,) = predictor.decide(out.probs, contexts=out.contexts)
    assert [(e["text"], e["label"]) for e in result["entities"]] == [("Paris", "LOC")]


def test_the_saved_folder_gives_the_same_entities_through_a_transformers_pipeline(ner_run):
    """The folder is a plain transformers token-classification model: pipeline(aggregation_strategy="first") takes
    each word's tag from its first sub-word, as tunelab does (the other sub-words' tags are not trained)."""
    from transformers import pipeline

    from tunelab.models.predictor import Predictor

    texts = ["Mary met John Smith in Tokyo.", "Reuters said Google visited London today."]
    ours = Predictor(ner_run.run_dir).predict(texts)
    theirs = pipeline("token-classification", model=str(ner_run.model_dir), aggregation_strategy="first", device="cpu")(texts)
    for mine, other in zip(ours, theirs):
        assert [(e["start"], e["end"], e["label"]) for e in mine["entities"]] == \
            [(e["start"], e["end"], e["entity_group"]) for e in other]


def test_predict_command_writes_entities(ner_run, tmp_path):
    out = tmp_path / "out.jsonl"
    done = subprocess.run([sys.executable, "-m", "tunelab", "predict", str(ner_run.run_dir), "-i", "-", "-o", str(out)],
                          input="Alice Jones visited Paris\n", capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(e["text"], e["label"]) for e in line["entities"]] == [("Alice Jones", "PER"), ("Paris", "LOC")]


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt", "prefix", "adapter", "freeze", "head"])
def test_every_method_trains_a_token_classifier_that_reloads(tmp_path, tiny_model_dir, ner_files, method):
    from tunelab.models.predictor import Predictor
    from tunelab.training import train

    result = train(ner_config(tmp_path, tiny_model_dir, ner_files, name=method, method=method, max_steps=6,
                              eval_every=6), quiet=True)
    assert 0 <= result.validation["entity_f1"] <= 1
    predictor = Predictor(result.run_dir)
    text = "Mary visited Paris today"
    (probs,) = predictor.probabilities([text])
    assert probs.shape == (4, 7) and np.allclose(probs.sum(1), 1, atol=1e-4)


# ------------------------------------------------------------ export, serving, monitoring, search


def test_int8_export_is_judged_by_the_entity_f1_it_loses(ner_run, monkeypatch):
    import tunelab.export.onnx as onnx_export
    from tunelab.export import export_onnx
    from tunelab.models.predictor import Predictor

    parity = export_onnx(ner_run.run_dir, quantize="int8", quiet=True).parity
    assert parity["metric_drop_points"] <= 0.5 and parity["reference_entity_f1"] >= 0.9
    folder = ner_run.run_dir / "export" / "onnx-int8"
    (result,) = Predictor(folder).predict(["Mary visited Berlin"])
    assert [(e["text"], e["label"]) for e in result["entities"]] == [("Mary", "PER"), ("Berlin", "LOC")]
    scores = iter([0.95, 0.90, 0.89])  # source, then each int8 try: 5 and 6 points lost
    monkeypatch.setattr(onnx_export._Judge, "_score", lambda self, predictor: next(scores))
    with pytest.raises(TunelabError, match=r"validation entity_f1 falls from 0.9500 to 0.8900 \(6.00 points, more than "
                                           r"the 0.5 allowed\).*--max-metric-drop 6.00"):
        export_onnx(ner_run.run_dir, ner_run.run_dir / "export" / "refused", quantize="int8", quiet=True)
    assert not (ner_run.run_dir / "export" / "refused").exists()


def test_the_server_answers_entities_and_takes_corrected_entities_as_feedback(ner_run, tmp_path):
    import asyncio

    import httpx

    from tunelab.config import ServeConfig
    from tunelab.serve.app import create_app

    settings = ServeConfig(monitor={"database": f"sqlite:///{tmp_path / 'm.db'}", "min_feedback": 2,
                                    "accuracy_window": 10, "check_every_s": 3600})
    app = create_app({"ner": ner_run.run_dir}, settings)

    async def scenario():
        async with app.router.lifespan_context(app):
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
            r = await client.post("/v1/predict", json={"texts": ["Mary visited Berlin", "Bob met Alice Jones"]})
            assert r.status_code == 200, r.text
            first, second = r.json()["predictions"]
            assert [(e["text"], e["label"]) for e in first["entities"]] == [("Mary", "PER"), ("Berlin", "LOC")]
            schema = (await client.get("/openapi.json")).json()
            assert "entities" in schema["components"]["schemas"]["Prediction"]["properties"]
            ok = await client.post("/v1/feedback", json={"items": [
                {"id": first["id"], "entities": [{"start": 0, "end": 4, "label": "PER"}, {"start": 13, "end": 19, "label": "LOC"}]},
                {"id": second["id"], "entities": [{"start": 0, "end": 3, "label": "PER"}]}]})
            assert ok.status_code == 200, ok.text
            live = ok.json()["live"]["ner"]  # predicted: Mary, Berlin | Bob, Alice Jones; true: Mary, Berlin | Bob
            assert live["live_accuracy"] == pytest.approx(2 * 0.75 * 1.0 / 1.75) and live["live_entity_recall"] == 1.0
            bad = await client.post("/v1/feedback", json={"id": first["id"], "entities": [{"start": 0, "end": 4, "label": "CITY"}]})
            assert bad.status_code == 422 and "'CITY' is not an entity type" in bad.json()["error"]["message"]
            await client.aclose()
    asyncio.run(scenario())


def test_the_monitoring_profile_counts_entities_by_type(ner_run):
    from tunelab.monitor.profile import load_profile

    profile = load_profile(ner_run.model_dir)
    assert profile["labels"] == ["LOC", "ORG", "PER"] and profile["multi_label"] is True
    assert sum(profile["train_label_counts"]) > 300 and all(c > 0 for c in profile["prediction_counts"])
    assert 0.5 < np.mean(profile["confidence"]) <= 1 and profile["reference_accuracy"] >= 0.9


def test_search_runs_unchanged_on_a_token_classification_config(tmp_path, tiny_model_dir, ner_files):
    from tunelab.config import load_config
    from tunelab.tuning.run import tune

    base = ner_config(tmp_path, tiny_model_dir, ner_files, name="ner-search", max_steps=20, eval_every=10)
    raw = {**base.model_dump(mode="json"), "tune": {"sampler": "grid", "n_trials": None,
                                                    "space": {"train.learning_rate": [3e-3, 1e-3]}}}
    result = tune(load_config(raw), quiet=True)
    assert result.states == {"complete": 2} and result.best_value is not None
    rows = (tmp_path / "ner-search" / "tune" / "trials.csv").read_text()
    assert "entity_f1" in rows or result.best_value <= 1


@pytest.mark.integration
def test_minilm_learns_conll_entities_from_a_slice(tmp_path):
    """The real MiniLM on the first sentences of CoNLL-2003 (600 to train on): entities well above chance."""
    from conftest import shared_data
    from tunelab.config import load_config
    from tunelab.evaluation import evaluate
    from tunelab.training import train

    folder = shared_data("conll2003")
    files = {}
    for split, name, n in (("train", "train.txt", 600), ("validation", "validation.txt", 150), ("test", "test.txt", 150)):
        blocks = (folder / name).read_text(encoding="utf-8").split("\n\n")[:n]
        files[split] = tmp_path / name
        files[split].write_text("\n\n".join(blocks) + "\n\n", encoding="utf-8")
    config = load_config({"name": "conll-slice", "runs_dir": str(tmp_path / "runs"), "task": {"name": "token_classification"},
                          "data": {k: str(v) for k, v in files.items()}, "model": {"name": "default", "max_length": 128},
                          "train": {"max_steps": 100, "batch_size": 16, "eval_every": 100, "trackers": []}})
    result = train(config, quiet=True)
    test = evaluate(result.run_dir, "test", quiet=True).metrics
    assert test["entity_f1"] >= 0.6, test["per_type"]  # 0.71 measured (0.81 after 150 steps of 32)
