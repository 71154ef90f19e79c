"""A study read back from MLflow: its parent run, trials, confirmations, registered versions and
artifacts, as the report's sections read them (`StudyRuns`). Reading MLflow only, it works on a
study in any Optuna storage."""

import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd

from lora_study import plots, registry, tracking
from lora_study.errors import UserInputError
from lora_study.names import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    ARTIFACT_CONFIRMED,
    ARTIFACT_ENVIRONMENT,
    ARTIFACT_IMPORTANCES,
    ARTIFACT_SWEEP_CONFIG,
    BASE_PREFIX,
    COLUMN_CONFIG_TRIAL,
    COLUMN_STEPS,
    GENERATION_OBJECTIVES,
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_FORGETTING_LOSS_DELTA,
    METRIC_STOPPED_EARLY,
    METRIC_TEST_PERPLEXITY,
    STAGE_CONFIRM,
    STAGE_SWEEP,
    STAGE_TRIAL,
    TAG_COMMAND,
    TAG_NEIGHBOUR_OF,
    TAG_REPLICATE_OF,
    TAG_RETRY_OF,
    TAG_SEED,
    TAG_STAGE,
    TAG_STUDY,
)
from lora_study.sweep import search_space


@dataclass(frozen=True)
class Version:
    """A registered version of the study's adapters."""

    uri: str  # models:/<name>/<version>
    aliases: tuple[str, ...]
    tags: dict


@dataclass
class StudyRuns:
    """What a study left in MLflow: its parent run, its trials and confirmations, its versions."""

    name: str
    experiment_id: str
    parent_run_id: str
    params: dict[str, str]  # of the parent run
    metrics: dict[str, float]
    tags: dict[str, str]
    trials: pd.DataFrame  # explore trials: `plots.trials_frame` with COLUMN_DURATION_S
    confirmations: pd.DataFrame  # confirmation runs: the same, with config_trial, seed and test metrics
    confirmed: pd.DataFrame | None  # the parent's `confirmed.json`: one row per confirmed configuration
    versions: list[Version]
    importances: dict[str, float]
    searched: tuple[str, ...]  # the parameters the search space varied (empty: unknown)
    ranges: dict[str, tuple[float, float]]  # the searched range of each numeric parameter
    space_file: str  # the search-space file the study ran on: its name and its text
    space_text: str
    environment: dict  # {machine, packages}, as the sweep recorded them
    command: str  # the command that ran the sweep
    wall_s: float  # wall-clock time of the sweep's parent run(s)
    # the versions @champion and @challenger point at now, in the registered model of the study's versions
    holders: dict[str, Version] = field(default_factory=dict)


def read_study(parent_run_id: str) -> StudyRuns:
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    name, experiment_id = parent.data.tags[TAG_STUDY], parent.info.experiment_id
    space_file, space_text, searched, ranges = _search_space(parent_run_id)
    trials = _trial_runs(experiment_id, name, STAGE_TRIAL)
    confirmations = _trial_runs(experiment_id, name, STAGE_CONFIRM)
    run_ids = set(trials["run_id"]) | set(confirmations["run_id"])
    environment = _load_dict(parent_run_id, ARTIFACT_ENVIRONMENT)
    # registered from this study's runs, not a namesake's
    versions = [v for v in registry.study_versions(name) if v.run_id in run_ids]
    return StudyRuns(
        name=name,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        params=tracking.params_of(parent),
        metrics=dict(parent.data.metrics),
        tags=dict(parent.data.tags),
        trials=trials,
        confirmations=confirmations,
        confirmed=_confirmed(experiment_id, parent_run_id),
        versions=[_version(v) for v in versions],
        importances=_load_dict(parent_run_id, ARTIFACT_IMPORTANCES),
        searched=searched,
        ranges=ranges,
        space_file=space_file,
        space_text=space_text,
        environment=environment,
        command=parent.data.tags.get(TAG_COMMAND, ""),
        wall_s=_wall_s(experiment_id, name, parent_run_id),
        holders=_holders(versions),
    )


def _version(mv) -> Version:
    return Version(f"models:/{mv.name}/{mv.version}", tuple(sorted(mv.aliases)), dict(mv.tags))


def _holders(versions: list) -> dict[str, Version]:
    """The versions @champion and @challenger point at in the registered model of the study's
    versions (the first's, should there be several)."""
    if not versions:
        return {}
    found = {alias: registry.alias_version(versions[0].name, alias) for alias in (ALIAS_CHAMPION, ALIAS_CHALLENGER)}
    return {alias: _version(mv) for alias, mv in found.items() if mv}


