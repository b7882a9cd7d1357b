"""The documentation site builds offline from the checkout, warnings as errors (mkdocs.yml: strict)."""

import subprocess
import sys

import pytest

from conftest import REPO

pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")


def test_the_docs_build_with_every_generated_page(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--quiet", "--site-dir", str(site)], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    config = (site / "reference" / "config" / "index.html").read_text()
    assert "tag_scheme" in config and "calibrate" in config  # generated from the config classes
    api = (site / "reference" / "server-api" / "index.html").read_text()
    assert "/v1/predict" in api and "entities" in api  # from the server's OpenAPI schema
    assert "tunelab export" in (site / "reference" / "cli" / "index.html").read_text()
    assert "A five-minute tour" not in (site / "tour" / "index.html").read_text()  # the README's tour, as a page
    assert "tell the server the truth" in (site / "tour" / "index.html").read_text()
    assert "load_config" in (site / "reference" / "python-api" / "index.html").read_text()
