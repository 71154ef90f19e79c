"""A study as its parent run shows it: provenance (digests, split sizes, command, machine), the
confirmed configurations and the answer, the description the UI shows first, and the explore
phase's counts, best values, plots and tables."""

import math
import statistics

import mlflow
import optuna
import pandas as pd

from lora_study import environment, plots, registry, tracking, training
from lora_study.names import (
    ARTIFACT_BEST_PER_LEVEL,
    ARTIFACT_CONFIRMED,
    ARTIFACT_ENVIRONMENT,
    ARTIFACT_IMPORTANCES,
    ARTIFACT_PLOT,
    ARTIFACT_TRIALS,
    COLUMN_CONFIG_TRIAL,
    COLUMN_FACTOR,
    COLUMN_RECOMMENDED,
    COLUMN_SEEDS,
    COLUMN_STDERR,
    COLUMN_STEPS,
    COLUMN_TEST_PERPLEXITY_MEAN,
    COLUMN_TEST_PERPLEXITY_STD,
    COLUMN_VERSION,
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_BEST,
    METRIC_PEAK_MEMORY_MB,
    METRIC_RECOMMENDED_MEAN,
    METRIC_RECOMMENDED_STD,
    METRIC_SEED_STD,
    METRIC_SEED_STD_OF,
    METRIC_TEST_PERPLEXITY,
    METRIC_TRAINABLE_PARAMS,
    METRIC_TRIALS,
    PARAM_BEST,
    PARAM_DECONTAMINATION,
    PARAM_DETECTED_FORMAT,
    STAGE_TRIAL,
    TAG_COMMAND,
    TAG_MLFLOW_NOTE,
    TAG_RECOMMENDATION,
    TAG_STAGE,
    TAG_STUDY,
    TAG_TRIAL_NUMBER,
)
from lora_study.sweep.recommendation import Confirmed, pooled_std, rule_columns, seed_std
from lora_study.sweep.study import (
    EXPLORE,
    Plan,
    best_trials,
    importances,
    lost,
    trials_of,
)
from lora_study.sweep.trials import Worker

TRIAL_STATES = {
    "complete": optuna.trial.TrialState.COMPLETE,
    "pruned": optuna.trial.TrialState.PRUNED,
    "failed": optuna.trial.TrialState.FAIL,
}


def log_provenance(worker: Worker) -> None:
    """What the study's numbers rest on, on the parent: the base and data digests, the split
    sizes, the command, the packages and the machine (the report's provenance)."""
    s = worker.setup
    training.log_inputs(s, worker.plan.data, worker.plan.base)
    meta = s.prepared.meta
    tracking.log_params({PARAM_DECONTAMINATION: meta.decontamination, PARAM_DETECTED_FORMAT: meta.format})
    tracking.once_more_if_raced(mlflow.log_metrics, meta.counts)
    tracking.set_tag(TAG_COMMAND, environment.command())
    mlflow.log_dict({"machine": environment.machine(), "packages": environment.packages()}, ARTIFACT_ENVIRONMENT)


def log_confirmation(confirmed: list[Confirmed], recommended, versions: dict, steps: int) -> pd.DataFrame:
    """The answer on the parent run: the rule's statement, the seed noise, and a row per configuration."""
    metric = recommended.chosen.rule_metric
    tracking.set_tag(TAG_RECOMMENDATION, recommended.statement())
    tracking.once_more_if_raced(
        mlflow.log_metrics,
        {
            # of test perplexity, which the report's effects read, and of the rule's metric
            METRIC_SEED_STD.format(metric=METRIC_TEST_PERPLEXITY): pooled_std(confirmed, perplexity=True),
            METRIC_SEED_STD.format(metric=metric): pooled_std(confirmed),
            METRIC_RECOMMENDED_MEAN.format(metric=metric): recommended.chosen.mean,
            METRIC_RECOMMENDED_STD.format(metric=metric): recommended.chosen.std,
            **{METRIC_SEED_STD_OF.format(metric=metric, config=c.config): c.std for c in confirmed},
        },
    )
    table = confirmed_table(confirmed, recommended, steps, versions)
    tracking.log_table_replacing(table, ARTIFACT_CONFIRMED)
    return table


