"""Shared fixtures and helpers: a private lora-study cache, a real MLflow store, the tiny base
model, data files the tests write, trained adapters, and real servers on loopback.

Test modules import helpers from here only, never from each other.
"""

import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from lora_study import adapters, evaluation, logged_models, models, registry, training
from lora_study.config import AdapterConfig, BaseModelConfig, DataConfig, TrainConfig
from lora_study.registry import comparability

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Under `pytest -n <cores>` (pytest-xdist) each worker, and every process it starts, keeps to a
    core of its own: torch sizes its threads to the cores a process may use, and two processes
    whose threads share cores spin against each other (up to 10x slower, not 2x)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    cores = sorted(os.sched_getaffinity(0))
    if worker and len(cores) > 1:
        os.sched_setaffinity(0, {cores[int(worker.removeprefix("gw")) % len(cores)]})
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def cache_root(tmp_path_factory):
    """A cache of this session's own, as on a fresh machine (built models, prepared data)."""
    root = tmp_path_factory.mktemp("lora-study-cache")
    with pytest.MonkeyPatch.context() as session_patch:
        session_patch.setenv("LORA_STUDY_CACHE", str(root))
        # a run that logs system metrics waits up to one sampling interval (10 s) as it ends
        session_patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
        yield root


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

    def predict(self, context, model_input: pd.DataFrame, params=None):  # hinted: no MLflow warning
        return model_input


# The test data `register_echo` says its versions were measured on, unless told otherwise.
ECHO_TEST_DATA = comparability.Basis(
    base_model="tiny",
    base_weights="0" * 64,
    quantization="none",
    dataset="python-docs",
    dataset_digest="1" * 64,
    group="",
    seq_len=32,
    seed=0,
    val_fraction=0.1,
    test_fraction=0.1,
    decontaminate_ngram=50,
    max_samples=15,
    prepared_digest="2" * 64,
)


