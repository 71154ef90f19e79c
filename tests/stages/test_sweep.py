"""The `sweep` stage on the tiny model: runs and names, pruning, failures, multi-objective, resume
after a killed worker, and the registry."""

import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import runs

from lora_study import cli, parent_runs, registry, tracking, training
from lora_study.errors import UserInputError
from lora_study.sweep.study import ATTR_RUN_ID

TINY = ["--base-model", "tiny", "--max-samples", "15", "--seq-len", "32"]
SPACE = """
sampler: {sampler}
space:
  rank: [4, 8]
  alpha: {{per_rank: 2}}
  target_modules: [qv, all-linear]
  learning_rate: {learning_rate}
  batch_size: 4
"""


def space_file(tmp_path, sampler="random", learning_rate="[0.02, 0.000001]"):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.format(sampler=sampler, learning_rate=learning_rate))
    return str(path)


def sweep_argv(tmp_path, *extra, n_trials=4, config=None, confirm_top=0):
    argv = ["sweep", *TINY, "--config", config or space_file(tmp_path), "--n-trials", str(n_trials)]
    argv += ["--max-steps", "4", "--eval-every", "2", "--storage", f"sqlite:///{tmp_path}/optuna.db"]
    argv += ["--confirm-top", str(confirm_top)]
    return argv + ["--study-name", "s", "--registered-model", registered(tmp_path), *extra]


def registered(tmp_path) -> str:
    """A registered model of the test's own: the tests share one MLflow store."""
    return f"tiny-{tmp_path.name}"


def parent_and_trials(experiment_id):
    all_runs = runs(experiment_id)
    parents = [r for r in all_runs if r.data.tags.get("lora_study.stage") == "sweep"]
    trials = [r for r in all_runs if r.data.tags.get("lora_study.stage") == "trial"]
    return parents, sorted(trials, key=lambda r: int(r.data.tags["trial_number"]))


def load_study(tmp_path, name="s"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/optuna.db")


@pytest.mark.slow  # a whole multi-trial sweep
def test_a_sweep_is_a_parent_run_with_a_nested_run_per_trial(tmp_path, mlflow_experiment, capsys):
    assert cli.main(sweep_argv(tmp_path, "--pruner", "none")) == 0
    (parent,), trials = parent_and_trials(mlflow_experiment)
    assert parent.info.status == "FINISHED" and parent.data.tags["lora_study.study"] == "s"
    assert [int(t.data.tags["trial_number"]) for t in trials] == [0, 1, 2, 3]
    for trial in trials:
        assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert trial.data.tags["trial_state"] == "COMPLETE" and trial.info.status == "FINISHED"
        # everything `train` logs, under the same names
        for name in ("rank", "alpha", "target_modules", "learning_rate", "seq_len", "base_model", "dataset_digest"):
            assert name in trial.data.params
        for name in ("eval_perplexity", "train_tokens_per_s", "peak_memory_mb", "trainable_params", "adapter_size_mb"):
            assert name in trial.data.metrics
        assert trial.data.params["alpha"] == str(2.0 * int(trial.data.params["rank"]))
    metrics, params = parent.data.metrics, parent.data.params
    assert (metrics["complete_trials"], metrics["pruned_trials"], metrics["failed_trials"]) == (4, 0, 0)
    best = min(trials, key=lambda t: t.data.metrics["eval_perplexity"])
    assert metrics["best_perplexity"] == pytest.approx(best.data.metrics["eval_perplexity"])
    assert params["best_rank"] == best.data.params["rank"] and params["n_trials"] == "4"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "plots")}
    always = {
        f"plots/{name}.png"
        for name in (
            "perplexity_vs_memory",
            "perplexity_vs_forgetting",
            "optimization_history",
            "parameter_importances",
        )
    }
    by_factor = {f"plots/perplexity_by_{factor}.png" for factor in ("rank", "target_modules")}
    assert always <= artifacts <= always | by_factor and artifacts & by_factor  # the factors that varied
    table = mlflow.load_table("trials.json", run_ids=[parent.info.run_id])
    assert sorted(table.trial_number) == [0, 1, 2, 3]
    # the best adapter is registered once, with its tags, as the challenger
    version = mlflow.MlflowClient().get_model_version_by_alias(registered(tmp_path), "challenger")
    assert version.run_id == best.info.run_id
    tags = version.tags
    assert tags["lora_study.study"] == "s" and tags["trial_number"] == best.data.tags["trial_number"]
    assert float(tags["test_perplexity"]) < float(tags["base_test_perplexity"])
    assert tags["base_model"] == "tiny" and len(tags["base_model_sha256"]) == 64
    assert "champion" not in mlflow.MlflowClient().get_registered_model(registered(tmp_path)).aliases
    out = capsys.readouterr().out
    assert "mlflow ui --backend-store-uri" in out and f"models:/{registered(tmp_path)}@challenger" in out


