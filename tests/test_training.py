"""The training loop on the tiny model: every option family, determinism, what it returns."""

import math

import mlflow
import pytest
import torch

from lora_study import training
from lora_study.config import AdapterConfig, BaseModelConfig, DataConfig, TrainConfig
from lora_study.errors import UserInputError

TINY = BaseModelConfig(base_model="tiny")
DATA = DataConfig(max_samples=15, seq_len=32)  # the first 15 python-docs topics


def setup(adapter=AdapterConfig(), **train_values):
    train = TrainConfig(**{"max_steps": 3, "batch_size": 4, "eval_every": 0, **train_values})
    return training.setup(DATA, TINY, adapter, train), adapter, train


def fine_tune(adapter=AdapterConfig(), **train_values):
    s, adapter, train = setup(adapter, **train_values)
    with mlflow.start_run() as run:
        model = training.fine_tune(s, adapter, train).model
    mlflow.flush_async_logging()
    return model, mlflow.get_run(run.info.run_id)


def final(run, metric):
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, metric)
    return max(history, key=lambda m: m.step).value


# --- what a run logs -----------------------------------------------------------------------


# --- option families -----------------------------------------------------------------------


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


@pytest.mark.slow  # trains several adapters to compare them
def test_gradient_accumulation_matches_one_big_batch():
    adapter = AdapterConfig(dropout=0.0)
    big, _ = fine_tune(adapter, max_steps=1, batch_size=8, grad_accum=1, precision="fp32")
    small, _ = fine_tune(adapter, max_steps=1, batch_size=4, grad_accum=2, precision="fp32")
    for (name, a), (_, b) in zip(big.named_parameters(), small.named_parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow  # trains several adapters to compare them
def test_gradient_checkpointing_gives_the_same_loss():
    _, plain = fine_tune(max_steps=2, precision="fp32")
    _, checkpointed = fine_tune(max_steps=2, precision="fp32", gradient_checkpointing=True)
    assert final(checkpointed, "train_loss") == pytest.approx(final(plain, "train_loss"), rel=1e-5)


@pytest.mark.slow  # trains several adapters to compare them
def test_same_seed_same_final_loss_other_seed_other_loss():
    losses = [final(fine_tune(training_seed=seed, max_steps=3)[1], "train_loss") for seed in (0, 0, 1)]
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_epochs_set_the_steps_when_max_steps_is_zero():
    s, _, train = setup(max_steps=0, epochs=2, batch_size=4)
    rows = len(s.prepared.rows("train"))
    assert training.planned_steps(train, rows) == math.ceil(2 * rows / 4)


# --- failures ------------------------------------------------------------------------------


def test_data_prepared_with_another_tokenizer_is_refused(tmp_path):
    import json
    import shutil

    s, _, _ = setup()
    copy = shutil.copytree(s.prepared.path, tmp_path / "prepared")
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "tokenizer_digest": "other", "base_model": "gpt2"}))
    with pytest.raises(UserInputError, match="prepared with the tokenizer of `gpt2`"):
        setup(data=str(copy))


def test_fine_tune_returns_what_it_logged(mlflow_experiment):
    s, adapter, train = setup(max_steps=4, eval_every=2)
    with mlflow.start_run() as run:
        result = training.fine_tune(s, adapter, train)
    mlflow.flush_async_logging()
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert result.metrics == {name: pytest.approx(logged[name]) for name in result.metrics}
    assert {"trainable_params", "peak_memory_mb", "train_tokens_per_s", "train_runtime_s"} <= set(result.metrics)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "eval_loss")
    assert result.eval_losses == {m.step: pytest.approx(m.value) for m in history}
    assert sorted(result.eval_losses) == [0, 2, 4]
    # the adapter held is the lower of steps 2 and 4 (--keep-best), and the run says which
    kept = min((2, 4), key=result.eval_losses.get)
    assert result.adapter_step == logged["best_step"] == kept and result.final_eval_loss == result.eval_losses[kept]
