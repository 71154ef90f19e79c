"""What a user sees in MLflow's UI after a sweep with no experiment named: the `lora-study`
experiment of kind model training, named runs, and a registered version whose description links
its run, read through a real `mlflow server` by its REST API and by a headless Chromium."""

import json
import re
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import chromium, free_port, server_process
from PIL import Image

from lora_study import cli, registry

SPACE = """
sampler: random
space:
  rank: [4, 8]
  alpha: {per_rank: 2}
  target_modules: [qv, all-linear]
  learning_rate: [0.02, 0.000001]
  batch_size: 4
"""
STUDY, MODEL = "ui", "tiny-ui"
# virtual time: the React app's requests settle well within it; the real time is a few seconds
RENDER_MS = 20000


@pytest.fixture
def own_store(tmp_path, monkeypatch, tracking_uri):
    """A tracking store of this test's own, with no experiment chosen: runs go where a user's would."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.chdir(tmp_path)  # an experiment MLflow creates keeps its artifacts in ./mlruns
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(tracking_uri)


def api(url: str, endpoint: str, body: dict | None = None, **query) -> dict:
    """GET (or POST `body` to) `/api/2.0/mlflow/ENDPOINT` of the server at `url`: its JSON answer."""
    address = f"{url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(address, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def tags(entity: dict) -> dict:
    return {tag["key"]: tag["value"] for tag in entity.get("tags", [])}


def browse(page: str, screenshot: Path | None, profile) -> str:
    """Open `page` as a first-time visitor's browser would (a new profile): save a screenshot and
    return the DOM the React app rendered."""
    return chromium(page, screenshot, width=1400, height=1000, render_ms=RENDER_MS, profile=profile)


def genai_menu(dom: str) -> bool:
    """Whether the page's side menu is MLflow 3.17's GenAI one (judges, sessions, prompts), not
    model training's (runs, models, model registry)."""
    menu = re.sub(r"<[^>]+>", "\n", dom.split("</nav>")[0] if "</nav>" in dom else dom)
    return any(item in menu.split("\n") for item in ("Judges", "Sessions", "Prompts", "AI Gateway"))


def assert_rendered(screenshot):
    """The screenshot is of a drawn page (text, icons, tables), not a blank or half-loaded one."""
    rgb = np.asarray(Image.open(screenshot).convert("RGB"))
    assert rgb.shape == (1000, 1400, 3)
    gray = rgb.mean(axis=2)
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 1000 and (gray < 200).mean() > 0.005 and gray.std() > 10


