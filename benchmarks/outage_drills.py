"""The fault drill's outages of the servers a shared study depends on, but does not own.

- db-restart: 4 `lora-study sweep` workers on one study in a throwaway PostgreSQL cluster,
  logging to one `mlflow server`; once every worker has the study open, `restarts` times, at a
  random moment (0.5 to `--kill-window-s` after the last), PostgreSQL is stopped
  (`pg_ctl stop -m immediate`: connections dropped, as in a crash) for `downtime_s` and started
  again. Then all run to the end.
- server-restart: the same study while the `mlflow server` process is killed (SIGKILL) and
  started again on the same port and store after `downtime_s`, `restarts` times.

Each reports fault_drill's audit, the workers' exit codes, and how many times the workers said
they were waiting for the storage.
"""

import os
import signal
import sys
import time
from pathlib import Path

import fault_drill


def _wait_until_said(processes: list, logs: list[Path], text: str, timeout_s: float = 600) -> None:
    """Until every worker's log holds `text`; a worker that ended first is an error, with its log."""
    deadline = time.time() + timeout_s
    while not all(log.exists() and text in log.read_text() for log in logs):
        ended = [log for process, log in zip(processes, logs) if process.poll() is not None]
        if ended or time.time() > deadline:
            raise RuntimeError(f"no {text!r} from {ended or logs}: {ended[0].read_text()[-2000:] if ended else ''}")
        time.sleep(0.5)


class RestartableTrackingServer:
    """`mlflow server` on loopback, with a SQLite store and artifacts in `folder`, that can be
    killed and started again on the same port."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, fault_drill.free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--backend-store-uri", f"sqlite:///{self.folder}/mlflow.db"]
        argv += ["--default-artifact-root", str(self.folder / "artifacts")]
        self.process = fault_drill.start(argv, dict(os.environ), self.folder / "mlflow-server.log")
        fault_drill.wait_for(f"{self.url}/health", self.process)

    def kill(self) -> None:
        fault_drill.kill(self.process)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)


def outage_drill(
    folder: Path,
    outage: str,
    restarts: int,
    downtime_s: float,
    n_trials: int,
    window_s: float,
    rng,
    workers: int = 4,
    **shorter: str,
) -> dict:
    """`workers` sweep processes on one PostgreSQL study; `restarts` outages of `outage` ("db-restart" stops
    PostgreSQL, "server-restart" kills the tracking server), each `downtime_s` long, at random
    moments; then all run to the end. `shorter` sets sweep params of the drill's own."""
    import postgres_cluster

    server = RestartableTrackingServer(folder)
    server.start()
    try:
        with postgres_cluster.cluster() as database:
            env = fault_drill.drill_env(folder, server.url)
            argv = [sys.executable, "-m", "lora_study", "sweep"]
            for key, value in {**fault_drill.sweep_params(n_trials, "shared", database.url), **shorter}.items():
                argv += [f"--{key.replace('_', '-')}", value]
            logs = [folder / f"worker-{n}.log" for n in range(workers)]
            processes = [fault_drill.start(argv, env, log) for log in logs]
            stop, start = (database.stop, database.start) if outage == "db-restart" else (server.kill, server.start)
            try:
                _wait_until_said(processes, logs, "study shared: ")  # every worker has the study open
                for n in range(restarts):
                    time.sleep(rng.uniform(0.5, window_s))
                    stop()
                    print(f"{outage} {n + 1}/{restarts}: down for {downtime_s:g} s", flush=True)
                    time.sleep(downtime_s)
                    start()
                codes = [process.wait(timeout=3600) for process in processes]
            finally:
                for process in processes:  # none left retrying against a cluster that is gone
                    fault_drill.kill(process)
            figures = fault_drill.audit(server.url, database.url, "shared", n_trials)
    finally:
        server.stop()
    said = "".join(log.read_text() for log in logs)
    return {
        "outages": restarts,
        "downtime s": downtime_s,
        "workers that exited non-zero": sum(code != 0 for code in codes),
        "times a worker said it waits for the storage": said.count("retrying for up to"),
        "times a worker said the tracking server is away": said.count("mlflow tracking server"),
        "urllib3 retry warnings in the workers' output": said.count("Retrying (Retry("),
        "tracebacks in the workers' output": said.count("Traceback (most recent call last)"),
        **figures,
    }
