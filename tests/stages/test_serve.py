"""Real servers on loopback: `mlflow models serve` on a logged adapter (answers, 4xx for bad
requests, still serving), and `lora-study serve` on one model or many adapters."""

import os
import socket
from concurrent.futures import ThreadPoolExecutor

import mlflow
import pytest
from conftest import (
    PROMPTS,
    answers,
    free_port,
    lora_study_serve,
    post,
    printed,
    run_printed_curl,
    server_process,
    two_registered_adapters,
)

from lora_study import cli, logged_models, serving


@pytest.fixture(scope="module")
def server(tracking_uri, tmp_path_factory, tiny_adapter):
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(
        experiment_id=mlflow.create_experiment("serving-http", str(tmp_path_factory.mktemp("serving") / "artifacts"))
    )
    _, _, run_id, _ = tiny_adapter
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "LORA_STUDY_MAX_NEW_TOKENS": "100"}
    argv = serving.server_argv(logged_models.of_run(run_id), "127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    with server_process(argv, f"{url}/ping", 180, env):
        yield url


@pytest.mark.slow
def test_prompts_get_generated_answers_in_every_payload(server, tiny_adapter):
    _, _, run_id, _ = tiny_adapter
    expected = (200, {"predictions": answers(f"runs:/{run_id}/adapter")})  # loaded in this process
    params = {"max_new_tokens": 8}
    assert post(server, {"inputs": {"prompt": PROMPTS}, "params": params}) == expected
    assert post(server, {"inputs": PROMPTS, "params": params}) == expected  # as to MLflow's LLM flavours
    records = [{"prompt": prompt} for prompt in PROMPTS]
    assert post(server, {"dataframe_records": records, "params": params}) == expected
    split = {"columns": ["prompt"], "data": [[prompt] for prompt in PROMPTS]}
    assert post(server, {"dataframe_split": split, "params": params}) == expected
    sampled = post(
        server, {"inputs": {"prompt": ["x"]}, "params": {"max_new_tokens": 4, "temperature": 0.7, "top_p": 0.9}}
    )
    assert sampled[0] == 200


FIFTY_MB = "a request body of 50 MB"


@pytest.mark.slow
@pytest.mark.parametrize(
    "payload, expected",
    [
        ({"inputs": {"prompt": ["x"]}, "params": {"max_new_tokens": 200}}, "max_new_tokens must be 1 to 100 (got 200)"),
        ({"inputs": {"prompt": ["x"]}, "params": {"max_new_tokens": 0}}, "max_new_tokens must be 1 to 100 (got 0)"),
        ({"inputs": {"prompt": ["x"]}, "params": {"top_p": 1.5}}, "top_p must be in (0, 1] (got 1.5)"),
        ({"inputs": {"prompt": ["x"]}, "params": {"temperature": -1.0}}, "temperature must be 0 (greedy) to 10"),
        ({"inputs": {"prompt": [""]}}, "every `prompt` must be a non-empty string"),
        ({"dataframe_records": [{"text": "x"}]}, "needs a `prompt` column or a list of prompts (got columns: text; "),
        ({"inputs": {"prompt": ["word " * 3000]}, "params": {"max_new_tokens": 8}}, "over the model's 2048 positions"),
        (b"[" * 5000 + b"]" * 5000, "the request's JSON is nested too deeply"),  # MLflow alone answers 500
        ({"inputs": {"prompt": ["x" * 10**6]}}, "prompt 1 has 1000000 characters: far over what the model's 2048"),
        ({"inputs": {"prompt": ["x"] * 65}}, "65 prompts in one request; at most 64"),
        (FIFTY_MB, "the request body has 50.0 MB; at most 8 MB"),  # refused before MLflow parses it
    ],
)
def test_bad_requests_get_a_4xx_with_the_reason_and_the_server_keeps_serving(server, payload, expected):
    if payload is FIFTY_MB:  # made here, not held by every test process from collection on
        payload = b'{"inputs": ["' + b"x" * 50 * 2**20 + b'"]}'
    status, body = post(server, payload)
    assert 400 <= status < 500 and expected in body["message"]
    assert post(server, {"inputs": {"prompt": ["still there?"]}, "params": {"max_new_tokens": 2}})[0] == 200


# --- `lora-study serve`: the shortcut, and many adapters on one base ---------------------------------


@pytest.fixture(scope="module")
def multi_server(tracking_uri, tmp_path_factory):
    """`lora-study serve --adapters` on versions 1 (@champion) and 2 of a registered model."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(
        experiment_id=mlflow.create_experiment(
            "serving-http-multi", str(tmp_path_factory.mktemp("multi") / "artifacts")
        )
    )
    first, second = two_registered_adapters("http-docs")
    alone = {"http-docs@champion": answers(f"runs:/{first}/adapter"), "http-docs@2": answers(f"runs:/{second}/adapter")}
    log = tmp_path_factory.mktemp("log") / "stdout.txt"
    with lora_study_serve(["--adapters", "http-docs@champion,http-docs@2"], tracking_uri, log) as url:
        yield url, alone, log


@pytest.mark.slow
def test_a_request_picks_its_adapter_by_the_adapter_field(multi_server):
    url, alone, _ = multi_server
    default = post(url, {"inputs": {"prompt": PROMPTS}, "params": {"max_new_tokens": 8}})
    assert default == (200, {"predictions": alone["http-docs@champion"]})
    second = post(url, {"inputs": {"prompt": PROMPTS}, "params": {"max_new_tokens": 8, "adapter": "http-docs@2"}})
    assert second == (200, {"predictions": alone["http-docs@2"]})
    records = [
        {"prompt": PROMPTS[0], "adapter": "http-docs@2"},
        {"prompt": PROMPTS[1], "adapter": "http-docs@champion"},
    ]
    status, body = post(url, {"dataframe_records": records, "params": {"max_new_tokens": 8}})
    assert status == 200 and body["predictions"] == [alone["http-docs@2"][0], alone["http-docs@champion"][1]]
    status, body = post(url, {"inputs": {"prompt": ["x"]}, "params": {"adapter": "sql@champion"}})
    assert (
        status == 400
        and "unknown adapter 'sql@champion' (this server has: http-docs@champion, http-docs@2)" in body["message"]
    )


@pytest.mark.slow
def test_requests_for_different_adapters_at_once_get_the_answers_each_gets_alone(multi_server):
    """Sent together, they are generated in shared batches (`lora_study.serving.batching`); greedy, in
    fp32, each answer is the one its adapter gives the prompt alone."""
    url, alone, _ = multi_server
    requests = [
        ({"inputs": {"prompt": [prompt]}, "params": {"max_new_tokens": 8, "adapter": name}}, alone[name][i])
        for name in ("http-docs@champion", "http-docs@2")
        for i, prompt in enumerate(PROMPTS)
    ]
    with ThreadPoolExecutor(len(requests)) as pool:
        got = list(pool.map(lambda request: post(url, request[0]), requests))
    assert got == [(200, {"predictions": [expected]}) for _, expected in requests]


@pytest.mark.slow
def test_serve_prints_the_url_the_adapters_and_a_curl_command_that_works(multi_server):
    url, alone, log = multi_server
    text = printed(log, url)
    assert (
        "Adapters: http-docs@champion, http-docs@2; a request picks one with `adapter` (default http-docs@champion)"
        in text
    )
    assert len(run_printed_curl(text)["predictions"]) == 1


@pytest.mark.slow
def test_serve_shortcut_serves_one_model_uri(tracking_uri, tmp_path, tiny_adapter):
    _, _, run_id, _ = tiny_adapter
    log = tmp_path / "stdout.txt"
    with lora_study_serve([f"runs:/{run_id}/adapter"], tracking_uri, log) as url:
        text = printed(log, url)
        assert f"Serving runs:/{run_id}/adapter at {url}/invocations" in text
        expected = answers(f"runs:/{run_id}/adapter", ["What does str.split do?"], max_new_tokens=64)
        assert run_printed_curl(text)["predictions"] == expected


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "name one thing to serve"),
        (["runs:/x/adapter", "--adapters", "a@1"], "name one thing to serve"),
        (["models:/no-such-model@champion"], "models:/no-such-model@champion: "),
        (["--adapters", "no-such-model@champion"], "--adapters no-such-model@champion models:/no-such-model@champion:"),
        (["runs:/x/adapter", "--port", "BUSY"], "cannot listen on 127.0.0.1:BUSY"),
    ],
)
def test_serve_refuses_bad_input_in_one_line_before_starting(argv, expected, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        argv, expected = [port if a == "BUSY" else a for a in argv], expected.replace("BUSY", port)
        assert cli.main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
