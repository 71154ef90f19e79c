"""A throwaway PostgreSQL cluster on loopback: the shared Optuna storage of the multi-worker test
and the fault drill. Debian's server binaries (PostgreSQL 15 on these machines)."""

import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# the newest if several are installed
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), default=Path("/nonexistent"))


def installed() -> bool:
    return (PG_BIN / "initdb").exists()


@dataclass
class Cluster:
    """A running throwaway cluster: its database's URL, and its server stopped or started again
    (the fault drill's database restarts)."""

    url: str
    pg_ctl: list  # pg_ctl -D <its data folder>
    start_options: list  # its log file and server options

    def stop(self) -> None:
        """As a crash or a restart by its operator would: connections dropped, nothing flushed."""
        subprocess.run([*self.pg_ctl, "-m", "immediate", "stop"], capture_output=True)

    def start(self) -> None:
        start = [*self.pg_ctl, *self.start_options, "-w", "start"]
        subprocess.run(start, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextmanager
def throwaway_cluster(database: str = "optuna"):
    """The URL of `database` on a fresh cluster; the cluster is stopped and removed after."""
    with cluster(database) as running:
        yield running.url


@contextmanager
def cluster(database: str = "optuna"):
    """`database` on a fresh cluster (run as the `postgres` user when this process is root, as
    PostgreSQL requires); stopped and removed after."""
    folder = Path(tempfile.mkdtemp(prefix="lora-study-pg-"))  # not under a root-only folder
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(folder, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = [*as_postgres, PG_BIN / "initdb", "-D", folder / "data", "-A", "trust", "-U", "postgres"]
    subprocess.run(run, check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
    # -l: the server's output goes to a file; on our pipes it would keep subprocess.run waiting
    pg_ctl = [*as_postgres, PG_BIN / "pg_ctl", "-D", folder / "data"]
    running = Cluster(
        f"postgresql://postgres@127.0.0.1:{port}/{database}", pg_ctl, ["-l", folder / "server.log", "-o", options]
    )
    running.start()
    try:
        create = [*as_postgres, PG_BIN / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database]
        subprocess.run(create, check=True, capture_output=True)
        yield running
    finally:
        running.stop()
        shutil.rmtree(folder, ignore_errors=True)