@pytest.mark.slow  # a whole multi-trial sweep
def test_a_trial_behind_the_median_is_pruned_and_recorded(tmp_path, mlflow_experiment):
    good = {"rank": 8, "target_modules": "qv", "learning_rate": 0.02}
    created = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db")
    for params in (good, good, good, {**good, "learning_rate": 0.000001}):  # the median pruner waits for 3
        created.enqueue_trial(params)
    assert cli.main(sweep_argv(tmp_path, "--pruner", "median")) == 0
    (parent,), trials = parent_and_trials(mlflow_experiment)
    assert [t.data.tags["trial_state"] for t in trials] == ["COMPLETE"] * 3 + ["PRUNED"]
    assert trials[3].info.status == "FINISHED"
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(trials[3].info.run_id, "eval_loss")] == [0, 2]
    assert parent.data.metrics["pruned_trials"] == 1
    assert load_study(tmp_path).trials[3].state == optuna.trial.TrialState.PRUNED


@pytest.mark.slow  # a whole multi-trial sweep
def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, mlflow_experiment, monkeypatch):
    fine_tune = training.fine_tune

    def failing_for_rank_4(s, adapter, train, **hooks):
        if adapter.rank == 4:
            raise UserInputError("train_loss became nan at step 1: lower --learning-rate")
        return fine_tune(s, adapter, train, **hooks)

    monkeypatch.setattr(training, "fine_tune", failing_for_rank_4)
    created = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db")
    created.enqueue_trial({"rank": 4, "target_modules": "qv", "learning_rate": 0.02})
    assert cli.main(sweep_argv(tmp_path, "--pruner", "none", n_trials=3)) == 0
    (parent,), trials = parent_and_trials(mlflow_experiment)
    assert trials[0].info.status == "FAILED" and trials[0].data.tags["trial_state"] == "FAIL"
    assert "train_loss became nan" in trials[0].data.tags["lora_study.error"]
    assert parent.data.metrics["failed_trials"] == 1 and parent.data.metrics["complete_trials"] == 2
    assert parent.info.status == "FINISHED"


@pytest.mark.slow  # a whole multi-trial sweep
def test_several_objectives_keep_and_register_the_pareto_front(tmp_path, mlflow_experiment):
    argv = sweep_argv(tmp_path, "--objectives", "perplexity,trainable_params", n_trials=5)
    assert cli.main(argv) == 0
    front = load_study(tmp_path).best_trials
    assert len(load_study(tmp_path).directions) == 2 and front
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{registered(tmp_path)}'")
    assert sorted(int(v.tags["trial_number"]) for v in versions) == sorted(t.number for t in front)
    challenger = mlflow.MlflowClient().get_model_version_by_alias(registered(tmp_path), "challenger")
    assert int(challenger.tags["trial_number"]) == min(front, key=lambda t: t.values[0]).number
    assert {"eval_perplexity", "trainable_params"} <= set(challenger.tags)
    (parent,), _ = parent_and_trials(mlflow_experiment)
    report = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/report/report.md")
    assert "The study confirmed no configuration with seeds (--confirm-top 0, or no confirmation completed)" in report
    assert "objectives perplexity,trainable_params" in report


CONFIRM = ["--max-steps", "2", "--eval-every", "1", "--confirm-seeds", "2", "--pruner", "none"]
ONLY_CONFIRMATIONS = ["--confirm-neighbours", "", "--explore-replicates", "0"]  # nothing else queued


def confirmation_runs(experiment_id) -> list:
    return [r for r in runs(experiment_id) if r.data.tags["lora_study.stage"] == "confirm"]


