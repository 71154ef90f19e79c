"""optuna-dashboard (the `dashboard` extra) opens a study's SQLite storage, as the README says."""

import json
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest
from conftest import free_port, server_process


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.status, answer.read()


@pytest.mark.slow
def test_optuna_dashboard_serves_a_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="lora-sweep", storage=storage, direction="minimize")
    study.optimize(
        lambda trial: trial.suggest_categorical("rank", [4, 8, 16]) * trial.suggest_float("learning_rate", 1e-5, 1e-2),
        n_trials=4,
    )

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(Path(sys.executable).parent / "optuna-dashboard"), storage, "--host", "127.0.0.1", "--port", str(port)]
    with server_process(argv, f"{url}/api/meta", timeout_s=15) as process:
        assert process.poll() is None, "optuna-dashboard exited"

        status, page = get(f"{url}/dashboard")
        assert status == 200
        assert b"<html" in page.lower()

        status, body = get(f"{url}/api/studies")
        assert status == 200
        studies = {s["study_name"]: s for s in json.loads(body)["study_summaries"]}
        assert set(studies) == {"lora-sweep"}
        assert studies["lora-sweep"]["directions"] == ["minimize"]

        status, body = get(f"{url}/api/studies/{studies['lora-sweep']['study_id']}")
        assert status == 200
        detail = json.loads(body)
        assert detail["name"] == "lora-sweep"
        assert len(detail["trials"]) == 4
        assert {p["name"] for p in detail["trials"][0]["params"]} == {"rank", "learning_rate"}
