"""The MLproject entry points, run the way users run them: `mlflow run . -e ... --env-manager local`."""

import re

import mlflow
import pytest
from conftest import mlflow_run, runs, write_grouped_topics

pytestmark = pytest.mark.slow  # `mlflow run` in a process of its own


def test_prepare_entry_point_finishes(tmp_path, mlflow_experiment):
    path = tmp_path / "notes.txt"
    words = [f"w{i}x{j}" for i in range(12) for j in range(24)]  # no note repeats another's text
    path.write_text("\n\n".join(f"note {i}: " + " ".join(words[24 * i : 24 * i + 24]) for i in range(12)))
    done = mlflow_run("prepare", mlflow_experiment, dataset=path, base_model="tiny", seq_len=32)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = runs(mlflow_experiment)
    assert run.info.status == "FINISHED"
    assert run.data.params["seq_len"] == "32" and run.data.params["detected_format"] == "text"


def test_prepare_entry_point_bad_input_fails_the_run_with_one_line(tmp_path, mlflow_experiment):
    done = mlflow_run("prepare", mlflow_experiment, dataset=tmp_path / "none.jsonl", base_model="tiny")
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("lora-study: error:")]
    assert errors == [f"lora-study: error: --dataset: file {tmp_path / 'none.jsonl'} does not exist"]
    (run,) = runs(mlflow_experiment)
    assert run.info.status == "FAILED"