@pytest.mark.slow  # a whole multi-trial sweep, both phases
def test_the_best_configurations_are_confirmed_with_seeds_and_the_rule_picks_one(tmp_path, mlflow_experiment, capsys):
    assert cli.main(sweep_argv(tmp_path, *CONFIRM, *ONLY_CONFIRMATIONS, n_trials=3, confirm_top=2)) == 0
    study = load_study(tmp_path)
    explore = [t for t in study.trials if t.user_attrs.get("phase") != "confirm"]
    confirm = [t for t in study.trials if t.user_attrs.get("phase") == "confirm"]
    assert len(explore) == 3 and max(t.number for t in explore) < min(t.number for t in confirm)
    configs = {t.user_attrs["config_trial"] for t in confirm}
    assert len(configs) == 2 and all(t.state.name == "COMPLETE" for t in confirm)
    assert sorted((t.user_attrs["config_trial"], t.user_attrs["seed"]) for t in confirm) == [
        (c, seed) for c in sorted(configs) for seed in (0, 1)
    ]
    for t in confirm:  # the configuration of its explore trial, again
        assert t.params == study.trials[t.user_attrs["config_trial"]].params
    confirmation = confirmation_runs(mlflow_experiment)
    assert len(confirmation) == 4
    for run in confirmation:
        assert run.data.params["max_steps"] == "6" and run.data.params["eval_every"] == "0"  # 3x --max-steps
        assert {"test_perplexity", "base_test_perplexity", "forgetting_kl"} <= set(run.data.metrics)
    by_config = {c: [r for r in confirmation if r.data.tags["config_trial"] == str(c)] for c in configs}
    # seeds change the adapter: two seeds of one configuration differ, and their params say which seed trained each
    assert all(len({r.data.metrics["test_perplexity"] for r in seeded}) == 2 for seeded in by_config.values())
    for seeded in by_config.values():
        assert sorted(r.data.params["training_seed"] for r in seeded) == ["0", "1"]
        assert {r.data.params["split_seed"] for r in seeded} == {"0"}
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name = '{registered(tmp_path)}'")
    assert sorted(int(v.tags["config_trial"]) for v in versions) == sorted(configs)
    for version in versions:
        seeded = [r.data.metrics["test_perplexity"] for r in by_config[int(version.tags["config_trial"])]]
        assert float(version.tags["test_perplexity_mean"]) == pytest.approx(statistics.fmean(seeded), rel=1e-5)
        assert float(version.tags["test_perplexity_std"]) == pytest.approx(statistics.stdev(seeded), rel=1e-5)
        assert version.tags["test_perplexity_n"] == "2"
    (parent,) = [r for r in runs(mlflow_experiment) if r.data.tags["lora_study.stage"] == "sweep"]
    table = mlflow.load_table("confirmed.json", run_ids=[parent.info.run_id])
    (recommended,) = table[table.recommended].to_dict("records")
    challenger = client.get_model_version_by_alias(registered(tmp_path), "challenger")
    assert int(challenger.version) == recommended["version"]
    assert parent.data.tags["lora_study.recommendation"].startswith("recommended: the configuration of trial")
    stds = [statistics.stdev(r.data.metrics["test_perplexity"] for r in seeded) for seeded in by_config.values()]
    assert parent.data.metrics["seed_std_test_perplexity"] == pytest.approx(
        (sum(s**2 for s in stds) / 2) ** 0.5, rel=1e-5
    )
    assert parent.data.metrics["complete_trials"] == 3  # the counts and plots are of the explore phase
    captured = capsys.readouterr()
    out = captured.out
    assert out.startswith("recommended: ") or "\nrecommended: " in out
    assert "forgetting: KL(base || adapter)" in out
    # the budget the answer holds for: 6 steps of the confirmations, in tokens and as a share of an epoch
    trained = statistics.fmean(r.data.metrics["trained_tokens"] for r in by_config[recommended["config_trial"]])
    horizon = parent.data.tags["lora_study.horizon"]
    assert horizon.startswith(f"This answer holds for a training of 6 steps ({trained:,.0f} tokens, ")
    assert f"  {horizon}\n" in out
    # what a user reads in the UI: names, descriptions with links, the data each run trained on
    assert parent.info.run_name == "sweep s"
    names = sorted(r.info.run_name for r in runs(mlflow_experiment) if r.data.tags["lora_study.stage"] != "sweep")
    assert [n.split(" ")[0] for n in names[:4]] == sorted(
        f"confirm-trial-{c}-seed-{s}" for c in configs for s in (0, 1)
    )
    assert [n.split(" ")[0] for n in names[4:]] == ["trial-0", "trial-1", "trial-2"]
    trial_runs = [r for r in runs(mlflow_experiment) if r.data.tags["lora_study.stage"] in ("trial", "confirm")]
    for run in trial_runs:
        p = run.data.params
        lr = tracking.short_number(float(p["learning_rate"]))
        assert run.info.run_name.endswith(f" r{p['rank']} {p['target_modules']} lr{lr}")
        (data_input,) = run.inputs.dataset_inputs
        assert data_input.dataset.digest == p["dataset_digest"][:16] and data_input.tags[0].value == "training"
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith(parent.data.tags["lora_study.recommendation"])
    for version in versions:
        assert f"(#/models/{version.name}/versions/{version.version}?workflowType=machine_learning)" in note
        run = mlflow.get_run(version.run_id)
        assert version.source.startswith("models:/m-")
        assert f"Test perplexity {version.tags['test_perplexity_mean']} +- " in version.description
        run_page = f"#/experiments/{mlflow_experiment}/runs/{run.info.run_id}?workflowType=machine_learning"
        assert f"({run_page})" in version.description
        assert f"/runs/{parent.info.run_id}/artifacts/report/report.html" in version.description
    # a line per step and per trial; no warning a user cannot act on
    err = captured.err.splitlines()
    assert [line.split(" ")[0] for line in err if line.startswith(("trial ", "confirm "))] == ["trial"] * 3 + [
        "confirm"
    ] * 4
    assert any(line.startswith("data python-docs: rows of 32 tokens") for line in err)
    assert not [line for line in err if "Warning" in line or "WARNING" in line], err


