"""The contract every fine-tuning method keeps, over the method x task matrix on a tiny BERT:
only the intended parameters change; save -> load predicts the same (head included); merge predicts the
same; training resumes exactly; the registry names the known methods when given an unknown one."""

import json

import numpy as np
import pytest
import torch

from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.methods import METHODS
from tunelab.methods.parts import count_parameters
from tunelab.methods.store import apply_method
from tunelab.models.load import load_model
from tunelab.tasks.classification import ClassificationTask
from tunelab.training.checkpoint import save_model_folder
from tunelab.training.optim import build_optimizer

TASKS = {  # the task registry's variants: single-label, multi-label, sentence pairs
    "single": dict(labels=["neg", "neu", "pos"], multi_label=False, pair=False),
    "multi": dict(labels=["a", "b", "c", "d"], multi_label=True, pair=False),
    "pair": dict(labels=["no", "yes"], multi_label=False, pair=True),
}

# which parameter names each method may change (besides the head, 'classifier.*')
TRAINS = {
    "full": lambda n: True,
    "head": lambda n: False,
    "freeze": lambda n: ".layer.1." in n or "pooler" in n,  # tiny model: layers=1 freezes layer 0 + embeddings
    "lora": lambda n: "lora_" in n,
    "ia3": lambda n: "ia3_" in n,
    "prompt": lambda n: "prompt_encoder" in n,
    "prefix": lambda n: n == "prefix",
    "adapter": lambda n: ".adapter." in n or "LayerNorm" in n or "pooler" in n,
}


def _method(name):
    raw = {"name": "t", "data": {"train": "x.csv"}, "method": {"name": name}}
    if name == "freeze":
        raw["method"]["freeze"] = {"layers": 1}
    return load_config(raw).method


def _build(tiny_model_dir, method, task_kind):
    task = ClassificationTask(**TASKS[task_kind])
    torch.manual_seed(0)
    model = apply_method(task.build_model(str(tiny_model_dir)), _method(method))
    return task, model


def _batch(task, n=6, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = {"input_ids": torch.randint(1000, 20000, (n, length), generator=g),
             "attention_mask": torch.ones(n, length, dtype=torch.long)}
    batch["attention_mask"][0, 7:] = 0
    if task.pair:
        batch["token_type_ids"] = torch.cat([torch.zeros(n, 5, dtype=torch.long), torch.ones(n, 5, dtype=torch.long)], 1)
    targets = (torch.rand(n, task.num_labels, generator=g) > 0.5).float() if task.multi_label \
        else torch.randint(0, task.num_labels, (n,), generator=g)
    return batch, targets


def _head(name):
    return "classifier" in name and "original_module" not in name  # peft keeps a frozen copy of the old head


@pytest.mark.parametrize("task_kind", list(TASKS))
@pytest.mark.parametrize("method", list(METHODS))
def test_only_the_intended_parameters_change(tiny_model_dir, method, task_kind):
    task, model = _build(tiny_model_dir, method, task_kind)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n in before if _head(n) or TRAINS[method](n)}
    assert trainable == expected, f"{method}: trains {sorted(trainable ^ expected)[:5]} unexpectedly / misses them"
    cfg = load_config({"name": "t", "data": {"train": "x.csv"}}).train
    optimizer = build_optimizer(model, cfg, 1e-2)
    model.train()
    for step in range(3):  # LoRA/adapter up-projections start at zero: their partners move from step 2 on
        batch, targets = _batch(task, seed=step)
        task.loss_sum(model(**batch).logits, targets, None).backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in model.named_parameters():
        changed = not torch.equal(param.detach(), before[name])
        assert changed == (name in expected), f"{method}: {name} {'changed' if changed else 'did not change'}"


def _perturbed(tiny_model_dir, method, task_kind):
    """A model as if trained: every trainable tensor moved away from its initial value."""
    task, model = _build(tiny_model_dir, method, task_kind)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return task, model.eval()


def _meta(task, method_config, tiny_model_dir):
    from tunelab.models.card import ModelCard

    settings = getattr(method_config, method_config.name, None)
    return ModelCard(**task.card_fields(), max_length=32, base_model=str(tiny_model_dir),
                     method={"name": method_config.name, **({method_config.name: settings.model_dump()} if settings else {})})


