"""`report`: a study's answer as one page, generated from its runs.

    lora-study report default-smollm2-135m-python-docs --output report/

The procedure, top to bottom: find the sweep's parent run (from the study's name, runs:/<its id>,
or a version the study registered) -> read back its trials, confirmations, registered versions and
artifacts -> build the page (`lora_study.report`) -> log report.html, report.md and their figures
under `report/` on the parent run, which the MLflow UI shows inline -> write them to `--output`.
`sweep` calls `write_report` as its last step; reading MLflow only, it works on a study in any
Optuna storage.
"""

import os
import shutil
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from lora_study import model_uris, plots, registry, report, search_space, tracking
from lora_study.config import ReportConfig
from lora_study.errors import UserInputError
from lora_study.tracking import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    ARTIFACT_CONFIRMED,
    ARTIFACT_ENVIRONMENT,
    ARTIFACT_IMPORTANCES,
    ARTIFACT_REPORT,
    ARTIFACT_SWEEP_CONFIG,
    COLUMN_CONFIG_TRIAL,
    COLUMN_STEPS,
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_FORGETTING_LOSS_DELTA,
    METRIC_TEST_PERPLEXITY,
    REPORT_FIGURES,
    REPORT_HTML,
    REPORT_MARKDOWN,
    RUN_NAME_REPORT,
    STAGE_CONFIRM,
    STAGE_REPORT,
    STAGE_SWEEP,
    STAGE_TRIAL,
    TAG_COMMAND,
    TAG_MLFLOW_PARENT_RUN,
    TAG_RETRY_OF,
    TAG_SEED,
    TAG_STAGE,
    TAG_STUDY,
)


def run_report(cfg: ReportConfig) -> None:
    """The `report` entry point: the page on the sweep's run, and in `--output`."""
    parent = find_parent(cfg.study)
    mlflow_run = os.environ.get("MLFLOW_RUN_ID")  # `mlflow run -e report` made a run: it keeps a copy
    page = write_report(parent.info.run_id, cfg.ui_url, cfg.output, copy_to=mlflow_run)
    if mlflow_run:
        mlflow.MlflowClient().update_run(mlflow_run, name=RUN_NAME_REPORT.format(study=parent.data.tags[TAG_STUDY]))
    print(f"report of study {parent.data.tags[TAG_STUDY]}: runs:/{parent.info.run_id}/{ARTIFACT_REPORT}/{REPORT_HTML}")
    print(f"  stored at {page}")
    if cfg.output:
        print(f"  written to {Path(cfg.output) / REPORT_HTML} and {REPORT_MARKDOWN}")


def find_parent(study: str):
    """The sweep's parent run: of runs:/<id> (or of the trial run it names), of the study that
    registered a models:/ version, or the newest finished one of a study name."""
    client = mlflow.MlflowClient()
    if study.startswith("runs:/"):
        run_id = study.removeprefix("runs:/").split("/")[0]
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise UserInputError(f"{study}: no such run in {tracking.tracking_uri()}; pass a sweep's run id") from None
        if run.data.tags.get(TAG_STAGE) in (STAGE_TRIAL, STAGE_CONFIRM):
            run = client.get_run(run.data.tags[TAG_MLFLOW_PARENT_RUN])
        if run.data.tags.get(TAG_STAGE) != STAGE_SWEEP:
            raise UserInputError(
                f"{study}: a `{run.data.tags.get(TAG_STAGE)}` run, not a sweep's; pass a sweep's run id"
            )
        return run
    name = study
    if study.startswith(model_uris.MODELS_SCHEME):
        version = registry.version_of_uri(model_uris.parse(study))
        name = version.tags.get(TAG_STUDY)
        if not name:
            raise UserInputError(f"{study}: this version was not registered by a sweep; pass a study name")
    if any(quote in name for quote in "'\"`"):  # no sweep is named so (`--study-name` refuses quotes)
        raise UserInputError(f"{study}: no study has quotes in its name; pass the name `lora-study sweep` printed")
    found = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`{TAG_STUDY}` = '{name}' and tags.`{TAG_STAGE}` = '{STAGE_SWEEP}'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    if not found:
        raise UserInputError(
            f"{study}: no sweep of study `{name}` in {tracking.tracking_uri()}; pass the study name `lora-study sweep` "
            "printed, runs:/<sweep run id> or models:/<name>@<alias>"
        )
    return next((run for run in found if run.info.status == "FINISHED"), found[0])


def write_report(
    parent_run_id: str, ui_url: str = report.DEFAULT_UI_URL, output: str = "", copy_to: str | None = None
) -> str:
    """Build the page of the sweep `parent_run_id`, log it on that run (replacing an earlier one's
    files) and on the run `copy_to`, and copy it into `output`; returns the page's artifact URI."""
    study = read_study(parent_run_id)
    sections = report.build(study, ui_url)
    markdown, figures = report.to_markdown(study, sections, REPORT_FIGURES)
    with tempfile.TemporaryDirectory() as folder:
        written = Path(folder)
        (written / REPORT_FIGURES).mkdir()
        (written / REPORT_HTML).write_text(report.to_html(study, sections))
        (written / REPORT_MARKDOWN).write_text(markdown)
        for name, svg in figures.items():
            (written / REPORT_FIGURES / name).write_text(svg)
        client = mlflow.MlflowClient()
        client.log_artifacts(parent_run_id, folder, ARTIFACT_REPORT)
        if copy_to and copy_to != parent_run_id:
            client.set_tag(copy_to, TAG_STAGE, STAGE_REPORT)
            client.log_artifacts(copy_to, folder, ARTIFACT_REPORT)
        if output:
            os.chmod(folder, 0o755)  # a temporary folder is private; the copy takes its mode
            shutil.copytree(folder, output, dirs_exist_ok=True)
    return f"{client.get_run(parent_run_id).info.artifact_uri}/{ARTIFACT_REPORT}/{REPORT_HTML}"


# --- reading a study back from MLflow ---------------------------------------------------------------


def read_study(parent_run_id: str) -> report.StudyRuns:
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
    return report.StudyRuns(
        name=name,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        params={key: tracking.param_value(value) for key, value in parent.data.params.items()},
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


def _version(mv) -> report.Version:
    return report.Version(f"models:/{mv.name}/{mv.version}", tuple(sorted(mv.aliases)), dict(mv.tags))


def _holders(versions: list) -> dict[str, report.Version]:
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
    TAG_RETRY_OF: f"tags.{TAG_RETRY_OF}",
}


def _trial_runs(experiment_id: str, study: str, stage: str) -> pd.DataFrame:
    """The study's trial (or confirmation) runs, one row each, with their durations."""
    runs = mlflow.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_STAGE}` = '{stage}'"
    )
    if runs.empty:
        return pd.DataFrame(columns=[*plots.TRIAL_COLUMNS, report.COLUMN_DURATION_S, *CONFIRM_COLUMNS])
    frame = plots.trials_frame(runs)
    durations = dict(zip(runs["run_id"], (runs["end_time"] - runs["start_time"]).dt.total_seconds()))
    frame[report.COLUMN_DURATION_S] = frame["run_id"].map(durations)
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
    return Path(path).name, Path(path).read_text(), tuple(space.searched()), _ranges(space)


def _ranges(space) -> dict[str, tuple[float, float]]:
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
