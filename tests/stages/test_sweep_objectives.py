"""Sweeps that stop trials early and keep their best, and sweeps that optimise a task's answers
(`--objectives rougeL`), on the tiny model."""

import mlflow
import optuna
import pytest
from conftest import alpaca_records, runs, write_jsonl
from test_sweep import load_study, parent_and_trials, registered, sweep_argv

from lora_study import cli

BUMPY_SPACE = """
sampler: grid
space:
  rank: [4, 8]
  alpha: {per_rank: 2}
  target_modules: [qv]
  learning_rate: [0.05]
  lr_scheduler: constant
  warmup_ratio: 0.0
  precision: fp32
  batch_size: 4
"""


@pytest.mark.slow  # a two-trial sweep
def test_trials_that_stop_early_are_complete_and_the_report_counts_the_steps_they_trained(tmp_path, mlflow_experiment):
    """At a constant learning rate of 0.05 the tiny model's validation loss falls, then rises
    (tests/test_early_stopping.py): with patience 1 a trial stops at its first evaluation without
    improvement, and keeps its best step's adapter."""
    space = tmp_path / "bumpy.yaml"
    space.write_text(BUMPY_SPACE)
    argv = sweep_argv(tmp_path, "--pruner", "none", "--early-stopping-patience", "1", n_trials=2, config=str(space))
    argv[argv.index("--max-steps") + 1], argv[argv.index("--eval-every") + 1] = "10", "1"
    assert cli.main(argv) == 0
    (parent,), trials = parent_and_trials(mlflow_experiment)
    stopped = [t for t in trials if t.data.metrics["stopped_early"] > 0]
    assert stopped, [t.data.metrics for t in trials]
    by_number = {t.number: t for t in load_study(tmp_path).trials}
    for run in stopped:
        metrics = run.data.metrics
        assert run.info.status == "FINISHED" and run.data.tags["trial_state"] == "COMPLETE"
        assert by_number[int(run.data.tags["trial_number"])].state == optuna.trial.TrialState.COMPLETE
        assert metrics["best_step"] == metrics["stopped_early"] - 1 < 10
        # the trial's value is its kept adapter's validation perplexity, the step it came from
        history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "eval_perplexity")
        at_best = next(m.value for m in history if m.step == metrics["best_step"])
        assert by_number[int(run.data.tags["trial_number"])].value == pytest.approx(at_best)
        assert metrics["best_eval_perplexity"] == pytest.approx(at_best)  # what the run shows as its value
    trained = sum(t.data.metrics["stopped_early"] or 10 for t in trials)
    report = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/report/report.md")
    assert (
        f"Early stopping (--early-stopping-patience 1): {len(stopped)} of 2 complete runs stopped "
        f"before their planned steps; they trained {trained:.0f} of 20 planned steps in all." in report
    )


@pytest.mark.slow  # a sweep with confirmations
def test_a_study_maximizes_rouge_l_of_its_answers_and_says_so_where_it_said_perplexity(
    tmp_path, mlflow_experiment, capsys
):
    data = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_records(60))
    argv = sweep_argv(tmp_path, "--dataset", str(data), "--seq-len", "64", "--max-samples", "0", n_trials=2)
    argv += ["--objectives", "rougeL", "--objective-samples", "4", "--objective-max-new-tokens", "8"]
    argv += ["--confirm-neighbours", "", "--explore-replicates", "0", "--pruner", "none"]
    argv[argv.index("--confirm-top") + 1] = "1"
    assert cli.main(argv) == 0
    study = load_study(tmp_path)
    assert [d.name for d in study.directions] == ["MAXIMIZE"]
    (parent,), trials = parent_and_trials(mlflow_experiment)
    for run in trials:  # the objective: its answers' ROUGE-L on the validation sample, beside the base's
        value = study.trials[int(run.data.tags["trial_number"])].value
        assert run.data.metrics["eval_rougeL"] == pytest.approx(value)
        assert 0 <= value <= 1 and 0 <= run.data.metrics["base_eval_rougeL"] <= 1
    confirmations = [r for r in runs(mlflow_experiment) if r.data.tags["lora_study.stage"] == "confirm"]
    assert len(confirmations) == 2
    # the configuration confirmed is the explore trial with the highest score, not the lowest
    (config,) = {int(r.data.tags["config_trial"]) for r in confirmations}
    assert study.trials[config].value == max(t.data.metrics["eval_rougeL"] for t in trials)
    assert all({"test_rougeL", "base_test_rougeL", "eval_rougeL"} <= set(r.data.metrics) for r in confirmations)
    scores = sorted(r.data.metrics["test_rougeL"] for r in confirmations)
    challenger = mlflow.MlflowClient().get_model_version_by_alias(registered(tmp_path), "challenger")
    assert float(challenger.tags["test_rougeL_mean"]) == pytest.approx(sum(scores) / 2, rel=1e-5)
    assert challenger.tags["test_rougeL_n"] == "2" and "test_perplexity_mean" in challenger.tags
    said = capsys.readouterr().out
    assert "recommended: the configuration of trial" in said and "(test ROUGE-L " in said
    report = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/report/report.md")
    assert "the rule `best` takes the highest mean test ROUGE-L over seeds" in report
    assert "| test ROUGE-L |" in report and "| test perplexity |" in report  # the rule's metric first
    assert report.index("| test ROUGE-L |") < report.index("| test perplexity |")


def test_a_generation_objective_on_plain_text_is_one_line_before_any_run(tmp_path, mlflow_experiment, capsys):
    assert cli.main(sweep_argv(tmp_path, "--objectives", "perplexity,exact_match")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "lora-study: error: --objectives exact_match: the data is plain text, with no reference answers to score; "
        "use instruction or chat records (--format), or --objectives perplexity"
    )
    assert runs(mlflow_experiment) == []
