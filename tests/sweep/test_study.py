"""The study's bookkeeping across workers: confirmations queued twice, and waiting for others'."""

import optuna
from optuna.trial import TrialState

from lora_study.sweep.study import study_alias, taken_by, wait_for_confirmations

JOB = {"phase": "confirm", "config_trial": 0, "seed": 1, "steps": 12}


def study_with(*trials) -> optuna.Study:
    study = optuna.create_study(storage="sqlite:///:memory:")
    for state, attrs in trials:
        value = 1.0 if state == TrialState.COMPLETE else None
        study.add_trial(optuna.create_trial(state=state, value=value, user_attrs=attrs))
    return study


def test_a_confirmation_queued_twice_is_taken_by_the_earlier_one_that_ran():
    study = study_with((TrialState.COMPLETE, JOB), (TrialState.RUNNING, JOB), (TrialState.RUNNING, {**JOB, "seed": 2}))
    first, again, other_seed = study.get_trials(deepcopy=False)
    assert taken_by(study, again) == first.number
    assert taken_by(study, first) is None and taken_by(study, other_seed) is None


def test_a_confirmation_queued_earlier_but_still_waiting_does_not_take_it():
    study = study_with((TrialState.WAITING, JOB), (TrialState.RUNNING, JOB))
    assert taken_by(study, study.get_trials(deepcopy=False)[1]) is None


def test_waiting_for_confirmations_ends_when_none_runs_or_one_is_queued():
    assert wait_for_confirmations(study_with((TrialState.COMPLETE, JOB))) is False
    assert wait_for_confirmations(study_with((TrialState.COMPLETE, JOB), (TrialState.WAITING, JOB))) is True


def test_a_study_alias_is_one_mlflow_takes_and_tells_studies_apart():
    from mlflow.utils.validation import _validate_model_alias_name  # MLflow's own rule

    assert study_alias("default-smollm2-135m-python-docs") == "study-default-smollm2-135m-python-docs"
    names = ["rank.v2", "rank-v2", "räng", "x" * 300, "x" * 300 + "y", "a." * 130, "a." * 130 + "b"]
    aliases = [study_alias(name) for name in names]
    assert len(set(aliases)) == len(names)
    for alias in aliases:
        _validate_model_alias_name(alias)
        # the alias-history tag key stays within MLflow's 250 characters
        assert len(f"lora_study.alias_move.{alias}.{'9' * 13}") <= 250
