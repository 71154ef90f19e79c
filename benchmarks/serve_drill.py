"""The fault drill's `serve` drill: a served model under load, a quarter of the requests malformed.

`lora-study serve` with 2 adapters on one base, on loopback; `clients` client threads send
`requests` requests, a quarter of them malformed (bad JSON, wrong types, out-of-bounds params,
unknown adapters, prompts over the context); the memory (RSS of the server's processes) after a
warm-up and after the load.
"""

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import fault_drill

PROMPTS = ["The list type", "A dict maps keys", "def f(x):", "Exceptions are raised"]


def malformed_requests() -> list[tuple[str, bytes, str]]:
    """(what is wrong, body, content type): requests a server must answer 4xx and survive."""

    def request(body: dict) -> bytes:
        return json.dumps(body).encode()

    inputs = {"prompt": ["The list type"]}
    records = "dataframe_records"
    deep = "[" * 10000 + "]" * 10000
    return [
        ("not JSON", b"{'inputs': ", "application/json"),
        ("empty body", b"", "application/json"),
        ("a JSON list", b"[1, 2, 3]", "application/json"),
        ("no inputs", request({"params": {"max_new_tokens": 4}}), "application/json"),
        ("prompt is empty", request({"inputs": {"prompt": [""]}}), "application/json"),
        ("unknown adapter", request({"inputs": inputs, "params": {"adapter": "nope"}}), "application/json"),
        ("max_new_tokens -1", request({"inputs": inputs, "params": {"max_new_tokens": -1}}), "application/json"),
        ("max_new_tokens 1e9", request({"inputs": inputs, "params": {"max_new_tokens": 10**9}}), "application/json"),
        ("max_new_tokens words", request({"inputs": inputs, "params": {"max_new_tokens": "lots"}}), "application/json"),
        ("temperature a word", request({"inputs": inputs, "params": {"temperature": "hot"}}), "application/json"),
        ("top_p 0", request({"inputs": inputs, "params": {"top_p": 0}}), "application/json"),
        ("records without prompt", request({records: [{"text": "hi"}]}), "application/json"),
        ("adapter column a number", request({records: [{"prompt": "hi", "adapter": 3}]}), "application/json"),
        ("prompt over the context", request({"inputs": {"prompt": ["word " * 5000]}}), "application/json"),
        ("deeply nested JSON", deep.encode(), "application/json"),
        ("plain text", b"The list type", "text/plain"),
        ("inputs null", request({"inputs": None}), "application/json"),
        ("invalid UTF-8", b'{"inputs": {"prompt": ["\xff\xfe"]}}', "application/json"),
    ]


def post(url: str, body: bytes, content_type: str) -> int:
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=600) as answer:
            answer.read()
            return answer.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def serve_drill(folder: Path, requests: int, clients: int, rng: random.Random) -> dict:
    """`requests` requests from `clients` threads to a 2-adapter server; statuses and RSS."""
    import mlflow
    import serve_memory

    tracking_uri = f"sqlite:///{folder}/mlflow.db"
    env = fault_drill.drill_env(folder, tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("drill")  # in this store, whatever experiment the calling process had chosen
    serve_memory.make_adapters(2, argparse.Namespace(base_model="tiny", rank=8, target_modules="qv"))
    port = fault_drill.free_port()
    spec = ",".join(f"{serve_memory.NAME}@{n}" for n in (1, 2))
    argv = [sys.executable, "-m", "lora_study", "serve", "--adapters", spec, "--port", str(port)]
    server = fault_drill.start(argv, env, folder / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        fault_drill.wait_for(f"{url}/ping", server)
        names = [f"{serve_memory.NAME}@{n}" for n in (1, 2)]
        warm_up = [job for job in _requests(4 * clients, names, rng) if not job[3]]
        _load(url, warm_up, clients)  # every thread and adapter has run once: the memory a server settles at
        before = serve_memory.memory_mb([server.pid])[0]
        jobs = _requests(requests, names, rng)
        answers = _load(url, jobs, clients)
        time.sleep(2)
        after = serve_memory.memory_mb([server.pid])[0]
        alive = post(url, warm_up[0][1], warm_up[0][2]) == 200
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    valid = [status for (_, _, _, bad), status in zip(jobs, answers) if not bad]
    malformed = [(what, status) for (what, _, _, bad), status in zip(jobs, answers) if bad]
    misanswered = sorted({f"{what}: {status}" for what, status in malformed if not 400 <= status < 500})
    if misanswered:
        print("malformed requests not answered 4xx:", "; ".join(misanswered), flush=True)
    return {
        "requests": len(jobs),
        "malformed": len(malformed),
        "clients": clients,
        "answers 5xx": sum(status >= 500 for status in answers),
        "malformed not answered 4xx": sum(not 400 <= status < 500 for _, status in malformed),
        "valid not answered 200": sum(status != 200 for status in valid),
        "server alive after": int(alive),
        "RSS before MB": round(before),
        "RSS after MB": round(after),
        "RSS growth %": round(100 * (after - before) / before, 2),
    }


def _requests(count: int, names: list[str], rng: random.Random) -> list[tuple[str, bytes, str, bool]]:
    """(what, body, content type, malformed): every fourth malformed, then shuffled."""
    bad = malformed_requests()
    jobs = []
    for n in range(count):
        if n % 4 == 3:
            what, body, content_type = bad[(n // 4) % len(bad)]
            jobs.append((what, body, content_type, True))
        else:
            params = {"max_new_tokens": rng.randint(1, 8), "adapter": rng.choice(names)}
            body = {"inputs": {"prompt": [rng.choice(PROMPTS)]}, "params": params}
            jobs.append(("valid", json.dumps(body).encode(), "application/json", False))
    rng.shuffle(jobs)
    return jobs


def _load(url: str, jobs: list, clients: int) -> list[int]:
    statuses = [0] * len(jobs)
    queue = iter(range(len(jobs)))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                n = next(queue, None)
            if n is None:
                return
            _, body, content_type, _ = jobs[n]
            statuses[n] = post(url, body, content_type)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses
