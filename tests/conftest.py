import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("TUNELAB_DATA", REPO.parent / "shared" / "data"))

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on the two cores: one thread each (and for
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the commands they start), not two workers x two threads
        os.environ.setdefault(name, "1")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """With `-n 2 --dist loadgroup` (make test), a test file's tests stay on one worker, which builds the file's
    shared fixtures once; the documents test_readme.py runs are independent of each other and spread out, and go
    first: the longest jobs started first leave the shortest for the end, when one worker may wait for the other."""
    def document(item) -> bool:
        return item.path.name == "test_readme.py" and "[" in item.nodeid

    items.sort(key=lambda item: not document(item))  # stable: every file keeps its order
    for item in items:
        item.add_marker(pytest.mark.xdist_group(item.nodeid if document(item) else item.nodeid.split("::")[0]))


@pytest.fixture(scope="session")
def tokenizer():
    """The bundled MiniLM tokenizer (a local folder inside the installed package)."""
    from tunelab.hub import load_tokenizer

    return load_tokenizer("default")


@pytest.fixture
def write(tmp_path):
    """write(name, text or bytes) -> path of a new file under tmp_path."""
    def _write(name: str, content) -> Path:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path
    return _write


@pytest.fixture
def make_config(tmp_path):
    """make_config(train=..., **data_fields) -> a validated Config whose run dir is under tmp_path."""
    from tunelab.config import load_config

    def _make(name="t", model=None, **data):
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}
        return load_config({"name": name, "runs_dir": str(tmp_path / "runs"), "data": data,
                            "model": model or {"name": "default"}})
    return _make


def shared_data(*parts) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared dataset {path} is absent (set TUNELAB_DATA to the folder holding it)")
    return path


POSITIVE = "good great excellent lovely superb wonderful".split()
NEGATIVE = "bad awful terrible poor horrible dreadful".split()
FILLER = "the a movie film plot actor scene story was is really quite very and but".split()


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Easy synthetic sentiment: filler words plus one polar word that decides the label."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 12))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        rows.append((" ".join(words) + f" {i}", label))
    return rows


def write_csv(path: Path, rows) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer, 32-wide BERT built from a config in-process, with the bundled tokenizer: fast to train."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tunelab.hub import default_model_dir

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def sentiment_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sentiment")
    rows = sentiment_rows(360)
    return {"train": write_csv(folder / "train.csv", rows[:240]), "validation": write_csv(folder / "dev.csv", rows[240:300]),
            "test": write_csv(folder / "test.csv", rows[300:])}


@pytest.fixture
def tiny_config(tmp_path, tiny_model_dir, sentiment_files):
    """tiny_config(**train_overrides, name=..., data=..., model=...) -> Config training the tiny BERT."""
    from tunelab.config import load_config

    def _make(name="tiny", data=None, model=None, task=None, method=None, **train):
        raw = {"name": name, "runs_dir": str(tmp_path / "runs"),
               "data": {**{k: str(v) for k, v in sentiment_files.items()}, **(data or {})},
               "model": {"name": str(tiny_model_dir), "max_length": 32, **(model or {})},
               "train": {"learning_rate": 3e-3, "batch_size": 16, "epochs": 6, "min_steps": 0, "min_steps_per_label": 0, "log_every": 5,
                         "trackers": ["tensorboard"], **train}}
        if task:
            raw["task"] = task
        if method:
            raw["method"] = method
        return load_config(raw)
    return _make


@pytest.fixture(scope="session")
def served_run(tmp_path_factory, tiny_model_dir, sentiment_files):
    """A tiny sentiment model trained once for the serving and monitoring tests (its run folder)."""
    from tunelab.config import load_config
    from tunelab.training import train

    raw = {"name": "served", "runs_dir": str(tmp_path_factory.mktemp("runs")),
           "data": {k: str(v) for k, v in sentiment_files.items()}, "model": {"name": str(tiny_model_dir), "max_length": 32},
           "train": {"learning_rate": 3e-3, "batch_size": 16, "max_steps": 40, "eval_every": 20, "trackers": [],
                     "precision": "fp32"}}
    return train(load_config(raw), quiet=True).run_dir


# ---------------------------------------------------------------- a tiny causal LM (test_causal_lm, test_support)

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A 2-layer, 32-wide Llama built from a config in-process, with the bundled WordPiece tokenizer, ChatML's two
    special tokens and a ChatML template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunelab.hub import default_model_dir

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    tokenizer.eos_token = "<|im_end|>"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def conversations(n: int, seed: int = 0) -> list[dict]:
    """'what colour is the X thing' -> 'the X thing is COLOUR.' with a fixed colour per thing: learnable."""
    import numpy as np

    rng = np.random.default_rng(seed)
    things = ["sky", "grass", "sun", "snow", "coal", "sea", "leaf", "lemon"]
    colour = dict(zip(things, ["blue", "green", "yellow", "white", "black", "blue", "green", "yellow"]))
    out = []
    for _ in range(n):
        thing = things[rng.integers(len(things))]
        out.append({"messages": [{"role": "user", "content": f"what colour is the {thing} number {rng.integers(1000)}"},
                                 {"role": "assistant", "content": f"the {thing} is {colour[thing]}."}]})
    return out


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
