"""`sweep`: an Optuna study over LoRA settings, a nested MLflow run per trial, the best registered.

    lora-study sweep --config configs/sweep/rank.yaml --n-trials 5

The procedure, top to bottom: read and check the search space -> load the base model and the
prepared data once, and check the space against the base -> open (or resume) the study -> start
the parent run and log the study's settings -> run trials here and in `--n-workers - 1` more
processes -> register the best adapters with their test perplexity and the test data it was
measured on (`sweep.registration`); point the study's own alias (`study-<name>`) at its answer,
and move `challenger` (and `champion`, with `--promote`) only to an answer that beats its holder
on the same test data -> log counts, best values, plots and the trials table on the parent
(`sweep.summary`) -> write the report on it (`report.publish`) -> say where to look. Bad input
fails before any run starts.
"""

import dataclasses
import math
import os
import statistics
import sys
from pathlib import Path

import mlflow
import optuna

from lora_study import console, parent_runs, registry, tracking
from lora_study.config import BaseModelConfig, DataConfig, SweepConfig
from lora_study.names import (
    ALIAS_CHALLENGER,
    ARTIFACT_REPORT,
    ARTIFACT_SWEEP_CONFIG,
    BASE_PREFIX,
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_FORGETTING_KL,
    METRIC_FORGETTING_LOSS_DELTA,
    METRIC_PEAK_MEMORY_MB,
    METRIC_TEST_PERPLEXITY,
    METRIC_TOKENS,
    METRIC_TRAINABLE_PARAMS,
    METRIC_TRAINED_TOKENS,
    PARAM_SAMPLER,
    PARAM_STORAGE,
    PARAM_STUDY_NAME,
    REPORT_HTML,
    RUN_NAME_SWEEP,
    STAGE_SWEEP,
    TAG_HORIZON,
    TAG_SERVES_ON,
    TAG_STUDY,
    TAG_TRIAL_NUMBER,
)
from lora_study.report.publish import write_report
from lora_study.sweep import search_space
from lora_study.sweep.recommendation import Confirmed, horizon, recommend, words
from lora_study.sweep.registration import register_best, register_confirmed
from lora_study.sweep.storage import masked
from lora_study.sweep.study import (
    CONFIRM,
    EXPLORE,
    Plan,
    confirmations,
    default_storage,
    default_study_name,
    enqueue_confirmations,
    finished,
    open_study,
    queue_neighbours,
    queue_replicates,
    queued,
    study_alias,
    to_confirm,
    wait_for_explore,
)
from lora_study.sweep.summary import describe_parent, log_confirmation, log_provenance, summarize
from lora_study.sweep.trials import Worker, run_workers


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
    study_run = parent_runs.of_study(study_name, masked(plan.storage), invocation)

    with (
        tracking.stage_run(
            STAGE_SWEEP, run_id=study_run, name=RUN_NAME_SWEEP.format(study=study_name), **{TAG_STUDY: study_name}
        ) as parent,
        parent_runs.heartbeat(parent.info.run_id, parent_runs.HEARTBEAT_S),
    ):
        if invocation and invocation != parent.info.run_id:
            parent_runs.mark_invocation(invocation, parent.info.run_id)
        parent_runs.end_dead_sweeps(parent.info.experiment_id, parent.info.run_id, invocation)
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
        candidates = {c.number for c in configs}
        if configs:
            queue_replicates(study, cfg.explore_replicates, data.split_seed + 1)  # trained first: the explore noise
            for neighbour in queue_neighbours(study, configs[0], space, cfg.neighbour_factors):
                if all(neighbour.params != c.params for c in configs):  # a top one already
                    configs.append(neighbour)
            seeds = [data.split_seed + k for k in range(cfg.confirm_seeds)]
            enqueue_confirmations(study, configs, seeds, cfg.steps_to_confirm)
        if configs or queued(study):  # replicates, neighbours, confirmations; those of other sweeps
            run_workers(plan, worker, study, CONFIRM)
        recommended, confirmed_table, budget = None, None, None
        if configs:
            confirmed = _confirmed(study, configs, cfg.steps_to_confirm, cfg.rule_metric)
            recommended = recommend(confirmed, cfg.recommend, cfg.within_se) if confirmed else None
        if recommended:
            versions = register_confirmed(plan, worker, study, confirmed, recommended, candidates)
            confirmed_table = log_confirmation(confirmed, recommended, versions, cfg.steps_to_confirm)
            budget = _horizon(study, worker, recommended.chosen.config, cfg.steps_to_confirm)
            tracking.set_tag(TAG_HORIZON, budget)
            registered = list(versions.values())
        else:
            versions = registered = register_best(plan, worker, study)
        describe_parent(parent, registered, recommended.statement() if recommended else None)
        summarize(plan, study, confirmed_table)
        page = _report(parent.info.run_id)
        parent_runs.end_dead_sweeps(parent.info.experiment_id, parent.info.run_id, invocation)  # those killed meanwhile

    _print_where_to_look(plan, parent, versions, recommended, budget)
    if page:
        print(f"report: runs:/{parent.info.run_id}/{ARTIFACT_REPORT}/{REPORT_HTML}, stored at {page}")
    return parent.info.run_id


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


def _confirmed(study: optuna.Study, configs: list, steps: int, rule_metric: str) -> list[Confirmed]:
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
                    rule_values=tuple(t.user_attrs[rule_metric] for t in runs)
                    if rule_metric != METRIC_TEST_PERPLEXITY
                    else (),
                    rule_metric=rule_metric,
                )
            )
    return confirmed


def _horizon(study: optuna.Study, worker: Worker, config: int, steps: int) -> str:
    """The budget the answer holds for: the recommended configuration's confirmations' training."""
    runs = confirmations(study, config, steps)
    trained = statistics.fmean(t.user_attrs.get(METRIC_TRAINED_TOKENS, float("nan")) for t in runs)
    split = worker.setup.prepared.meta.counts.get(METRIC_TOKENS.format(split="train"), 0)
    return horizon(steps, trained, split)


def _print_recommendation(recommended, versions: dict, budget: str) -> None:
    """The answer first: the rule's statement and the budget it holds for, against the base, with
    what it forgets."""
    version = versions[recommended.chosen.config]
    print(recommended.statement())
    print(f"  {budget}")
    print(f"  params: {recommended.chosen.params}")
    metric = recommended.chosen.rule_metric
    base = version.tags.get(BASE_PREFIX + metric)  # base_test_perplexity, base_test_rougeL
    print(f"  base {words(metric)} {base}; registered as models:/{version.name}/{version.version}")
    kl, delta = version.tags.get(METRIC_FORGETTING_KL), version.tags.get(METRIC_FORGETTING_LOSS_DELTA)
    if kl is not None:
        print(f"  forgetting: KL(base || adapter) {kl} nats/token, loss on general text {float(delta):+.4f}")


def _config_path(config: str) -> str:
    """The config as given, or a shipped one by its path in this project (for runs elsewhere)."""
    if Path(config).is_file():
        return config
    shipped = Path(__file__).resolve().parents[2] / config
    return str(shipped) if shipped.is_file() else config


def _print_where_to_look(plan: Plan, parent, versions, recommended, budget: str | None) -> None:
    experiment = mlflow.get_experiment(plan.experiment_id)
    if recommended:
        _print_recommendation(recommended, versions, budget)
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
