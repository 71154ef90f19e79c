"""`sweep`: an Optuna study over LoRA settings, a nested MLflow run per trial, the best registered.

    lora-study sweep --config configs/sweep/rank.yaml --n-trials 5

The procedure, top to bottom: read and check the search space -> load the base model and the
prepared data once, and check the space against the base -> open (or resume) the study -> start
the parent run and log the study's settings -> run trials here and in `--n-workers - 1` more
processes -> register the best adapters with their test perplexity (alias `challenger`;
`champion` with `--promote`) -> log counts, best values, plots and the trials table on the
parent -> say where to look. Bad input fails before any run starts.
"""

import dataclasses
from pathlib import Path

import mlflow
import optuna

from lora_study import plots, registry, search_space, tracking
from lora_study.config import BaseModelConfig, DataConfig, SweepConfig
from lora_study.errors import UserInputError
from lora_study.study import (
    ATTR_RUN_ID,
    Plan,
    best_trials,
    default_storage,
    default_study_name,
    importances,
    masked,
    open_study,
)
from lora_study.tracking import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    ARTIFACT_ADAPTER,
    ARTIFACT_PLOT,
    ARTIFACT_SWEEP_CONFIG,
    ARTIFACT_TRIALS,
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_BEST,
    METRIC_TEST_PERPLEXITY,
    METRIC_TRIALS,
    OBJECTIVE_METRICS,
    PARAM_BEST,
    PARAM_SAMPLER,
    PARAM_STORAGE,
    PARAM_STUDY_NAME,
    STAGE_SWEEP,
    STAGE_TRIAL,
    TAG_BASE_MODEL,
    TAG_BASE_MODEL_SHA256,
    TAG_STAGE,
    TAG_STUDY,
    TAG_TRIAL_NUMBER,
)
from lora_study.trials import Worker, run_workers

TRIAL_STATES = {
    "complete": optuna.trial.TrialState.COMPLETE,
    "pruned": optuna.trial.TrialState.PRUNED,
    "failed": optuna.trial.TrialState.FAIL,
}


def run_sweep(data: DataConfig, base: BaseModelConfig, cfg: SweepConfig) -> str:
    """The `sweep` entry point; returns the parent run's id."""
    space = search_space.load(_config_path(cfg.config))
    study_name = cfg.study_name or default_study_name(cfg, data, base)
    plan = Plan(data, base, cfg, space, study_name, cfg.storage or default_storage())
    worker = Worker(plan)
    worker.check_space()
    study = open_study(plan)

    with tracking.stage_run(STAGE_SWEEP, **{TAG_STUDY: study_name}) as parent:
        plan = dataclasses.replace(
            plan,
            tracking_uri=mlflow.get_tracking_uri(),
            experiment_id=parent.info.experiment_id,
            parent_run_id=parent.info.run_id,
        )
        worker.plan = plan
        tracking.log_params(
            {
                **data.model_dump(),
                **base.model_dump(),
                **cfg.model_dump(),
                PARAM_STUDY_NAME: study_name,
                PARAM_STORAGE: masked(plan.storage),
                PARAM_SAMPLER: space.sampler,
            }
        )
        mlflow.log_artifact(space.path, ARTIFACT_SWEEP_CONFIG)
        run_workers(plan, worker, study)
        versions = register_best(plan, worker, study)
        summarize(plan, study)

    _print_where_to_look(plan, parent, versions)
    return parent.info.run_id


def register_best(plan: Plan, worker: Worker, study: optuna.Study) -> list:
    """Register each best trial's adapter once, with its test perplexity; move `challenger`."""
    name = plan.sweep.registered_model or f"lora-study-{plan.base.base_model}"
    versions = []
    for trial in best_trials(study):
        version = registry.find_trial_version(name, plan.study_name, trial.number)
        if version is None:
            run_id = trial.user_attrs[ATTR_RUN_ID]
            objective_tags = {
                OBJECTIVE_METRICS[objective]: f"{value:.6g}"
                for objective, value in zip(plan.sweep.objective_names, trial.values)
            }
            tags = {
                TAG_STUDY: plan.study_name,
                TAG_TRIAL_NUMBER: trial.number,
                TAG_BASE_MODEL: plan.base.base_model,
                TAG_BASE_MODEL_SHA256: worker.setup.ref.sha256 or "",
                **objective_tags,
                **worker.test_metrics(run_id),
            }
            version = registry.register(f"runs:/{run_id}/{ARTIFACT_ADAPTER}", name, tags)
        versions.append(version)
    if versions:
        registry.set_alias(name, ALIAS_CHALLENGER, versions[0].version)
        if plan.sweep.promote:
            promote_champion(name, versions[0], plan.sweep.objective_names[0])
    return versions


def promote_champion(name: str, challenger, objective: str) -> None:
    """`champion` moves only to a challenger that beats it on the study's first objective."""
    try:
        print(
            registry.promote(
                name,
                int(challenger.version),
                ALIAS_CHAMPION,
                force=False,
                reason="sweep --promote",
                metric=OBJECTIVE_METRICS[objective],
            )
        )
    except UserInputError as refused:
        print(f"champion stays: {refused}")


def summarize(plan: Plan, study: optuna.Study) -> None:
    """Counts, best values and params, plots and the trials table, on the parent run."""
    mlflow.log_metrics(
        {
            METRIC_TRIALS.format(state=key): len(study.get_trials(deepcopy=False, states=(state,)))
            for key, state in TRIAL_STATES.items()
        }
    )
    best = best_trials(study)
    if best:
        mlflow.log_metrics(
            {
                METRIC_BEST.format(objective=name): value
                for name, value in zip(plan.sweep.objective_names, best[0].values)
            }
        )
        tracking.log_params({PARAM_BEST.format(param=key): value for key, value in best[0].params.items()})
    trial_runs = mlflow.search_runs(
        [plan.experiment_id],
        filter_string=f"tags.`{TAG_STUDY}` = '{plan.study_name}' and tags.`{TAG_STAGE}` = '{STAGE_TRIAL}'",
    )
    if trial_runs.empty:
        return
    frame = plots.trials_frame(trial_runs)
    mlflow.log_table(frame, ARTIFACT_TRIALS)
    if plots.has_complete(frame):
        for name, figure in plots.study_figures(frame).items():
            mlflow.log_figure(figure, ARTIFACT_PLOT.format(name=name))
    found = importances(study)
    if found:
        mlflow.log_figure(plots.parameter_importances(found), ARTIFACT_PLOT.format(name="parameter_importances"))


def _config_path(config: str) -> str:
    """The config as given, or a shipped one by its path in this project (for runs elsewhere)."""
    if Path(config).is_file():
        return config
    shipped = Path(__file__).resolve().parents[2] / config
    return str(shipped) if shipped.is_file() else config


def _print_where_to_look(plan: Plan, parent, versions: list) -> None:
    experiment = mlflow.get_experiment(plan.experiment_id)
    print(f"study {plan.study_name}: {len(versions)} adapter(s) registered")
    for version in versions:
        print(
            f"  models:/{version.name}/{version.version} (trial {version.tags.get(TAG_TRIAL_NUMBER)}, "
            f"test perplexity {version.tags.get(METRIC_TEST_PERPLEXITY)} vs base "
            f"{version.tags.get(METRIC_BASE_TEST_PERPLEXITY)})"
        )
    if versions:
        print(f"  alias: models:/{versions[0].name}@{ALIAS_CHALLENGER}")
    print(f"experiment `{experiment.name}` (id {plan.experiment_id}), parent run {parent.info.run_id}")
    print(f"see it: mlflow ui --backend-store-uri {plan.tracking_uri}")