def register_echo(name: str, test_data: comparability.Basis | None = ECHO_TEST_DATA, **tags) -> str:
    """A version of `name` from a run with adapter params, tagged like `evaluate` tags it: with
    its metrics and the test data they were measured on (`test_data`; None: not recorded)."""
    if test_data is not None:
        tags = {**tags, **registry.measured_on_tags(test_data)}
    with mlflow.start_run() as run:
        mlflow.log_params(
            {"rank": 8, "alpha": 16.0, "target_modules": "qv", "quantization": "none", "base_model": "tiny"}
        )
        mlflow.pyfunc.log_model(name="adapter", python_model=Echo(), pip_requirements=[])
    return str(registry.register(f"runs:/{run.info.run_id}/adapter", name, tags).version)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_process(argv: list, ready_url: str, timeout_s: float, env: dict | None = None, stdout=subprocess.DEVNULL):
    """A server started from `argv`, once `ready_url` answers (or `timeout_s` passed); stopped after."""
    env = dict(env or os.environ)
    # as `lora-study serve` does: mlflow starts `uvicorn` by name, found beside this Python
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr)
        deadline = time.time() + timeout_s
        while time.time() < deadline and process.poll() is None:
            try:
                urllib.request.urlopen(ready_url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        if process.poll() is not None:  # it ended: say why now, not after timeout_s
            stderr.seek(0)
            pytest.fail(f"{argv[:5]} ended with {process.returncode}: {stderr.read().decode()[-3000:]}")
        try:
            yield process
        finally:
            process.terminate()
            process.wait(timeout=60)


# --- data files the tests write ------------------------------------------------------------------

WORDS = "the quick brown fox jumps over a lazy dog while python sorts lists in place".split()


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """`mlflow server` on loopback: the tracking server many sweep workers or machines share."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    argv = [
        sys.executable,
        *"-m mlflow server --host 127.0.0.1 --port".split(),
        str(port),
        *"--backend-store-uri".split(),
        f"sqlite:///{folder}/mlflow.db",
        *"--default-artifact-root".split(),
        str(folder / "artifacts"),
    ]
    url = f"http://127.0.0.1:{port}"
    with server_process(argv, f"{url}/health", 120):
        yield url


def text_docs(count: int = 12) -> list[str]:
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(30 + i)) for i in range(count)]


def alpaca_records(count: int = 12) -> list[dict]:
    return [
        {
            "instruction": f"Name animal number {i}.",
            "input": "zoo" if i % 2 else "",
            "output": f"Animal {i} is a {WORDS[i % len(WORDS)]}.",
        }
        for i in range(count)
    ]


def chat_records(count: int = 12) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"It is {2 * i}."},
                {"role": "user", "content": "And times two?"},
                {"role": "assistant", "content": f"That gives {4 * i}."},
            ]
        }
        for i in range(count)
    ]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


# --- trained adapters ---------------------------------------------------------------------------

GROUPED_TOPICS = ("string-methods", "debugger", "formatstrings", "typesmapping")


def write_grouped_topics(path, per_group: int = 12, small_group: int = 2) -> Path:
    """A grouped dataset from the Python docs: each paragraph of a topic is a document, its
    `topic` its group; the group `try` has `small_group` documents, too few for three splits."""
    import pydoc_data.topics
    import re

    def paragraphs(topic: str) -> list[str]:
        found = re.split(r"\n\s*\n", pydoc_data.topics.topics[topic])
        return [text.strip() for text in found if len(text.strip()) > 200]

    records = [{"topic": topic, "text": text} for topic in GROUPED_TOPICS for text in paragraphs(topic)[:per_group]]
    records += [{"topic": "try", "text": text} for text in paragraphs("try")[:small_group]]
    return write_jsonl(path, records)


TINY_DATA = DataConfig(max_samples=15, seq_len=32)  # the first 15 python-docs topics
TINY_BASE = BaseModelConfig(base_model="tiny")
PROMPTS = ["The list type", "A dict maps", "def f(x):"]


def trained_adapter(adapter=AdapterConfig(), **train_fields):
    """A tiny adapter trained 3 steps (or as `train_fields` say) and logged as `train` logs it:
    (PeftModel, setup, run id, model info)."""
    train = TrainConfig(**{"max_steps": 3, "batch_size": 4, "learning_rate": 1e-2, **train_fields})
    s = training.setup(TINY_DATA, TINY_BASE, adapter, train)
    with mlflow.start_run() as run:
        result = training.fine_tune(s, adapter, train)
        info = training.log_trained_adapter(s, result, adapter, train)
    return result.model, s, run.info.run_id, info


@pytest.fixture(scope="session")
def tiny_adapter(tracking_uri, tmp_path_factory):
    """One `trained_adapter()` for the tests that only read it: (PeftModel, setup, run id, model info)."""
    mlflow.set_tracking_uri(tracking_uri)
    artifacts = tmp_path_factory.mktemp("tiny-adapter") / "artifacts"
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("tiny-adapter", str(artifacts)))
    return trained_adapter()


def two_registered_adapters(name: str) -> tuple[str, str]:
    """Versions 1 (@champion) and 2 of `name`: two adapters, different enough to answer differently."""
    _, _, first, _ = trained_adapter()
    _, _, second, _ = trained_adapter(AdapterConfig(rank=16, alpha=64, target_modules="all-linear"))
    for run_id in (first, second):
        registry.register(f"runs:/{run_id}/adapter", name, {})
    registry.set_alias(name, "champion", "1", "two_registered_adapters")
    return first, second


@pytest.fixture(scope="session")
def adapter_run(tracking_uri, tmp_path_factory):
    """A tiny adapter trained by the `train` stage on instruction records (response-only loss)."""
    from lora_study.stages.train import run_train

    folder = tmp_path_factory.mktemp("adapter-run")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("adapter-run", str(folder / "artifacts")))
    dataset = write_jsonl(folder / "alpaca.jsonl", alpaca_records(40))
    train = TrainConfig(max_steps=10, batch_size=4, learning_rate=1e-2, eval_every=0)
    return run_train(DataConfig(dataset=str(dataset), seq_len=128), TINY_BASE, AdapterConfig(), train)


def loaded_adapter(run_id: str):
    """A run's adapter loaded as `evaluate` loads it (no autocast), and its held-out test split."""
    source = adapters.resolve(f"runs:/{run_id}/adapter")
    loaded = adapters.load(source, torch.device("cpu"), None)
    return loaded, evaluation.held_out(source, "", "", 0, 1, loaded.base, loaded.tokenizer)


def answers(model_uri: str, prompts=PROMPTS, **params):
    """What the MLflow model at `model_uri` answers, loaded in this process."""
    model = mlflow.pyfunc.load_model(logged_models.uri(model_uri))  # runs:/<id>/adapter too
    return model.predict(pd.DataFrame({"prompt": prompts}), params={"max_new_tokens": 8, **params})


# --- processes and servers --------------------------------------------------------------------------


def mlflow_run(entry_point: str, experiment_id: str, **params):
    """`mlflow run . -e ENTRY_POINT --env-manager local -P ...`, as a user runs it; the finished process."""
    argv = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry_point, "--env-manager", "local"]
    argv += ["--experiment-id", experiment_id]
    for key, value in params.items():
        argv += ["-P", f"{key}={value}"]
    # `mlflow run --env-manager local` runs the entry point with the `python` on PATH: this one.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)