@pytest.mark.parametrize("task_kind", list(TASKS))
@pytest.mark.parametrize("method", list(METHODS))
def test_save_then_load_predicts_the_same(tiny_model_dir, tokenizer, tmp_path, method, task_kind):
    task, model = _perturbed(tiny_model_dir, method, task_kind)
    batch, _ = _batch(task)
    with torch.no_grad():
        expected = model(**batch).logits
    meta = _meta(task, _method(method), tiny_model_dir)
    save_model_folder(model, tokenizer, tmp_path / "model", meta)
    saved = json.loads((tmp_path / "model" / "tunelab.json").read_text())
    if METHODS[method].SAVES != "model":  # PEFT saves adapter + head only: far smaller than the base
        assert saved["saved_bytes"] < 0.5 * count_parameters(model)["total"] * 4
    loaded = load_model(tmp_path / "model")
    with torch.no_grad():
        got = loaded(**batch).logits
    assert torch.allclose(got, expected, atol=1e-6), f"{method}: max diff {(got - expected).abs().max():.2e}"


def test_adapter_train_pooler_adds_the_pooler_and_saves_it(tiny_model_dir, tokenizer, tmp_path):
    raw = {"name": "t", "data": {"train": "x.csv"}, "method": {"name": "adapter", "adapter": {"train_pooler": True}}}
    method_config = load_config(raw).method
    task = ClassificationTask(**TASKS["single"])
    torch.manual_seed(0)
    model = apply_method(task.build_model(str(tiny_model_dir)), method_config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    pooler = {n for n in trainable if "pooler" in n}
    assert pooler and trainable == {n for n, _ in model.named_parameters() if _head(n) or TRAINS["adapter"](n)} | pooler
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in pooler:
                p.add_(0.05)  # as if trained: the saved state must carry the pooler, not the base's
    model.eval()
    batch, _ = _batch(task)
    with torch.no_grad():
        expected = model(**batch).logits
    save_model_folder(model, tokenizer, tmp_path / "model", _meta(task, method_config, tiny_model_dir))
    loaded = load_model(tmp_path / "model")
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, expected, atol=1e-6)


@pytest.mark.parametrize("method", [n for n, m in METHODS.items() if getattr(m, "MERGEABLE", False)])
def test_merged_model_predicts_the_same(tiny_model_dir, method):
    from transformers import AutoModelForSequenceClassification

    task, model = _perturbed(tiny_model_dir, method, "single")
    batch, _ = _batch(task)
    with torch.no_grad():
        live = model(**batch).logits
        merged = model.merge_and_unload()
        assert isinstance(merged, AutoModelForSequenceClassification._model_mapping[type(merged.config)])
        assert (merged(**batch).logits - live).abs().max() <= 1e-4


def test_unknown_method_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError) as err:
        load_config({"name": "t", "data": {"train": "x.csv"}, "method": {"name": "loraa"}})
    for name in METHODS:
        assert f"'{name}'" in str(err.value)


def test_each_method_has_a_learning_rate_and_a_description():
    for name, module in METHODS.items():
        assert module.LEARNING_RATE > 0 and module.SAVES in ("model", "peft", "state") and module.__doc__.strip()
    assert load_config({"name": "t", "data": {"train": "x"}, "method": {"name": "lora"}}).learning_rate == METHODS["lora"].LEARNING_RATE
    assert load_config({"name": "t", "data": {"train": "x"}, "method": {"name": "lora"},
                        "train": {"learning_rate": 5e-4}}).learning_rate == 5e-4


# ------------------------------------------------------------ end to end: train, interrupt, resume, export

def _interrupt_at(monkeypatch, forward_calls):
    """Make the next training raise KeyboardInterrupt (like Ctrl-C) in its n-th training forward pass."""
    import tunelab.training.setup as setup

    real = setup.apply_method
    calls = {"n": 0}

    def apply_then_arm(model, method_config):
        model = real(model, method_config)

        def hook(module, args, kwargs):
            if module.training:
                calls["n"] += 1
                if calls["n"] == forward_calls:
                    raise KeyboardInterrupt
        model.register_forward_pre_hook(hook, with_kwargs=True)
        return model
    monkeypatch.setattr(setup, "apply_method", apply_then_arm)


def straight_and_resumed(tiny_config, monkeypatch, name: str, stop_at: int, **settings):
    """Train `name`-straight to the end; train `name`-stopped, Ctrl-C in its `stop_at`-th forward pass, and resume."""
    from tunelab.errors import Interrupted
    from tunelab.training import train

    straight = train(tiny_config(name=f"{name}-straight", **settings), quiet=True)
    config = tiny_config(name=f"{name}-stopped", **settings)
    with monkeypatch.context() as m:
        _interrupt_at(m, stop_at)
        with pytest.raises(Interrupted):
            train(config, quiet=True)
    return straight, train(config, resume=True, quiet=True), config


