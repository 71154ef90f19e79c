"""Stage and trial runs end in the state they earned; runs go to the experiment chosen; params read back as given."""

import threading

import mlflow
import pytest
from conftest import runs

from lora_study import names, tracking
from lora_study.errors import UserInputError


class Pruned(Exception):
    pass


def the_run(experiment_id: str):
    [run] = runs(experiment_id)
    return run


def test_a_stage_run_that_raises_ends_failed_with_the_error(mlflow_experiment):
    with pytest.raises(ValueError), tracking.stage_run(names.STAGE_TRAIN):
        raise ValueError("seq_len too long")
    run = the_run(mlflow_experiment)
    assert run.info.status == "FAILED"
    assert run.data.tags[names.TAG_ERROR] == "ValueError: seq_len too long"
    assert run.data.tags[names.TAG_STAGE] == "train"
    assert mlflow.active_run() is None


def test_ctrl_c_ends_a_stage_run_killed(mlflow_experiment):
    with pytest.raises(KeyboardInterrupt), tracking.stage_run(names.STAGE_PREPARE):
        raise KeyboardInterrupt
    run = the_run(mlflow_experiment)
    assert run.info.status == "KILLED"
    assert run.data.tags[names.TAG_ERROR] == "interrupted (Ctrl-C)"


def test_a_stage_run_that_returns_ends_finished_with_its_tags(mlflow_experiment):
    with tracking.stage_run(names.STAGE_EVALUATE, **{"extra": "yes"}) as started:
        assert mlflow.active_run().info.run_id == started.info.run_id
    run = the_run(mlflow_experiment)
    assert run.info.status == "FINISHED"
    assert run.data.tags[names.TAG_STAGE] == "evaluate" and run.data.tags["extra"] == "yes"
    assert names.TAG_ERROR not in run.data.tags


def run_trial(experiment_id: str, parent_run_id: str, error: BaseException | None) -> str:
    """A trial under the active parent run that raises `error` (if any); the trial's run id."""
    trial_tags = {names.TAG_TRIAL_NUMBER: "3"}
    with tracking.trial_run("trial-3", experiment_id, parent_run_id, trial_tags, pruned=Pruned) as run_id:
        if error is not None:
            raise error
    return run_id


@pytest.mark.parametrize(
    "error, state, status, reason",
    [
        (None, "COMPLETE", "FINISHED", None),
        (Pruned("step 4"), "PRUNED", "FINISHED", None),
        (RuntimeError("out of memory"), "FAIL", "FAILED", "RuntimeError: out of memory"),
    ],
)
def test_a_trial_run_ends_with_its_trial_state(mlflow_experiment, error, state, status, reason):
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_name="sweep") as parent:
        parent_id = parent.info.run_id
        if error is None:
            trial_id = run_trial(mlflow_experiment, parent_id, None)
        else:
            with pytest.raises(type(error)):
                run_trial(mlflow_experiment, parent_id, error)
            [trial_id] = [run.info.run_id for run in runs(mlflow_experiment) if run.info.run_id != parent_id]
        assert mlflow.active_run().info.run_id == parent_id  # the sweep goes on
        assert client.get_run(parent_id).info.status == "RUNNING"
    trial = client.get_run(trial_id)
    assert trial.info.status == status
    assert trial.info.run_name == "trial-3"
    assert trial.data.tags[names.TAG_TRIAL_STATE] == state
    assert trial.data.tags[names.TAG_STAGE] == names.STAGE_TRIAL
    assert trial.data.tags[names.TAG_TRIAL_NUMBER] == "3"
    assert trial.data.tags["mlflow.parentRunId"] == parent_id
    assert trial.data.tags.get(names.TAG_ERROR) == reason
    assert client.get_run(parent_id).info.status == "FINISHED"


@pytest.fixture
def nothing_chosen(monkeypatch):
    """No experiment chosen, as in a new shell (the test's own is set by conftest)."""
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)


