"""Fault drill: sweeps killed at random moments, a shared study losing workers, a served model
under load with malformed requests. On the tiny model.

    python benchmarks/fault_drill.py --kills 20 --worker-kills 5 --requests 400

- kills: `mlflow run . -e sweep` (one worker, SQLite storage, confirm phase on) started and its
  whole process group killed with SIGKILL after a random delay, `--kills` times in a row, then
  run once more to the end. Each start follows the last kill at once, as a user would retry.
- workers: 4 `lora-study sweep` processes (a machine each) on one study in a throwaway
  PostgreSQL cluster, logging to one `mlflow server`; `--worker-kills` times a random one is
  killed (SIGKILL, its process group) and started again; then all run to the end.
- db-restart, server-restart: the shared study's PostgreSQL, or its `mlflow server`, stopped and
  started again mid-study (`outage_drills.py`).
- oversize: oversized and slow input to a served model (`oversize_drill.py`).
- serve: `lora-study serve` with 2 adapters on one base, on loopback; 8 client threads send
  `--requests` requests, a quarter of them malformed (bad JSON, wrong types, out-of-bounds
  params, unknown adapters, prompts over the context); its memory (RSS of the server's
  processes) after a warm-up and after the load. Left out as not malformed by MLflow's serving
  contract: a param the signature does not name (MLflow ignores it, with a warning in the
  server's log) and a number as a prompt (MLflow reads it as its text).

Each drill reports what a user would check: trials requested / finished / missing, runs left
RUNNING, duplicate registrations and trial results, answers 5xx, malformed requests not
answered 4xx, RSS growth. The goal is zero for each, and RSS growth under 5%. Results are
appended to benchmarks/RESULTS.md; `--kills 3 --drills kills --no-record` is the test's version.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL = "drill"  # the registered model every drill's sweep registers into
TINY = ["--base-model", "tiny", "--max-samples", "40", "--seq-len", "32"]
# Long enough that a kill lands in setup, mid-trial, in the confirm phase or while registering.
SWEEP = ["--n-trials", "{n_trials}", "--max-steps", "60", "--eval-every", "20", "--confirm-top", "2"]


def sweep_params(n_trials: int, study: str, storage: str) -> dict[str, str]:
    flags = [*TINY, *SWEEP, "--study-name", study, "--storage", storage, "--registered-model", MODEL]
    pairs = zip(flags[::2], flags[1::2])
    return {flag.removeprefix("--").replace("-", "_"): value.format(n_trials=n_trials) for flag, value in pairs}


def start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A process in a session (process group) of its own, so a kill takes all it started."""
    with log.open("a") as out:
        return subprocess.Popen(
            argv, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def kill(process: subprocess.Popen) -> bool:
    """SIGKILL to the process and everything it started; whether it was still running."""
    alive = process.poll() is None
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    return alive


def drill_env(folder: Path, tracking_uri: str) -> dict:
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_EXPERIMENT_ID"}
    return {
        **environment,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "LORA_STUDY_HEARTBEAT_S": "2",  # dead workers are noticed in 4 s, not 20
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
    }


# --- the audit: what a user would check after the study ----------------------------------------


def audit(tracking_uri: str, storage: str, study_name: str, n_trials: int) -> dict[str, int]:
    """The study's figures, from Optuna's storage and the MLflow store."""
    import mlflow
    import optuna

    from lora_study.names import (
        STAGE_CONFIRM,
        STAGE_SWEEP,
        STAGE_TRIAL,
        TAG_STAGE,
        TAG_STUDY,
        TAG_TRIAL_NUMBER,
        TAG_TRIAL_STATE,
    )
    from lora_study.sweep import study as sweep_study

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    finished = sweep_study.finished(study)
    client = mlflow.MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    every = client.search_runs(experiments, max_results=5000)
    trial_runs = [r for r in every if r.data.tags.get(TAG_STAGE) in (STAGE_TRIAL, STAGE_CONFIRM)]
    results = Counter(r.data.tags.get(TAG_TRIAL_NUMBER) for r in trial_runs if r.info.status == "FINISHED")
    versions = client.search_model_versions(f"name = '{MODEL}'")
    registered = Counter(v.tags.get(TAG_TRIAL_NUMBER) for v in versions)
    confirmed = Counter(
        (t.user_attrs[sweep_study.ATTR_CONFIG], t.user_attrs[sweep_study.ATTR_SEED])
        for t in sweep_study.trials_of(study, sweep_study.CONFIRM, (optuna.trial.TrialState.COMPLETE,))
    )
    tags = [r.data.tags for r in every]
    parents = [t for t in tags if (t.get(TAG_STAGE), t.get(TAG_STUDY)) == (STAGE_SWEEP, study_name)]
    adapters = {m.source_run_id for m in _logged_models(client, experiments)}
    complete = [r for r in trial_runs if r.info.status == "FINISHED" and r.data.tags.get(TAG_TRIAL_STATE) == "COMPLETE"]
    return {
        "trials requested": n_trials,
        "trials finished": finished,
        "trials missing": max(0, n_trials - finished),
        "trials lost with a killed worker (run again)": len(sweep_study.lost(study)),
        "trials left unfinished in Optuna": sum(not t.state.is_finished() for t in trials),
        "runs left RUNNING": sum(r.info.status == "RUNNING" for r in every),
        "parent runs of the study": len(parents),
        "duplicate trial results": sum(n - 1 for n in results.values()),
        "duplicate confirmations": sum(n - 1 for n in confirmed.values()),
        "complete runs lacking a final metric": sum(not _has_final_metrics(r) for r in complete),
        "complete runs lacking their adapter": sum(r.info.run_id not in adapters for r in complete),
        "versions registered": len(versions),
        "duplicate registrations": sum(n - 1 for n in registered.values()),
    }


def _logged_models(client, experiments: list[str]) -> list:
    """Every logged model of the experiments, page after page."""
    found, token = [], None
    while True:
        page = client.search_logged_models(experiment_ids=experiments, max_results=1000, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return found


def _has_final_metrics(run) -> bool:
    """A complete trial's run holds what it logs last: its costs, forgetting, and a confirmation's test figures."""
    from lora_study.names import (
        METRIC_FORGETTING_KL,
        METRIC_PEAK_MEMORY_MB,
        METRIC_TEST_PERPLEXITY,
        METRIC_TRAINED_TOKENS,
        STAGE_CONFIRM,
        TAG_STAGE,
    )

    needed = {METRIC_PEAK_MEMORY_MB, METRIC_TRAINED_TOKENS, METRIC_FORGETTING_KL}
    if run.data.tags.get(TAG_STAGE) == STAGE_CONFIRM:
        needed.add(METRIC_TEST_PERPLEXITY)
    return needed <= set(run.data.metrics)


# --- drill 1: one sweep, killed again and again --------------------------------------------------


def kill_drill(
    folder: Path, kills: int, n_trials: int, window_s: float, rng: random.Random, **shorter: str
) -> dict[str, int]:
    """`kills` SIGKILLs of `mlflow run -e sweep` after a random 0.5 to `window_s` s each, then a
    run to the end; the audit, with how many runs had ended before their kill. `shorter` sets
    sweep params of the drill's own (the test suite's version trains fewer steps)."""
    tracking_uri, storage = f"sqlite:///{folder}/mlflow.db", f"sqlite:///{folder}/optuna.db"
    env = drill_env(folder, tracking_uri)
    argv = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "sweep", "--env-manager", "local"]
    for key, value in {**sweep_params(n_trials, "killed", storage), **shorter}.items():
        argv += ["-P", f"{key}={value}"]
    log = folder / "sweeps.log"
    ended_first = 0
    for n in range(kills):
        process = start(argv, env, log)
        delay = rng.uniform(0.5, window_s)
        time.sleep(delay)
        ended_first += not kill(process)
        print(f"kill {n + 1}/{kills} after {delay:.1f} s", flush=True)
    last = subprocess.run(argv, env=env, cwd=folder, capture_output=True, text=True)
    log.open("a").write(last.stdout + last.stderr)
    figures = audit(tracking_uri, storage, "killed", n_trials)
    return {"kills": kills, "sweeps ended before their kill": ended_first, "last exit code": last.returncode, **figures}


# --- drill 2: four workers on PostgreSQL, one killed at a time ----------------------------------


def workers_drill(folder: Path, worker_kills: int, n_trials: int, window_s: float, rng: random.Random) -> dict:
    """4 sweep processes on one PostgreSQL study; `worker_kills` times a random one is killed and
    started again; then all run to the end."""
    import postgres_cluster

    with postgres_cluster.throwaway_cluster() as storage, tracking_server(folder) as tracking_uri:
        env = drill_env(folder, tracking_uri)
        argv = [sys.executable, "-m", "lora_study", "sweep"]
        for key, value in sweep_params(n_trials, "shared", storage).items():
            argv += [f"--{key.replace('_', '-')}", value]
        logs = [folder / f"worker-{n}.log" for n in range(4)]
        workers = [start(argv, env, log) for log in logs]
        for n in range(worker_kills):
            time.sleep(rng.uniform(0.5, window_s))
            victim = rng.randrange(4)
            kill(workers[victim])
            print(f"worker kill {n + 1}/{worker_kills}: worker {victim}", flush=True)
            workers[victim] = start(argv, env, logs[victim])
        codes = [worker.wait(timeout=3600) for worker in workers]
        figures = audit(tracking_uri, storage, "shared", n_trials)
    return {"worker kills": worker_kills, "workers that exited non-zero": sum(c != 0 for c in codes), **figures}


class tracking_server:
    """`mlflow server` on loopback with a SQLite store in `folder`, as many machines would share."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __enter__(self) -> str:
        port = free_port()
        argv = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--backend-store-uri", f"sqlite:///{self.folder}/mlflow.db"]
        argv += ["--default-artifact-root", str(self.folder / "artifacts")]
        self.process = start(argv, dict(os.environ), self.folder / "mlflow-server.log")
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/health", self.process)
        return url

    def __exit__(self, *exc) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with {process.returncode}; see its log")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing answered at {url}")


# --- the command ---------------------------------------------------------------------------------


def table(figures: dict) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in figures.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drills", default="kills,workers,serve")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--n-trials", type=int, default=12)
    parser.add_argument("--kill-window-s", type=float, default=40.0)
    parser.add_argument("--worker-kills", type=int, default=5)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--oversize-repeats", type=int, default=20)
    parser.add_argument("--restarts", type=int, default=2, help="outages per db-restart or server-restart drill")
    parser.add_argument("--downtime-s", type=float, default=20.0, help="how long each outage lasts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-record", action="store_true", help="print, do not append to RESULTS.md")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    drills = args.drills.split(",")
    results = {}
    for name in drills:
        folder = Path(tempfile.mkdtemp(prefix=f"fault-drill-{name}-"))
        began = time.time()
        if name == "kills":
            figures = kill_drill(folder, args.kills, args.n_trials, args.kill_window_s, rng)
        elif name == "workers":
            figures = workers_drill(folder, args.worker_kills, args.n_trials, args.kill_window_s, rng)
        elif name in ("db-restart", "server-restart"):
            from outage_drills import outage_drill

            window, down = args.kill_window_s, args.downtime_s
            figures = outage_drill(folder, name, args.restarts, down, args.n_trials, window, rng)
        elif name == "oversize":
            from oversize_drill import oversize_drill

            figures = oversize_drill(folder, args.oversize_repeats)
        else:
            from serve_drill import serve_drill

            figures = serve_drill(folder, args.requests, args.clients, rng)
        results[name] = {**figures, "wall time s": round(time.time() - began)}
        print(name, json.dumps(results[name], indent=1), f"(logs in {folder})", flush=True)
    if args.no_record:
        return
    from results import record

    command = f"python benchmarks/fault_drill.py --drills {args.drills} --kills {args.kills} "
    command += f"--n-trials {args.n_trials} "
    command += f"--kill-window-s {args.kill_window_s:g} --worker-kills {args.worker_kills} --requests {args.requests} "
    command += f"--clients {args.clients} --oversize-repeats {args.oversize_repeats} --restarts {args.restarts} "
    command += f"--downtime-s {args.downtime_s:g} --seed {args.seed}"
    body = []
    for name, figures in results.items():
        body += [f"**{name}**", "", *table(figures), ""]
    record("fault drill: kills, a shared study losing workers, a server under bad load", command, ".", body)


if __name__ == "__main__":
    main()
