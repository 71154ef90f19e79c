"""Resident memory: one server with N adapters on one base against N single-adapter servers.

    python benchmarks/serve_memory.py --counts 1,4,16 --rank 16 --target-modules qkvo

Makes 16 (the largest count) distinct adapters on the base model: LoRA with random `B` weights,
so each answers differently, logged and registered as versions of one model in a fresh MLflow
store. Training them would not change their size. Then, for each count N:
- one `lora-study serve --adapters bench@1,...,bench@N`;
- N `mlflow models serve -m models:/bench/<i>` servers, all running at once.
Every server answers one request per adapter it holds (8 new tokens) before it is measured, so
every adapter has run. Memory is summed over each server's processes (the CLI that starts it and
the uvicorn worker that holds the model): RSS, and PSS, which splits pages that processes share
(the torch and Python libraries) between them, so it does not count them N times. The base's
weights dtype is the one a default `train` on this machine gives its adapters.
Results are appended to benchmarks/RESULTS.md.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from results import record

NAME = "bench"


def make_adapters(count: int, args) -> None:
    """`count` registered versions of NAME, each a distinct random LoRA adapter on the base."""
    import mlflow

    from lora_study import adapters, lora, models, registry
    from lora_study.config import AdapterConfig

    ref = models.resolve(args.base_model)
    dtype = models.weights_dtype("none", models.autocast_dtype("auto", torch.device("cpu")))
    base = models.load_model(ref, "none", dtype)
    adapter = AdapterConfig(rank=args.rank, alpha=2 * args.rank, target_modules=args.target_modules)
    reference = models.AdapterReference.of(ref, "none", dtype, "text")
    for seed in range(count):
        model = lora.attach(base, adapter, seed)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.02)
        with mlflow.start_run() as run:
            adapters.log_adapter(model, reference)
        registry.register(f"runs:/{run.info.run_id}/adapter", NAME, {})
        base = lora.detach(model.base_model.model)


def tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(p for child in children for p in tree(int(child)))]


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """(RSS, PSS) in MB, summed over `pids` and their descendants."""
    rss = pss = 0
    for pid in (p for root in pids for p in tree(root)):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss"):
                kb = int(value.split()[0])
                rss, pss = (rss + kb, pss) if key == "Rss" else (rss, pss + kb)
    return rss / 1024, pss / 1024


def ask(port: int, adapter: str | None) -> None:
    params = {"max_new_tokens": 8, **({"adapter": adapter} if adapter else {})}
    body = json.dumps({"inputs": {"prompt": ["The list type"]}, "params": params}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as answer:
        assert answer.status == 200


def wait_ready(servers: list[subprocess.Popen], ports: list[int], timeout_s: float = 1800) -> None:
    deadline = time.time() + timeout_s
    for server, port in zip(servers, ports):
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server on port {port} exited; see server-{port}.log")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise TimeoutError(f"no server on port {port}") from None
                time.sleep(1)


def measure(
    argvs: list[list[str]], ports: list[int], adapters: list[list[str | None]], env: dict
) -> tuple[float, float]:
    logs = [Path(f"server-{port}.log").open("w") for port in ports]  # in the benchmark's folder
    servers = [
        subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for argv, log in zip(argvs, logs)
    ]
    try:
        wait_ready(servers, ports)
        for port, names in zip(ports, adapters):
            for name in names:
                ask(port, name)
        time.sleep(2)
        return memory_mb([server.pid for server in servers])
    finally:
        for server in servers:
            os.killpg(server.pid, signal.SIGTERM)
        for server in servers:
            server.wait(timeout=60)
            while _group_alive(server.pid):  # the uvicorn worker too: the next server takes its port
                time.sleep(0.2)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,4,16")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--target-modules", default="qkvo")
    parser.add_argument("--base-model", default="smollm2-135m")
    parser.add_argument("--first-port", type=int, default=5101)
    args = parser.parse_args()
    counts = [int(count) for count in args.counts.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
    }
    os.environ.update(env)
    os.chdir(folder)
    make_adapters(max(counts), args)
    from lora_study import serving

    rows = []
    for count in counts:
        names = [f"{NAME}@{i}" for i in range(1, count + 1)]
        port = args.first_port
        one = measure(
            [[sys.executable, "-m", "lora_study", "serve", "--adapters", ",".join(names), "--port", str(port)]],
            [port],
            [names],
            env,
        )
        ports = list(range(args.first_port + 1, args.first_port + 1 + count))
        argvs = [serving.server_argv(f"models:/{NAME}/{i}", "127.0.0.1", p) for i, p in zip(range(1, count + 1), ports)]
        separate = measure(argvs, ports, [[None]] * count, env)
        rows.append((count, one, separate))
        print(count, one, separate, flush=True)
    adapter_mb = sum(f.stat().st_size for f in folder.rglob("adapter_model.safetensors")) / 2**20 / max(counts)
    command = (
        f"python benchmarks/serve_memory.py --counts {args.counts} --rank {args.rank} "
        f"--target-modules {args.target_modules} --base-model {args.base_model}"
    )
    record(
        "serve memory: N adapters on one base vs N single-adapter servers",
        command,
        f". Each adapter: {adapter_mb:.1f} MB of safetensors.",
        [
            "| adapters | one server: RSS MB | one server: PSS MB | separate servers: RSS MB "
            "| separate servers: PSS MB | PSS ratio |",
            "|---|---|---|---|---|---|",
            *(f"| {n} | {o[0]:.0f} | {o[1]:.0f} | {s[0]:.0f} | {s[1]:.0f} | {s[1] / o[1]:.1f}x |" for n, o, s in rows),
        ],
    )


if __name__ == "__main__":
    main()