def test_train_then_merge_entry_points_finish_and_log_their_models(mlflow_experiment, tmp_path):
    done = mlflow_run(
        "train", mlflow_experiment, base_model="tiny", max_samples=15, seq_len=32, max_steps=2, batch_size=4
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = runs(mlflow_experiment)
    assert run.info.status == "FINISHED" and run.data.params["steps"] == "2"
    # MLflow's own loader, on the URI train printed (its model is named for its configuration)
    (printed,) = re.findall(r"^adapter r8-qv-lr\S+-seed0-2steps: (models:/m-\w+)$", done.stdout, re.M)
    assert mlflow.pyfunc.load_model(printed).metadata.signature is not None
    done = mlflow_run(
        "merge",
        mlflow_experiment,
        model_uri=f"runs:/{run.info.run_id}/adapter",
        output_dir=tmp_path / "merged",
        max_prompts=1,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (merge,) = [r for r in runs(mlflow_experiment) if r.info.run_id != run.info.run_id]
    assert merge.info.status == "FINISHED" and merge.data.metrics["merged_matches"] == 1
    assert (tmp_path / "merged" / "model.safetensors").exists()


def test_sweeping_a_study_again_continues_its_parent_run(mlflow_experiment, tmp_path):
    """`mlflow run -e sweep` twice: the first run `mlflow run` made is the new study's parent and
    holds both sweeps' trials; the second, nested under it, points at it: one row at the top."""
    params = dict(base_model="tiny", max_samples=15, seq_len=32, n_trials=1, max_steps=2, eval_every=1)
    params |= dict(confirm_top=0, study_name="again", storage=f"sqlite:///{tmp_path}/optuna.db")
    for n_trials in (1, 2):
        done = mlflow_run("sweep", mlflow_experiment, **{**params, "n_trials": n_trials})
        assert done.returncode == 0, done.stderr[-2000:]
    every = runs(mlflow_experiment)
    (parent,) = [r for r in every if r.data.tags["lora_study.stage"] == "sweep"]
    assert parent.data.tags["mlflow.project.entryPoint"] == "sweep" and parent.info.run_name == "sweep again"
    (invocation,) = [r for r in every if r.data.tags["lora_study.stage"] == "sweep_invocation"]
    points_at = (invocation.data.tags["lora_study.study_run"], invocation.data.tags["mlflow.parentRunId"])
    assert points_at == (parent.info.run_id, parent.info.run_id)
    assert invocation.info.run_name == "sweep again: continued in this parent run"
    assert parent.info.status == invocation.info.status == "FINISHED"
    assert [r for r in every if "mlflow.parentRunId" not in r.data.tags] == [parent]  # one row at the top
    trials = [r for r in every if r.data.tags["lora_study.stage"] == "trial"]
    assert len(trials) == 2 and {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent.info.run_id}


@pytest.mark.smoke
def test_train_and_evaluate_on_smollm2(mlflow_experiment):
    """A handful of real steps on SmolLM2 and Python's documentation, then `evaluate`."""
    done = mlflow_run(
        "train",
        mlflow_experiment,
        seq_len=128,
        max_samples=30,
        max_steps=6,
        batch_size=4,
        learning_rate=1e-3,
        eval_every=0,
        target_modules="qkvo",
        forgetting_data="none",  # sampling the base's own text on SmolLM2 takes longer than the training
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (train,) = runs(mlflow_experiment)
    history = mlflow.MlflowClient().get_metric_history(train.info.run_id, "eval_loss")
    by_step = {m.step: m.value for m in history}
    assert set(by_step) == {0, 6} and by_step[6] < by_step[0]
    done = mlflow_run(
        "evaluate",
        mlflow_experiment,
        model_uri=f"runs:/{train.info.run_id}/adapter",
        max_prompts=2,
        max_new_tokens=8,
        forgetting_data="none",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    evaluate = next(run for run in runs(mlflow_experiment) if run.info.run_id != train.info.run_id)
    metrics = evaluate.data.metrics
    assert metrics["test_perplexity"] < metrics["base_test_perplexity"] and metrics["gen_tokens_per_s"] > 0


@pytest.mark.smoke
def test_prepare_on_the_embedded_default(mlflow_experiment):
    """The real thing: SmolLM2's tokenizer on Python's own documentation."""
    done = mlflow_run("prepare", mlflow_experiment)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = runs(mlflow_experiment)
    assert run.info.status == "FINISHED"
    assert run.data.params["dataset"] == "python-docs" and run.data.params["base_model"] == "smollm2-135m"
    assert len(run.data.params["base_model_sha256"]) == 64
    for split in ("train", "validation", "test"):
        assert run.data.metrics[f"{split}_tokens"] >= 256
    assert sum(run.data.metrics[f"{s}_documents"] for s in ("train", "validation", "test")) == 79
    contexts = sorted(i.tags[0].value for i in run.inputs.dataset_inputs)
    assert contexts == ["test", "train", "validation"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "data")}
    assert artifacts == {
        f"data/{name}" for name in ("meta.json", "train.parquet", "validation.parquet", "test.parquet")
    }


def test_train_by_group_again_continues_its_parent_run(mlflow_experiment, tmp_path):
    """`mlflow run -e train -P group_by=topic` for one group, then for another: the first run
    `mlflow run` made holds both groups' runs; the second points at it."""
    dataset = write_grouped_topics(tmp_path / "topics.jsonl", per_group=6)
    params = dict(base_model="tiny", dataset=dataset, group_by="topic", seq_len=32, max_steps=2, batch_size=4)
    params |= dict(eval_every=0, forgetting_data="none", registered_model="by-topic")
    for group in ("debugger", "string-methods"):
        done = mlflow_run("train", mlflow_experiment, **params, groups=group)
        assert done.returncode == 0, done.stderr[-2000:]
    every = runs(mlflow_experiment)
    (parent,) = [r for r in every if r.data.tags["lora_study.stage"] == "train_groups"]
    (invocation,) = [r for r in every if r.data.tags["lora_study.stage"] == "train_groups_invocation"]
    assert invocation.data.tags["lora_study.study_run"] == parent.info.run_id
    assert invocation.data.tags["mlflow.parentRunId"] == parent.info.run_id  # nested: one row at the top
    assert invocation.info.run_name == f"{parent.info.run_name}: continued in this parent run"
    assert parent.data.tags["mlflow.project.entryPoint"] == "train" and parent.info.status == "FINISHED"
    nested = [r for r in every if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    groups = [r for r in nested if r is not invocation]
    assert sorted(r.data.tags["lora_study.group"] for r in groups) == ["debugger", "string-methods"]
    assert {r.info.status for r in groups} == {"FINISHED"}
