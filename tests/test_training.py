"""`train` on the tiny model: every option family, determinism, the logged names, failures."""

import math

import mlflow
import pytest
import torch

from lora_study import cli, tracking, training
from lora_study.config import AdapterConfig, BaseModelConfig, DataConfig, TrainConfig
from lora_study.errors import UserInputError

from conftest import runs

TINY = BaseModelConfig(base_model="tiny")
DATA = DataConfig(max_samples=15, seq_len=32)  # the first 15 python-docs topics


def setup(adapter=AdapterConfig(), **train_values):
    train = TrainConfig(**{"max_steps": 3, "batch_size": 4, "eval_every": 0, **train_values})
    return training.setup(DATA, TINY, adapter, train), adapter, train


def fine_tune(adapter=AdapterConfig(), seed=0, **train_values):
    s, adapter, train = setup(adapter, **train_values)
    with mlflow.start_run() as run:
        model = training.fine_tune(s, adapter, train, seed)
    mlflow.flush_async_logging()
    return model, mlflow.get_run(run.info.run_id)


def final(run, metric):
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, metric)
    return max(history, key=lambda m: m.step).value


# --- what a run logs -----------------------------------------------------------------------


def test_train_logs_every_name_the_study_reads(mlflow_experiment, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    values = {"max_steps": "4", "eval_every": "2", "batch_size": "4", "seq_len": "32", "max_samples": "15"}
    argv = ["train", "--base-model", "tiny"] + [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]
    assert cli.main(argv) == 0
    (run,) = runs(mlflow_experiment)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.TAG_MEMORY_KIND] == "cpu_peak_rss_increase"
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
    for name in ("train_tokens_per_s", "peak_memory_mb", "trainable_params", "total_params",
                 "trainable_percent", "adapter_size_mb", "train_runtime_s", "model_memory_mb"):  # fmt: skip
        assert metrics[name] > 0, name
    # rank 8 on q_proj (64 -> 64) and v_proj (64 -> 32) of 2 layers: 8 * (64 + 64 + 64 + 32) * 2
    assert metrics["trainable_params"] == 3584
    assert metrics["trainable_percent"] == pytest.approx(100 * 3584 / metrics["total_params"])
    assert any(name.startswith("system/cpu_utilization") for name in metrics)


def test_data_from_a_prepare_run_is_taken_by_runs_uri(mlflow_experiment):
    from lora_study import data

    prepare_id = data.run_prepare(DATA, TINY)
    s, _, _ = setup(data=f"runs:/{prepare_id}")
    assert s.prepared.meta["digest"] == mlflow.get_run(prepare_id).data.params["dataset_digest"]


# --- option families -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "preset, wrapped",
    [
        ("q", {"q_proj"}),
        ("v", {"v_proj"}),
        ("qv", {"q_proj", "v_proj"}),
        ("qkvo", {"q_proj", "k_proj", "v_proj", "o_proj"}),
        ("attention", {"q_proj", "k_proj", "v_proj", "o_proj"}),
        ("mlp", {"gate_proj", "up_proj", "down_proj"}),
        ("all-linear", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
        ("k_proj,down_proj", {"k_proj", "down_proj"}),
    ],
)
def test_target_module_presets(preset, wrapped):
    model, _ = fine_tune(AdapterConfig(target_modules=preset), max_steps=1)
    adapted = {name.rsplit(".", 1)[1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == wrapped


def test_an_unknown_target_module_lists_the_models_modules():
    with pytest.raises(UserInputError) as caught:
        fine_tune(AdapterConfig(target_modules="q_proj,query"), max_steps=1)
    message = str(caught.value)
    assert "no linear module named query" in message
    assert "names from: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in message


def test_rslora_scales_by_alpha_over_sqrt_rank():
    model, _ = fine_tune(AdapterConfig(rank=16, alpha=8, use_rslora=True), max_steps=1)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(16))


def test_dora_learns_a_magnitude_vector():
    model, run = fine_tune(AdapterConfig(use_dora=True), max_steps=2)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.lora_magnitude_vector["default"].weight.requires_grad
    assert run.data.metrics["trainable_params"] == 3584 + 2 * (64 + 32)  # one magnitude per output


@pytest.mark.parametrize("quantization, layer_type", [("8bit", "Linear8bitLt"), ("4bit", "Linear4bit")])
def test_quantized_bases_train_on_cpu(quantization, layer_type):
    model, run = fine_tune(AdapterConfig(quantization=quantization), max_steps=2)
    base_layer = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(base_layer).__name__ == layer_type
    assert math.isfinite(final(run, "train_loss")) and run.data.params["quantization"] == quantization


def test_gradient_accumulation_matches_one_big_batch():
    adapter = AdapterConfig(dropout=0.0)
    big, _ = fine_tune(adapter, max_steps=1, batch_size=8, grad_accum=1, precision="fp32")
    small, _ = fine_tune(adapter, max_steps=1, batch_size=4, grad_accum=2, precision="fp32")
    for (name, a), (_, b) in zip(big.named_parameters(), small.named_parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_gradient_checkpointing_gives_the_same_loss():
    _, plain = fine_tune(max_steps=2, precision="fp32")
    _, checkpointed = fine_tune(max_steps=2, precision="fp32", gradient_checkpointing=True)
    assert final(checkpointed, "train_loss") == pytest.approx(final(plain, "train_loss"), rel=1e-5)


def test_same_seed_same_final_loss_other_seed_other_loss():
    losses = [final(fine_tune(seed=seed, max_steps=3)[1], "train_loss") for seed in (0, 0, 1)]
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_epochs_set_the_steps_when_max_steps_is_zero():
    s, _, train = setup(max_steps=0, epochs=2, batch_size=4)
    rows = len(s.prepared.rows("train"))
    assert training.planned_steps(train, rows) == math.ceil(2 * rows / 4)


# --- failures ------------------------------------------------------------------------------


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


def test_data_prepared_with_another_tokenizer_is_refused(tmp_path):
    import json
    import shutil

    s, _, _ = setup()
    copy = shutil.copytree(s.prepared.path, tmp_path / "prepared")
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "tokenizer_digest": "other", "base_model": "gpt2"}))
    with pytest.raises(UserInputError, match="prepared with the tokenizer of `gpt2`"):
        setup(data=str(copy))


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
