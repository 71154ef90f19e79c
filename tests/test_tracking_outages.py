"""What a process says while its tracking server is away."""

import logging

import pytest

from lora_study import tracking_outages


@pytest.fixture
def pool():
    """urllib3's logger with a fresh filter, taken off again after the test."""
    logger = logging.getLogger("urllib3.connectionpool")
    ours = [f for f in logger.filters if isinstance(f, tracking_outages._OneLinePerOutage)]
    for found in ours:
        logger.removeFilter(found)
    tracking_outages.say_once_per_outage()
    yield logger
    for found in [f for f in logger.filters if isinstance(f, tracking_outages._OneLinePerOutage)]:
        logger.removeFilter(found)
    for found in ours:
        logger.addFilter(found)


def test_an_unreachable_tracking_server_is_one_line_not_a_warning_per_retry(pool, caplog, capsys, monkeypatch):
    """urllib3 warns at each retry of each request MLflow makes; a worker says one line per outage."""
    retry = (
        "Retrying (Retry(total=6, connect=6, read=7, redirect=7, status=7)) after connection broken by "
        "'NewConnectionError(\"HTTPConnection(host='127.0.0.1', port=5000): Failed to establish a new connection: "
        "[Errno 111] Connection refused\")': /api/2.0/mlflow/runs/log-batch"
    )
    for _ in range(5):
        pool.warning(retry)
    pool.warning("Connection pool is full, discarding connection: 127.0.0.1")  # not a retry: it still shows
    assert [r.getMessage() for r in caplog.records] == ["Connection pool is full, discarding connection: 127.0.0.1"]
    assert capsys.readouterr().err.splitlines() == [
        "mlflow tracking server 127.0.0.1:5000: unreachable (Connection refused); MLflow retries each call for "
        "about 244 s (MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR)"
    ]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")  # 4 + 8 s
    monkeypatch.setattr(tracking_outages._OneLinePerOutage, "QUIET_S", 0.0)  # the next retry is another outage
    pool.warning(retry)
    assert "for about 12 s" in capsys.readouterr().err
