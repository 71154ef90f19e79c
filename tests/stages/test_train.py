"""The `train` stage: a finished run with every name the study reads, data from a `prepare` run,
and bad values or failures inside the run in one line, never RUNNING."""

import math
import os
import signal
import subprocess
import sys

import mlflow
import pytest
import torch
from conftest import TINY_BASE, TINY_DATA, free_port, runs

from lora_study import cli, names, training
from lora_study.config import AdapterConfig, BaseModelConfig, DataConfig, TrainConfig
from lora_study.stages.prepare import run_prepare


def test_train_logs_every_name_the_study_reads(mlflow_experiment, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    values = {"max_steps": "4", "eval_every": "2", "batch_size": "4", "seq_len": "32", "max_samples": "15"}
    argv = ["train", "--base-model", "tiny"] + [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]
    assert cli.main(argv) == 0
    (run,) = runs(mlflow_experiment)
    assert run.info.status == "FINISHED" and run.data.tags[names.TAG_MEMORY_KIND] == "cpu_peak_rss_increase"
    params = run.data.params
    for section in (DataConfig, BaseModelConfig, AdapterConfig, TrainConfig):
        assert set(section.model_fields) <= set(params)
    for name in ("base_model_sha256", "dataset_digest", "steps", "autocast_dtype", "device"):
        assert params[name]
    assert params["steps"] == "4" and params["rank"] == "8"
    client = mlflow.MlflowClient()
    for name in ("train_loss", "learning_rate", "tokens_per_s"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [1, 2, 3, 4]
    evals = client.get_metric_history(run.info.run_id, "eval_loss")
    assert sorted(m.step for m in evals) == [0, 2, 4]
    assert run.data.metrics["eval_perplexity"] == pytest.approx(math.exp(run.data.metrics["eval_loss"]))
    metrics = run.data.metrics
    for name in (
        "train_tokens_per_s",
        "peak_memory_mb",
        "trainable_params",
        "total_params",
        "trainable_percent",
        "adapter_size_mb",
        "train_runtime_s",
        "model_memory_mb",
    ):
        assert metrics[name] > 0, name
    # rank 8 on q_proj (64 -> 64) and v_proj (64 -> 32) of 2 layers: 8 * (64 + 64 + 64 + 32) * 2
    assert metrics["trainable_params"] == 3584
    assert metrics["trainable_percent"] == pytest.approx(100 * 3584 / metrics["total_params"])
    assert any(name.startswith("system/cpu_utilization") for name in metrics)


def test_the_training_seed_changes_the_adapter_and_not_the_split_and_both_seeds_are_params(mlflow_experiment):
    base = ["train", "--base-model", "tiny", "--max-steps", "2", "--batch-size", "4", "--seq-len", "32"]
    base += ["--max-samples", "15", "--eval-every", "0", "--forgetting-data", "none"]
    for seed in ("0", "1"):
        assert cli.main([*base, "--training-seed", seed]) == 0
    first, second = sorted(runs(mlflow_experiment), key=lambda run: run.data.params["training_seed"])
    assert (first.data.params["training_seed"], second.data.params["training_seed"]) == ("0", "1")
    assert first.data.params["split_seed"] == second.data.params["split_seed"] == "0"
    assert first.data.params["dataset_digest"] == second.data.params["dataset_digest"]  # the same split
    assert first.data.metrics["eval_loss"] != second.data.metrics["eval_loss"]  # another adapter


def test_data_from_a_prepare_run_is_taken_by_runs_uri(mlflow_experiment):
    prepare_id = run_prepare(TINY_DATA, TINY_BASE)
    train = TrainConfig(max_steps=3, batch_size=4, eval_every=0, data=f"runs:/{prepare_id}")
    s = training.setup(TINY_DATA, TINY_BASE, AdapterConfig(), train)
    assert s.prepared.meta.digest == mlflow.get_run(prepare_id).data.params["dataset_digest"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--rank", "0"], "--rank: Input should be greater than 0"),
        (["--alpha", "-1"], "--alpha: Input should be greater than 0"),
        (["--dropout", "1"], "--dropout: Input should be less than 1"),
        (["--max-steps", "0", "--epochs", "0"], "`max_steps` and `epochs` are both 0"),
        (["--quantization", "4bit", "--precision", "fp32"], "--quantization 4bit computes in bf16"),
        (["--seq-len", "4096"], "--seq-len 4096 is over the model's maximum of 2048 positions"),
        (["--precision", "fp16"], "--precision fp16 needs a CUDA GPU"),
        (["--target-modules", "nope"], "no linear module named nope"),
    ],
)
def test_bad_values_are_refused_in_one_line(argv, expected, mlflow_experiment, capsys):
    code = cli.main(["train", "--base-model", "tiny", "--max-samples", "15", "--seq-len", "32", *argv])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert all(run.info.status != "RUNNING" for run in runs(mlflow_experiment))


def _run_with_broken_loss(monkeypatch, mlflow_experiment, loss_fn):
    monkeypatch.setattr(training, "loss_sum", loss_fn)
    argv = ["train", "--base-model", "tiny", "--max-samples", "15", "--seq-len", "32", "--max-steps", "3"]
    code = cli.main(argv)
    (run,) = runs(mlflow_experiment)
    return code, run


def test_a_nan_loss_fails_the_run_with_the_reason(monkeypatch, mlflow_experiment):
    def nan_loss(model, batch, device):
        return torch.tensor(float("nan"), requires_grad=True), 1

    code, run = _run_with_broken_loss(monkeypatch, mlflow_experiment, nan_loss)
    assert code == 2 and run.info.status == "FAILED"
    assert "train_loss became nan at step 1" in run.data.tags["lora_study.error"]


def test_out_of_memory_fails_the_run_with_the_reason(monkeypatch, mlflow_experiment):
    def oom(model, batch, device):
        raise torch.OutOfMemoryError("CUDA out of memory")

    code, run = _run_with_broken_loss(monkeypatch, mlflow_experiment, oom)
    assert code == 2 and run.info.status == "FAILED"
    assert "out of memory at step 1" in run.data.tags["lora_study.error"]


def test_ctrl_c_leaves_the_run_killed(monkeypatch, mlflow_experiment):
    def interrupted(model, batch, device):
        raise KeyboardInterrupt

    code, run = _run_with_broken_loss(monkeypatch, mlflow_experiment, interrupted)
    assert code == 130 and run.info.status == "KILLED"


@pytest.mark.slow  # two processes of their own
def test_two_processes_train_one_adapter_with_the_losses_of_one_accumulating_twice_as_much(mlflow_experiment, tmp_path):
    """`torchrun --nproc_per_node 2` (gloo on CPU): one FINISHED run, one adapter, world_size 2,
    and per-step losses equal to one process reading the same global batch (dropout off: each
    process draws its own masks)."""
    settings = ["--base-model", "tiny", "--max-samples", "15", "--seq-len", "32", "--max-steps", "4"]
    settings += ["--eval-every", "0", "--forgetting-data", "none", "--precision", "fp32", "--dropout", "0"]
    settings += ["--learning-rate", "1e-2"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_port", str(free_port()), "-m", "lora_study", "train", *settings, "--batch-size", "2"]
    torchrun += ["--grad-accum", "2"]  # a micro-batch without gradient sync, then one with
    # a session of its own: should it hang, the group goes, workers too, and holds no store lock
    process = subprocess.Popen(
        torchrun, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    done = subprocess.CompletedProcess(torchrun, process.returncode, stdout, stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs(mlflow_experiment)
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    assert len(run.data.tags["peak_memory_mb_per_process"].split(", ")) == 2
    models = mlflow.MlflowClient().search_logged_models([mlflow_experiment])
    assert [m.source_run_id for m in models] == [run.info.run_id]  # the main process alone saved it
    assert done.stdout.count("MLflow run ") == 1 and done.stderr.count("data python-docs") == 1

    assert cli.main(["train", *settings, "--batch-size", "2", "--grad-accum", "4"]) == 0
    (single,) = [r for r in runs(mlflow_experiment) if r.info.run_id != run.info.run_id]
    client = mlflow.MlflowClient()

    def losses(run_id: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(run_id, "train_loss"), key=lambda m: m.step)]

    assert single.data.params["world_size"] == "1"
    assert losses(run.info.run_id) == pytest.approx(losses(single.info.run_id), rel=1e-6)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--group-by", "title"], "--group-by trains its groups one after another in one process"),
        (["sweep", "--max-samples", "15"], "sweep runs in one process: only train runs under torchrun"),
        (["evaluate", "--model-uri", "base:tiny"], "evaluate runs in one process: only train runs under torchrun"),
    ],
)
def test_what_stays_in_one_process_is_refused_under_torchrun(argv, expected, monkeypatch, capsys, mlflow_experiment):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it, in the main process
    monkeypatch.setenv("RANK", "0")
    assert cli.main(argv if argv[0] == "evaluate" else [*argv, "--base-model", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
    assert runs(mlflow_experiment) == []
