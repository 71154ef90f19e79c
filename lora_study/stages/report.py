"""`report`: a study's answer as one page, generated from its runs.

    lora-study report default-smollm2-135m-python-docs --output report/

The procedure, top to bottom: find the sweep's parent run (from the study's name, runs:/<its id>,
or a version the study registered) -> read back its trials, confirmations, registered versions and
artifacts -> build the page (`lora_study.report.sections`) -> log report.html, report.md and their figures
under `report/` on the parent run, which the MLflow UI shows inline -> write them to `--output`.
`sweep` calls `write_report` as its last step; reading MLflow only, it works on a study in any
Optuna storage.
"""

import os
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from lora_study import model_uris, registry, tracking
from lora_study.config import ReportConfig
from lora_study.errors import UserInputError
from lora_study.names import (
    ARTIFACT_REPORT,
    REPORT_HTML,
    REPORT_MARKDOWN,
    RUN_NAME_REPORT,
    STAGE_CONFIRM,
    STAGE_SWEEP,
    STAGE_TRIAL,
    TAG_MLFLOW_PARENT_RUN,
    TAG_STAGE,
    TAG_STUDY,
)
from lora_study.report.publish import write_report


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
