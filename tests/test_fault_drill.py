"""The fault drill's short version (benchmarks/fault_drill.py): `mlflow run -e sweep` killed
with SIGKILL 3 times at random moments, then run to the end, leaves a whole study."""

import random

import fault_drill
import pytest

ZERO = [
    "trials missing",
    "complete runs lacking a final metric",
    "complete runs lacking their adapter",
    "trials left unfinished in Optuna",
    "runs left RUNNING",
    "duplicate trial results",
    "duplicate confirmations",
    "duplicate registrations",
]


@pytest.mark.slow
def test_a_sweep_killed_three_times_then_run_to_the_end_is_whole(tmp_path):
    # 20 explore and 60 confirm steps a trial (the drill's own: 60 and 180): the kills land within 15 s
    figures = fault_drill.kill_drill(
        tmp_path, kills=3, n_trials=3, window_s=15, rng=random.Random(0), max_steps="20", eval_every="10"
    )
    assert figures["last exit code"] == 0, (tmp_path / "sweeps.log").read_text()[-3000:]
    assert {key: figures[key] for key in ZERO} == dict.fromkeys(ZERO, 0)
    assert figures["trials finished"] == 3 and figures["parent runs of the study"] == 1
    assert figures["versions registered"] >= 1  # each confirmed configuration once (duplicates: zero)


@pytest.mark.slow
def test_oversized_input_is_refused_and_the_server_keeps_serving(tmp_path):
    """The drill's oversize version, each request once: bodies of 1 and 50 MB refused, a full batch
    at the max_new_tokens limit answered, the server alive after."""
    import oversize_drill

    figures = oversize_drill.oversize_drill(tmp_path, repeats=1)
    refused = [what for what, _ in oversize_drill.refused_requests()]
    assert [figures[f"{what}: statuses"] for what in refused] == ["400", "400", "413"]
    assert [figures[f"{what}: reason"].split(";")[0].split(":")[0] for what in refused] == [
        "prompt 1 has 1000000 characters",
        "20000 prompts in one request",
        "the request body has 50.0 MB",
    ]
    assert figures["8 prompts x 512 new tokens: status"] == 200
    assert figures["a short request beside it: statuses"] == "200" and figures["server alive after"] == 1


# 20 explore steps, one configuration confirmed with 2 seeds, no neighbours or replicates
SHORT_STUDY = {"max_steps": "20", "eval_every": "10", "confirm_top": "1", "explore_replicates": "0"}
SHORT_STUDY["confirm_neighbours"] = ""


@pytest.mark.slow
def test_a_shared_study_survives_its_database_restarting(tmp_path):
    """The drill's db-restart version: 2 workers, PostgreSQL down 5 s once; every worker waits,
    says so, and goes on."""
    import outage_drills
    import postgres_cluster

    if not postgres_cluster.installed():
        pytest.skip("PostgreSQL is not installed here; .ci/run installs it (Debian package postgresql)")
    figures = outage_drills.outage_drill(tmp_path, "db-restart", 1, 5, 3, 8, random.Random(0), workers=2, **SHORT_STUDY)
    said = "".join(log.read_text() for log in tmp_path.glob("worker-*.log"))
    assert figures["workers that exited non-zero"] == 0, said[-3000:]
    assert {key: figures[key] for key in ZERO} == dict.fromkeys(ZERO, 0)
    assert figures["tracebacks in the workers' output"] == 0, said[-3000:]
    assert figures["times a worker said it waits for the storage"] >= 1  # the outage met a working study
    assert figures["trials finished"] >= 3 and figures["parent runs of the study"] == 1


@pytest.mark.slow
def test_a_shared_study_survives_its_tracking_server_restarting(tmp_path):
    """The drill's server-restart version: 2 workers, `mlflow server` killed and started again
    after 5 s once; MLflow's client retries every call, each worker says so in one line, and no
    complete run lacks its metrics or its adapter."""
    import outage_drills
    import postgres_cluster

    if not postgres_cluster.installed():
        pytest.skip("PostgreSQL is not installed here; .ci/run installs it (Debian package postgresql)")
    figures = outage_drills.outage_drill(
        tmp_path, "server-restart", 1, 5, 3, 8, random.Random(0), workers=2, **SHORT_STUDY
    )
    said = "".join(log.read_text() for log in tmp_path.glob("worker-*.log"))
    assert figures["workers that exited non-zero"] == 0, said[-3000:]
    assert {key: figures[key] for key in ZERO} == dict.fromkeys(ZERO, 0)
    assert figures["tracebacks in the workers' output"] == 0, said[-3000:]
    assert 1 <= figures["times a worker said the tracking server is away"] <= 2, said[-3000:]
    assert figures["urllib3 retry warnings in the workers' output"] == 0
    assert figures["trials finished"] >= 3 and figures["parent runs of the study"] == 1
