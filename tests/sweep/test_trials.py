"""A sweep worker: the base loaded once, every trial on the pristine base, and the test metrics
of a trial's adapter measured on that base."""

import dataclasses
import datetime

import mlflow
import optuna
import pytest
import torch
from conftest import runs

from lora_study.config import BaseModelConfig, DataConfig, SweepConfig
from lora_study.losses import mean_loss
from lora_study.sweep import search_space, study, trials

SPACE = """
space:
  rank: [4, 8]
  alpha: {per_rank: 2}
  target_modules: [qv, all-linear]
  learning_rate: 0.05
  batch_size: 4
"""


def worker_plan(tmp_path, experiment_id) -> study.Plan:
    (tmp_path / "space.yaml").write_text(SPACE)
    return study.Plan(
        DataConfig(max_samples=15, seq_len=32),
        BaseModelConfig(base_model="tiny"),
        SweepConfig(max_steps=3, eval_every=3, pruner="none"),
        search_space.load(str(tmp_path / "space.yaml")),
        "pristine",
        f"sqlite:///{tmp_path}/optuna.db",
        experiment_id=experiment_id,
    )


@pytest.mark.slow  # trains several adapters to compare them
def test_each_trial_starts_from_the_pristine_base(tmp_path, mlflow_experiment):
    plan = worker_plan(tmp_path, mlflow_experiment)
    worker = trials.Worker(plan)
    base = worker.bases["none"]
    pristine = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    created = study.open_study(plan)
    created.enqueue_trial({"rank": 8, "target_modules": "all-linear"})
    created.enqueue_trial({"rank": 4, "target_modules": "qv"})
    created.optimize(worker.objective, n_trials=2)
    assert worker.bases["none"] is base and type(base).__name__ == "LlamaForCausalLM"
    assert not any("lora" in name for name, _ in base.named_modules()) and "peft_config" not in vars(base)
    after = base.state_dict()
    assert after.keys() == pristine.keys() and all(torch.equal(after[k], pristine[k]) for k in pristine)
    # and it still computes what trial 0 measured on it at step 0, before any adapter
    (trial_run,) = [r for r in runs(mlflow_experiment) if r.data.tags["trial_number"] == "0"]
    step0 = next(
        m.value for m in mlflow.MlflowClient().get_metric_history(trial_run.info.run_id, "eval_loss") if m.step == 0
    )
    s = worker.setup
    again = mean_loss(base, s.prepared.rows("validation"), 4, s.tokenizer.pad_token_id, s.dtype)
    assert again == pytest.approx(step0, rel=1e-6)


def test_test_metrics_of_a_trial_match_the_evaluation_of_its_logged_adapter(tmp_path, mlflow_experiment):
    from lora_study import adapters, evaluation

    worker = trials.Worker(worker_plan(tmp_path, mlflow_experiment))
    created = study.open_study(worker.plan)
    created.enqueue_trial({"rank": 8, "target_modules": "qv"})
    created.optimize(worker.objective, n_trials=1)
    run_id = created.trials[0].user_attrs[study.ATTR_RUN_ID]
    measured = worker.test_metrics(run_id)
    source = adapters.resolve(f"runs:/{run_id}/adapter")
    s = worker.setup
    loaded = adapters.load(source, s.device, s.dtype)
    alone = evaluation.evaluate_adapter(loaded.model, s.tokenizer, s.prepared.rows("test"), [], 8, 0, s.dtype)
    assert float(measured["test_perplexity"]) == pytest.approx(alone.metrics["test_perplexity"], rel=1e-4)
    assert float(measured["base_test_perplexity"]) == pytest.approx(alone.metrics["base_test_perplexity"], rel=1e-4)
    assert not any("lora" in name for name, _ in worker.bases["none"].named_modules())  # detached again


def finished_trial(state, number=3, values=None, intermediate=None, perplexity=None, seconds=49):
    start = datetime.datetime(2026, 12, 2, 12, 0, 0)
    trial = optuna.trial.create_trial(
        state=state,
        values=values,
        params={"rank": 32},
        distributions={"rank": optuna.distributions.CategoricalDistribution([8, 32])},
        user_attrs={"label": "r32 qkvo lr1.9e-3", **({"eval_perplexity": perplexity} if perplexity else {})},
        intermediate_values=intermediate or {},
    )
    trial.number, trial.datetime_start = number, start
    trial.datetime_complete = start + datetime.timedelta(seconds=seconds)
    return trial


def test_an_explore_trial_is_one_line_with_its_outcome_and_time():
    complete = finished_trial(optuna.trial.TrialState.COMPLETE, values=[12.02], perplexity=12.0213)
    assert trials.explore_line(complete, 4, 8, best=True) == "trial 3  4/8  r32 qkvo lr1.9e-3  ppl 12.02 (best)  49 s"
    assert trials.explore_line(complete, 4, 8, best=False).endswith("ppl 12.02  49 s")
    pruned = finished_trial(optuna.trial.TrialState.PRUNED, intermediate={2: 30.5, 4: 28.25}, seconds=12)
    assert trials.explore_line(pruned, 5, 8, best=False).endswith("pruned at step 4 (ppl 28.25)  12 s")
    failed = finished_trial(optuna.trial.TrialState.FAIL, seconds=1)
    assert trials.explore_line(failed, 6, 8, best=False).endswith("  fail  1 s")


def test_a_confirmation_is_one_line_with_its_configuration_seed_and_test_perplexity():
    trial = finished_trial(optuna.trial.TrialState.COMPLETE, values=[13.7])
    trial.user_attrs.update({"config_trial": 3, "seed": 1})
    measured = {"test_perplexity": 16.2851, "base_test_perplexity": 18.6921}
    assert trials.confirm_line(trial, 2, 4, measured, 16.4) == (
        "confirm 2/4  trial 3 seed 1  r32 qkvo lr1.9e-3  test ppl 16.285 (base 18.692)  16 s"
    )


def test_a_generation_objective_is_maximized_beside_minimized_costs(tmp_path):
    plan = worker_plan(tmp_path, "")
    plan = dataclasses.replace(plan, sweep=SweepConfig(objectives="exact_match,trainable_params"))
    assert [d.name for d in study.open_study(plan).directions] == ["MAXIMIZE", "MINIMIZE"]
    assert plan.sweep.rule_metric == "test_exact_match"
    assert SweepConfig(objectives="peak_memory_mb,rougeL").rule_metric == "test_perplexity"  # a cost first
