import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunelab.config import Config, apply_override, dump_config, load_config
from tunelab.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_there_are_shipped_examples():
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.data.train is not None
    # the resolved dump loads again to the same config
    assert load_config(yaml.safe_load(dump_config(config))) == config


def test_override_sets_a_dotted_key_with_yaml_typing():
    config = load_config(REPO / "examples" / "demo.yaml", ["data.seed=7", "model.max_length=64", "data.lowercase=true"])
    assert (config.data.seed, config.model.max_length, config.data.lowercase) == (7, 64, True)


def test_override_unknown_key_names_the_path_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "examples" / "demo.yaml", ["data.sede=7"])
    msg = str(err.value)
    assert "data.sede: unknown key" in msg and "seed" in msg and "text_column" in msg


def test_wrong_type_names_key_value_and_expectation():
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "examples" / "demo.yaml", ["model.max_length=long"])
    msg = str(err.value)
    assert "model.max_length" in msg and "'long'" in msg and "integer" in msg


def test_bad_choice_lists_the_allowed_values():
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "examples" / "demo.yaml", ["data.on_bad_rows=skip"])
    assert "data.on_bad_rows" in str(err.value) and "'error' or 'drop'" in str(err.value)


def test_bad_value_out_of_range_and_missing_required(tmp_path):
    with pytest.raises(ConfigError, match=r"data.validation_fraction: .*less than 1"):
        load_config({"name": "x", "data": {"train": "a.csv", "validation_fraction": 1.5}})
    with pytest.raises(ConfigError, match=r"data.train: required key is missing"):
        load_config({"name": "x", "data": {}})
    with pytest.raises(ConfigError, match=r"name: must be a folder name"):
        load_config({"name": "../escape", "data": {"train": "a.csv"}})


def test_yaml_syntax_error_gives_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata:\n  train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(bad)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/config.yaml")


def test_env_expansion(monkeypatch):
    monkeypatch.setenv("TL_DIR", "/srv/data")
    config = load_config({"name": "x", "data": {"train": "${TL_DIR}/t.csv", "test": "${TL_UNSET:-fallback}/t.csv"}})
    assert str(config.data.train) == "/srv/data/t.csv" and str(config.data.test) == "fallback/t.csv"
    with pytest.raises(ConfigError, match="TL_UNSET is not set"):
        load_config({"name": "x", "data": {"train": "${TL_UNSET}/t.csv"}})


def test_override_must_be_key_value():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_override({}, "data.seed")


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "tunelab", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "120"})


def test_cli_config_show_prints_the_resolved_config():
    res = _cli("config", "show", "examples/demo.yaml", "data.seed=11")
    assert res.returncode == 0, res.stderr
    shown = yaml.safe_load(res.stdout)
    assert shown["data"]["seed"] == 11 and shown["data"]["on_bad_rows"] == "error" and shown["model"]["max_length"] == 64 and shown["train"]["batch_size"] == 32


def test_cli_config_schema_is_json_schema_with_descriptions():
    import json

    res = _cli("config", "schema")
    schema = json.loads(res.stdout)
    data = schema["$defs"]["DataConfig"]["properties"]
    assert data["on_bad_rows"]["enum"] == ["error", "drop"]
    assert all("description" in f for f in data.values())


def test_cli_config_error_is_one_message_without_traceback():
    res = _cli("config", "show", "examples/demo.yaml", "data.nope=1")
    assert res.returncode == 2
    assert "error: invalid config" in res.stderr and "data.nope: unknown key" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_help_imports_no_heavy_module():
    code = ("import sys; from typer.testing import CliRunner; from tunelab.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "heavy = [m for m in ('torch', 'transformers', 'pandas', 'pyarrow', 'sklearn') if m in sys.modules]; "
            "print(heavy)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_public_api_names_are_the_stage_functions():
    import tunelab
    import tunelab.evaluation.run  # noqa: F401  (importing the stage packages must not shadow the functions)
    import tunelab.training.loop  # noqa: F401

    assert tunelab.train.__module__ == "tunelab.training.loop"
    assert tunelab.evaluate.__module__ == "tunelab.evaluation.run"
    assert tunelab.prepare.__module__ == "tunelab.data.pipeline"
    with pytest.raises(AttributeError):
        tunelab.no_such_thing
