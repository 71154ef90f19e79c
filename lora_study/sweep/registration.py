"""The registration of a study's answer: one version per confirmed configuration (or per best
explore trial when none was confirmed), tagged with where it came from, its measurements and the
test data they were measured on; the study's own alias on its answer, and `challenger` (and
`champion` with --promote) moved only forward (`registry.advance`)."""

import statistics

import optuna

from lora_study import registry, tracking
from lora_study.names import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    ARTIFACT_ADAPTER,
    BASE_PREFIX,
    GENERATION_OBJECTIVES,
    HIGHER_IS_BETTER,
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_EVAL_PERPLEXITY,
    METRIC_FORGETTING_KL,
    METRIC_FORGETTING_LOSS_DELTA,
    METRIC_PEAK_MEMORY_MB,
    METRIC_PERPLEXITY_IMPROVEMENT_PCT,
    METRIC_TEST_PERPLEXITY,
    METRIC_TRAINABLE_PARAMS,
    OBJECTIVE_METRICS,
    PARAM_QUANTIZATION,
    TAG_BASE_MODEL,
    TAG_BASE_MODEL_SHA256,
    TAG_CONFIG_TRIAL,
    TAG_MEAN,
    TAG_N,
    TAG_SEED,
    TAG_STD,
    TAG_STUDY,
    TAG_TEST_PERPLEXITY_MEAN,
    TAG_TEST_PERPLEXITY_N,
    TAG_TEST_PERPLEXITY_STD,
    TAG_TRIAL_NUMBER,
)
from lora_study.registry import comparability
from lora_study.sweep.recommendation import seed_std
from lora_study.sweep.study import (
    ATTR_RUN_ID,
    ATTR_SEED,
    Plan,
    best_trials,
    confirmations,
    study_alias,
)
from lora_study.sweep.trials import Worker

# What a confirmed configuration's version shows of its registered seed, as tags.
CONFIRM_VERSION_METRICS = (
    METRIC_TEST_PERPLEXITY,
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_PERPLEXITY_IMPROVEMENT_PCT,
    METRIC_FORGETTING_KL,
    METRIC_FORGETTING_LOSS_DELTA,
    METRIC_TRAINABLE_PARAMS,
    METRIC_PEAK_MEMORY_MB,
    *GENERATION_OBJECTIVES.values(),  # a generation objective's test score, and the base's
    *(BASE_PREFIX + metric for metric in GENERATION_OBJECTIVES.values()),
)


def register_confirmed(
    plan: Plan, worker: Worker, study: optuna.Study, confirmed: list, recommended, candidates: set[int]
) -> dict:
    """Register one adapter per confirmed candidate (the explore phase's best configurations) and
    the recommended one (its seed with the best validation figure, `_seed_order`), tagged with the seeds' test
    perplexity; `challenger` goes to the recommended one. A neighbour confirmed only as evidence for
    the report is not a version unless the rule recommends it."""
    name = plan.sweep.registered_model or f"lora-study-{plan.base.base_model}"
    versions = {}
    for c in confirmed:
        if c.config not in candidates and c is not recommended.chosen:
            continue
        runs = confirmations(study, c.config, plan.sweep.steps_to_confirm)
        chosen = min(runs, key=_seed_order(plan))
        version = registry.find_trial_version(name, plan.study_name, chosen.number)
        if version is None:
            tags = {
                **_version_tags(plan, worker, chosen),
                TAG_CONFIG_TRIAL: c.config,
                TAG_SEED: chosen.user_attrs[ATTR_SEED],
                TAG_TEST_PERPLEXITY_N: c.n,
                TAG_N.format(metric=c.rule_metric): c.n,
            }
            perplexities = c.test_perplexities
            measured = {
                **_objective_values(plan, chosen),
                TAG_TEST_PERPLEXITY_MEAN: statistics.fmean(perplexities),
                TAG_TEST_PERPLEXITY_STD: seed_std(perplexities),
                TAG_MEAN.format(metric=c.rule_metric): c.mean,
                TAG_STD.format(metric=c.rule_metric): c.std,
                **{key: chosen.user_attrs[key] for key in CONFIRM_VERSION_METRICS if key in chosen.user_attrs},
            }
            uri = f"runs:/{chosen.user_attrs[ATTR_RUN_ID]}/{ARTIFACT_ADAPTER}"
            version = registry.register_measured(uri, name, measured, _measured_on(worker, chosen), tags)
        versions[c.config] = version
    # on the test split: the champion may come from another budget. The registry's shared aliases
    # move on test perplexity, whatever a study's rule read: one yardstick keeps them moving forward
    point_aliases(plan, name, versions[recommended.chosen.config], METRIC_TEST_PERPLEXITY)
    return versions


