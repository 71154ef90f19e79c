"""Two workers share one study on a real PostgreSQL server, logging to a real `mlflow server`."""

import os
import subprocess
import sys

import mlflow
import optuna
import postgres_cluster
import pytest

pytestmark = pytest.mark.slow  # a PostgreSQL server and an MLflow tracking server


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on loopback (benchmarks/postgres_cluster.py; the drill uses it too)."""
    if not postgres_cluster.installed():
        pytest.skip("PostgreSQL is not installed here; .ci/run installs it (Debian package postgresql)")
    with postgres_cluster.throwaway_cluster() as url:
        yield url


def test_two_workers_on_postgresql_complete_the_study_without_lost_or_duplicate_trials(
    postgres, tracking_server, tmp_path
):
    argv = [sys.executable, "-m", "lora_study", "sweep", *"--base-model tiny --max-samples 15 --seq-len 32".split()]
    argv += [*"--n-trials 6 --max-steps 4 --eval-every 2 --n-workers 2".split(), "--study-name", "shared"]
    argv += ["--storage", postgres, "--registered-model", "shared-adapters", "--confirm-top", "1"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_server}
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    every = optuna.load_study(study_name="shared", storage=postgres).trials
    assert all(t.state.is_finished() for t in every)
    assert sorted(t.number for t in every) == list(range(len(every)))
    trials = [t for t in every if t.user_attrs.get("phase", "explore") == "explore"]
    sampled = [t for t in trials if not {"neighbour_of", "replicate_of"} & set(t.user_attrs)]
    # each worker stops once 6 trials are finished; one may be mid-trial then and finish it too
    assert 6 <= len(sampled) <= 7
    # then both workers share the replicates, the best configuration's neighbours and the
    # confirmations: each once
    replicates = [t.user_attrs["replicate_of"] for t in trials if "replicate_of" in t.user_attrs]
    assert len(replicates) == 2 and len(set(replicates)) == 2
    neighbours = [t for t in trials if "neighbour_of" in t.user_attrs]
    assert len({tuple(sorted(t.params.items())) for t in neighbours}) == len(neighbours)
    confirm = [t for t in every if t.user_attrs.get("phase") == "confirm"]
    jobs = sorted((t.user_attrs["config_trial"], t.user_attrs["seed"]) for t in confirm)
    configs = sorted({config for config, _ in jobs})
    assert jobs == [(config, seed) for config in configs for seed in (0, 1)] and len(configs) == 1 + len(neighbours)
    assert all(t.state.name == "COMPLETE" for t in confirm)
    assert {t.user_attrs.get("phase") for t in every} <= {None, "explore", "confirm", "unused"}

    mlflow.set_tracking_uri(tracking_server)
    client = mlflow.MlflowClient()
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`lora_study.stage` = 'trial'"
    )
    assert sorted(int(r.data.tags["trial_number"]) for r in runs) == sorted(t.number for t in trials)
    assert {r.info.run_id for r in runs} == {t.user_attrs["mlflow_run_id"] for t in trials}
    (parent_id,) = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert all(r.info.status == "FINISHED" for r in runs)
    versions = client.search_model_versions("name = 'shared-adapters'")  # the best, and the answer if another
    assert 1 <= len(versions) <= 2 and all(v.tags["test_perplexity_n"] == "2" for v in versions)
    report = mlflow.artifacts.load_text(f"runs:/{parent_id}/report/report.md")  # read from MLflow alone
    assert f"| study | {client.get_run(parent_id).data.tags['lora_study.study']}, Optuna storage postgresql" in report
