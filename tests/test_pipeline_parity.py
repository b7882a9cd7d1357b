"""A model tunelab trains is a plain transformers model: pipeline() gives the same labels and scores."""

import pytest

from conftest import REPO

pytestmark = pytest.mark.integration


def test_pipeline_matches_tunelab_predict_on_the_real_minilm(tmp_path):
    from transformers import pipeline

    from tunelab.config import load_config
    from tunelab.models.predictor import Predictor
    from tunelab.training import train

    config = load_config(REPO / "examples" / "demo.yaml", [f"runs_dir={tmp_path}", "train.max_steps=20", "train.eval_every=10"])
    result = train(config, quiet=True)
    texts = ["The staff were friendly and the room was spotless.", "It broke after two days and support never answered.",
             "Not bad at all, I would buy it again.", "Meh."]
    ours = Predictor(result.model_dir).predict(texts)
    theirs = pipeline("text-classification", model=str(result.model_dir), device="cpu", top_k=None)(texts)
    for mine, other in zip(ours, theirs):
        best = max(other, key=lambda d: d["score"])
        assert best["label"] == mine["label"]
        for d in other:
            assert abs(d["score"] - mine["scores"][d["label"]]) <= 1e-5
