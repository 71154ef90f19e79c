"""The `prepare` stage: a run with the params, counts, dataset inputs, preview and splits."""

import mlflow
from conftest import alpaca_records, write_jsonl

from lora_study import data
from lora_study.config import BaseModelConfig, DataConfig
from lora_study.stages.prepare import run_prepare


def test_run_prepare_logs_params_counts_inputs_and_the_splits(tmp_path, tiny, mlflow_experiment):
    path = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_records(30))
    config = DataConfig(dataset=str(path), seq_len=128)
    run_id = run_prepare(config, BaseModelConfig(base_model="tiny"))
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["lora_study.stage"] == "prepare"
    params = run.data.params
    assert params["seq_len"] == "128" and params["base_model"] == "tiny"
    assert params["detected_format"] == "instruction" and params["trust_remote_code"] == "false"
    assert params["base_model_sha256"] == tiny.sha256
    for split in ("train", "validation", "test"):
        assert run.data.metrics[f"{split}_tokens"] >= run.data.metrics[f"{split}_loss_tokens"] > 0
    assert (
        run.data.metrics["train_documents"]
        + run.data.metrics["validation_documents"]
        + (run.data.metrics["test_documents"])
        == 30
    )
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "validation", "test"}
    assert all(d.name == "alpaca.jsonl" and str(path) in d.source for d in inputs.values())
    assert len({d.digest for d in inputs.values()}) == 3
    fetched = data.load_prepared(f"runs:/{run_id}")
    assert fetched.meta.digest == params["dataset_digest"]
    assert fetched.rows("test") == data.load_prepared(str(fetched.path)).rows("test")
    preview = mlflow.load_table("preview.json", run_ids=[run_id])
    assert set(preview["split"]) == {"train", "validation", "test"}
    assert preview["text"].str.contains("### Response:").all()