def _seed_order(plan: Plan):
    """The registered seed of a confirmed configuration: the best on the first objective's
    validation figure, if it is a generation objective, else on validation perplexity."""
    first = plan.sweep.objective_names[0]
    metric = OBJECTIVE_METRICS[first] if first in GENERATION_OBJECTIVES else METRIC_EVAL_PERPLEXITY
    sign = -1 if metric in HIGHER_IS_BETTER else 1
    return lambda trial: sign * trial.user_attrs[metric]


def register_best(plan: Plan, worker: Worker, study: optuna.Study) -> list:
    """Register each best trial's adapter once, with its test perplexity; move `challenger`."""
    name = plan.sweep.registered_model or f"lora-study-{plan.base.base_model}"
    versions = []
    for trial in best_trials(study):
        version = registry.find_trial_version(name, plan.study_name, trial.number)
        if version is None:
            run_id = trial.user_attrs[ATTR_RUN_ID]
            measured = {**_objective_values(plan, trial), **worker.test_metrics(run_id)}
            uri = f"runs:/{run_id}/{ARTIFACT_ADAPTER}"
            version = registry.register_measured(
                uri, name, measured, _measured_on(worker, trial), _version_tags(plan, worker, trial)
            )
        versions.append(version)
    if versions:
        point_aliases(plan, name, versions[0], OBJECTIVE_METRICS[plan.sweep.objective_names[0]])
    return versions


def point_aliases(plan: Plan, name: str, answer, champion_metric: str) -> None:
    """The study's own alias goes to its answer, whatever it is; `challenger` (and `champion`,
    with --promote, on `champion_metric`) only forward, each said in one line."""
    why = f"sweep of study {plan.study_name}"
    registry.set_alias(name, study_alias(plan.study_name), answer.version, f"{why}: its answer")
    print(registry.advance(name, answer.version, ALIAS_CHALLENGER, why, METRIC_TEST_PERPLEXITY))
    if plan.sweep.promote:
        print(registry.advance(name, answer.version, ALIAS_CHAMPION, f"{why} --promote", champion_metric))


def _version_tags(plan: Plan, worker: Worker, trial) -> dict:
    """Where every version registered from a study came from."""
    return {
        TAG_STUDY: plan.study_name,
        TAG_TRIAL_NUMBER: trial.number,
        TAG_BASE_MODEL: plan.base.base_model,
        TAG_BASE_MODEL_SHA256: worker.setup.ref.sha256 or "",
    }


def _objective_values(plan: Plan, trial) -> dict[str, float]:
    """The trial's objective values, under their metric names."""
    return {OBJECTIVE_METRICS[objective]: value for objective, value in zip(plan.sweep.objective_names, trial.values)}


def _measured_on(worker: Worker, trial) -> comparability.Basis:
    """The test data a trial's adapter was measured on: the study's, under its quantization."""
    quantization = tracking.run_params(trial.user_attrs[ATTR_RUN_ID])[PARAM_QUANTIZATION]
    return comparability.Basis.of(worker.setup.prepared.meta, worker.setup.ref, quantization)