NEIGHBOURS_SPACE = """
sampler: grid
space:
  rank: [4, 8, 16]
  alpha: {per_rank: 2}
  target_modules: [qv, all-linear]
  learning_rate: 0.02
  batch_size: 4
"""


@pytest.mark.slow  # a sweep with its neighbours explored and confirmed
def test_the_best_configurations_neighbours_are_explored_and_confirmed_as_matched_pairs(
    tmp_path, mlflow_experiment, capsys
):
    (tmp_path / "grid.yaml").write_text(NEIGHBOURS_SPACE)
    argv = sweep_argv(tmp_path, *CONFIRM, n_trials=1, config=str(tmp_path / "grid.yaml"), confirm_top=1)
    assert cli.main([*argv, "--confirm-neighbours", "rank,target_modules"]) == 0
    study = load_study(tmp_path)
    explore = [t for t in study.trials if t.user_attrs.get("phase", "explore") == "explore"]
    best, neighbours = explore[0], [t for t in explore if "neighbour_of" in t.user_attrs]
    (replicate,) = [t for t in explore if "replicate_of" in t.user_attrs]  # of the best, with seed 1
    assert replicate.params == best.params and replicate.user_attrs["replicate_of"] == 0
    assert replicate.user_attrs["seed"] == 1 and replicate.state.name == "COMPLETE"
    assert len(replicate.intermediate_values) == 2 and replicate.value != best.value
    explore = [best, *neighbours]
    # one level down and up in rank (where the grid has it), and the other target-module preset
    expected = [
        {**best.params, "rank": r}
        for r in (4, 8, 16)
        if abs([4, 8, 16].index(r) - [4, 8, 16].index(best.params["rank"])) == 1
    ]
    expected.append({**best.params, "target_modules": "all-linear" if best.params["target_modules"] == "qv" else "qv"})
    assert [t.params for t in neighbours] == expected
    assert all(t.state.name == "COMPLETE" and t.user_attrs["neighbour_of"] == 0 for t in neighbours)
    assert all(len(t.intermediate_values) == 2 for t in neighbours)  # trained at the explore budget, unpruned
    confirm = [t for t in study.trials if t.user_attrs.get("phase") == "confirm"]
    assert sorted((t.user_attrs["config_trial"], t.user_attrs["seed"]) for t in confirm) == [
        (t.number, seed) for t in explore for seed in (0, 1)
    ]
    trial_runs = {
        r.data.tags["trial_number"]: r for r in runs(mlflow_experiment) if r.data.tags["lora_study.stage"] == "trial"
    }
    assert all(trial_runs[str(t.number)].data.tags["neighbour_of"] == "0" for t in neighbours)
    (parent,) = [r for r in runs(mlflow_experiment) if r.data.tags["lora_study.stage"] == "sweep"]
    table = mlflow.load_table("confirmed.json", run_ids=[parent.info.run_id])
    assert sorted(table.config_trial) == [t.number for t in explore]
    (recommended,) = table[table.recommended].config_trial
    # versions: the explore phase's best, and the recommended configuration (a neighbour or the same)
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{registered(tmp_path)}'")
    assert sorted(int(v.tags["config_trial"]) for v in versions) == sorted({0, int(recommended)})
    # the report reads the matched pairs: rank and target modules each from confirmed figures
    report = Path(
        mlflow.artifacts.download_artifacts(f"runs:/{parent.info.run_id}/report/report.md", dst_path=str(tmp_path))
    )
    assert f"{len(neighbours)} of them neighbours of trial 0, queued unpruned to be confirmed beside it" in (
        report.read_text()
    )
    assert "1 of trial(s) 0 trained again with another seed, the explore budget's noise" in report.read_text()
    assert "from 1 explore trial(s) trained again with another seed" in report.read_text()
    assert trial_runs[str(replicate.number)].data.tags["replicate_of"] == "0"
    effects = report.read_text().split("## Effects of each factor")[1]
    assert "not decided: those figures also differ" not in effects
    assert effects.count("seed std") >= 3  # the noise statement, and a finding per factor on confirmed figures
    err = capsys.readouterr().err
    assert [line.split("  ")[0] for line in err.splitlines() if line.startswith(("neighbour of", "replicate of"))] == [
        f"replicate of trial 0 (seed 1): trial {replicate.number}",
        *(f"neighbour of trial 0: trial {t.number}" for t in neighbours),
    ]


