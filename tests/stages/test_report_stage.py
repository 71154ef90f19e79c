"""The `report` stage on a real study (the tiny model, both phases): the page the sweep leaves on
its parent run, rendered by a real headless Chromium; `lora-study report` by study name, run
and registered version; `mlflow run -e report`; and a study that does not exist."""

import json

import mlflow
import numpy as np
import pytest
from conftest import chromium, chromium_evaluate, mlflow_run
from PIL import Image

from lora_study import cli

pytestmark = pytest.mark.slow  # one whole sweep, shared by the module's tests

SPACE = """
sampler: random
space:
  rank: [4, 8]
  alpha: {per_rank: 2}
  target_modules: [qv, all-linear]
  learning_rate: {low: 1.0e-3, high: 2.0e-2, log: true}
  batch_size: 4
"""
SECTIONS = ("answer", "tradeoffs", "factors", "how-it-ran", "trials", "provenance")
STUDY = "report-study"


@pytest.fixture(scope="module")
def swept(tracking_uri, tmp_path_factory):
    """A study of 4 trials, 2 configurations confirmed with 2 seeds: its parent run."""
    folder = tmp_path_factory.mktemp("report-sweep")
    (folder / "space.yaml").write_text(SPACE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)
        experiment_id = mlflow.create_experiment("report-sweep", artifact_location=str(folder / "artifacts"))
        mlflow.set_experiment(experiment_id=experiment_id)  # over the one an earlier test made active
        patch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
        argv = ["sweep", "--base-model", "tiny", "--max-samples", "15", "--seq-len", "32"]
        argv += ["--config", str(folder / "space.yaml"), "--n-trials", "4", "--max-steps", "2", "--eval-every", "1"]
        argv += ["--confirm-top", "2", "--confirm-steps", "6", "--storage", f"sqlite:///{folder}/optuna.db"]
        argv += ["--explore-replicates", "0", "--confirm-neighbours", ""]  # test_sweep.py tests those
        argv += ["--study-name", STUDY, "--registered-model", "tiny-report"]
        assert cli.main(argv) == 0
    (parent,) = mlflow.search_runs(
        [experiment_id], filter_string="tags.`lora_study.stage` = 'sweep'", output_format="list"
    )
    return parent


def test_the_sweep_leaves_its_report_on_the_parent_run_and_a_browser_shows_it(swept, tmp_path):
    listed = {f.path for f in mlflow.MlflowClient().list_artifacts(swept.info.run_id, "report")}
    assert listed == {"report/report.html", "report/report.md", "report/figures"}
    figures = {f.path for f in mlflow.MlflowClient().list_artifacts(swept.info.run_id, "report/figures")}
    assert "report/figures/tradeoffs.svg" in figures
    page = mlflow.artifacts.download_artifacts(f"runs:/{swept.info.run_id}/report/report.html", dst_path=str(tmp_path))
    dom = chromium(tmp_path / "report.html", tmp_path / "report.png")
    assert swept.data.tags["lora_study.recommendation"] in dom
    assert all(f'<section id="{section}">' in dom for section in SECTIONS)
    assert dom.count("<svg") >= 2
    pixels = np.asarray(Image.open(tmp_path / "report.png").convert("L"), dtype=float)
    assert pixels.shape == (2400, 1100)
    assert (pixels < 200).mean() > 0.02 and pixels.std() > 20  # text, tables and figures, not a blank page
    assert page.endswith("report.html")


# Each table of the page, as laid out at 1100 x 2200: its box's right edge, its width against the
# box's, whether the box scrolls, its headings, and each body row's height.
LAYOUT = """JSON.stringify({page: document.documentElement.scrollWidth, window: window.innerWidth,
  tables: Array.from(document.querySelectorAll("div.table")).map(box => {
    const table = box.querySelector("table");
    return {right: box.getBoundingClientRect().right, width: table.scrollWidth, box: box.clientWidth,
            scrolls: getComputedStyle(box).overflowX === "auto",
            headings: Array.from(table.tHead.rows[0].cells).map(cell => cell.textContent),
            rows: Array.from(table.tBodies[0].rows).map(row => row.getBoundingClientRect().height)};
  })})"""


def test_the_report_reads_like_a_page_at_1100_pixels(swept, tmp_path):
    """Nothing cut off: every table fits the window or scrolls inside its own box; headings are
    words; rows of a table with more than two columns are one line tall."""
    mlflow.artifacts.download_artifacts(f"runs:/{swept.info.run_id}/report/report.html", dst_path=str(tmp_path))
    layout = json.loads(chromium_evaluate(tmp_path / "report.html", LAYOUT, width=1100, height=2200))
    assert layout["page"] <= layout["window"] == 1100  # the page itself never scrolls sideways
    tables = layout["tables"]
    assert len(tables) >= 6
    one_line = min(height for table in tables for height in table["rows"])
    for table in tables:
        assert table["right"] <= 1100, table["headings"]
        assert table["width"] <= table["box"] or table["scrolls"], table["headings"]
        assert not [h for h in table["headings"] if "_" in h], table["headings"]
        if len(table["headings"]) > 2:
            assert max(table["rows"]) < 1.5 * one_line, (table["headings"], table["rows"])
    headings = {h for table in tables for h in table["headings"]}
    assert {"test perplexity, mean", "trainable parameters", "peak memory (MB)"} <= headings


def test_report_by_study_name_version_or_run_writes_the_page_to_output(swept, tmp_path, capsys):
    assert cli.main(["report", STUDY, "--output", str(tmp_path / "by-name"), "--ui-url", "http://ui:8080"]) == 0
    html = (tmp_path / "by-name" / "report.html").read_text()
    assert f"http://ui:8080/#/experiments/{swept.info.experiment_id}/runs/" in html
    markdown = (tmp_path / "by-name" / "report.md").read_text()
    assert markdown.startswith(f"# lora-study report: {STUDY}") and (tmp_path / "by-name" / "figures").is_dir()
    trial = mlflow.search_runs(
        [swept.info.experiment_id], filter_string="tags.`lora_study.stage` = 'trial'", output_format="list"
    )[0]
    for source in ("models:/tiny-report@challenger", f"runs:/{trial.info.run_id}", f"runs:/{swept.info.run_id}"):
        assert cli.main(["report", source, "--output", str(tmp_path / "other")]) == 0
        assert f"report of study {STUDY}: runs:/{swept.info.run_id}/report/report.html" in capsys.readouterr().out
    # the same study, the same sentences (the figures differ only in their random SVG ids)
    assert (tmp_path / "other" / "report.md").read_text() == markdown.replace("http://ui:8080", "http://127.0.0.1:5000")


def test_a_study_that_is_not_there_is_one_clear_line(capsys):
    assert cli.main(["report", "no-such-study"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("lora-study: error: no-such-study: no sweep of study `no-such-study` in sqlite:///")
    assert cli.main(["report", "runs:/0123456789abcdef"]) == 2
    assert "no such run" in capsys.readouterr().err


def test_mlflow_run_report_keeps_a_copy_on_its_own_run(swept, mlflow_experiment):
    done = mlflow_run("report", mlflow_experiment, study=STUDY)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = mlflow.search_runs([mlflow_experiment], output_format="list")
    assert run.info.status == "FINISHED" and run.data.tags["lora_study.stage"] == "report"
    assert "report/report.html" in {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "report")}
