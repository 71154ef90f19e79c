"""`mlflow models serve` on a logged adapter: real HTTP answers, 4xx for bad requests, still serving."""

import json
import os
import sys
import urllib.error
import urllib.request

import mlflow
import pytest

from conftest import free_port, server_process
from test_serving import trained_adapter


@pytest.fixture(scope="module")
def server(tracking_uri, tmp_path_factory):
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment(
        "serving-http", str(tmp_path_factory.mktemp("serving") / "artifacts")))  # fmt: skip
    _, _, run_id, _ = trained_adapter()
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "LORA_STUDY_MAX_NEW_TOKENS": "100"}
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{run_id}/adapter", "--env-manager",
            "local", "--host", "127.0.0.1", "-p", str(port)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with server_process(argv, f"{url}/ping", 180, env):
        yield url


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_prompts_get_generated_answers_in_either_payload(server):
    status, body = post(server, {"inputs": {"prompt": ["The list type", "A dict maps"]}, "params": {"max_new_tokens": 4}})
    assert status == 200 and len(body["predictions"]) == 2 and all(isinstance(a, str) for a in body["predictions"])
    status, body = post(server, {"dataframe_records": [{"prompt": "The list type"}], "params": {"max_new_tokens": 4}})
    assert status == 200 and len(body["predictions"]) == 1
    sampled = post(server, {"inputs": {"prompt": ["x"]}, "params": {"max_new_tokens": 4, "temperature": 0.7,
                                                                     "top_p": 0.9}})  # fmt: skip
    assert sampled[0] == 200


@pytest.mark.parametrize(
    "payload, expected",
    [
        ({"inputs": {"prompt": ["x"]}, "params": {"max_new_tokens": 200}}, "max_new_tokens must be 1 to 100 (got 200)"),
        ({"inputs": {"prompt": ["x"]}, "params": {"max_new_tokens": 0}}, "max_new_tokens must be 1 to 100 (got 0)"),
        ({"inputs": {"prompt": ["x"]}, "params": {"top_p": 1.5}}, "top_p must be in (0, 1] (got 1.5)"),
        ({"inputs": {"prompt": ["x"]}, "params": {"temperature": -1.0}}, "temperature must be 0 (greedy) to 10"),
        ({"inputs": {"prompt": [""]}}, "every `prompt` must be a non-empty string"),
        ({"dataframe_records": [{"text": "x"}]}, "prompt"),
        ({"inputs": {"prompt": ["word " * 3000]}, "params": {"max_new_tokens": 8}}, "over the model's 2048 positions"),
    ],
)
def test_bad_requests_get_a_4xx_with_the_reason_and_the_server_keeps_serving(server, payload, expected):
    status, body = post(server, payload)
    assert 400 <= status < 500 and expected in body["message"]
    assert post(server, {"inputs": {"prompt": ["still there?"]}, "params": {"max_new_tokens": 2}})[0] == 200
