"""The fault drill's short version (benchmarks/fault_drill.py): `mlflow run -e sweep` killed
with SIGKILL 3 times at random moments, then run to the end, leaves a whole study."""

import random

import fault_drill
import pytest

ZERO = [
    "trials missing",
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