@pytest.mark.parametrize("method", list(METHODS))
def test_interrupt_and_resume_equals_a_straight_run(tiny_config, monkeypatch, method):
    from tunelab.models.predictor import Predictor

    straight, resumed, config = straight_and_resumed(
        tiny_config, monkeypatch, method, 8, max_steps=12, eval_every=6, precision="fp32", learning_rate=1e-2,
        method={"name": method, **({"freeze": {"layers": 1}} if method == "freeze" else {})})
    assert (config.run_dir / "checkpoints" / "step-7").is_dir()
    assert resumed.steps == straight.steps == 12
    texts = ["a great and lovely film", "awful terrible plot", "the movie was"]
    a, b = Predictor(straight.run_dir).probabilities(texts), Predictor(resumed.run_dir).probabilities(texts)
    assert np.abs(a - b).max() < 1e-5
    meta = json.loads((resumed.model_dir / "tunelab.json").read_text())
    assert meta["method"]["name"] == method and 0 < meta["parameters"]["trainable_percent"] <= 100


def test_ctrl_c_and_resume_with_lazy_embedding_rows_is_bit_exact(tiny_config, monkeypatch):
    """The Ctrl-C checkpoint keeps each word-embedding row's catch-up pending (its state is in the optimizer's):
    catching all rows up there, as a straight run does not, split their closed-form catch-up in two and
    changed the float rounding (~3e-4 after 5 more steps at lr 1e-2)."""
    from safetensors.torch import load_file

    straight, resumed, _ = straight_and_resumed(tiny_config, monkeypatch, "lazy", 8, max_steps=12, eval_every=12,
                                                precision="fp32", learning_rate=1e-2, lazy_embeddings=True)
    a, b = (load_file(str(r.model_dir / "model.safetensors")) for r in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_merge_writes_a_plain_folder_with_equal_predictions(tiny_config, capsys):
    from transformers import AutoModelForSequenceClassification

    from tunelab.cli import app
    from tunelab.models.predictor import Predictor
    from tunelab.training import train

    result = train(tiny_config(name="lora-run", max_steps=10, learning_rate=1e-2, method={"name": "lora"}), quiet=True)
    from typer.testing import CliRunner

    out = CliRunner().invoke(app, ["export", str(result.run_dir), "--merge"])
    assert out.exit_code == 0, out.output
    merged_dir = result.run_dir / "export" / "merged"
    parity = json.loads((merged_dir / "parity.json").read_text())
    assert parity["examples"] == 60 and parity["max_abs_logit_diff"] <= 1e-4
    AutoModelForSequenceClassification.from_pretrained(merged_dir)  # plain transformers, no peft needed
    texts = ["a great and lovely film", "awful terrible plot"]
    assert np.abs(Predictor(merged_dir).probabilities(texts) - Predictor(result.run_dir).probabilities(texts)).max() < 1e-5


def test_export_merge_refuses_methods_that_cannot_merge(tiny_config):
    from tunelab.errors import TunelabError
    from tunelab.export import merge_run
    from tunelab.training import train

    result = train(tiny_config(name="adapter-run", max_steps=2, method={"name": "adapter"}), quiet=True)
    with pytest.raises(TunelabError, match="cannot be folded"):
        merge_run(result.run_dir)
    assert not (result.run_dir / "export" / "merged").exists()


def test_adapter_scale_multiplies_what_each_adapter_adds_and_survives_save_load(tiny_model_dir, tokenizer, tmp_path):
    task = ClassificationTask(**TASKS["single"])
    batch, _ = _batch(task)
    logits = {}
    for scale in (1.0, 3.0):
        raw = {"name": "t", "data": {"train": "x.csv"}, "method": {"name": "adapter", "adapter": {"scale": scale}}}
        method_config = load_config(raw).method
        torch.manual_seed(0)
        model = apply_method(task.build_model(str(tiny_model_dir)), method_config)
        adapters = [m for m in model.modules() if type(m).__name__ == "Bottleneck"]
        assert adapters and all(a.scale == scale for a in adapters)
        hidden = torch.randn(2, 3, adapters[0].up.out_features)
        with torch.no_grad():
            for a in adapters:
                a.up.weight.normal_(std=0.05)  # as if trained (the up-projection starts at zero)
            added = adapters[0](hidden) - hidden
            if scale == 1.0:
                base_added = added
            else:
                assert torch.allclose(added, scale * base_added, atol=1e-6)
        model.eval()
        with torch.no_grad():
            logits[scale] = model(**batch).logits
        save_model_folder(model, tokenizer, tmp_path / str(scale), _meta(task, method_config, tiny_model_dir))
        loaded = load_model(tmp_path / str(scale))
        with torch.no_grad():
            assert torch.allclose(loaded(**batch).logits, logits[scale], atol=1e-6)
    assert not torch.allclose(logits[1.0], logits[3.0])


@pytest.mark.parametrize("placement,per_layer", [("parallel", 1), ("parallel_both", 2), ("houlsby", 2), ("pfeiffer", 1)])
def test_each_adapter_placement_starts_as_pretrained_learns_and_reloads(tiny_model_dir, tokenizer, tmp_path, placement, per_layer):
    task = ClassificationTask(**TASKS["single"])
    batch, _ = _batch(task)
    torch.manual_seed(0)
    base = task.build_model(str(tiny_model_dir)).eval()
    with torch.no_grad():
        before = base(**batch).logits
    raw = {"name": "t", "data": {"train": "x.csv"}, "method": {"name": "adapter", "adapter": {"placement": placement}}}
    method_config = load_config(raw).method
    model = apply_method(base, method_config).eval()
    adapters = [m for m in model.modules() if type(m).__name__ == "Bottleneck"]
    assert len(adapters) == per_layer * model.config.num_hidden_layers
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, before, atol=1e-6)  # up-projections start at zero
        for a in adapters:  # as if trained
            a.up.weight.normal_(std=0.5)
            a.up.bias.normal_(std=0.5)
        after = model(**batch).logits
    assert not torch.allclose(after, before, atol=1e-5)
    save_model_folder(model, tokenizer, tmp_path / "m", _meta(task, method_config, tiny_model_dir))
    loaded = load_model(tmp_path / "m")
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, after, atol=1e-6)


