"""The fault drill's `oversize` drill: a served model meets oversized and slow input.

`lora-study serve` on one tiny adapter, on loopback. Each refused request is sent `repeats`
times, timed from the first byte sent to the answer read: a 1 MB body holding one prompt of a
million characters, a 1 MB body of 20,000 short prompts, a 50 MB body. A full batch of the
longest answers the server allows (`--max-batch-size` prompts, `max_new_tokens` at its limit) is
sent once, with a short request beside it: the short one's wait is what a neighbour of such a
request sees. The server's RSS after a warm-up and after everything; whether it still answers.
"""

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import fault_drill
import serve_memory

MAX_NEW_TOKENS, MAX_BATCH_SIZE = 512, 8  # the server's defaults (docs/serve.md, limits)


def refused_requests() -> list[tuple[str, bytes]]:
    """(what, body) of the requests the server must refuse at once."""
    return [
        ("1 MB body: one prompt of 1,000,000 characters", _body(["x" * 10**6])),
        ("1 MB body: 20,000 prompts", _body(["The list type"] * 20_000)),
        ("50 MB body", b'{"inputs": {"prompt": ["' + b"x" * 50 * 2**20 + b'"]}}'),
    ]


def _body(prompts: list[str], **params) -> bytes:
    return json.dumps({"inputs": {"prompt": prompts}, "params": params}).encode()


def timed_post(url: str, body: bytes) -> tuple[int, float, str]:
    """(HTTP status, seconds from sending to the answer read, the error's message if any)."""
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=600) as answer:
            answer.read()
            return answer.status, time.perf_counter() - started, ""
    except urllib.error.HTTPError as error:
        text = error.read()
        seconds = time.perf_counter() - started
        # MLflow's scoring server puts the model's reason after the data it failed on: "...Error: <reason>"
        return error.code, seconds, json.loads(text).get("message", "").rsplit("Error: ", 1)[-1][:120]


def oversize_drill(folder: Path, repeats: int) -> dict:
    import mlflow

    tracking_uri = f"sqlite:///{folder}/mlflow.db"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("drill")  # in this store, whatever experiment the calling process had chosen
    serve_memory.make_adapters(1, argparse.Namespace(base_model="tiny", rank=8, target_modules="qv"))
    port = fault_drill.free_port()
    argv = [sys.executable, "-m", "lora_study", "serve", "--adapters", f"{serve_memory.NAME}@1", "--port", str(port)]
    server = fault_drill.start(argv, fault_drill.drill_env(folder, tracking_uri), folder / "server.log")
    url = f"http://127.0.0.1:{port}"
    short = _body(["The list type"], max_new_tokens=4)
    figures = {}
    try:
        fault_drill.wait_for(f"{url}/ping", server)
        for _ in range(4):
            timed_post(url, short)  # warm: the memory a server settles at
        before = serve_memory.memory_mb([server.pid])[0]
        for what, body in refused_requests():
            answers = [timed_post(url, body) for _ in range(repeats)]
            figures[f"{what}: statuses"] = ", ".join(sorted({str(status) for status, _, _ in answers}))
            figures[f"{what}: slowest answer s"] = round(max(seconds for _, seconds, _ in answers), 3)
            figures[f"{what}: reason"] = answers[0][2]
        figures.update(_longest_batch(url, short))
        time.sleep(2)
        after = serve_memory.memory_mb([server.pid])[0]
        alive = timed_post(url, short)[0] == 200
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    return {
        **figures,
        "server alive after": int(alive),
        "RSS before MB": round(before),
        "RSS after MB": round(after),
        "RSS growth %": round(100 * (after - before) / before, 2),
    }


def _longest_batch(url: str, short: bytes) -> dict:
    """A full batch at the max_new_tokens limit, and a short request sent while it generates."""
    body = _body(["The list type"] * MAX_BATCH_SIZE, max_new_tokens=MAX_NEW_TOKENS)
    long_answer = {}
    thread = threading.Thread(target=lambda: long_answer.update(zip(("status", "s"), timed_post(url, body))))
    thread.start()
    time.sleep(0.5)  # the batch is generating
    waits = [timed_post(url, short) for _ in range(3)]
    thread.join()
    return {
        f"{MAX_BATCH_SIZE} prompts x {MAX_NEW_TOKENS} new tokens: status": long_answer["status"],
        f"{MAX_BATCH_SIZE} prompts x {MAX_NEW_TOKENS} new tokens: answer s": round(long_answer["s"], 1),
        "a short request beside it: statuses": ", ".join(sorted({str(status) for status, _, _ in waits})),
        "a short request beside it: median answer s": round(statistics.median(s for _, s, _ in waits), 2),
    }
