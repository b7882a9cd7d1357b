"""Several LoRA/IA3 adapters over one base in memory (tunelab.load(base, adapters=...)): each predicts
exactly as its own run loaded alone, heads with different label sets included."""

import numpy as np
import pytest

from conftest import sentiment_rows, write_csv


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir):
    from tunelab.config import load_config
    from tunelab.training import train

    root = tmp_path_factory.mktemp("adapters")
    rows = sentiment_rows(200, seed=3)
    three = [(t, lab if i % 3 else "neutral") for i, (t, lab) in enumerate(rows)]  # a 3-label task
    runs = {}
    for name, method, data in [("sentiment", "lora", rows), ("tone", "ia3", three), ("tone_lora", "lora", three)]:
        files = {"train": write_csv(root / f"{name}-train.csv", data[:160]),
                 "validation": write_csv(root / f"{name}-dev.csv", data[160:])}
        config = load_config({"name": name, "runs_dir": str(root / "runs"),
                              "data": {k: str(v) for k, v in files.items()},
                              "model": {"name": str(tiny_model_dir), "max_length": 32}, "method": {"name": method},
                              "train": {"max_steps": 12, "learning_rate": 1e-2, "batch_size": 16}})
        runs[name] = train(config, quiet=True).run_dir
    return runs


TEXTS = ["a great and lovely film", "awful terrible plot", "the movie was quite"]


def test_each_adapter_predicts_as_its_own_run(two_runs, tiny_model_dir):
    import tunelab

    shared = tunelab.load(str(tiny_model_dir), adapters={"sentiment": two_runs["sentiment"], "tone": two_runs["tone_lora"]})
    for _ in range(2):  # switching back and forth changes nothing
        for name, run in [("sentiment", two_runs["sentiment"]), ("tone", two_runs["tone_lora"])]:
            alone = tunelab.Predictor(run).probabilities(TEXTS)
            got = shared.probabilities(TEXTS, adapter=name)
            assert got.shape == alone.shape and np.abs(got - alone).max() < 1e-5
    assert shared.predict(TEXTS, adapter="tone")[0]["label"] in ("negative", "neutral", "positive")
    assert set(shared.predict(TEXTS, adapter="sentiment")[0]["scores"]) == {"negative", "positive"}


def test_one_copy_of_the_base(two_runs, tiny_model_dir):
    import tunelab

    shared = tunelab.load(str(tiny_model_dir), adapters={"sentiment": two_runs["sentiment"], "tone": two_runs["tone_lora"]})
    single = tunelab.Predictor(two_runs["sentiment"]).model
    n_shared = sum(p.numel() for p in shared.model.parameters()) + sum(
        p.numel() for heads in shared.heads.values() for m in heads.values() for p in m.parameters())
    n_single = sum(p.numel() for p in single.parameters())
    assert n_shared < 1.2 * n_single  # two adapters, not two models


def test_clear_errors(two_runs, tiny_model_dir, tmp_path):
    import tunelab
    from tunelab.errors import TunelabError

    shared = tunelab.load(str(tiny_model_dir), adapters={"sentiment": two_runs["sentiment"]})
    with pytest.raises(TunelabError, match="unknown adapter 'nope'; loaded: sentiment"):
        shared.predict(TEXTS, adapter="nope")
    with pytest.raises(TunelabError, match="trained on base"):
        tunelab.load("default", adapters={"sentiment": two_runs["sentiment"]})