@pytest.mark.slow
def test_a_sweep_killed_while_confirming_resumes_without_training_anything_twice(
    tmp_path, mlflow_experiment, monkeypatch
):
    argv = sweep_argv(tmp_path, *CONFIRM, *ONLY_CONFIRMATIONS, n_trials=2, confirm_top=1)
    env = {**os.environ, "LORA_STUDY_HEARTBEAT_S": "1", "MLFLOW_EXPERIMENT_ID": mlflow_experiment}
    worker = subprocess.Popen([sys.executable, "-m", "lora_study", *argv], env=env, cwd=tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            trials = load_study(tmp_path).trials
        except KeyError:
            trials = []
        confirm = [t for t in trials if t.user_attrs.get("phase") == "confirm"]
        done = [t for t in confirm if t.state.name == "COMPLETE"]
        running = [t for t in confirm if t.state.name == "RUNNING" and ATTR_RUN_ID in t.user_attrs]
        if done and running:
            break
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    (finished,), (killed,) = done, running
    time.sleep(3)  # past the grace period of two heartbeats
    monkeypatch.setattr(parent_runs, "HEARTBEAT_S", 1)
    assert cli.main(argv) == 0
    assert cli.main(argv) == 0  # once more: nothing left to do
    confirm = [t for t in load_study(tmp_path).trials if t.user_attrs.get("phase") == "confirm"]
    states = {t.number: t.state.name for t in confirm}
    assert states[finished.number] == "COMPLETE" and states[killed.number] == "FAIL"
    complete = [(t.user_attrs["config_trial"], t.user_attrs["seed"]) for t in confirm if t.state.name == "COMPLETE"]
    assert sorted(complete) == sorted(set(complete)) and len(complete) == 2  # each seed once
    assert len(confirm) == 3  # the finished one kept, the killed one failed and run again
    statuses = {r.info.run_id: r.info.status for r in confirmation_runs(mlflow_experiment)}
    assert statuses[killed.user_attrs[ATTR_RUN_ID]] == "FAILED"
    assert sorted(statuses.values()) == ["FAILED", "FINISHED", "FINISHED"]
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{registered(tmp_path)}'")
    assert len(versions) == 1 and versions[0].tags["test_perplexity_n"] == "2"
    (parent,), _ = parent_and_trials(mlflow_experiment)  # the killed sweep's run, continued and closed
    assert parent.info.status == "FINISHED"


@pytest.mark.slow
def test_running_again_resumes_after_a_killed_worker(tmp_path, mlflow_experiment, monkeypatch, capsys):
    """Kill a sweep mid-trial; the same command then fails that trial by heartbeat, runs it again
    (it does not count toward --n-trials), keeps the finished ones and registers nothing twice;
    it continues the killed sweep's parent run and ends the run `mlflow run` had made for it."""
    argv = sweep_argv(tmp_path, "--pruner", "none", "--max-steps", "40", "--eval-every", "40", n_trials=4)
    env = {**os.environ, "LORA_STUDY_HEARTBEAT_S": "1", "MLFLOW_EXPERIMENT_ID": mlflow_experiment}
    worker = subprocess.Popen(
        [sys.executable, "-m", "lora_study", *argv],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            trials = load_study(tmp_path).trials
        except KeyError:  # the study is not created yet
            trials = []
        # kill once a trial has finished and the next one has its MLflow run (a kill before that
        # run exists leaves nothing in MLflow to mark FAILED)
        running = [t for t in trials if t.state.name == "RUNNING" and ATTR_RUN_ID in t.user_attrs]
        if any(t.state.name == "COMPLETE" for t in trials) and running:
            break
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    killed = next(t.number for t in load_study(tmp_path).trials if t.state.name == "RUNNING")
    # a run `mlflow run` made for a sweep killed before its Python started: it never beat
    tags = {"mlflow.project.entryPoint": "sweep"}
    orphan = mlflow.MlflowClient().create_run(mlflow_experiment, tags=tags).info.run_id
    time.sleep(3)  # past the grace period of two heartbeats
    monkeypatch.setattr(parent_runs, "HEARTBEAT_S", 1)
    monkeypatch.setattr(parent_runs, "ORPHAN_GRACE_S", 2)
    assert cli.main(argv) == 0
    assert "left RUNNING by a sweep that died" in capsys.readouterr().out
    assert cli.main(argv) == 0  # once more: the study is done, nothing new runs or registers
    ended = mlflow.get_run(orphan)
    assert ended.info.status == "KILLED" and "died before it started" in ended.data.tags["lora_study.error"]
    trials = load_study(tmp_path).trials
    states = {t.number: t.state.name for t in trials}
    # the killed trial was lost, not a result: it ran again, and the study holds --n-trials complete ones
    assert states[killed] == "FAIL" and sorted(states.values()) == ["COMPLETE"] * 4 + ["FAIL"]
    (again,) = [t for t in trials if t.user_attrs.get("retry_of") == killed]
    assert again.state.name == "COMPLETE" and again.params == trials[killed].params
    # one study, one parent run: the killed sweep's, continued by both runs after it and closed
    (parent,), trial_runs = parent_and_trials(mlflow_experiment)
    assert parent.info.status == "FINISHED" and "lora_study.heartbeat" in parent.data.tags
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {parent.info.run_id}
    killed_run = next(r for r in trial_runs if r.data.tags["trial_number"] == str(killed))
    assert killed_run.info.status == "FAILED" and "heartbeats" in killed_run.data.tags["lora_study.error"]
    again_run = next(r for r in trial_runs if r.data.tags["trial_number"] == str(again.number))
    assert again_run.data.tags["retry_of"] == str(killed) and again_run.info.status == "FINISHED"
    assert parent.data.metrics["failed_trials"] == 0 and parent.data.metrics["lost_trials"] == 1
    assert all(r.info.status != "RUNNING" for r in trial_runs)
    assert len(mlflow.MlflowClient().search_model_versions(f"name = '{registered(tmp_path)}'")) == 1


def test_sweeps_started_together_take_one_parent_run(mlflow_experiment):
    """The first sweeps of a study, started at once (a machine each), each propose a parent run;
    all take the first made, and the others' proposals point at it."""
    with ThreadPoolExecutor(4) as pool:
        elected = list(
            pool.map(lambda _: parent_runs.elect_study_run("together", "sqlite:///optuna.db", 2.0), range(4))
        )
    assert len(set(elected)) == 1
    every = runs(mlflow_experiment)
    sweeps = [r for r in every if r.data.tags["lora_study.stage"] == "sweep"]
    assert [r.info.run_id for r in sweeps] == elected[:1]
    assert sweeps[0].data.tags["lora_study.optuna_storage"] == "sqlite:///optuna.db"
    pointers = [r for r in every if r.data.tags["lora_study.stage"] == "sweep_invocation"]
    assert len(pointers) == 3 and {r.data.tags["lora_study.study_run"] for r in pointers} == set(elected)
    assert all(r.info.status == "FINISHED" for r in pointers)


ONE_POINT = "sampler: grid\nspace:\n  rank: [4]\n  target_modules: [qv]\n  learning_rate: [{lr}]\n  batch_size: 4\n"


@pytest.mark.slow  # four one-trial sweeps
def test_challenger_moves_only_to_a_better_study_on_the_same_test_data(tmp_path, mlflow_experiment, capsys):
    name = registered(tmp_path)
    for lr in ("0.02", "0.000001"):
        (tmp_path / f"lr{lr}.yaml").write_text(ONE_POINT.format(lr=lr))

    def sweep(study: str, lr: str, *extra) -> str:
        capsys.readouterr()
        argv = sweep_argv(tmp_path, "--study-name", study, *extra, n_trials=1, config=str(tmp_path / f"lr{lr}.yaml"))
        assert cli.main(argv) == 0
        return capsys.readouterr().out

    sweep("poor", "0.000001")  # version 1, the first challenger
    assert f"{name}@challenger -> version 2 (test_perplexity" in sweep("good", "0.02")
    out = sweep("poor-again", "0.000001")  # worse, later: registered, the alias stays
    assert f"{name}@challenger stays on version 2: version 3 is not better than @challenger (version 2)" in out
    out = sweep("longer", "0.02", "--seq-len", "48")  # on other test data: not compared
    assert (
        f"{name}@challenger stays on version 2: version 4 was measured on other test data than @challenger "
        "(version 2): seq_len 48 vs 32;" in out
    )
    client = mlflow.MlflowClient()
    aliases = client.get_registered_model(name).aliases
    assert {alias: int(v) for alias, v in aliases.items()} == {
        "challenger": 2,
        "study-poor": 1,
        "study-good": 2,
        "study-poor-again": 3,
        "study-longer": 4,
    }
    versions = {v: client.get_model_version(name, str(v)).tags for v in range(1, 5)}
    assert float(versions[2]["test_perplexity"]) < float(versions[3]["test_perplexity"])
    assert len({tags["test_data"] for tags in versions.values()}) == 2  # seq_len 48 is the other
    moves = [(m.alias, m.before, m.after) for m in registry.alias_history(name) if m.alias == "challenger"]
    assert moves == [("challenger", None, "1"), ("challenger", "1", "2")]
    assert "this study's answer: models:/" + f"{name}@study-longer (version 4)" in out
    (longer,) = [
        r
        for r in runs(mlflow_experiment)
        if r.data.tags.get("lora_study.study") == "longer" and r.data.tags["lora_study.stage"] == "sweep"
    ]
    page = Path(mlflow.artifacts.download_artifacts(run_id=longer.info.run_id, artifact_path="report/report.md"))
    assert (
        f"Against the registry, models:/{name}/4: @challenger (models:/{name}/2) was measured on other test data "
        "(seq_len 48 vs 32): not compared."
    ) in page.read_text()


def test_a_bad_search_space_or_target_fails_before_any_run(tmp_path, mlflow_experiment, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("space:\n  rank: [0]\n  target_modules: [qv, gate]\n")
    assert cli.main(sweep_argv(tmp_path, config=str(config))) == 2
    assert "space.rank: Input should be greater than 0" in capsys.readouterr().err
    config.write_text("space:\n  target_modules: [qv, gate]\n")
    assert cli.main(sweep_argv(tmp_path, config=str(config))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"lora-study: error: {config}: space.target_modules: --target-modules gate:")
    assert runs(mlflow_experiment) == []