@pytest.mark.parametrize(
    "flag, env, expected",
    [
        (None, {}, "lora-study"),  # nobody chose: lora-study's own
        ("mine", {}, "mine"),
        (None, {"MLFLOW_EXPERIMENT_NAME": "from-env"}, "from-env"),
        ("flag-wins", {"MLFLOW_EXPERIMENT_NAME": "from-env"}, "flag-wins"),
    ],
)
def test_runs_go_to_the_experiment_chosen_tagged_as_model_training(flag, env, expected, nothing_chosen, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    experiment_id = tracking.use_experiment(flag)
    experiment = mlflow.get_experiment(experiment_id)
    assert experiment.name == expected
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    with mlflow.start_run() as run:
        assert run.info.experiment_id == experiment_id


def test_an_experiment_another_process_creates_at_the_same_moment_is_the_one_used(nothing_chosen, monkeypatch):
    """Two sweeps create `lora-study` at once: the one whose insert fails takes the other's."""
    existing = mlflow.create_experiment("created-meanwhile")
    lookups = iter([None, None])  # both lookups before the insert miss the other process's experiment
    store_client = mlflow.tracking._tracking_service.client.TrackingServiceClient
    found = store_client.get_experiment_by_name
    monkeypatch.setattr(
        store_client, "get_experiment_by_name", lambda self, name: next(lookups, None) or found(self, name)
    )
    assert tracking.use_experiment("created-meanwhile") == existing
    with mlflow.start_run() as run:
        assert run.info.experiment_id == existing


def test_a_deleted_experiment_is_one_line_with_the_fix(nothing_chosen):
    deleted = mlflow.create_experiment("deleted-one")
    mlflow.delete_experiment(deleted)
    with pytest.raises(UserInputError, match=f"restore it with `mlflow experiments restore --experiment-id {deleted}`"):
        tracking.use_experiment("deleted-one")


def test_an_experiment_of_a_kind_already_keeps_it(mlflow_experiment):
    mlflow.MlflowClient().set_experiment_tag(mlflow_experiment, "mlflow.experimentKind", "genai_development")
    assert tracking.use_experiment() == mlflow_experiment  # MLFLOW_EXPERIMENT_ID, as `mlflow run` sets it
    assert mlflow.get_experiment(mlflow_experiment).tags["mlflow.experimentKind"] == "genai_development"


@pytest.mark.parametrize(
    "args, label",
    [
        ((32, "qkvo", 1.93e-3), "r32 qkvo lr1.9e-3"),
        ((8, "all-linear", 0.02, "4bit"), "r8 all-linear lr2.0e-2 4bit"),
        ((16, "qv"), "r16 qv"),
    ],
)
def test_an_adapter_label_names_its_configuration_in_a_few_characters(args, label):
    assert tracking.adapter_label(*args) == label


def test_log_params_keeps_what_the_run_already_holds(mlflow_experiment):
    with mlflow.start_run() as run:
        tracking.log_params({"a": 1})
        tracking.log_params({"a": 2, "b": True})  # MLflow itself refuses to change `a`
    assert mlflow.get_run(run.info.run_id).data.params == {"a": "1", "b": "true"}


@pytest.mark.parametrize("text, value", [("''", ""), ("'a b'", "a b"), ("plain", "plain"), ("a b", "a b")])
def test_param_value_undoes_shell_quoting(text, value):
    assert tracking.param_value(text) == value


def test_a_run_logged_before_the_split_seed_was_named_reads_it_under_its_name(mlflow_experiment):
    with mlflow.start_run() as old:
        mlflow.log_params({"seed": "3", "seq_len": "32"})
    with mlflow.start_run() as new:
        mlflow.log_params({"split_seed": "1", "seq_len": "32"})
    assert tracking.run_params(old.info.run_id)["split_seed"] == "3"
    assert tracking.run_params(new.info.run_id) == {"split_seed": "1", "seq_len": "32"}


def test_workers_adding_the_same_tags_at_once_to_a_shared_run_and_version_are_all_written(tracking_server, monkeypatch):
    """Sweep workers finishing together tag their study's parent run and the versions they
    registered. Through a real `mlflow server` on SQLite, 4 threads add each of 40 new keys at
    once; without `once_more_if_raced` some of them are refused on the store's unique constraint."""
    from lora_study.registry import versions

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    mlflow.set_tracking_uri(tracking_server)
    client = mlflow.MlflowClient()
    run_id = client.create_run(client.create_experiment("shared-parent")).info.run_id
    client.create_registered_model("shared-model")
    version = client.create_model_version("shared-model", f"runs:/{run_id}/adapter", run_id=run_id).version
    refused = []

    def write(key: str) -> None:
        try:
            tracking.once_more_if_raced(client.set_tag, run_id, key, "same")
            versions.tag_version("shared-model", version, {key: "same"})
        except Exception as error:
            refused.append(error)

    for n in range(40):
        threads = [threading.Thread(target=write, args=(f"key.{n}",)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert refused == []
    keys = {f"key.{n}" for n in range(40)}
    assert keys <= set(client.get_run(run_id).data.tags)
    assert keys <= set(client.get_model_version("shared-model", version).tags)
