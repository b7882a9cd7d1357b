"""The moving average of the weights: its arithmetic, its swap in and out, its checkpoint, and the loop's use."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tunelab.errors import TunelabError
from tunelab.training import train
from tunelab.training.weight_average import WeightAverage


def _trajectory(steps: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, generator=g) for _ in range(steps)]


@pytest.mark.parametrize("every", [1, 3])
def test_the_average_is_the_bias_corrected_ema_of_the_weights_it_saw(every):
    decay, path = 0.9, _trajectory(12)
    p = torch.nn.Parameter(torch.zeros(3, 4))
    average = WeightAverage([p], decay, every)
    for step, w in enumerate(path, start=1):
        p.data.copy_(w)
        average.update(step)
    seen = path[every - 1::every]  # the weights at steps every, 2*every, ...
    kept = decay ** every
    weights = torch.tensor([kept ** (len(seen) - 1 - i) * (1 - kept) for i in range(len(seen))], dtype=torch.float64)
    expected = sum(wt * w.double() for wt, w in zip(weights, seen)) / weights.sum()
    with average.applied():
        assert torch.allclose(p.double(), expected, atol=1e-6)
    assert torch.equal(p.data, path[-1])  # the trained weights back, bit for bit


def test_before_any_update_the_weights_are_their_own_average():
    p = torch.nn.Parameter(torch.ones(2))
    average = WeightAverage([p], 0.99, every=4)
    average.update(3)  # not a multiple of 4: no update yet
    with average.applied():
        assert torch.equal(p.data, torch.ones(2))


def test_the_average_saves_and_loads_as_safetensors_and_a_missing_file_is_an_error(tmp_path):
    p = torch.nn.Parameter(torch.zeros(5))
    average = WeightAverage([p], 0.9)
    for step, w in enumerate(_trajectory(4, seed=1), start=1):
        p.data.copy_(w[0, :1].expand(5))
        average.update(step)
    average.save(tmp_path)
    again = WeightAverage([torch.nn.Parameter(torch.zeros(5))], 0.9)
    again.load(tmp_path)
    assert torch.equal(again.average[0], average.average[0]) and again.weight == average.weight
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.bin"))
    with pytest.raises(TunelabError, match="no weight average"):
        again.load(tmp_path / "elsewhere")


def test_training_is_the_same_with_the_average_and_the_model_saved_is_the_average(tiny_config):
    plain = train(tiny_config(name="plain", max_steps=12, eval_every=12, ema_steps=None), quiet=True)
    averaged = train(tiny_config(name="ema", max_steps=12, eval_every=12, ema_steps=3, ema_every=2), quiet=True)
    losses = [[r["loss"] for r in map(json.loads, (run.run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
              for run in (plain, averaged)]
    assert losses[0] == losses[1]  # the steps never see the average
    a, b = (load_file(run.model_dir / "model.safetensors") for run in (plain, averaged))
    assert not all(torch.equal(a[k], b[k]) for k in a)  # what is saved differs: the average
    word = next(k for k in a if k.endswith("word_embeddings.weight"))
    assert torch.equal(a[word], b[word])  # the lazily updated word embedding is not averaged: saved as trained


def test_interrupt_and_resume_with_the_average_equals_a_straight_run(tiny_config, monkeypatch):
    from test_methods import straight_and_resumed

    # one evaluation, at the end: the model saved is the final average. A constant rate keeps the weights moving
    # to the end, so an average that lost its past at the resume would show
    straight, resumed, config = straight_and_resumed(
        tiny_config, monkeypatch, "ema", 31, max_steps=40, eval_every=40, precision="fp32", learning_rate=1e-2,
        scheduler="constant", ema_steps=100, ema_every=2)
    assert (config.run_dir / "checkpoints" / "step-30" / "weight_average.safetensors").is_file()
    a, b = (load_file(run.model_dir / "model.safetensors") for run in (straight, resumed))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
