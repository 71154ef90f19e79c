"""Shared fixtures: a private lora-study cache, a real MLflow store, and the tiny base model."""

import os
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest

from lora_study import models

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def cache_root(tmp_path_factory):
    """A cache of this session's own, as on a fresh machine (built models, prepared data)."""
    root = tmp_path_factory.mktemp("lora-study-cache")
    os.environ["LORA_STUDY_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture(autouse=True)
def mlflow_experiment(tracking_uri, tmp_path, monkeypatch, request):
    """Each test logs into an experiment of its own, with artifacts under its tmp_path."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    name = f"{request.node.module.__name__}.{request.node.name}"[:200]
    experiment_id = mlflow.create_experiment(name, artifact_location=str(tmp_path / "artifacts"))
    mlflow.set_experiment(experiment_id=experiment_id)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    yield experiment_id
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(scope="session")
def tiny():
    return models.resolve(models.TINY)


@pytest.fixture(scope="session")
def tokenizer(tiny):
    return models.load_tokenizer(tiny)


def runs(experiment_id: str):
    return mlflow.search_runs([experiment_id], output_format="list")


class Echo(mlflow.pyfunc.PythonModel):
    """An MLflow model that is not an adapter: it answers with its input."""

    def predict(self, context, model_input, params=None):
        return model_input


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_process(argv: list, ready_url: str, timeout_s: float, env: dict | None = None, stdout=subprocess.DEVNULL):
    """A server started from `argv`, once `ready_url` answers (or `timeout_s` passed); stopped after."""
    process = subprocess.Popen(argv, env=env, stdout=stdout, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            urllib.request.urlopen(ready_url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=60)
