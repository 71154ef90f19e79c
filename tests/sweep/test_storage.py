"""The sweep's Optuna storage: workers opening an empty database together all get in, and a trial
whose worker died before its first heartbeat is found stale, so no wait in a sweep waits on it."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import optuna
import postgres_cluster
import pytest
from optuna.trial import TrialState

from lora_study import parent_runs
from lora_study.errors import UserInputError
from lora_study.sweep.storage import gave_up_is_one_line, open_storage
from lora_study.sweep.study import ATTR_RETRY_OF, fail_stale_trial_run, wait_for_confirmations

JOB = {"phase": "confirm", "config_trial": 0, "seed": 1, "steps": 12}


def test_a_confirmation_whose_worker_died_before_its_first_heartbeat_is_queued_again(tmp_path, monkeypatch):
    """Killed between Optuna's `ask` (the trial RUNNING) and the heartbeat thread's first beat:
    Optuna's own stale check never sees it. The confirm phase's wait must not wait on it."""
    monkeypatch.setattr(parent_runs, "HEARTBEAT_S", 1)
    storage = open_storage(f"sqlite:///{tmp_path}/optuna.db", fail_stale_trial_run)
    study = optuna.create_study(storage=storage, study_name="never-beat")
    for seed in (1, 2):
        study.enqueue_trial({}, user_attrs={**JOB, "seed": seed})
    killed = study.ask()  # ... and its worker killed here: RUNNING, no heartbeat, no MLflow run
    time.sleep(2.5)  # past the grace period of two heartbeats
    live = study.ask()  # another worker's, beating all along
    done = threading.Event()

    def beat() -> None:
        while not done.is_set():
            storage.record_heartbeat(live._trial_id)
            done.wait(0.3)

    threading.Thread(target=beat, daemon=True).start()
    answered = []
    waiting = threading.Thread(target=lambda: answered.append(wait_for_confirmations(study)), daemon=True)
    waiting.start()
    waiting.join(timeout=20)
    done.set()
    assert answered == [True], "the wait for confirmations hung on a trial that will never finish"
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert trials[killed.number].state == TrialState.FAIL and trials[live.number].state == TrialState.RUNNING
    (again,) = [t for t in trials.values() if t.user_attrs.get(ATTR_RETRY_OF) == killed.number]
    assert (
        again.state == TrialState.WAITING and again.user_attrs["seed"] == 1 and again.user_attrs["phase"] == "confirm"
    )


@pytest.mark.slow  # a PostgreSQL server
def test_workers_opening_an_empty_database_together_all_open_it():
    """Machines started together on an empty database each create Optuna's tables; all get in."""
    if not postgres_cluster.installed():
        pytest.skip("PostgreSQL is not installed here; .ci/run installs it (Debian package postgresql)")
    with postgres_cluster.throwaway_cluster("empty") as url, ThreadPoolExecutor(6) as pool:
        storages = list(pool.map(lambda _: open_storage(url, fail_stale_trial_run), range(6)))
    assert len(storages) == 6


@pytest.mark.slow  # a PostgreSQL server
def test_a_study_waits_out_its_database_restarting_and_gives_up_in_one_line(monkeypatch, capsys):
    """Every call Optuna makes, through the cache it puts in front of an RDB storage too, waits
    for a database that went away; past --storage-wait-s, one line names the storage."""
    if not postgres_cluster.installed():
        pytest.skip("PostgreSQL is not installed here; .ci/run installs it (Debian package postgresql)")
    monkeypatch.setattr(parent_runs, "HEARTBEAT_S", 1)
    with postgres_cluster.cluster("outage") as database:
        storage = open_storage(database.url, fail_stale_trial_run, wait_s=60)
        study = optuna.create_study(storage=storage, study_name="outage")
        study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
        database.stop()
        threading.Timer(3, database.start).start()
        study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)  # ask, suggest, tell
        assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
        said = capsys.readouterr().err
        # one line when it goes, one when it is back: not one per thread that met it (the heartbeat's too)
        assert said.count("optuna storage postgresql://postgres@127.0.0.1:") == 2, said
        assert said.count("unreachable (") == 1 and "retrying for up to 60 s (--storage-wait-s)" in said
        assert said.count(": back; going on") == 1
        storage.wait_s = 2
        database.stop()
        with pytest.raises(UserInputError, match=r"unreachable for 2 s .*run the same command again"):
            with gave_up_is_one_line(study):
                study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1, catch=(Exception,))
