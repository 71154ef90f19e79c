"""What a process says when its MLflow tracking server is away (a restart, a network cut).

MLflow's client retries every REST call itself (urllib3: MLFLOW_HTTP_REQUEST_MAX_RETRIES retries
with a growing backoff), and urllib3 warns at every retry of every call: hundreds of lines over
a 15 s restart. `say_once_per_outage` turns them into one line per outage, naming the server and
how long the client keeps trying.
"""

import logging
import math
import re
import time

from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_MAX_RETRIES

from lora_study import console


def say_once_per_outage() -> None:
    """In this process, from now on."""
    pool = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _OneLinePerOutage) for f in pool.filters):
        pool.addFilter(_OneLinePerOutage())


class _OneLinePerOutage(logging.Filter):
    """urllib3 warns at every retry of every request MLflow makes while its tracking server is
    away (a restart): one line when the retries begin, and none for the rest of that outage."""

    QUIET_S = 150.0  # retries this close belong to one outage: urllib3 pauses at most 120 s between two

    def __init__(self):
        super().__init__()
        self.last_retry = -math.inf

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("Retrying ("):
            return True
        now, first = time.monotonic(), time.monotonic() - self.last_retry > self.QUIET_S
        self.last_retry = now
        if first:
            server = re.search(r"host='([^']+)', port=(\d+)", message)
            where = f" {server[1]}:{server[2]}" if server else ""
            reason = re.search(r"Connection refused|Connection reset by peer|timed out", message)
            reason = reason or re.search(r"\w+Error", message)
            console.say(
                f"mlflow tracking server{where}: unreachable ({reason[0] if reason else 'no answer'}); MLflow retries "
                f"each call for about {_retry_budget_s():.0f} s (MLFLOW_HTTP_REQUEST_MAX_RETRIES, "
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR)"
            )
        return False


def _retry_budget_s() -> float:
    """How long MLflow's client waits out a server that does not answer, all retries together:
    urllib3 sleeps 0 s before the first retry, then backoff factor x 2^(n-1) s, at most 120 s each."""
    factor, retries = MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get(), MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()
    return sum(min(120.0, factor * 2 ** (n - 1)) for n in range(2, retries + 1))
