"""Serving throughput: many clients asking for different adapters at once, answered in shared
batches against one request at a time, by the same server build.

    python benchmarks/serve_throughput.py --requests 64 --clients 8 --new-tokens 32 --adapters 4

Makes `--adapters` distinct adapters on the base (random LoRA `B`, as `serve_memory.py` does)
and serves them all with `lora-study serve --adapters bench@1,...` twice: with
`--max-batch-size 1` (one at a time: the server before batching) and with `--max-batch-size`
`--clients` (batched across adapters). Against each: one request per adapter to warm up, then
`--requests` requests from `--clients` threads, each a fixed prompt for the adapters in turn,
greedy, `--new-tokens` new tokens, each timed. Reports requests/s, generated tokens/s (the
answers re-tokenized), p50 and p95 latency, and how many answers the two modes share. The goal:
at least 3x the throughput and at most half the p95 latency of one at a time. Results are
appended to benchmarks/RESULTS.md.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import serve_memory
from results import record

PROMPTS = ["The list type", "A dict maps keys to values and", "def f(x):\n    return", "Exceptions are raised when"]


def ask(port: int, prompt: str, adapter: str, new_tokens: int) -> tuple[str, float]:
    """The answer to one request, and its latency in seconds."""
    params = {"max_new_tokens": new_tokens, "adapter": adapter}
    body = json.dumps({"inputs": {"prompt": [prompt]}, "params": params}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as answer:
        text = json.loads(answer.read())["predictions"][0]
    return text, time.perf_counter() - started


def load(port: int, jobs: list[tuple[str, str]], clients: int, new_tokens: int) -> tuple[list, float]:
    """Every job (prompt, adapter) from `clients` threads: the (answer, latency) of each, and the wall time."""
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(lambda job: ask(port, *job, new_tokens), jobs))
    return done, time.perf_counter() - started


def serve_and_load(names: list[str], batch: int, port: int, jobs: list, args, env: dict) -> tuple[list, float]:
    argv = [sys.executable, "-m", "lora_study", "serve", "--adapters", ",".join(names), "--port", str(port)]
    argv += ["--max-batch-size", str(batch), "--batch-wait-ms", str(args.batch_wait_ms)]
    log = Path(f"server-batch-{batch}.log").open("w")  # in the benchmark's folder
    server = serve_memory.subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        serve_memory.wait_ready([server], [port])
        for name in names:  # every adapter has run once
            ask(port, PROMPTS[0], name, args.new_tokens)
        return load(port, jobs, args.clients, args.new_tokens)
    finally:
        os.killpg(server.pid, serve_memory.signal.SIGTERM)
        server.wait(timeout=60)
        while serve_memory._group_alive(server.pid):  # the uvicorn worker too: the next server takes the port
            time.sleep(0.2)


def figures(done: list, wall_s: float, tokenizer) -> dict[str, float]:
    latencies = sorted(latency for _, latency in done)
    tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text, _ in done)
    return {
        "requests/s": len(done) / wall_s,
        "tokens/s": tokens / wall_s,
        "p50 s": statistics.median(latencies),
        "p95 s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "wall s": wall_s,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--batch-wait-ms", type=int, default=10)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--target-modules", default="qkvo")
    parser.add_argument("--base-model", default="smollm2-135m")
    parser.add_argument("--port", type=int, default=5201)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-serve-throughput-"))
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        # one at a time, the last of 8 clients' requests waits longer than MLflow's 60 s default
        "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "600",
    }
    os.environ.update(env)
    os.chdir(folder)
    serve_memory.make_adapters(args.adapters, args)
    from lora_study import models

    tokenizer = models.load_tokenizer(models.resolve(args.base_model))
    names = [f"{serve_memory.NAME}@{i}" for i in range(1, args.adapters + 1)]
    jobs = [(PROMPTS[n % len(PROMPTS)], names[n % len(names)]) for n in range(args.requests)]
    single, single_s = serve_and_load(names, 1, args.port, jobs, args, env)
    batched, batched_s = serve_and_load(names, args.clients, args.port, jobs, args, env)
    one, many = figures(single, single_s, tokenizer), figures(batched, batched_s, tokenizer)
    same = sum(a == b for (a, _), (b, _) in zip(single, batched))
    command = (
        f"python benchmarks/serve_throughput.py --requests {args.requests} --clients {args.clients} "
        f"--new-tokens {args.new_tokens} --adapters {args.adapters} --batch-wait-ms {args.batch_wait_ms} "
        f"--rank {args.rank} --target-modules {args.target_modules} --base-model {args.base_model}"
    )
    record(
        "serve throughput: requests for several adapters batched together vs one at a time",
        command,
        f". Greedy; the same server build, `--max-batch-size 1` against `--max-batch-size {args.clients}`.",
        [
            "| | one at a time | batched | batched / one at a time |",
            "|---|---|---|---|",
            *(f"| {key} | {one[key]:.2f} | {many[key]:.2f} | {many[key] / one[key]:.2f}x |" for key in one),
            "",
            f"Answers identical in both modes: {same} of {len(jobs)}.",
        ],
    )


if __name__ == "__main__":
    main()
