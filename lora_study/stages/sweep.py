"""`sweep`: an Optuna study over LoRA settings, a nested MLflow run per trial, the best registered.

    lora-study sweep --config configs/sweep/rank.yaml --n-trials 5

The procedure, top to bottom: read and check the search space -> load the base model and the
prepared data once, and check the space against the base -> open (or resume) the study -> start
the parent run and log the study's settings -> run trials here and in `--n-workers - 1` more
processes -> register the best adapters with their test perplexity and the test data it was
measured on; point the study's own alias (`study-<name>`) at its answer, and move `challenger`
(and `champion`, with `--promote`) only to an answer that beats its holder on the same test
data -> log counts, best values, plots and the trials table on the
parent -> write the report (`stages/report.py`) on it -> say where to look. Bad input fails before any run starts.
"""

import dataclasses
import math
import os
import statistics
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pandas as pd

from lora_study import comparability, console, environment, plots, registry, search_space, tracking, training
from lora_study.config import BaseModelConfig, DataConfig, SweepConfig
from lora_study.recommendation import Confirmed, pooled_std, recommend
from lora_study.stages.report import write_report
from lora_study.study import (
    ATTR_RUN_ID,
    ATTR_SEED,
    CONFIRM,
    EXPLORE,
    HEARTBEAT_S,
    Plan,
    best_trials,
    confirmations,
    default_storage,
    default_study_name,
    enqueue_confirmations,
    finished,
    importances,
    lost,
    masked,
    open_study,
    study_alias,
    to_confirm,
    trials_of,
    wait_for_explore,
)
from lora_study.tracking import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    ARTIFACT_ADAPTER,
    ARTIFACT_BEST_PER_LEVEL,
    ARTIFACT_CONFIRMED,
    ARTIFACT_ENVIRONMENT,
    ARTIFACT_IMPORTANCES,
    ARTIFACT_PLOT,
    ARTIFACT_REPORT,
    ARTIFACT_SWEEP_CONFIG,
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
    METRIC_EVAL_PERPLEXITY,
    METRIC_FORGETTING_KL,
    METRIC_FORGETTING_LOSS_DELTA,
    METRIC_PEAK_MEMORY_MB,
    METRIC_PERPLEXITY_IMPROVEMENT_PCT,
    METRIC_RECOMMENDED_MEAN,
    METRIC_RECOMMENDED_STD,
    METRIC_SEED_STD,
    METRIC_SEED_STD_OF,
    METRIC_TEST_PERPLEXITY,
    METRIC_TRAINABLE_PARAMS,
    METRIC_TRIALS,
    OBJECTIVE_METRICS,
    PARAM_BEST,
    PARAM_DECONTAMINATION,
    PARAM_DETECTED_FORMAT,
    PARAM_QUANTIZATION,
    PARAM_SAMPLER,
    PARAM_STORAGE,
    PARAM_STUDY_NAME,
    REPORT_HTML,
    RUN_NAME_SWEEP,
    STAGE_SWEEP,
    STAGE_TRIAL,
    TAG_BASE_MODEL,
    TAG_BASE_MODEL_SHA256,
    TAG_COMMAND,
    TAG_CONFIG_TRIAL,
    TAG_MLFLOW_NOTE,
    TAG_RECOMMENDATION,
    TAG_SEED,
    TAG_SERVES_ON,
    TAG_STAGE,
    TAG_STUDY,
    TAG_TEST_PERPLEXITY_MEAN,
    TAG_TEST_PERPLEXITY_N,
    TAG_TEST_PERPLEXITY_STD,
    TAG_TRIAL_NUMBER,
)
from lora_study.trials import Worker, run_workers

