import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("TUNELAB_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def tokenizer():
    """The bundled MiniLM tokenizer (a local folder inside the installed package)."""
    from tunelab.models.source import load_tokenizer

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
