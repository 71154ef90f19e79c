"""`lora-study` end to end in-process: exit codes, one-line errors, no run left RUNNING."""

import json
import subprocess
import sys

import mlflow
import pytest
from conftest import register_echo, runs

from lora_study import cli


def statuses(experiment_id):
    return [run.info.status for run in runs(experiment_id)]


def test_prepare_finishes_a_run_and_prints_its_id(tmp_path, mlflow_experiment, capsys):
    path = tmp_path / "d.txt"
    path.write_text("\n\n".join(f"paragraph {i} " + "words " * 40 for i in range(10)))
    assert cli.main(["prepare", "--dataset", str(path), "--base-model", "tiny", "--seq-len", "32"]) == 0
    (run,) = runs(mlflow_experiment)
    assert run.info.status == "FINISHED"
    assert run.info.run_id in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--format", "xml"], "--format: Input should be 'auto', 'text', 'instruction' or 'chat'"),
        (["--seq-len", "0"], "--seq-len: Input should be greater than 0"),
        (["--dataset", "missing.jsonl"], "--dataset: file missing.jsonl does not exist"),
        (["--dataset", "BAD_JSONL"], "BAD_JSONL, line 2: not valid JSON"),
        (["--base-model", "nowhere"], "--base-model: `nowhere` is neither"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_run(argv, expected, tmp_path, mlflow_experiment, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n{not json}\n")
    argv = [str(bad) if a == "BAD_JSONL" else a for a in argv]
    expected = expected.replace("BAD_JSONL", str(bad))
    assert cli.main(["prepare", "--base-model", "tiny", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lora-study: error: ") and expected in err[0]
    assert statuses(mlflow_experiment) == []
    assert mlflow.active_run() is None


def test_a_failure_inside_the_run_leaves_it_failed_with_the_reason(tmp_path, mlflow_experiment, monkeypatch):
    path = tmp_path / "d.txt"
    path.write_text("\n\n".join("words " * 40 for _ in range(10)))

    def broken_store(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(mlflow, "log_artifacts", broken_store)
    with pytest.raises(OSError):
        cli.main(["prepare", "--dataset", str(path), "--base-model", "tiny", "--seq-len", "32"])
    (run,) = runs(mlflow_experiment)
    assert run.info.status == "FAILED"
    assert run.data.tags["lora_study.error"] == "OSError: disk full"


HEAVY_MODULES = ("torch", "transformers", "peft", "mlflow.pyfunc", "optuna")


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["sweep", "--help"],
        ["train", "--rank", "0"],  # refused at the edge
        ["versions", "{name}"],
        ["promote", "{name}", "--version", "1", "--reason", "first"],
    ],
)
def test_commands_that_load_no_model_import_no_model_library(argv, tmp_path):
    """`--help`, an argument error, `versions` and `promote` answer in about a second: they
    import neither torch, transformers, peft nor MLflow's pyfunc (seconds each to import)."""
    name = f"light-{tmp_path.name}"
    register_echo(name, test_perplexity="12.5")
    argv = [word.format(name=name) for word in argv]
    program = (
        "import sys\nfrom lora_study import cli\n"
        f"try:\n    code = cli.main({argv!r})\nexcept SystemExit as exit:\n    code = exit.code\n"
        f"print(code, sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    code, imported = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert imported == "[]", done.stdout
    assert code == ("2" if "--rank" in argv else "0"), done.stderr
    if argv[0] == "versions":
        assert "12.5" in done.stdout  # the table, read from the registry
    if argv[0] == "promote":
        assert f"{name}@champion -> version 1" in done.stdout