def confirmed_table(confirmed: list[Confirmed], recommended, steps: int, versions: dict | None = None) -> pd.DataFrame:
    """A row per confirmed configuration: its settings, seeds, mean and spread, costs, and whether
    the rule recommended it (and its registered version, if any, when given): what the report reads."""
    rows = [
        {
            COLUMN_CONFIG_TRIAL: c.config,
            **c.params,
            COLUMN_SEEDS: c.n,
            COLUMN_STEPS: steps,
            COLUMN_TEST_PERPLEXITY_MEAN: statistics.fmean(c.test_perplexities),
            COLUMN_TEST_PERPLEXITY_STD: seed_std(c.test_perplexities),
            COLUMN_STDERR: seed_std(c.test_perplexities) / math.sqrt(c.n),
            **dict(zip(rule_columns(c.rule_metric), (c.mean, c.std, c.stderr))),
            METRIC_TRAINABLE_PARAMS: c.trainable_params,
            METRIC_PEAK_MEMORY_MB: c.peak_memory_mb,
            COLUMN_RECOMMENDED: c is recommended.chosen,
            **({COLUMN_VERSION: int(versions[c.config].version) if c.config in versions else None} if versions else {}),
        }
        for c in confirmed
    ]
    return pd.DataFrame(rows)


def describe_parent(parent, versions: list, statement: str | None) -> None:
    """The parent run's description, which its page shows first: the answer, the versions the
    study registered (linked to their registry pages) and its report."""
    lines = [statement or "No configuration was confirmed; the best explore trials:"]
    for version in [registry.get_version(v.name, v.version) for v in versions]:  # with the aliases set since
        aliases = "".join(f" @{alias}" for alias in version.aliases)
        lines.append(
            f"- [{version.name} version {version.version}]({tracking.ui_version_link(version.name, version.version)})"
            f"{aliases}: trial {version.tags.get(TAG_TRIAL_NUMBER)}, test perplexity "
            f"{version.tags.get(METRIC_TEST_PERPLEXITY)} (base {version.tags.get(METRIC_BASE_TEST_PERPLEXITY)})"
        )
    if not versions:
        lines.append("No version registered: no trial completed.")
    page = tracking.report_link(parent.info.experiment_id, parent.info.run_id)
    lines.append(f"\nThe whole answer, with its evidence: [the report]({page}).")
    tracking.set_tag(TAG_MLFLOW_NOTE, "\n".join(lines))


def summarize(plan: Plan, study: optuna.Study, confirmed: pd.DataFrame | None = None) -> None:
    """Counts, best values and params, plots and tables of the explore phase (the plots with the
    confirmed configurations over them), on the parent run."""
    gone = lost(study)  # lost with their worker and run again: neither results nor failures
    counts = {
        METRIC_TRIALS.format(state=key): len([t for t in trials_of(study, EXPLORE, (state,)) if t.number not in gone])
        for key, state in TRIAL_STATES.items()
    }
    tracking.once_more_if_raced(mlflow.log_metrics, {**counts, METRIC_TRIALS.format(state="lost"): len(gone)})
    best = best_trials(study)
    if best:
        tracking.once_more_if_raced(
            mlflow.log_metrics,
            {
                METRIC_BEST.format(objective=name): value
                for name, value in zip(plan.sweep.objective_names, best[0].values)
            },
        )
        tracking.log_params({PARAM_BEST.format(param=key): value for key, value in best[0].params.items()})
    trial_runs = mlflow.search_runs(
        [plan.experiment_id],
        filter_string=f"tags.`{TAG_STUDY}` = '{plan.study_name}' and tags.`{TAG_STAGE}` = '{STAGE_TRIAL}'",
    )
    if trial_runs.empty:
        return
    frame = plots.trials_frame(trial_runs)
    tracking.log_table_replacing(frame, ARTIFACT_TRIALS)
    if plots.has_complete(frame):
        figures = plots.study_figures(frame, confirmed)
        for name, figure in figures.items():
            mlflow.log_figure(figure, ARTIFACT_PLOT.format(name=name))
        factors = [f for f in plots.FACTORS if plots.factor_figure(f) in figures]
        if factors:
            per_level = [plots.best_per_level(frame, f).assign(**{COLUMN_FACTOR: f}) for f in factors]
            tracking.log_table_replacing(pd.concat(per_level, ignore_index=True), ARTIFACT_BEST_PER_LEVEL)
    found = importances(study)
    if found:
        mlflow.log_dict(found, ARTIFACT_IMPORTANCES)
        mlflow.log_figure(plots.parameter_importances(found), ARTIFACT_PLOT.format(name="parameter_importances"))
