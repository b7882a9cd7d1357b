"""examples/quickstart.ipynb runs from top to bottom (nbclient), so the notebook tour cannot rot."""

import pytest

from conftest import REPO

pytestmark = pytest.mark.integration


def test_the_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is in the dev extra")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is in the dev extra")
    notebook = nbformat.read(REPO / "examples" / "quickstart.ipynb", as_version=4)
    # a few steps instead of a hundred: the test checks that the cells run, not what the training reaches
    first = notebook.cells[next(i for i, c in enumerate(notebook.cells) if c.cell_type == "code")]
    assert '"train.max_steps=100", "train.eval_every=25"' in first.source
    first.source = first.source.replace('"train.max_steps=100", "train.eval_every=25"', '"train.max_steps=2", "train.eval_every=2"')
    # the repository's examples and data, but its runs in a scratch folder
    for name in ("examples", "data"):
        (tmp_path / name).symlink_to(REPO / name)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "accuracy" in text and "'label':" in text  # the metrics and a prediction were shown
    assert (tmp_path / "runs" / "notebook-demo" / "model" / "tunelab.json").is_file()
