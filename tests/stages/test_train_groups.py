"""`train --group-by`: a nested run per group on one base, a rerun that trains only what is not
finished, the cross-group matrix, and every group's adapter registered and served by one pattern."""

import contextlib
import io
import time

import mlflow
import pandas as pd
import pytest
from conftest import GROUPED_TOPICS, PROMPTS, answers, runs, write_grouped_topics

from lora_study import adapters, cli, logged_models, names, registry, serving, tracking, training
from lora_study.config import EvaluateConfig
from lora_study.errors import UserInputError
from lora_study.stages.evaluate import run_evaluate

NAME = "grouped-topics"


def grouped_train(dataset, *extra: str, name: str = NAME) -> tuple[int, str]:
    """`lora-study train --group-by topic` on the tiny model; its exit code and what it printed."""
    argv = ["train", "--base-model", "tiny", "--dataset", str(dataset), "--group-by", "topic", "--seq-len", "32"]
    argv += ["--max-steps", "4", "--batch-size", "4", "--learning-rate", "1e-2", "--eval-every", "0"]
    argv += ["--registered-model", name, *extra]
    said = io.StringIO()
    with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
        code = cli.main(argv)
    return code, said.getvalue()


@pytest.fixture(scope="module")
def grouped(tracking_uri, tmp_path_factory):
    """One grouped training of the four topics (and the group `try`, too small), in an experiment of its own."""
    folder = tmp_path_factory.mktemp("grouped")
    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = mlflow.create_experiment("grouped", str(folder / "artifacts"))
    mlflow.set_experiment(experiment_id=experiment_id)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        patch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
        code, said = grouped_train(write_grouped_topics(folder / "topics.jsonl"))
    assert code == 0, said
    (parent,) = [run for run in runs(experiment_id) if run.data.tags[names.TAG_STAGE] == "train_groups"]
    children = {run.data.tags[names.TAG_GROUP]: run for run in tracking.child_runs(parent.info.run_id)}
    return parent, children, said


def test_each_group_trains_in_a_nested_run_and_says_so_in_a_line(grouped):
    parent, children, said = grouped
    assert parent.info.status == "FINISHED" and parent.data.metrics["trained_groups"] == 4
    assert parent.data.metrics["skipped_groups"] == 1
    assert sorted(children) == sorted(GROUPED_TOPICS)
    for value, run in children.items():
        assert run.info.status == "FINISHED" and run.data.params["group"] == value
        assert run.data.tags[names.TAG_STAGE] == "train" and run.info.run_name.startswith(f"group {value} r8 qv")
        assert run.data.params["dataset_digest"] != parent.data.params["dataset_digest"]  # its own split
        assert run.data.metrics["test_perplexity"] != run.data.metrics["base_test_perplexity"]
    lines = said.splitlines()
    assert "groups topic: 4 with data enough, 1 without; 5 chosen, 0 trained before" in lines
    assert "group try  5/5  skipped: 2 document(s): too few to split into train, validation and test" in lines
    assert any(line.startswith("group debugger  2/5  test ppl ") for line in lines)


def test_each_groups_model_carries_its_test_perplexity_on_its_groups_data(grouped):
    """The Models tab's leaderboard: a group's LoggedModel holds its test perplexity, linked to the
    dataset its run trained on (the group's prepared rows), and its costs, linked to none."""
    _, children, _ = grouped
    client = mlflow.MlflowClient()
    for run in children.values():
        (trained_on,) = [given.dataset for given in client.get_run(run.info.run_id).inputs.dataset_inputs]
        model = client.get_logged_model(logged_models.of_run(run.info.run_id).removeprefix("models:/"))
        linked = {metric.key: metric for metric in model.metrics}
        test = linked["test_perplexity"]
        assert test.value == pytest.approx(run.data.metrics["test_perplexity"])
        assert (test.dataset_name, test.dataset_digest) == (trained_on.name, trained_on.digest)
        assert linked["trainable_params"].dataset_name is None