# Besides `plots.trials_frame`'s columns: what the report reads of a trial or confirmation run.
CONFIRM_COLUMNS = {
    COLUMN_CONFIG_TRIAL: f"tags.{COLUMN_CONFIG_TRIAL}",
    TAG_SEED: f"tags.{TAG_SEED}",
    COLUMN_STEPS: "params.max_steps",
    METRIC_TEST_PERPLEXITY: f"metrics.{METRIC_TEST_PERPLEXITY}",
    METRIC_BASE_TEST_PERPLEXITY: f"metrics.{METRIC_BASE_TEST_PERPLEXITY}",
    METRIC_FORGETTING_LOSS_DELTA: f"metrics.{METRIC_FORGETTING_LOSS_DELTA}",
    METRIC_STOPPED_EARLY: f"metrics.{METRIC_STOPPED_EARLY}",
    **{metric: f"metrics.{metric}" for metric in GENERATION_OBJECTIVES.values()},
    **{BASE_PREFIX + metric: f"metrics.{BASE_PREFIX}{metric}" for metric in GENERATION_OBJECTIVES.values()},
    TAG_RETRY_OF: f"tags.{TAG_RETRY_OF}",
    TAG_NEIGHBOUR_OF: f"tags.{TAG_NEIGHBOUR_OF}",
    TAG_REPLICATE_OF: f"tags.{TAG_REPLICATE_OF}",
}


def _trial_runs(experiment_id: str, study: str, stage: str) -> pd.DataFrame:
    """The study's trial (or confirmation) runs, one row each, with their durations."""
    runs = mlflow.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_STAGE}` = '{stage}'"
    )
    if runs.empty:
        return pd.DataFrame(columns=[*plots.TRIAL_COLUMNS, COLUMN_DURATION_S, *CONFIRM_COLUMNS])
    frame = plots.trials_frame(runs)
    durations = dict(zip(runs["run_id"], (runs["end_time"] - runs["start_time"]).dt.total_seconds()))
    frame[COLUMN_DURATION_S] = frame["run_id"].map(durations)
    for column, source in CONFIRM_COLUMNS.items():
        if source in runs:
            values = dict(zip(runs["run_id"], pd.to_numeric(runs[source])))
            frame[column] = frame["run_id"].map(values)
    return frame


def _confirmed(experiment_id: str, run_id: str) -> pd.DataFrame | None:
    if not _has_artifact(run_id, ARTIFACT_CONFIRMED):
        return None
    return mlflow.MlflowClient().load_table(experiment_id, ARTIFACT_CONFIRMED, run_ids=[run_id])


def _search_space(run_id: str) -> tuple[str, str, tuple[str, ...], dict]:
    """The search-space file the study ran on: its name, its text, the parameters it searched and
    their numeric ranges."""
    files = mlflow.MlflowClient().list_artifacts(run_id, ARTIFACT_SWEEP_CONFIG)
    if not files:
        return "", "", (), {}
    path = tracking.download(f"runs:/{run_id}/{files[0].path}")
    try:
        space = search_space.load(path)
    except UserInputError:  # a file an older lora-study accepted: its text still shows
        return Path(path).name, Path(path).read_text(), (), {}
    return Path(path).name, Path(path).read_text(), tuple(space.searched()), ranges(space)


def ranges(space) -> dict[str, tuple[float, float]]:
    """The searched range of each numeric parameter of a search space: a range's bounds, or its choices' extremes."""
    ranges = {}
    for name, dim in space.searched().items():
        if isinstance(dim, search_space.Range):
            ranges[name] = (dim.low, dim.high)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in dim.values):
            ranges[name] = (min(dim.values), max(dim.values))
    return ranges


def _load_dict(run_id: str, path: str) -> dict:
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}") if _has_artifact(run_id, path) else {}


def _has_artifact(run_id: str, path: str) -> bool:
    return any(f.path == path for f in mlflow.MlflowClient().list_artifacts(run_id))


def _wall_s(experiment_id: str, study: str, current: str) -> float:
    """Wall-clock time of the study's sweeps (a resumed study has several), the running one until now."""
    sweeps = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_STAGE}` = '{STAGE_SWEEP}'",
        output_format="list",
    )
    now = time.time() * 1000
    return sum(
        ((run.info.end_time or now) - run.info.start_time) / 1000
        for run in sweeps
        if run.info.end_time or run.info.run_id == current  # a sweep that died has no end to count to
    )


COLUMN_DURATION_S = "duration_s"  # of a trial's run, start to end
