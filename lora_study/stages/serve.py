"""`serve`: one model, or many adapters on one base, over HTTP with `mlflow models serve`.

    lora-study serve models:/lora-study-smollm2-135m@champion --port 5001
    lora-study serve --adapters docs@champion,docs@challenger,sql@3

The procedure: check the port and what to serve (a URI that names nothing, or a port in use, is
one line and exit 2) -> for `--adapters`, save every adapter as one MLflow model over their one
base -> start a detached helper that prints the URL and a curl command once `/ping` answers ->
become the MLflow server (exec), so Ctrl-C or `kill` stops it as it would `mlflow models serve`.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from lora_study import adapters, logged_models, serving
from lora_study.config import ServeConfig
from lora_study.errors import UserInputError


def run_serve(cfg: ServeConfig) -> None:
    """The `serve` command: never returns; the process becomes the server."""
    _check_port(cfg.host, cfg.port)
    if cfg.adapters:
        entries = serving.adapter_entries(cfg.adapters)
        model_uri, names = str(adapters.save_multi_adapter_model(entries)), [name for name, _ in entries]
    else:
        model_uri, names = _model_to_serve(cfg.model_uri), []
    url = f"http://{cfg.host}:{cfg.port}"
    ready = [
        sys.executable,
        "-m",
        "lora_study.ready",
        url,
        str(os.getpid()),
        usage(url, cfg.model_uri or cfg.adapters, names),
    ]
    subprocess.run(ready, check=True)
    argv = serving.server_argv(model_uri, cfg.host, cfg.port)
    # mlflow starts `uvicorn` by name: find it beside this Python even when its venv is not activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {
        **os.environ,
        "PATH": path,
        serving.MAX_NEW_TOKENS_ENV: str(cfg.max_new_tokens_limit),
        serving.MAX_BATCH_SIZE_ENV: str(cfg.max_batch_size),
        serving.BATCH_WAIT_MS_ENV: str(cfg.batch_wait_ms),
    }
    sys.stdout.flush()
    # Become the server, rather than wait beside it: this process has torch and transformers
    # imported, hundreds of MB that a waiting parent would hold for the server's whole life.
    os.execve(sys.executable, argv, env)


def _check_port(host: str, port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closed server's port is free
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserInputError(
                f"--port {port}: cannot listen on {host}:{port} ({error.strerror}); pass another --port"
            ) from None


def _model_to_serve(model_uri: str) -> str:
    """The URI MLflow serves `model_uri` by (`runs:/<id>/adapter` names a model by its kind, which
    only lora-study reads: `models:/<model id>`); one clear line for a URI that names nothing,
    before a server starts on it."""
    try:
        served = logged_models.uri(model_uri)
        mlflow.models.get_model_info(served)
    except (MlflowException, OSError) as error:
        raise UserInputError(f"{model_uri}: {getattr(error, 'message', error)}") from None
    return served


def usage(url: str, what: str, names: list[str]) -> str:
    """What to tell the user once the server answers: where it is and a request that works."""
    params = {"max_new_tokens": 64}
    lines = [f"Serving {what} at {url}/invocations (Ctrl-C stops it)"]
    if names:
        lines.append(
            f"Adapters: {', '.join(names)}; a request picks one with `{serving.ADAPTER_FIELD}` (default {names[0]})"
        )
        params[serving.ADAPTER_FIELD] = names[-1]
    payload = json.dumps({"inputs": {serving.PROMPT_FIELD: ["What does str.split do?"]}, "params": params})
    lines.append(f"  curl -s {url}/invocations -H 'Content-Type: application/json' -d '{payload}'")
    return "\n".join(lines)