@pytest.mark.parametrize("family", ["gpt2", "llama", "distilbert"])
def test_parallel_adapters_beside_attention_and_ffn_work_on_each_architecture_family(family):
    import transformers

    from tunelab.methods import adapter

    configs = {"gpt2": transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, pad_token_id=0),
               "llama": transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                                 num_attention_heads=2, num_key_value_heads=2, pad_token_id=0),
               "distilbert": transformers.DistilBertConfig(vocab_size=50, dim=16, hidden_dim=32, n_layers=2, n_heads=2)}
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(configs[family]).eval()
    ids = torch.randint(1, 50, (2, 5))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    model = adapter.apply(model, adapter.Settings(placement="parallel_both"), ["score" if family != "distilbert" else "classifier"]).eval()
    adapters = [m for m in model.modules() if type(m).__name__ == "Bottleneck"]
    assert len(adapters) == 4  # beside attention and feed-forward, in each of the 2 layers
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-6)
        outputs = []
        for a in adapters:  # each one, alone, changes the output: each sits where the forward pass goes
            a.up.bias.normal_(std=0.5)  # not a constant: a LayerNorm after it would remove that
            outputs.append(model(input_ids=ids).logits)
            a.up.bias.zero_()
    assert all(not torch.allclose(out, before, atol=1e-5) for out in outputs)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_lora_factors_compute_in_fp32_under_cpu_autocast_and_keep_their_input_as_it_came(tiny_model_dir, input_dtype):
    from tunelab.methods.parts import Fp32OnCpuLinear

    _, model = _build(tiny_model_dir, "lora", "single")
    factors = [m for n, m in model.named_modules() if n.endswith(("lora_A.default", "lora_B.default"))]
    assert factors and all(type(m) is Fp32OnCpuLinear for m in factors)
    lora_layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert lora_layers and not any(m.cast_input_dtype_enabled for m in lora_layers)  # peft's fp32 copy is off
    raw = {"name": "t", "data": {"train": "x.csv"}, "method": {"name": "lora", "lora": {"fp32_on_cpu": False}}}
    plain = apply_method(ClassificationTask(**TASKS["single"]).build_model(str(tiny_model_dir)), load_config(raw).method)
    assert all(type(m) is torch.nn.Linear for n, m in plain.named_modules() if n.endswith("lora_A.default"))

    torch.manual_seed(0)
    reference, factor = torch.nn.Linear(32, 8), torch.nn.Linear(32, 8)
    factor.load_state_dict(reference.state_dict())
    factor.__class__ = Fp32OnCpuLinear
    x = torch.randn(4, 6, 32).to(input_dtype)
    x_ref, x_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref = reference(x_ref.float())  # the fp32 computation, outside autocast
    out_ref.pow(2).sum().backward()
    saved = []
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t) or t, lambda t: t):
        out = factor(x_in)
    assert out.dtype == torch.float32  # autocast would have made it bf16
    out.pow(2).sum().backward()
    assert torch.equal(out, out_ref) and torch.equal(factor.weight.grad, reference.weight.grad)
    assert torch.equal(factor.bias.grad, reference.bias.grad)
    assert x_in.grad.dtype == input_dtype and torch.equal(x_in.grad, x_ref.grad)
    assert any(t is x_in for t in saved) and not any(t.dtype == torch.float32 and t.shape == x.shape and t is not x_in
                                                      for t in saved)  # no fp32 copy of a bf16 input kept
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # evaluation: same result
        assert torch.equal(factor(x), out_ref)
    with torch.no_grad():  # no autocast: the input is cast to the factor's dtype, as peft's own cast would
        assert torch.equal(factor(x), out_ref)
