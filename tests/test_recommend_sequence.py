"""The sequence user tower (apps/recommend/sequence.py) on tiny synthetic catalogues."""

from types import SimpleNamespace

import numpy as np
import torch

from tunelab.apps.recommend.sequence import load, save, train_sequence, windows

SETTINGS = dict(dim=16, layers=1, heads=2, max_len=8, dropout=0.0, learning_rate=1e-2, weight_decay=0.0, epochs=40,
                patience=40, batch_size=16, id_dropout=0.2)


def test_windows_make_every_transition_a_target_exactly_once():
    data = windows([np.arange(12), np.arange(3), np.arange(1)], 4)
    pairs = [(a, b) for row in data for a, b in zip(row[:-1], row[1:]) if a >= 0]
    assert sorted(pairs) == sorted([(i, i + 1) for i in range(11)] + [(0, 1), (1, 2)])
    assert data.shape[1] == 5


def test_learns_next_items_keeps_the_best_epoch_and_round_trips_through_safetensors(tmp_path):
    rng = np.random.default_rng(0)
    items = 30  # the last two never appear in training: cold
    histories = [(np.arange(s, s + 12) % 28) for s in range(28)]
    text = rng.normal(size=(items, 8)).astype(np.float32)
    train, targets = [h[:-1] for h in histories], np.array([h[-1] for h in histories])

    def top1(model):
        return float((model.scores(train).argmax(axis=1) == targets).mean())

    torch.manual_seed(0)
    model, info = train_sequence(train, text, top1, SimpleNamespace(**SETTINGS), seed=0, quiet=True)
    assert info["validation_ndcg_at_10"] == max(r["validation_ndcg_at_10"] for r in info["curve"]) >= 0.9
    assert top1(model) == info["validation_ndcg_at_10"]  # the best epoch's weights are the ones kept

    with torch.no_grad():  # a cold item's vector is its text's projection alone: no untrained id embedding
        table = model.table()
        assert torch.allclose(table[28:], model.text(model.text_vectors[28:]))
        assert not torch.allclose(table[:28], model.text(model.text_vectors[:28]))

    save(model, tmp_path, {"training": info})
    again = load(tmp_path, text)  # the trained-items mask travels with the weights
    np.testing.assert_allclose(again.scores(train), model.scores(train), rtol=1e-5, atol=1e-5)


def test_one_seed_trains_one_tower():
    rng = np.random.default_rng(1)
    histories = [rng.integers(0, 1000, size=rng.integers(3, 60)) for _ in range(150)]
    text = rng.normal(size=(1000, 8)).astype(np.float32)
    # large enough that CPU kernels run in parallel (the indexing backward then differs from run to run)
    settings = SimpleNamespace(**dict(SETTINGS, dim=32, max_len=40, epochs=2, dropout=0.3, batch_size=64))
    epochs = iter(range(100))  # every epoch "improves": the last one is kept
    first, _ = train_sequence(histories, text, lambda m: float(next(epochs)), settings, seed=3, quiet=True)
    second, _ = train_sequence(histories, text, lambda m: float(next(epochs)), settings, seed=3, quiet=True)
    assert np.array_equal(first.scores(histories[:8]), second.scores(histories[:8]))
