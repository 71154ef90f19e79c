"""`inspect`: a trained adapter's update, module by module, every figure against a dense
computation of its delta weights; `--compare` and `--intruders`; bad input in one line."""

import mlflow
import pandas as pd
import pytest
import torch
from conftest import runs, trained_adapter

from lora_study import cli, names, updates
from lora_study.config import AdapterConfig


def logged_table(run_id: str, artifact: str) -> pd.DataFrame:
    table = mlflow.artifacts.load_dict(f"runs:/{run_id}/{artifact}")
    return pd.DataFrame(table["data"], columns=table["columns"])


def inspected(*argv: str, capsys=None) -> tuple[object, str]:
    assert cli.main(["inspect", *argv]) == 0
    said = capsys.readouterr().err if capsys else ""
    (run,) = [
        r for r in runs(mlflow.tracking.fluent._get_experiment_id()) if r.data.tags.get(names.TAG_STAGE) == "inspect"
    ]
    return run, said


def test_every_figure_equals_a_dense_computation_of_the_delta_weights(tiny_adapter, mlflow_experiment, capsys):
    model, _, run_id, _ = tiny_adapter
    run, said = inspected(f"runs:/{run_id}/adapter", capsys=capsys)
    assert run.info.status == "FINISHED" and run.data.tags[names.TAG_EVALUATED_RUN_ID] == run_id
    table = logged_table(run.info.run_id, names.ARTIFACT_UPDATES).set_index("module")
    layers = updates.lora_layers(model)
    assert list(table.index) == list(layers) and len(layers) == 4  # q_proj and v_proj of 2 layers
    for name, layer in layers.items():
        dense = layer.get_delta_weight("default").detach().double()
        weight = layer.get_base_layer().weight.detach().double()
        singular = torch.linalg.svdvals(dense)[:8]  # rank 8
        row = table.loc[name]
        assert row["rank"] == 8 and row["kind"] == name.rsplit(".", 1)[1]
        assert row["norm"] == pytest.approx(float(torch.linalg.norm(dense)), rel=1e-4)
        assert row["relative_norm"] == pytest.approx(
            float(torch.linalg.norm(dense) / torch.linalg.norm(weight)), rel=1e-4
        )
        assert row["singular_values"] == pytest.approx(singular.tolist(), rel=1e-3, abs=1e-6)
        p = singular / singular.sum()
        assert row["effective_rank"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-3)
        energy = (singular.square().cumsum(0) / singular.square().sum() < 0.9).sum() + 1
        assert row["energy_rank_90"] == int(energy)
    metrics = run.data.metrics
    assert metrics["update_effective_rank_median"] == pytest.approx(table["effective_rank"].median())
    assert metrics["update_relative_norm_max"] == pytest.approx(table["relative_norm"].max())
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/relative_norm_by_layer.png", "plots/effective_rank_by_layer.png"}
    assert "4 modules, rank 8: the median update puts 90% of its energy in" in said


def test_compare_is_one_for_an_adapter_with_itself_and_less_for_another_seed(tiny_adapter, mlflow_experiment):
    _, _, run_id, _ = tiny_adapter
    uri = f"runs:/{run_id}/adapter"
    run, _ = inspected(uri, "--compare", uri)
    same = logged_table(run.info.run_id, names.ARTIFACT_SIMILARITY)
    assert same["subspace_similarity"].tolist() == pytest.approx([1.0] * 4)
    assert same["subspace_similarity_chance"].tolist() == [8 / 64, 8 / 32] * 2  # rank 8 in q_proj's 64, v_proj's 32
    assert run.data.metrics["subspace_similarity_mean"] == pytest.approx(1.0)
    _, _, other_id, _ = trained_adapter(AdapterConfig(rank=4))  # another rank, and other initial weights
    mlflow.delete_run(run.info.run_id)
    run, _ = inspected(uri, "--compare", f"runs:/{other_id}/adapter")
    other = logged_table(run.info.run_id, names.ARTIFACT_SIMILARITY)
    assert len(other) == 4 and all(0 <= value < 0.99 for value in other["subspace_similarity"])


def test_intruders_are_counted_when_asked(tiny_adapter, mlflow_experiment):
    _, _, run_id, _ = tiny_adapter
    run, _ = inspected(f"runs:/{run_id}/adapter", "--intruders", "--intruder-top-k", "4")
    table = logged_table(run.info.run_id, names.ARTIFACT_UPDATES)
    assert all(0 <= count <= 4 for count in table["intruders"])
    assert run.data.metrics["intruder_dimensions"] == table["intruders"].sum()


def test_a_base_model_is_refused_in_one_line(mlflow_experiment, capsys):
    assert cli.main(["inspect", "base:tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lora-study: error: --model-uri base:tiny: a base model has no update to inspect; pass an adapter"]
    assert runs(mlflow_experiment) == []