def test_the_cross_group_matrix_puts_each_adapter_on_every_groups_test_split(grouped):
    parent, children, _ = grouped
    table = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/{names.ARTIFACT_CROSS_GROUP}")
    matrix = pd.DataFrame(table["data"], columns=table["columns"]).set_index("adapter")
    assert matrix.shape == (5, 4) and list(matrix.index) == ["base", *GROUPED_TOPICS]
    assert list(matrix.columns) == list(GROUPED_TOPICS)
    for value, run in children.items():
        assert matrix.loc[value, value] == pytest.approx(run.data.metrics["test_perplexity"], rel=1e-9)
        assert matrix.loc["base", value] == pytest.approx(run.data.metrics["base_test_perplexity"], rel=1e-9)
    own = sum(1 - matrix.loc[g, g] / matrix.loc["base", g] for g in GROUPED_TOPICS) / 4
    assert parent.data.metrics["own_group_improvement_pct"] == pytest.approx(100 * own)
    plot = mlflow.artifacts.download_artifacts(f"runs:/{parent.info.run_id}/{names.ARTIFACT_CROSS_GROUP_PLOT}")
    assert open(plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_every_groups_adapter_is_registered_and_one_pattern_serves_them_all(grouped):
    parent, children, said = grouped
    entries = serving.adapter_entries(f"models:/{NAME}@group-*")
    assert [name for name, _ in entries] == sorted(f"{NAME}@group-{value}" for value in GROUPED_TOPICS)
    for value, run in children.items():
        version = registry.alias_version(NAME, f"group-{value}")
        assert version.run_id == run.info.run_id and version.tags[names.TAG_GROUP] == value
        assert f"trained on the group `{value}`" in version.description
    assert f"serve them all: lora-study serve --adapters 'models:/{NAME}@group-*'" in said
    model = mlflow.pyfunc.load_model(str(adapters.save_multi_adapter_model(entries)))
    for value, run in children.items():
        alone = answers(f"runs:/{run.info.run_id}/adapter", PROMPTS[:1])
        served = model.predict(
            pd.DataFrame({"prompt": PROMPTS[:1]}), params={"max_new_tokens": 8, "adapter": f"{NAME}@group-{value}"}
        )
        assert served == alone, value


def test_evaluate_measures_a_groups_adapter_on_that_groups_test_split(grouped):
    _, children, _ = grouped
    run_id = run_evaluate(EvaluateConfig(model_uri=f"models:/{NAME}@group-debugger", max_prompts=0))
    measured = mlflow.get_run(run_id).data.metrics["test_perplexity"]
    assert measured == pytest.approx(children["debugger"].data.metrics["test_perplexity"], rel=1e-3)


def test_a_rerun_trains_only_the_groups_not_finished_and_recovers_a_killed_one(mlflow_experiment, tmp_path):
    dataset = write_grouped_topics(tmp_path / "topics.jsonl", per_group=10)
    code, said = grouped_train(
        dataset, "--groups", "debugger,string-methods", "--forgetting-data", "none", name="rerun"
    )
    assert code == 0, said
    (parent,) = [run for run in runs(mlflow_experiment) if run.data.tags.get(names.TAG_STAGE) == "train_groups"]
    first = {run.data.tags[names.TAG_GROUP]: run.info.run_id for run in tracking.child_runs(parent.info.run_id)}
    assert sorted(first) == ["debugger", "string-methods"]

    # a process killed while training `formatstrings`: its runs left RUNNING, its heartbeat stopped
    client = mlflow.MlflowClient()
    client.update_run(parent.info.run_id, "RUNNING")
    client.set_tag(parent.info.run_id, names.TAG_HEARTBEAT, f"{time.time() - 600:.0f}")
    dead = client.create_run(
        mlflow_experiment,
        tags={
            names.TAG_MLFLOW_PARENT_RUN: parent.info.run_id,
            names.TAG_GROUP: "formatstrings",
            names.TAG_GROUP_KEY: "formatstrings",
        },
    )

    code, said = grouped_train(dataset, "--forgetting-data", "none", name="rerun")
    assert code == 0, said
    assert "groups topic: 4 with data enough, 1 without; 5 chosen, 2 trained before" in said
    assert f"group debugger  2/5  trained before (run {first['debugger']})" in said
    children = tracking.child_runs(parent.info.run_id)
    finished = {run.data.tags[names.TAG_GROUP]: run.info.run_id for run in children if run.info.status == "FINISHED"}
    assert sorted(finished) == sorted(GROUPED_TOPICS)
    assert {key: finished[key] for key in first} == first  # not trained again
    assert client.get_run(dead.info.run_id).info.status == "KILLED"
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert len([r for r in runs(mlflow_experiment) if r.data.tags.get(names.TAG_STAGE) == "train_groups"]) == 1
    versions = client.search_model_versions("name = 'rerun'")
    assert len([v for v in versions if v.run_id in finished.values()]) == 4  # one version per group's run


def test_a_group_alias_moves_only_to_a_better_adapter_unless_forced(mlflow_experiment, tmp_path):
    """`group-<key>` follows `challenger`'s rule: a new version takes it only with a better test
    perplexity on the same test split; `promote --force` moves it anyway."""
    dataset = write_grouped_topics(tmp_path / "topics.jsonl", per_group=10)
    once = ("--groups", "debugger", "--forgetting-data", "none")
    code, said = grouped_train(dataset, *once, name="forward")
    assert code == 0, said
    assert "forward@group-debugger -> version 1 (test_perplexity " in said
    code, said = grouped_train(dataset, *once, "--learning-rate", "1e-6", name="forward")  # barely trained
    assert code == 0, said
    assert "forward@group-debugger stays on version 1: version 2 is not better than @group-debugger (version 1)" in said
    assert "registered forward: group-debugger (version 1)" in said
    argv = ["promote", "forward", "--version", "2", "--alias", "group-debugger", "--force", "--reason", "by hand"]
    assert cli.main(argv) == 0
    assert str(registry.alias_version("forward", "group-debugger").version) == "2"


def test_a_run_training_the_same_groups_now_is_not_joined(mlflow_experiment, tmp_path):
    dataset = write_grouped_topics(tmp_path / "topics.jsonl", per_group=10)
    code, said = grouped_train(dataset, "--groups", "debugger", "--forgetting-data", "none", name="live")
    assert code == 0, said
    (parent,) = [run for run in runs(mlflow_experiment) if run.data.tags.get(names.TAG_STAGE) == "train_groups"]
    client = mlflow.MlflowClient()
    client.update_run(parent.info.run_id, "RUNNING")
    client.set_tag(parent.info.run_id, names.TAG_HEARTBEAT, f"{time.time():.0f}")  # alive
    code, said = grouped_train(dataset, "--forgetting-data", "none", name="live")
    assert code == 2
    assert (
        said.strip()
        .splitlines()[-1]
        .startswith(f"lora-study: error: run {parent.info.run_id} is training these groups now")
    )


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--groups", "a"], "--groups: only with --group-by COLUMN (one adapter per group)"),
        (["--registered-model", "x"], "--registered-model: only with --group-by COLUMN (one adapter per group)"),
        (["--group-by", "nope"], "--group-by: no column `nope` in python-docs (columns: title, text)"),
        (
            ["--group-by", "title", "--registered-model", "a/b"],
            "--registered-model a/b: Invalid model name 'a/b'. Names cannot contain '/' or ':'.",
        ),
    ],
)
def test_bad_group_options_are_one_line(argv, expected, mlflow_experiment, capsys):
    assert cli.main(["train", "--base-model", "tiny", "--max-samples", "15", "--seq-len", "32", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lora-study: error: {expected}"]
    assert all(run.info.status != "RUNNING" for run in runs(mlflow_experiment))


def test_data_prepared_without_groups_is_refused_for_group_by(mlflow_experiment, tmp_path, capsys):
    dataset = write_grouped_topics(tmp_path / "topics.jsonl", per_group=6)
    assert cli.main(["prepare", "--base-model", "tiny", "--dataset", str(dataset), "--seq-len", "32"]) == 0
    (prepared,) = runs(mlflow_experiment)
    argv = [
        "train",
        "--base-model",
        "tiny",
        "--seq-len",
        "32",
        "--data",
        f"runs:/{prepared.info.run_id}",
        "--group-by",
        "topic",
    ]
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "lora-study: error: --data: prepared without --group-by, not --group-by topic; prepare it with "
        "--group-by topic, or leave --data empty"
    ]


def test_a_group_that_fails_is_named_and_the_others_go_on(mlflow_experiment, tmp_path, monkeypatch):
    fine_tune = training.fine_tune

    def failing_for_debugger(s, *args, **kwargs):  # a NaN loss in one group, on purpose
        if s.prepared.meta.group == "debugger":
            raise UserInputError("train_loss became nan at step 2: lower --learning-rate")
        return fine_tune(s, *args, **kwargs)

    monkeypatch.setattr(training, "fine_tune", failing_for_debugger)
    dataset = write_grouped_topics(tmp_path / "topics.jsonl", per_group=6)
    code, said = grouped_train(
        dataset, "--groups", "debugger,string-methods", "--forgetting-data", "none", name="failing"
    )
    assert code == 2
    lines = said.splitlines()
    assert "group debugger  1/2  failed: train_loss became nan at step 2: lower --learning-rate" in lines
    assert any(line.startswith("group string-methods  2/2  test ppl ") for line in lines)
    errors = [line for line in lines if line.startswith("lora-study: error: ")]
    assert errors[0] == "lora-study: error: group debugger: train_loss became nan at step 2: lower --learning-rate"
    assert errors[1].startswith("lora-study: error: 1 group(s) failed (their runs say why)") and len(errors) == 2
    (parent,) = [run for run in runs(mlflow_experiment) if run.data.tags.get(names.TAG_STAGE) == "train_groups"]
    assert parent.info.status == "FINISHED" and parent.data.metrics["failed_groups"] == 1
    assert parent.data.metrics["trained_groups"] == 1
    children = {run.data.tags[names.TAG_GROUP]: run for run in tracking.child_runs(parent.info.run_id)}
    assert children["debugger"].info.status == "FAILED"
    assert "train_loss became nan" in children["debugger"].data.tags[names.TAG_ERROR]
    version = registry.alias_version("failing", "group-string-methods")
    assert version.run_id == children["string-methods"].info.run_id  # registered although another failed