@pytest.mark.slow  # a whole sweep, an MLflow server and a browser
def test_a_sweep_opens_in_mlflow_ui_as_model_training_with_named_runs_and_described_versions(
    own_store, tmp_path, capsys
):
    (tmp_path / "space.yaml").write_text(SPACE)
    argv = ["sweep", "--base-model", "tiny", "--max-samples", "15", "--seq-len", "32"]
    argv += ["--config", str(tmp_path / "space.yaml"), "--n-trials", "3", "--max-steps", "4", "--eval-every", "2"]
    argv += ["--confirm-top", "1", "--confirm-seeds", "2", "--confirm-neighbours", "", "--explore-replicates", "0"]
    argv += ["--storage", f"sqlite:///{tmp_path}/optuna.db"]
    assert cli.main([*argv, "--study-name", STUDY, "--registered-model", MODEL]) == 0
    # the address the sweep says to open, on whichever port the UI is served
    (printed,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  then open ")]
    experiment_page = printed.removeprefix("  then open http://127.0.0.1:5000/")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", own_store]
    server += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with server_process(server, f"{url}/health", 120):
        assert urllib.request.urlopen(f"{url}/health", timeout=5).read() == b"OK"

        # --- what the REST API holds ---------------------------------------------------------
        experiment = api(url, "experiments/get-by-name", experiment_name="lora-study")["experiment"]
        assert tags(experiment)["mlflow.experimentKind"] == "custom_model_development"
        experiment_id = experiment["experiment_id"]
        (version,) = api(url, "model-versions/search", filter=f"name = '{MODEL}'")["model_versions"]
        found = api(url, "runs/search", {"experiment_ids": [experiment_id], "max_results": 100})["runs"]
        (parent,) = [run for run in found if run["info"]["run_name"] == f"sweep {STUDY}"]
        config = tags(version)["config_trial"]  # the explore trial the confirmations repeated
        named = sorted(run["info"]["run_name"] for run in found if run is not parent)
        assert [name.split(" ")[0] for name in named] == [
            f"confirm-trial-{config}-seed-0",
            f"confirm-trial-{config}-seed-1",
            "trial-0",
            "trial-1",
            "trial-2",
        ]
        assert all(re.fullmatch(r"\S+ r[48] (qv|all-linear) lr\d\.\de-\d+", name) for name in named), named
        number = version["version"]
        description = version["description"]
        assert "Test perplexity " in description
        run_page = f"#/experiments/{experiment_id}/runs/{version['run_id']}?workflowType=machine_learning"
        assert f"({run_page})" in description
        version_page = f"#/models/{MODEL}/versions/{number}?workflowType=machine_learning"
        assert f"({version_page})" in tags(parent["data"])["mlflow.note.content"]

        # --- what a browser shows --------------------------------------------------------------
        dom = browse(f"{url}/{version_page}", tmp_path / "version.png", tmp_path / "profile-1")
        assert_rendered(tmp_path / "version.png")
        assert f"<title>{MODEL} v{number} - MLflow</title>" in dom
        assert "Test perplexity " in dom and "Description" in dom
        assert not genai_menu(dom)

        # the run the version's description links to, followed in a browser that never chose a view
        dom = browse(f"{url}/{run_page}", None, tmp_path / "profile-3")
        assert f"<title>Run {version['run_id']} - MLflow</title>" in dom and "Model metrics" in dom
        assert not genai_menu(dom), "the run page opened on MLflow's GenAI view"

        assert experiment_page == f"#/experiments/{experiment_id}?workflowType=machine_learning"
        dom = browse(f"{url}/{experiment_page}", tmp_path / "experiment.png", tmp_path / "profile-2")
        assert_rendered(tmp_path / "experiment.png")
        assert "lora-study" in dom
        # MLflow 3.17's GenAI view opens an experiment on its "Overview" of traces (latency,
        # token usage); its model-training view opens on "Runs", the runs table. Which one is the
        # browser's `mlflow.workflowType` (localStorage, default GenAI) or the `?workflowType=` of
        # the URL; read from its bundle, 3.17.2 does not consult the experiment's kind tag for it,
        # so the address the sweep prints names the view.
        genai_overview = "Token Usage" in dom
        assert not genai_overview, "the experiment opened on MLflow's GenAI overview, not on model training"
        assert f"<title>Runs - Experiment {experiment_id} - MLflow</title>" in dom
        assert f"sweep {STUDY}" in dom

        # --- the Models tab: every trained adapter by its name, with a perplexity column -----------
        logged = api(url, "logged-models/search", {"experiment_ids": [experiment_id]})["models"]
        names = sorted(model["info"]["name"] for model in logged)
        complete = [run for run in found if tags(run["data"]).get("trial_state") == "COMPLETE"]
        assert len(names) == len(complete)  # one per trial that trained to its end (not pruned)
        assert len(set(names)) == len(names)  # a configuration's explore trial and confirmations apart
        named = r"r[48]-(qv|all-linear)-lr\d+e-\d+-seed\d-\d+(of\d+)?steps"  # `2of4steps`: its best step kept
        assert all(re.fullmatch(named, name) for name in names), names
        models_page = f"#/experiments/{experiment_id}/models?workflowType=machine_learning"
        # a wide window: the table draws the columns in view only, and MLflow's assistant takes a third
        dom = chromium(f"{url}/{models_page}", tmp_path / "models.png", 2600, 1000, RENDER_MS, tmp_path / "profile-5")
        assert all(name in dom for name in names), names
        # the perplexities, side by side under the prepared dataset the adapters trained on
        shown = re.sub(r"<[^>]+>", "\n", dom)
        group = shown.index("Dataset:")
        assert group < shown.index("eval_perplexity") and group < shown.index("test_perplexity")

        # --- the registered model's page after 20 alias moves: its versions, not the history -------
        (trial,) = [run for run in found if run["info"]["run_name"].startswith("trial-0 ")]
        other = registry.register(f"runs:/{trial['info']['run_id']}/adapter", MODEL, {}).version
        for move in range(20):
            registry.set_alias(MODEL, "moved", (number, other)[move % 2], f"move {move}")
        model_page = f"#/models/{MODEL}?workflowType=machine_learning"
        dom = browse(f"{url}/{model_page}", tmp_path / "model.png", tmp_path / "profile-4")
        assert_rendered(tmp_path / "model.png")
        assert f"<title>Model: {MODEL} - MLflow</title>" in dom
        shown = re.sub(r"<(style|script|title)[^>]*>.*?</\1>", "", dom, flags=re.S)
        text = [line.strip() for line in re.sub(r"<[^>]+>", "\n", shown).split("\n") if line.strip()]
        above_versions = text[: text.index("Versions")]
        assert any(line.startswith("LoRA adapters over") for line in above_versions)  # its description
        assert not [line for line in above_versions if "alias_move" in line]  # the history is on versions
        assert {f"Version {number}", f"Version {other}"} <= set(text[text.index("Versions") :])
        assert [m.why for m in registry.alias_history(MODEL) if m.alias == "moved"] == [f"move {k}" for k in range(20)]
