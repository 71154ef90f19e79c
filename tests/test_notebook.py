"""`notebooks/compare_runs.ipynb` runs top to bottom against a tiny sweep's runs."""

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient

from lora_study import cli


@pytest.mark.slow  # a Jupyter kernel in a process of its own
def test_the_notebook_draws_the_study_from_mlflow(tmp_path, tracking_uri, mlflow_experiment, monkeypatch):
    argv = ["sweep", *"--base-model tiny --max-samples 15 --seq-len 32 --n-trials 3 --max-steps 2".split()]
    argv += ["--eval-every", "2", "--confirm-top", "0"]  # the notebook reads the explore trials
    argv += ["--study-name", "notebook", "--storage", f"sqlite:///{tmp_path}/optuna.db"]
    assert cli.main(argv) == 0
    notebook = nbformat.read(REPO / "notebooks/compare_runs.ipynb", as_version=4)
    monkeypatch.setenv("LORA_STUDY_STUDY", "notebook")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "study notebook: 3 trials" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # by rank, against memory, history, importances
