"""The study's bookkeeping across workers: confirmations queued twice, waiting for others', and the
best configuration's neighbours queued for the confirm phase."""

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from lora_study.sweep import search_space
from lora_study.sweep.search_space import Choice
from lora_study.sweep.study import (
    ATTR_NEIGHBOUR_OF,
    ATTR_REPLICATE_OF,
    finished,
    queue_neighbours,
    queue_replicates,
    study_alias,
    taken_by,
    to_confirm,
    wait_for_confirmations,
)

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


SPACE = search_space.SearchSpace(
    "space.yaml", "tpe", {"rank": Choice((4, 8, 16)), "target_modules": Choice(("qv", "all-linear"))}
)


def explored(*points, values=()) -> optuna.Study:
    """A study whose complete sampled explore trials are `points` (params), with `values` (default: best first)."""
    study = optuna.create_study(storage="sqlite:///:memory:")
    distributions = {name: CategoricalDistribution(dim.values) for name, dim in SPACE.dimensions.items()}
    for value, params in zip(values or range(len(points)), points):
        study.add_trial(optuna.create_trial(value=float(value), params=params, distributions=distributions))
    return study


def test_neighbours_are_queued_unpruned_once_and_an_explored_one_is_reused():
    best, other = {"rank": 8, "target_modules": "qv"}, {"rank": 16, "target_modules": "qv"}
    study = explored(best, other)
    first = study.trials[0]
    queued = queue_neighbours(study, first, SPACE, ["rank", "target_modules"])
    assert [t.params for t in queued] == [{**best, "rank": 4}, other, {**best, "target_modules": "all-linear"}]
    assert queued[1].number == 1  # explored already: not trained again
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.number for t in waiting] == [queued[0].number, queued[2].number]
    assert all(t.user_attrs[ATTR_NEIGHBOUR_OF] == first.number for t in waiting)
    # queued again (another sweep on the study, or a rerun): the same trials, nothing more
    again = queue_neighbours(study, first, SPACE, ["rank", "target_modules"])
    assert [t.number for t in again] == [t.number for t in queued] and len(study.trials) == 4
    for _ in waiting:  # explored, better than every sampled trial
        trial = study.ask()
        for name, dim in SPACE.dimensions.items():
            trial.suggest_categorical(name, list(dim.values))
        study.tell(trial, -1.0)
    # ... still neither counted against --n-trials nor taken as a top configuration to confirm
    assert finished(study) == 2 and [t.number for t in to_confirm(study, 5)] == [0, 1]


def test_replicates_are_queued_once_with_their_seed_and_count_as_no_configuration():
    # the first trials by number, whatever their figures: not trial 2, the best
    points = (
        {"rank": 8, "target_modules": "qv"},
        {"rank": 16, "target_modules": "qv"},
        {"rank": 4, "target_modules": "qv"},
    )
    study = explored(*points, values=(1.0, 2.0, 0.0))
    queued = queue_replicates(study, 2, seed=1)
    assert [(t.params, t.user_attrs[ATTR_REPLICATE_OF], t.user_attrs["seed"]) for t in queued] == [
        ({"rank": 8, "target_modules": "qv"}, 0, 1),
        ({"rank": 16, "target_modules": "qv"}, 1, 1),
    ]
    assert [t.number for t in queue_replicates(study, 2, seed=1)] == [3, 4]  # once
    # a neighbour with a replicated configuration's params is that configuration, not its replicate
    (rank_16,) = [t for t in queue_neighbours(study, study.trials[0], SPACE, ["rank"]) if t.params["rank"] == 16]
    assert rank_16.number == 1
    assert finished(study) == 3 and [t.number for t in to_confirm(study, 5)] == [2, 0, 1]
