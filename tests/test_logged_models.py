"""LoggedModels: named for what they are, found from the URIs lora-study wrote before, carrying
their run's leaderboard metrics linked to the prepared dataset."""

import re

import mlflow
import pytest
from conftest import trained_adapter

from lora_study import adapters, logged_models


@pytest.mark.parametrize(
    ("rank", "modules", "learning_rate", "quantization", "seed", "expected"),
    [
        (32, "qkvo", 1.9e-3, "none", 1, "r32-qkvo-lr19e-4-seed1-200steps"),
        (8, "all-linear", 2e-3, "4bit", 0, "r8-all-linear-lr2e-3-4bit-seed0-200steps"),
        (4, "q_proj,v_proj", 1e-2, "none", 3, "r4-q_proj,v_proj-lr1e-2-seed3-200steps"),
        (16, "model.layers.0.q_proj", 0.000125, "none", 0, "r16-model_layers_0_q_proj-lr13e-5-seed0-200steps"),
    ],
)
def test_a_model_is_named_for_its_configuration_and_seed(rank, modules, learning_rate, quantization, seed, expected):
    assert logged_models.name(rank, modules, learning_rate, quantization, seed, 200) == expected
    written = re.search(r"-lr(\d+e-?\d+)-", expected).group(1)  # a number Python reads back
    assert float(written) == pytest.approx(float(f"{learning_rate:.1e}"))


def test_a_trained_adapter_is_a_named_model_with_its_run_metrics(tiny_adapter):
    _, _, run_id, info = tiny_adapter
    assert info.name == "r8-qv-lr1e-2-seed0-3steps"
    client = mlflow.MlflowClient()
    model = client.get_logged_model(info.model_id)
    assert model.tags["lora_study.model_kind"] == "adapter"
    assert model.params["rank"] == "8"  # MLflow copies the run's params onto its model
    linked = {metric.key: metric for metric in model.metrics}
    assert {"eval_perplexity", "trainable_params", "adapter_size_mb", "train_runtime_s"} <= set(linked)
    run = client.get_run(run_id)
    assert linked["eval_perplexity"].value == pytest.approx(run.data.metrics["eval_perplexity"])
    assert linked["eval_perplexity"].step == 3  # the last evaluation, not the base's at step 0
    assert model.metrics and all(metric.step in (0, 3) for metric in model.metrics)
    assert "eval_loss" in linked and "train_loss" in linked  # MLflow links the model's step: the last
    # the run's own curve is as the loop logged it: one point per evaluation
    assert [m.step for m in client.get_metric_history(run_id, "eval_perplexity")] == [0, 3]


def test_the_uris_written_before_models_had_names_still_find_them(tiny_adapter):
    _, _, run_id, info = tiny_adapter
    by_id = f"models:/{info.model_id}"
    assert logged_models.uri(f"runs:/{run_id}/adapter") == by_id
    assert logged_models.uri(f"runs:/{run_id}/{info.name}") == by_id
    assert logged_models.of_run(run_id) == by_id
    for other in (f"runs:/{run_id}/merged", f"runs:/{run_id}", "models:/x/1", f"runs:/{run_id}/adapter/MLmodel"):
        assert logged_models.uri(other) == other
    assert adapters.resolve(f"runs:/{run_id}/adapter").model_id == info.model_id


def test_two_seeds_of_one_configuration_are_two_names():
    names = {trained_adapter(training_seed=seed, max_steps=1)[3].name for seed in (0, 1)}
    assert names == {"r8-qv-lr1e-2-seed0-1steps", "r8-qv-lr1e-2-seed1-1steps"}
