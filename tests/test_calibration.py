"""Temperature scaling: fitted on validation, folded into the head, reported by evaluate, labels unchanged."""

import json

import numpy as np
import pytest
import torch

from conftest import sentiment_rows, write_csv
from tunelab.tasks.calibration import fit_temperature, fold_temperature, output_layer, uncalibrated


def test_fit_recovers_the_temperature_that_made_the_scores_overconfident():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(scale=2.0, size=(20000, 4))
    probs = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    targets = np.array([rng.choice(4, p=p) for p in probs])
    assert fit_temperature(true_logits * 2.5, targets) == pytest.approx(2.5, rel=0.05)  # over-confident by 2.5
    assert fit_temperature(true_logits / 2, targets) == pytest.approx(0.5, rel=0.05)  # under-confident


def test_uncalibrated_undoes_the_temperature():
    logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
    soft = lambda z: np.exp(z) / np.exp(z).sum(1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(uncalibrated(soft(logits / 1.7).astype(np.float32), 1.7), soft(logits), atol=1e-6)


def test_folding_divides_the_logits_of_plain_and_lora_models(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from tunelab.config import load_config
    from tunelab.methods.store import apply_method

    batch = {"input_ids": torch.tensor([[101, 2204, 3185, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    for method in ("full", "lora"):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3)
        model = apply_method(model, load_config({"name": "x", "data": {"train": "t.csv"}, "method": {"name": method}}).method).eval()
        with torch.no_grad():
            torch.nn.init.normal_(output_layer(model, 3).bias)  # a head with a bias that matters
            before = model(**batch).logits
            fold_temperature(model, 3, 2.0)
            after = model(**batch).logits
        torch.testing.assert_close(after, before / 2.0)


@pytest.fixture(scope="module")
def noisy_files(tmp_path_factory):
    """Synthetic sentiment with every 6th label flipped: a model that learns it is right ~85% of the time,
    and over-confident about the rest (a validation set without errors leaves nothing to calibrate against)."""
    folder = tmp_path_factory.mktemp("noisy")
    rows = [(t, ("negative" if lab == "positive" else "positive") if i % 6 == 0 else lab)
            for i, (t, lab) in enumerate(sentiment_rows(600, seed=3))]
    return {"train": write_csv(folder / "train.csv", rows[:400]), "validation": write_csv(folder / "dev.csv", rows[400:500]),
            "test": write_csv(folder / "test.csv", rows[500:])}


@pytest.fixture(scope="module")
def runs_with_and_without(tmp_path_factory, tiny_model_dir, noisy_files):
    """The same tiny training twice: calibrated (the default) and with task.calibrate false."""
    from tunelab.config import load_config
    from tunelab.training import train

    out = {}
    for calibrate in (True, False):
        raw = {"name": f"cal-{calibrate}", "runs_dir": str(tmp_path_factory.mktemp("runs")),
               "data": {k: str(v) for k, v in noisy_files.items()}, "model": {"name": str(tiny_model_dir), "max_length": 32},
               "task": {"calibrate": calibrate},
               "train": {"learning_rate": 3e-3, "batch_size": 16, "max_steps": 150, "trackers": [], "precision": "fp32"}}
        out[calibrate] = train(load_config(raw), quiet=True)
    return out


def test_a_calibrated_model_scores_softmax_of_logits_over_t_with_the_same_labels(runs_with_and_without, noisy_files):
    from tunelab.data.load import Wanted, load_file
    from tunelab.models.predictor import Predictor

    calibrated, plain = runs_with_and_without[True], runs_with_and_without[False]
    meta = json.loads((calibrated.model_dir / "tunelab.json").read_text())
    t = meta["temperature"]
    assert t != pytest.approx(1.0, abs=1e-3) and "temperature" not in json.loads((plain.model_dir / "tunelab.json").read_text())
    assert meta["validation"]["ece"] < meta["validation"]["ece_uncalibrated"]
    texts = list(load_file(noisy_files["test"], Wanted("text", None)).text)
    p_cal, p_plain = Predictor(calibrated.run_dir).probabilities(texts), Predictor(plain.run_dir).probabilities(texts)
    np.testing.assert_array_equal(p_cal.argmax(1), p_plain.argmax(1))
    np.testing.assert_allclose(uncalibrated(p_cal, t), p_plain, atol=1e-5)
    assert np.abs(p_cal - p_plain).max() > 1e-3  # the scores did change


def test_evaluate_reports_the_error_before_and_after(runs_with_and_without):
    from tunelab.evaluation import evaluate

    calibrated = evaluate(runs_with_and_without[True].run_dir, "test", quiet=True).metrics
    plain = evaluate(runs_with_and_without[False].run_dir, "test", quiet=True).metrics
    assert calibrated["accuracy"] == plain["accuracy"]
    assert calibrated["ece_uncalibrated"] == pytest.approx(plain["ece"], abs=1e-4)
    assert "ece_uncalibrated" not in plain and calibrated["temperature"] > 0
    html = (runs_with_and_without[True].run_dir / "eval" / "report.html").read_text()
    assert "ece_uncalibrated" in html


def test_a_validation_set_without_mistakes_leaves_the_model_uncalibrated(tiny_config):
    from tunelab.training import train

    result = train(tiny_config(name="perfect", max_steps=150, precision="fp32"), quiet=True)
    meta = json.loads((result.model_dir / "tunelab.json").read_text())
    assert meta["validation"]["accuracy"] == 1.0 and "temperature" not in meta