# What a confirmed configuration's version shows of its registered seed, as tags.
CONFIRM_VERSION_METRICS = (
    METRIC_TEST_PERPLEXITY,
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_PERPLEXITY_IMPROVEMENT_PCT,
    METRIC_FORGETTING_KL,
    METRIC_FORGETTING_LOSS_DELTA,
    METRIC_TRAINABLE_PARAMS,
    METRIC_PEAK_MEMORY_MB,
)
# How long the first sweeps of a study, started together, wait for each other's parent run
# proposal to land before they take the first one (one database write; seconds are plenty).
ELECTION_S = 2.0
# A sweep's process beats on its runs within seconds of starting (the `sweep` entry point before
# its heavy imports); a sweep run that has not beaten this long after it began is taken for dead.
ORPHAN_GRACE_S = 60.0
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
    _warn_of_an_uncovered_grid(space, cfg.n_trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial is `trials.explore_line`'s
    study = open_study(plan)
    console.say(f"study {study_name}: {finished(study)} of {cfg.n_trials} trials done, in {masked(plan.storage)}")
    # The run `mlflow run` made for this sweep, if any: out of the environment, or trials (and
    # workers) would take it up. It points at the study's parent run.
    invocation = os.environ.pop("MLFLOW_RUN_ID", None)
    study_run = _study_run(plan) or tracking.elect_study_run(study_name, masked(plan.storage), ELECTION_S)

    with (
        tracking.stage_run(
            STAGE_SWEEP, run_id=study_run, name=RUN_NAME_SWEEP.format(study=study_name), **{TAG_STUDY: study_name}
        ) as parent,
        tracking.heartbeat(parent.info.run_id, HEARTBEAT_S),
    ):
        if invocation and invocation != parent.info.run_id:
            tracking.mark_invocation(invocation, parent.info.run_id)
        _end_dead_sweeps(parent.info.experiment_id, parent.info.run_id, invocation)
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
        log_provenance(worker)
        run_workers(plan, worker, study, EXPLORE)
        top = _confirm_top(cfg, data, base)
        if top:
            wait_for_explore(study)
        configs = to_confirm(study, top)
        recommended, confirmed_table = None, None
        if configs:
            seeds = [data.seed + k for k in range(cfg.confirm_seeds)]
            enqueue_confirmations(study, configs, seeds, cfg.steps_to_confirm)
            run_workers(plan, worker, study, CONFIRM)
            confirmed = _confirmed(study, configs, cfg.steps_to_confirm)
            recommended = recommend(confirmed, cfg.recommend, cfg.within_se) if confirmed else None
        if recommended:
            versions = register_confirmed(plan, worker, study, confirmed, recommended)
            confirmed_table = log_confirmation(confirmed, recommended, versions, cfg.steps_to_confirm)
            registered = list(versions.values())
        else:
            versions = registered = register_best(plan, worker, study)
        describe_parent(parent, registered, recommended.statement() if recommended else None)
        summarize(plan, study, confirmed_table)
        page = _report(parent.info.run_id)
        _end_dead_sweeps(parent.info.experiment_id, parent.info.run_id, invocation)  # those killed meanwhile

    _print_where_to_look(plan, parent, versions, recommended)
    if page:
        print(f"report: runs:/{parent.info.run_id}/{ARTIFACT_REPORT}/{REPORT_HTML}, stored at {page}")
    return parent.info.run_id


def _study_run(plan: Plan) -> str | None:
    """The study's parent run, if an earlier sweep of it made one: this sweep continues it. One
    left RUNNING by a sweep that died is said to be so; one just proposed by a sweep starting
    the study too is waited on, as that sweep waits (the election may yet pick another)."""
    run = tracking.study_run(plan.study_name, masked(plan.storage))
    if run is not None and tracking.heartbeat_age_s(run) is None and tracking.run_age_s(run) < ELECTION_S + 5:
        time.sleep(ELECTION_S + 1)
        run = tracking.study_run(plan.study_name, masked(plan.storage))
    if run is None:
        return None
    age = tracking.heartbeat_age_s(run)
    if run.info.status == "RUNNING" and age is not None and age > 2 * HEARTBEAT_S:
        print(f"lora-study: continuing run {run.info.run_id} of {plan.study_name}, left RUNNING by a sweep that died")
    return run.info.run_id


def _end_dead_sweeps(experiment_id: str, *live: str | None) -> None:
    """End KILLED, with the reason, every sweep run of the experiment whose process died (but
    the `live` ones, this sweep's): a killed sweep leaves nothing RUNNING past the next one.
    Housekeeping: a store that fails it now leaves it to the next sweep."""
    try:
        for run_id, reason in tracking.dead_sweep_runs(experiment_id, HEARTBEAT_S, ORPHAN_GRACE_S):
            if run_id not in live:
                tracking.end_dead_run(run_id, reason)
    except Exception as error:
        print(f"lora-study: warning: sweep runs of dead processes not ended this time ({error})", file=sys.stderr)


def _report(parent_run_id: str):
    """The report on the parent run; a failure to write it leaves the study's results standing."""
    try:
        return write_report(parent_run_id)
    except Exception as error:  # the trials and versions are logged: only the page is missing
        print(
            f"lora-study: warning: the report failed ({type(error).__name__}: {error}); "
            f"make it with `lora-study report runs:/{parent_run_id}`",
            file=sys.stderr,
        )
        return None


def log_provenance(worker: Worker) -> None:
    """What the study's numbers rest on, on the parent: the base and data digests, the split
    sizes, the command, the packages and the machine (the report's provenance)."""
    s = worker.setup
    training.log_inputs(s, worker.plan.data, worker.plan.base)
    meta = s.prepared.meta
    tracking.log_params({PARAM_DECONTAMINATION: meta["decontamination"], PARAM_DETECTED_FORMAT: meta["format"]})
    mlflow.log_metrics(meta["counts"])
    mlflow.set_tag(TAG_COMMAND, environment.command())
    mlflow.log_dict({"machine": environment.machine(), "packages": environment.packages()}, ARTIFACT_ENVIRONMENT)


def _warn_of_an_uncovered_grid(space, n_trials: int) -> None:
    """A grid larger than --n-trials leaves levels untried: say so before hours are spent."""
    points = math.prod(len(values) for values in space.grid().values()) if space.sampler == "grid" else 0
    if points > n_trials:
        print(
            f"lora-study: warning: {space.path} is a grid of {points} points and --n-trials {n_trials} "
            f"tries {n_trials} of them; pass --n-trials {points} to cover it",
            file=sys.stderr,
        )


def _confirm_top(cfg: SweepConfig, data: DataConfig, base: BaseModelConfig) -> int:
    """`--confirm-top`; its default is 2 on the embedded default (a 10-minute budget), else 3."""
    if cfg.confirm_top >= 0:
        return cfg.confirm_top
    embedded = data.dataset == DataConfig().dataset and base.base_model == BaseModelConfig().base_model
    return 2 if embedded else 3


def _confirmed(study: optuna.Study, configs: list, steps: int) -> list[Confirmed]:
    """The configurations with at least one complete confirmation, as the rule reads them."""
    confirmed = []
    for config in configs:
        runs = confirmations(study, config.number, steps)
        if runs:
            confirmed.append(
                Confirmed(
                    config=config.number,
                    params=config.params,
                    test_perplexities=tuple(t.user_attrs[METRIC_TEST_PERPLEXITY] for t in runs),
                    trainable_params=runs[0].user_attrs[METRIC_TRAINABLE_PARAMS],
                    peak_memory_mb=statistics.fmean(t.user_attrs[METRIC_PEAK_MEMORY_MB] for t in runs),
                )
            )
    return confirmed


def register_confirmed(plan: Plan, worker: Worker, study: optuna.Study, confirmed: list, recommended) -> dict:
    """Register one adapter per confirmed configuration (its seed with the best validation
    perplexity), tagged with the seeds' test perplexity; `challenger` goes to the recommended one."""
    name = plan.sweep.registered_model or f"lora-study-{plan.base.base_model}"
    versions = {}
    for c in confirmed:
        runs = confirmations(study, c.config, plan.sweep.steps_to_confirm)
        chosen = min(runs, key=lambda t: t.user_attrs[METRIC_EVAL_PERPLEXITY])
        version = registry.find_trial_version(name, plan.study_name, chosen.number)
        if version is None:
            tags = {
                **_version_tags(plan, worker, chosen),
                TAG_CONFIG_TRIAL: c.config,
                TAG_SEED: chosen.user_attrs[ATTR_SEED],
                TAG_TEST_PERPLEXITY_MEAN: f"{c.mean:.6g}",
                TAG_TEST_PERPLEXITY_STD: f"{c.std:.6g}",
                TAG_TEST_PERPLEXITY_N: c.n,
                **{key: f"{chosen.user_attrs[key]:.6g}" for key in CONFIRM_VERSION_METRICS if key in chosen.user_attrs},
            }
            version = registry.register(f"runs:/{chosen.user_attrs[ATTR_RUN_ID]}/{ARTIFACT_ADAPTER}", name, tags)
        versions[c.config] = version
    # on the test split: the champion may come from another budget
    point_aliases(plan, name, versions[recommended.chosen.config], METRIC_TEST_PERPLEXITY)
    return versions


def log_confirmation(confirmed: list[Confirmed], recommended, versions: dict, steps: int) -> pd.DataFrame:
    """The answer on the parent run: the rule's statement, the seed noise, and a row per configuration."""
    mlflow.set_tag(TAG_RECOMMENDATION, recommended.statement())
    mlflow.log_metrics(
        {
            METRIC_SEED_STD: pooled_std(confirmed),
            METRIC_RECOMMENDED_MEAN: recommended.chosen.mean,
            METRIC_RECOMMENDED_STD: recommended.chosen.std,
            **{METRIC_SEED_STD_OF.format(config=c.config): c.std for c in confirmed},
        }
    )
    rows = [
        {
            COLUMN_CONFIG_TRIAL: c.config,
            **c.params,
            COLUMN_SEEDS: c.n,
            COLUMN_STEPS: steps,
            COLUMN_TEST_PERPLEXITY_MEAN: c.mean,
            COLUMN_TEST_PERPLEXITY_STD: c.std,
            COLUMN_STDERR: c.stderr,
            METRIC_TRAINABLE_PARAMS: c.trainable_params,
            METRIC_PEAK_MEMORY_MB: c.peak_memory_mb,
            COLUMN_RECOMMENDED: c is recommended.chosen,
            COLUMN_VERSION: int(versions[c.config].version),
        }
        for c in confirmed
    ]
    table = pd.DataFrame(rows)
    tracking.log_table_replacing(table, ARTIFACT_CONFIRMED)
    return table


def register_best(plan: Plan, worker: Worker, study: optuna.Study) -> list:
    """Register each best trial's adapter once, with its test perplexity; move `challenger`."""
    name = plan.sweep.registered_model or f"lora-study-{plan.base.base_model}"
    versions = []
    for trial in best_trials(study):
        version = registry.find_trial_version(name, plan.study_name, trial.number)
        if version is None:
            run_id = trial.user_attrs[ATTR_RUN_ID]
            tags = {**_version_tags(plan, worker, trial), **worker.test_metrics(run_id)}
            version = registry.register(f"runs:/{run_id}/{ARTIFACT_ADAPTER}", name, tags)
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
    """What every version registered from a study says: where it came from and its objective values."""
    objective_tags = {
        OBJECTIVE_METRICS[objective]: f"{value:.6g}"
        for objective, value in zip(plan.sweep.objective_names, trial.values)
    }
    quantization = tracking.run_params(trial.user_attrs[ATTR_RUN_ID])[PARAM_QUANTIZATION]
    measured_on = comparability.Basis.of(worker.setup.prepared.meta, worker.setup.ref, quantization)
    return {
        TAG_STUDY: plan.study_name,
        TAG_TRIAL_NUMBER: trial.number,
        TAG_BASE_MODEL: plan.base.base_model,
        TAG_BASE_MODEL_SHA256: worker.setup.ref.sha256 or "",
        **objective_tags,
        **registry.measured_on_tags(measured_on),
    }


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
    mlflow.set_tag(TAG_MLFLOW_NOTE, "\n".join(lines))


def summarize(plan: Plan, study: optuna.Study, confirmed: pd.DataFrame | None = None) -> None:
    """Counts, best values and params, plots and tables of the explore phase (the plots with the
    confirmed configurations over them), on the parent run."""
    gone = lost(study)  # lost with their worker and run again: neither results nor failures
    counts = {
        METRIC_TRIALS.format(state=key): len([t for t in trials_of(study, EXPLORE, (state,)) if t.number not in gone])
        for key, state in TRIAL_STATES.items()
    }
    mlflow.log_metrics({**counts, METRIC_TRIALS.format(state="lost"): len(gone)})
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


def _print_recommendation(recommended, versions: dict) -> None:
    """The answer first: the rule's statement, against the base, with what it forgets."""
    version = versions[recommended.chosen.config]
    print(recommended.statement())
    print(f"  params: {recommended.chosen.params}")
    base = version.tags.get(METRIC_BASE_TEST_PERPLEXITY)
    print(f"  base test perplexity {base}; registered as models:/{version.name}/{version.version}")
    kl, delta = version.tags.get(METRIC_FORGETTING_KL), version.tags.get(METRIC_FORGETTING_LOSS_DELTA)
    if kl is not None:
        print(f"  forgetting: KL(base || adapter) {kl} nats/token, loss on general text {float(delta):+.4f}")


def _config_path(config: str) -> str:
    """The config as given, or a shipped one by its path in this project (for runs elsewhere)."""
    if Path(config).is_file():
        return config
    shipped = Path(__file__).resolve().parents[2] / config
    return str(shipped) if shipped.is_file() else config


def _print_where_to_look(plan: Plan, parent, versions, recommended) -> None:
    experiment = mlflow.get_experiment(plan.experiment_id)
    if recommended:
        _print_recommendation(recommended, versions)
        answer, versions = versions[recommended.chosen.config], list(versions.values())
    else:
        answer = versions[0] if versions else None
    print(f"study {plan.study_name}: {len(versions)} adapter(s) registered")
    for version in versions:
        print(
            f"  models:/{version.name}/{version.version} (trial {version.tags.get(TAG_TRIAL_NUMBER)}, "
            f"test perplexity {version.tags.get(METRIC_TEST_PERPLEXITY)} vs base "
            f"{version.tags.get(METRIC_BASE_TEST_PERPLEXITY)}; serves on {version.tags.get(TAG_SERVES_ON)})"
        )
    if answer:
        alias = study_alias(plan.study_name)
        print(f"  this study's answer: models:/{answer.name}@{alias} (version {answer.version})")
        challenger = registry.alias_version(answer.name, ALIAS_CHALLENGER)
        if challenger is not None:
            print(f"  models:/{answer.name}@{ALIAS_CHALLENGER} is version {challenger.version}")
    print(f"experiment `{experiment.name}` (id {plan.experiment_id}), parent run {parent.info.run_id}")
    print(f"see it: mlflow ui --backend-store-uri {plan.tracking_uri}")
    ui = plan.tracking_uri if plan.tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    print(f"  then open {ui.rstrip('/')}/{tracking.ui_experiment_link(plan.experiment_id)}")
    print(f'the study: optuna-dashboard {masked(plan.storage)}  (pip install -e ".[dashboard]")')
