"""A study's parent run and the runs of processes that died."""

import mlflow

from lora_study import names, parent_runs


def test_fail_run_ends_another_run_failed_with_the_reason(mlflow_experiment):
    client = mlflow.MlflowClient()
    run_id = client.create_run(mlflow_experiment).info.run_id
    parent_runs.fail_run(run_id, "worker 2 died", **{names.TAG_TRIAL_STATE: "FAIL"})
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[names.TAG_ERROR] == "worker 2 died"
    assert run.data.tags[names.TAG_TRIAL_STATE] == "FAIL"