def post(url: str, payload: dict | bytes) -> tuple[int, dict]:
    """POST a request (or bytes as they are) to a server's /invocations: (HTTP status, JSON body)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@contextmanager
def lora_study_serve(args: list[str], tracking_uri: str, log: Path):
    """`lora-study serve ARGS` on a free port, its stdout in `log`; yields its URL once it answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "lora_study", "serve", *args, "--port", str(port)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    with log.open("w") as stdout, server_process(argv, f"{url}/ping", 180, env, stdout):
        yield url


def run_printed_curl(text: str) -> dict:
    """Run the curl command `lora-study serve` printed, as a user would paste it; its JSON answer."""
    curl = next(line.strip() for line in text.splitlines() if line.strip().startswith("curl "))
    return json.loads(subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=120, check=True).stdout)


def printed(log, url) -> str:
    """What `lora-study serve` printed once its server answered (it prints just after)."""
    deadline = time.time() + 30
    while "curl" not in log.read_text() and time.time() < deadline:
        time.sleep(0.2)
    text = log.read_text()
    assert f"at {url}/invocations" in text
    return text


def chromium(
    page: Path | str, screenshot: Path | None, width: int = 1100, height: int = 2400, render_ms: int = 0, profile=None
) -> str:
    """Open `page` (a file, or a URL) in headless Chromium (Debian's `chromium`), as a user's
    browser would: save a screenshot and return the DOM it rendered. An app that renders itself
    (MLflow's UI) needs `render_ms` of virtual time; `profile` is a new browser's folder."""
    flags = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"]
    flags += [f"--virtual-time-budget={render_ms}"] if render_ms else []
    flags += [f"--user-data-dir={profile}", "--hide-scrollbars"] if profile else []
    url = page if isinstance(page, str) else page.resolve().as_uri()
    if screenshot is not None:  # None: the DOM only, one browser start fewer
        subprocess.run([*flags, f"--screenshot={screenshot}", url], check=True, capture_output=True, timeout=120)
    return subprocess.run([*flags, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120).stdout


def chromium_evaluate(page: Path, expression: str, width: int = 1100, height: int = 2200):
    """Open `page` in headless Chromium at `width` x `height` and return what the JavaScript
    `expression` evaluates to there, as JSON values: layout a screenshot cannot measure (a
    table's width against its box, a row's height). The DevTools protocol over
    `--remote-debugging-pipe`: JSON messages ending in NUL, Chromium reading fd 3 and writing fd 4."""
    to_browser, browser_in = os.pipe()
    browser_out, from_browser = os.pipe()

    def as_fds_3_and_4():
        os.dup2(to_browser, 3)
        os.dup2(from_browser, 4)
        for fd in (3, 4):  # a pipe's own fd may already be 3: dup2 onto itself keeps it close-on-exec
            os.set_inheritable(fd, True)

    argv = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe"]
    argv += [f"--window-size={width},{height}", "about:blank"]
    browser = subprocess.Popen(
        argv, preexec_fn=as_fds_3_and_4, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    os.close(to_browser)
    os.close(from_browser)
    received, ids = b"", iter(range(1, 1000))

    def call(method: str, session: str | None = None, **params) -> dict:
        nonlocal received
        number = next(ids)
        message = {"id": number, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(browser_in, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in received:
                ready, _, _ = select.select([browser_out], [], [], 60)
                assert ready, f"Chromium did not answer {method} in 60 s"
                chunk = os.read(browser_out, 1 << 16)
                assert chunk, "Chromium closed its DevTools pipe"
                received += chunk
            line, received = received.split(b"\0", 1)
            answer = json.loads(line)
            if answer.get("id") == number:
                assert "error" not in answer, answer["error"]
                return answer["result"]

    try:
        url = page.resolve().as_uri()
        target = call("Target.createTarget", url=url, width=width, height=height)["targetId"]
        session = call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        size = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        call("Emulation.setDeviceMetricsOverride", session, **size)

        def evaluate(script: str) -> dict:
            return call("Runtime.evaluate", session, expression=script, returnByValue=True)

        deadline = time.time() + 30
        loaded = f"document.readyState === 'complete' && location.href === {json.dumps(url)}"  # not about:blank
        while not evaluate(loaded)["result"]["value"]:
            assert time.time() < deadline, f"{page} did not finish loading"
            time.sleep(0.1)
        found = evaluate(expression)
        assert "exceptionDetails" not in found, found["exceptionDetails"]
        return found["result"]["value"]
    finally:
        try:
            call("Browser.close")  # it ends its own helper processes
            browser.wait(timeout=10)
        except (AssertionError, OSError, subprocess.TimeoutExpired):
            browser.kill()
            browser.wait()
        os.close(browser_in)
        os.close(browser_out)
