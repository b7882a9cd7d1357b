"""The training loop on a tiny BERT: learning, determinism, options, checkpoints and resume."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tunelab.errors import TunelabError
from tunelab.training import train


def weights(run_dir):
    return load_file(run_dir / "model" / "model.safetensors")


def test_training_learns_and_writes_a_plain_model_folder(tiny_config):
    config = tiny_config()
    result = train(config, quiet=True)
    assert result.validation["accuracy"] >= 0.9  # the polar word decides the label
    model_dir = result.model_dir
    meta = json.loads((model_dir / "tunelab.json").read_text())
    assert meta["labels"] == ["negative", "positive"]
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = AutoConfig.from_pretrained(model_dir)
    assert cfg.id2label == {0: "negative", 1: "positive"} and cfg.label2id == {"negative": 0, "positive": 1}
    AutoModelForSequenceClassification.from_pretrained(model_dir)  # loads with plain transformers
    assert (model_dir / "model.safetensors").is_file() and not list(model_dir.glob("*.bin"))
    log = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in log) and any(r.get("split") == "validation" for r in log)
    assert list((config.run_dir / "tb").rglob("events.out.tfevents.*"))
    assert (config.run_dir / "config.yaml").is_file()


def test_same_seed_gives_the_same_model_and_another_seed_does_not(tiny_config):
    a = train(tiny_config(name="a", max_steps=12), quiet=True)
    b = train(tiny_config(name="b", max_steps=12), quiet=True)
    c = train(tiny_config(name="c", max_steps=12, seed=7), quiet=True)
    wa, wb, wc = weights(a.run_dir), weights(b.run_dir), weights(c.run_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert a.validation == b.validation


def test_existing_run_needs_resume_or_overwrite(tiny_config):
    config = tiny_config(max_steps=4)
    train(config, quiet=True)
    with pytest.raises(TunelabError, match="--resume.*--overwrite"):
        train(config, quiet=True)
    with pytest.raises(TunelabError, match="no checkpoint to resume from"):
        train(tiny_config(name="fresh", max_steps=4), resume=True, quiet=True)
    assert train(config, overwrite=True, quiet=True).steps == 4


def test_resume_of_a_finished_run_trains_nothing_again(tiny_config, capsys):
    config = tiny_config(name="done", max_steps=6, checkpoint_every=2)
    first = train(config, quiet=True)
    weights = config.run_dir / "model" / "model.safetensors"
    before = (weights.stat().st_mtime_ns, (config.run_dir / "metrics.jsonl").read_text())
    again = train(config, resume=True)  # its last checkpoint is step 4: resuming used to train steps 5-6 again
    assert "finished at step 6: nothing to resume" in capsys.readouterr().err
    assert (again.steps, again.best_step, again.validation) == (first.steps, first.best_step, first.validation)
    assert (weights.stat().st_mtime_ns, (config.run_dir / "metrics.jsonl").read_text()) == before
    train(config, overwrite=True, quiet=True)  # --overwrite still trains it again
    assert weights.stat().st_mtime_ns != before[0]
    one_pass = tiny_config(name="one-pass", max_steps=6, eval_every=6)  # one evaluation, at the end: no checkpoint
    train(one_pass, quiet=True)
    assert not list((one_pass.run_dir / "checkpoints").glob("step-*"))
    assert train(one_pass, resume=True, quiet=True).steps == 6  # not "no checkpoint to resume from"


def test_long_stretches_between_evaluations_are_checkpointed_without_changing_the_training(tiny_config, monkeypatch):
    """One epoch of large data is a single evaluation: checkpoints come at least every CHECKPOINT_AT_LEAST_EVERY
    steps anyway, and (no lazy embedding catch-up for them) the run ends with the same weights as without them."""
    import tunelab.training.setup as setup
    from safetensors.torch import load_file

    settings = dict(max_steps=12, eval_every=12, learning_rate=1e-2, lazy_embeddings=True)
    plain = train(tiny_config(name="no-checkpoints", **settings), quiet=True)
    assert not list((plain.run_dir / "checkpoints").glob("step-*"))
    monkeypatch.setattr(setup, "CHECKPOINT_AT_LEAST_EVERY", 5)
    saved = train(tiny_config(name="checkpoints", **settings), quiet=True)
    assert [p.name for p in (saved.run_dir / "checkpoints").glob("step-*")] == ["step-10"]  # 5, then 10 (keeps 1)
    a, b = (load_file(str(r.model_dir / "model.safetensors")) for r in (plain, saved))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_steps_from_epochs_min_steps_and_max_steps(tiny_config):
    from tunelab.training.loop import planned_steps

    cfg = tiny_config(epochs=2, min_steps=0).train
    assert planned_steps(cfg, 15) == 30
    assert planned_steps(tiny_config(epochs=2, min_steps=100).train, 15) == 100  # small data: stretched
    assert planned_steps(tiny_config(epochs=2, min_steps=1000, max_epochs=5).train, 15) == 75  # but capped
    many = tiny_config(epochs=2, min_steps=100, min_steps_per_label=25).train
    assert planned_steps(many, 30, num_labels=2) == 100  # 2 labels x 25 < min_steps
    assert planned_steps(many, 150, num_labels=77) == 1925  # many labels: 25 steps each
    assert planned_steps(many, 30, num_labels=77) == 600  # still capped at max_epochs (20 x 30)
    assert train(tiny_config(max_steps=7), quiet=True).steps == 7


def test_early_stopping_stops_when_the_metric_stalls(tiny_config):
    # a learning rate of ~0 never improves on the first evaluation
    result = train(tiny_config(learning_rate=1e-12, eval_every=2, early_stopping_patience=2, max_steps=40), quiet=True)
    assert result.stopped_early and result.steps == 6 and result.best_step == 2


def test_gradient_accumulation_matches_the_full_batch(tiny_config):
    one = train(tiny_config(name="one", max_steps=6, precision="fp32"), quiet=True)
    two = train(tiny_config(name="two", max_steps=6, precision="fp32", gradient_accumulation_steps=4), quiet=True)
    wa, wb = weights(one.run_dir), weights(two.run_dir)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5  # same gradient, summed in 4 parts


@pytest.mark.parametrize("max_norm", [1e-3, 1e6])  # clipping every step / never
def test_clipping_inside_fused_adamw_equals_clipping_before_it(max_norm):
    from tunelab.training.optim import clip_inside_step

    torch.manual_seed(0)
    before = [torch.nn.Parameter(torch.randn(50, 8)) for _ in range(3)]
    inside = [torch.nn.Parameter(p.detach().clone()) for p in before]
    opt_before = torch.optim.AdamW(before, lr=1e-2, fused=True)
    opt_inside = torch.optim.AdamW(inside, lr=1e-2, fused=True)
    for _ in range(4):
        for a, b in zip(before, inside):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        torch.nn.utils.clip_grad_norm_(before, max_norm)
        opt_before.step()
        assert clip_inside_step(opt_inside, inside, max_norm)
        opt_inside.step()
    assert max(float((a - b).detach().abs().max()) for a, b in zip(before, inside)) < 1e-6
    assert not clip_inside_step(torch.optim.SGD(inside, lr=0.1), inside, max_norm)  # no hook: clip the usual way


def _embedding_model(lazy: bool, weight_decay: float = 0.0):
    from tunelab.training.lazy_rows import lazy_word_embeddings
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32,
                                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=weight_decay, fused=True)
    lazy_rows = lazy_word_embeddings(model, optimizer) if lazy else None
    optimizer.load_state_dict(optimizer.state_dict())  # as accelerate's prepare and a resume do: new group dicts
    return model, optimizer, lazy_rows


def _embedding_step(model, optimizer, lazy, ids, max_norm=0.05, loss_scale=1.0):
    from tunelab.training.optim import clip_inside_step

    (loss_scale * model(input_ids=ids, labels=torch.zeros(len(ids), dtype=torch.long)).loss).backward()
    assert clip_inside_step(optimizer, list(model.parameters()), max_norm)  # the default 0.05 bites
    if lazy is not None:
        lazy.step()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# token ids per step: rows 5, 7, 9 are in the first batch and come back only in the sixth; 30-33 never come back
_BATCHES = [[[5, 7, 7, 9], [5, 11, 12, 0]], [[20, 21, 22, 23]], [[30, 31, 32, 33]], [[20, 11, 40, 0]],
            [[41, 42, 20, 21]], [[5, 9, 43, 0]], [[44, 45, 46, 47]], [[20, 48, 49, 0]]]


def _lazy_and_dense(weight_decay: float, steps: int, lazy_checkpoint_at: int | None = None):
    """Train the same model densely and lazily on `_BATCHES` under a changing learning rate."""
    dense_model, dense_opt, _ = _embedding_model(lazy=False, weight_decay=weight_decay)
    lazy_model, lazy_opt, lazy = _embedding_model(lazy=True, weight_decay=weight_decay)
    rate = lambda step: 1.0 - 0.1 * step  # noqa: E731 -- as a linear schedule changes it every step
    dense_sched = torch.optim.lr_scheduler.LambdaLR(dense_opt, rate)
    lazy_sched = torch.optim.lr_scheduler.LambdaLR(lazy_opt, rate)
    for step, ids in enumerate(_BATCHES[:steps]):
        ids = torch.tensor(ids)
        # gradients of a real model's size, far above AdamW's eps (this tiny one's are near it, where the
        # catch-up is close, not equal: lazy_rows.py)
        _embedding_step(dense_model, dense_opt, None, ids, max_norm=1e6, loss_scale=1e3)
        dense_sched.step()
        _embedding_step(lazy_model, lazy_opt, lazy, ids, max_norm=1e6, loss_scale=1e3)
        lazy_sched.step()
        if lazy_checkpoint_at == step + 1:  # save and load the optimizer, as a checkpoint and a resume do
            saved = copy.deepcopy(lazy_opt.state_dict())
            lazy_opt.load_state_dict(saved)
    return dense_model, dense_opt, lazy_model, lazy, lazy_opt


def _compared(model):
    """Parameters by name, less attention's key bias: its true gradient is zero (softmax ignores a constant
    per query), so AdamW turns float rounding into full-size, arbitrary moves — in dense training too."""
    return {name: p for name, p in model.named_parameters() if not name.endswith("key.bias")}


def test_lazy_embedding_rows_move_only_in_their_batch_then_catch_up_to_dense_adamw():
    dense_model, _, lazy_model, lazy, _ = _lazy_and_dense(weight_decay=0.1, steps=1)
    assert lazy is not None and lazy_model.bert.embeddings.word_embeddings.sparse
    for (name, a), b in zip(dense_model.named_parameters(), lazy_model.parameters()):
        rows = [0, 5, 7, 9, 11, 12] if name.endswith("word_embeddings.weight") else slice(None)  # the batch's
        assert torch.allclose(a[rows], b[rows], atol=1e-6), name
    dense_model, dense_opt, lazy_model, lazy, lazy_opt = _lazy_and_dense(weight_decay=0.1, steps=5)
    lazy_rows = lazy_model.bert.embeddings.word_embeddings.weight.detach().clone()
    dense_rows = dense_model.bert.embeddings.word_embeddings.weight.detach()
    # rows 5, 7, 9 sat out steps 2-5: dense AdamW moved them by momentum and decay, the lazy step left them
    assert (dense_rows[[5, 7, 9]] - lazy_rows[[5, 7, 9]]).abs().max() > 1e-3
    before_catch_up = lazy_rows.clone()
    lazy.catch_up()
    caught_up = lazy_model.bert.embeddings.word_embeddings.weight.detach()
    assert torch.allclose(caught_up, dense_rows, atol=2e-6), float((caught_up - dense_rows).abs().max())
    for (name, a), b in zip(_compared(dense_model).items(), _compared(lazy_model).values()):
        assert torch.allclose(a, b, atol=2e-6), name
    assert int(lazy_opt.state[lazy.param]["step"]) == 5  # state lives in the optimizer: checkpoints carry it
    assert not torch.equal(before_catch_up[50], caught_up[50])  # never seen, still decayed as dense AdamW does
    # the moments too: what later steps build on
    dense_state = dense_opt.state[dense_model.bert.embeddings.word_embeddings.weight]
    for key in ("exp_avg", "exp_avg_sq"):
        scale = float(dense_state[key].abs().max())  # float rounding of two backward paths, no more
        assert torch.allclose(lazy_opt.state[lazy.param][key], dense_state[key], rtol=0, atol=1e-3 * scale), key


def test_lazy_embeddings_catch_up_rows_seen_again_and_resume_exactly():
    dense_model, _, lazy_model, lazy, _ = _lazy_and_dense(weight_decay=0.1, steps=8)
    lazy.catch_up()
    for (name, a), b in zip(_compared(dense_model).items(), _compared(lazy_model).values()):
        assert torch.allclose(a, b, atol=5e-6), name  # 5, 9 (step 6) and 20 (steps 4, 5, 8) came back after gaps
    _, _, resumed_model, resumed, _ = _lazy_and_dense(weight_decay=0.1, steps=8, lazy_checkpoint_at=3)
    resumed.catch_up()
    for a, b in zip(lazy_model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


def test_lazy_embeddings_record_every_steps_rate_and_decay_past_their_first_buffer():
    from tunelab.training.lazy_rows import _record_step

    state = {"lr": torch.zeros(4), "kept": torch.zeros(4)}
    rates = [1e-3 * (1 + step % 7) for step in range(1, 11)]
    for step, rate in enumerate(rates, start=1):
        _record_step(state, step, rate, weight_decay=0.5)
    assert len(state["lr"]) >= 11  # grown from 4
    assert torch.allclose(state["lr"][1:11], torch.tensor(rates))
    # steps 3..7 keep the product of their (1 - lr * decay): exp(kept[7] - kept[2])
    expected = math.prod(1 - 0.5 * rate for rate in rates[2:7])
    assert math.isclose(math.exp(float(state["kept"][7] - state["kept"][2])), expected, rel_tol=1e-5)


def test_lazy_embeddings_only_where_the_embedding_trains_untied_under_fused_adamw():
    from tunelab.training.lazy_rows import lazy_word_embeddings
    from transformers import GPT2Config, GPT2LMHeadModel

    model, _, _ = _embedding_model(lazy=False)
    assert lazy_word_embeddings(model, torch.optim.SGD(model.parameters(), lr=0.1)) is None
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    assert lazy_word_embeddings(model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                                         fused=True)) is None
    tied = GPT2LMHeadModel(GPT2Config(vocab_size=60, n_embd=16, n_layer=1, n_head=2))
    assert lazy_word_embeddings(tied, torch.optim.AdamW(tied.parameters(), fused=True)) is None
    assert not tied.transformer.wte.sparse


def test_lazy_and_dense_embedding_training_both_learn(tiny_config):
    lazy = train(tiny_config(name="lazy", precision="fp32"), quiet=True)
    dense = train(tiny_config(name="dense", precision="fp32", lazy_embeddings=False), quiet=True)
    wl, wd = weights(lazy.run_dir), weights(dense.run_dir)
    key = next(k for k in wl if k.endswith("word_embeddings.weight"))
    assert not torch.equal(wl[key], wd[key])  # the option is wired through to the loop
    assert lazy.validation["accuracy"] >= 0.9 and dense.validation["accuracy"] >= 0.9


def test_padding_to_a_multiple_rounds_the_batch_width_and_changes_nothing_learned(tiny_config):
    from tunelab.tasks.encoding import Encoded, collate

    enc = Encoded(ids=np.arange(1, 14, dtype=np.int32), type_ids=None, offsets=np.array([0, 3, 13]), targets=None)
    batch = collate(enc, np.array([0, 1]), 0, False, multiple=8)
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"].sum(1).tolist() == [3, 10]
    assert collate(enc, np.array([0]), 0, False, multiple=8)["input_ids"].shape == (1, 8)
    one = train(tiny_config(name="pad1", max_steps=6, precision="fp32"), quiet=True)
    eight = train(tiny_config(name="pad8", max_steps=6, precision="fp32", pad_to_multiple_of=8), quiet=True)
    wa, wb = weights(one.run_dir), weights(eight.run_dir)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5  # masked padding is inert


@pytest.fixture(scope="module")
def base_six_steps(tmp_path_factory, tiny_model_dir, sentiment_files):
    """The run every option is compared with, trained once for all of them (the tiny_config defaults, 6 steps)."""
    from tunelab.config import load_config

    raw = {"name": "base", "runs_dir": str(tmp_path_factory.mktemp("runs")),
           "data": {k: str(v) for k, v in sentiment_files.items()}, "model": {"name": str(tiny_model_dir), "max_length": 32},
           "train": {"learning_rate": 3e-3, "batch_size": 16, "epochs": 6, "min_steps": 0, "min_steps_per_label": 0,
                     "log_every": 5, "trackers": ["tensorboard"], "max_steps": 6, "precision": "fp32"}}
    return train(load_config(raw), quiet=True).run_dir


@pytest.mark.parametrize("option", [{"optimizer": "sgd"}, {"label_smoothing": 0.2}, {"class_weights": [1.0, 3.0]},
                                    {"max_grad_norm": 1e-3}, {"scheduler": "cosine"}, {"weight_decay": 0.5},
                                    {"dropout": 0.3}, {"layer_lr_decay": 0.5}])
def test_each_option_changes_the_result(tiny_config, base_six_steps, option):
    other = train(tiny_config(name="other", max_steps=6, precision="fp32", **option), quiet=True)
    wa, wb = weights(base_six_steps), weights(other.run_dir)
    assert not all(torch.equal(wa[k], wb[k]) for k in wa), option


def test_parameter_groups_never_decay_bias_or_layernorm_and_give_the_head_its_rate(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from tunelab.training.optim import parameter_groups

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    groups = parameter_groups(model, 0.1, 1e-4, 2e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        group_names = [names[id(p)] for p in group["params"]]
        no_decay = [n.endswith("bias") or "LayerNorm" in n for n in group_names]
        assert all(no_decay) if group["weight_decay"] == 0.0 else not any(no_decay), group_names
        assert all(n.startswith("classifier.") == (group["lr"] == 2e-3) for n in group_names), group_names
    assert sum(len(g["params"]) for g in groups) == len(names)
    assert {(g["weight_decay"], g["lr"]) for g in groups} == {(0.1, 1e-4), (0.0, 1e-4), (0.1, 2e-3), (0.0, 2e-3)}


def test_layer_decay_lowers_the_rate_layer_by_layer_down_to_the_embeddings(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from tunelab.training.optim import parameter_groups

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)  # 2 layers
    rate = {id(p): g["lr"] for g in parameter_groups(model, 0.1, 1e-4, 2e-3, layer_decay=0.5) for p in g["params"]}
    expected = {"bert.embeddings.": 1e-4 * 0.5 ** 3, "bert.encoder.layer.0.": 1e-4 * 0.5 ** 2,
                "bert.encoder.layer.1.": 1e-4 * 0.5, "bert.pooler.": 1e-4, "classifier.": 2e-3}
    for name, param in model.named_parameters():
        want = next(r for prefix, r in expected.items() if name.startswith(prefix))
        assert rate[id(param)] == pytest.approx(want), name
    assert len(rate) == len(list(model.parameters()))


@pytest.mark.parametrize("name", ["linear", "cosine", "constant"])
def test_schedules_warm_up_then_follow_their_shape(tiny_config, name):
    from tunelab.training.optim import build_scheduler

    cfg = tiny_config(scheduler=name, warmup_ratio=0.1).train
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, cfg, 100)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    expected_mid = {"linear": 40 / 90, "cosine": 0.5 * (1 + math.cos(math.pi * 50 / 90)), "constant": 1.0}[name]
    assert lrs[60] == pytest.approx(expected_mid, rel=1e-6)
    from transformers import get_scheduler  # the schedules are transformers', written out to skip its import

    theirs = get_scheduler("constant_with_warmup" if name == "constant" else name,
                           torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 10, 100)
    assert [theirs.lr_lambdas[0](step) for step in range(101)] == pytest.approx(lrs + [sched.lr_lambdas[0](100)], abs=1e-12)


def test_balanced_class_weights():
    from tunelab.tasks.classification import ClassificationTask
    from tunelab.tasks.encoding import Encoded

    task = ClassificationTask(["a", "b"], False, False)
    split = lambda targets: Encoded(np.zeros(0, np.int32), None, np.zeros(len(targets) + 1, np.int64), np.array(targets))  # noqa: E731
    w = task.class_weights(split([0, 0, 0, 1]), "balanced")
    assert torch.allclose(w, torch.tensor([4 / 6, 4 / 2]))
    with pytest.raises(TunelabError, match="3 weights for 2 labels"):
        task.class_weights(split([0, 1]), [1.0, 2.0, 3.0])


def test_unknown_metric_is_a_clear_error(tiny_config):
    with pytest.raises(TunelabError, match="train.metric: 'f2' is not a validation metric here; choose one of: accuracy"):
        train(tiny_config(metric="f2", max_steps=2, eval_every=1), quiet=True)


def test_model_layers_keeps_the_bottom_layers_with_their_pretrained_weights(tiny_config, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from tunelab.models.predictor import Predictor

    pretrained = load_file(tiny_model_dir / "model.safetensors")
    full = train(tiny_config(name="full-depth", max_steps=1, learning_rate=1e-12), quiet=True)
    shallow = train(tiny_config(name="shallow", max_steps=1, learning_rate=1e-12, model={"layers": 1}), quiet=True)
    saved = weights(shallow.run_dir)
    assert not [k for k in saved if ".layer.1." in k] and [k for k in saved if ".layer.0." in k]
    for key in [k for k in saved if ".layer.0." in k]:  # the kept layer starts from the checkpoint's own
        assert torch.allclose(saved[key], pretrained[key.removeprefix("bert.")], atol=1e-6), key
    plain = AutoModelForSequenceClassification.from_pretrained(shallow.model_dir)  # plain transformers, 1 layer
    assert plain.config.num_hidden_layers == 1 and len(plain.bert.encoder.layer) == 1
    assert len(weights(full.run_dir)) > len(saved)
    # an adapter method rebuilds its base from the card: the same single layer under the saved LoRA weights
    lora = train(tiny_config(name="shallow-lora", max_steps=4, model={"layers": 1}, method={"name": "lora"}), quiet=True)
    assert json.loads((lora.model_dir / "tunelab.json").read_text())["layers"] == 1
    assert len(Predictor(lora.model_dir).model.base_model.model.bert.encoder.layer) == 1
    with pytest.raises(TunelabError, match="model.layers: 3 is more than the 2 layers of"):
        train(tiny_config(name="too-deep", max_steps=1, model={"layers": 3}), quiet=True)


def test_distillation_pulls_a_shallower_student_towards_its_teacher(tiny_config, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    from tunelab.errors import ConfigError
    from tunelab.models.predictor import Predictor

    teacher = train(tiny_config(name="teacher", max_steps=60), quiet=True)
    # one evaluation (the kept model is the last) and no calibration after it (a fitted temperature would move
    # both students' probabilities again)
    student = dict(max_steps=60, eval_every=60, model={"layers": 1}, learning_rate=3e-3, task={"calibrate": False})
    plain = train(tiny_config(name="plain", **student), quiet=True)
    distilled = train(tiny_config(name="distilled", distill={"teacher": str(teacher.run_dir), "weight": 1.0,
                                                            "temperature": 1.0}, **student), quiet=True)
    assert json.loads((distilled.model_dir / "tunelab.json").read_text())["distilled_from"] == str(teacher.model_dir.resolve())
    validation = pq.read_table(distilled.run_dir / "data" / "validation.parquet", columns=["text"])["text"].to_pylist()

    def kl_to_teacher(run):
        p = np.clip(Predictor(teacher.run_dir).probabilities(validation), 1e-9, 1)
        q = np.clip(Predictor(run.run_dir).probabilities(validation), 1e-9, 1)
        return float((p * np.log(p / q)).sum(1).mean())
    assert kl_to_teacher(distilled) < 0.5 * kl_to_teacher(plain)
    # a teacher with other labels (here: the same ones in another order) is refused, as is one that is not there
    other = tmp_path / "other-teacher"
    shutil.copytree(teacher.model_dir, other)
    card = json.loads((other / "tunelab.json").read_text())
    (other / "tunelab.json").write_text(json.dumps({**card, "labels": card["labels"][::-1]}))
    with pytest.raises(ConfigError, match="the teacher must have the same labels in the same order"):
        train(tiny_config(name="wrong-teacher", distill={"teacher": str(other)}, **student), quiet=True)
    with pytest.raises(TunelabError, match="no trained model here"):
        train(tiny_config(name="no-teacher", distill={"teacher": str(tmp_path / "nowhere")}, **student), quiet=True)
