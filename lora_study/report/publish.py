"""A study's report published: read from its runs, built, rendered to report.html and report.md
with their figures, and logged under `report/` on the sweep's parent run, which the MLflow UI
shows inline."""

import os
import shutil
import tempfile
from pathlib import Path

import mlflow

from lora_study.names import (
    ARTIFACT_REPORT,
    REPORT_FIGURES,
    REPORT_HTML,
    REPORT_MARKDOWN,
    STAGE_REPORT,
    TAG_STAGE,
)
from lora_study.report.read import read_study
from lora_study.report.render import to_html, to_markdown
from lora_study.report.sections import DEFAULT_UI_URL, build


def write_report(parent_run_id: str, ui_url: str = DEFAULT_UI_URL, output: str = "", copy_to: str | None = None) -> str:
    """Build the page of the sweep `parent_run_id`, log it on that run (replacing an earlier one's
    files) and on the run `copy_to`, and copy it into `output`; returns the page's artifact URI."""
    study = read_study(parent_run_id)
    sections = build(study, ui_url)
    markdown, figures = to_markdown(study, sections, REPORT_FIGURES)
    with tempfile.TemporaryDirectory() as folder:
        written = Path(folder)
        (written / REPORT_FIGURES).mkdir()
        (written / REPORT_HTML).write_text(to_html(study, sections))
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
