"""`merge`: the base with the adapter merged in, checked against the adapter, logged and written."""

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from conftest import runs
from transformers import AutoModelForCausalLM

from lora_study import cli, evaluation, registry
from lora_study.config import MergeConfig
from lora_study.stages.merge import run_merge


def test_merge_logs_and_writes_a_plain_model_that_answers_as_the_adapter(tmp_path, mlflow_experiment, tiny_adapter):
    adapter, s, run_id, _ = tiny_adapter
    out = tmp_path / "merged"
    merge_run = run_merge(
        MergeConfig(model_uri=f"runs:/{run_id}/adapter", output_dir=str(out), registered_model="merged-docs")
    )
    run = mlflow.get_run(merge_run)
    assert run.info.status == "FINISHED" and run.data.tags["lora_study.source_run_id"] == run_id
    metrics = run.data.metrics
    weights = str(s.weights_dtype).removeprefix("torch.")
    assert metrics["merged_matches"] == 1
    assert metrics["merged_loss_diff_pct"] <= evaluation.MERGE_TOLERANCE_PCT[weights]
    table = mlflow.load_table("generations.json", run_ids=[merge_run])
    assert len(table) == 4  # --max-prompts
    same = (table["merged_output"] == table["adapter_output"]).mean()
    assert metrics["merged_outputs_match_pct"] == pytest.approx(100 * same)
    # a plain transformers folder: full weights as safetensors, no adapter, loads without PEFT
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files and "adapter_config.json" not in files
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=s.weights_dtype).eval()
    ids = s.tokenizer("def sort(items):\n    return", return_tensors="pt").input_ids
    adapter.eval()
    with torch.no_grad():
        expected, got = adapter(ids).logits.float(), merged(ids).logits.float()
        with adapter.disable_adapter():
            base = adapter(ids).logits.float()
    assert (got - expected).abs().max() < (base - expected).abs().max() / 4  # the adapter's change is in it
    # the logged model serves the merged weights with the adapter's request contract
    served = mlflow.pyfunc.load_model(f"runs:/{merge_run}/merged")
    assert served.metadata.signature.inputs.to_dict() == [{"type": "string", "required": True}]  # a list of prompts
    answers = served.predict(pd.DataFrame({"prompt": ["The list type"]}), params={"max_new_tokens": 4})
    assert len(answers) == 1 and isinstance(answers[0], str)
    version = registry.get_version("merged-docs", 1)
    assert version.tags["merged_from"] == f"runs:/{run_id}/adapter"
    reference = json.loads(
        next(
            Path(mlflow.artifacts.download_artifacts(f"runs:/{merge_run}/merged")).rglob("base_model.json")
        ).read_text()
    )
    assert reference["merged_from"] == f"runs:/{run_id}/adapter" and reference["quantization"] == "none"


def test_a_merge_outside_tolerance_is_refused_and_not_logged(monkeypatch, mlflow_experiment, capsys, tiny_adapter):
    _, s, run_id, _ = tiny_adapter
    for weights in evaluation.MERGE_TOLERANCE_PCT:
        monkeypatch.setitem(evaluation.MERGE_TOLERANCE_PCT, weights, -1.0)  # any difference is too much
    capsys.readouterr()
    assert cli.main(["merge", f"runs:/{run_id}/adapter", "--max-prompts", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    weights = str(s.weights_dtype).removeprefix("torch.")
    assert len(err) == 1 and f"over the -1.0% allowed for {weights} weights; not logged" in err[0]
    (merge,) = [r for r in runs(mlflow_experiment) if r.data.tags.get("lora_study.stage") == "merge"]
    assert merge.info.status == "FAILED" and merge.data.metrics["merged_matches"] == 0
    assert not mlflow.search_logged_models(filter_string=f"source_run_id = '{merge.info.run_id}'", output_format="list")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["base:tiny"], "--model-uri base:tiny: a base model has no adapter to merge"),
        (["ADAPTER", "--output-dir", "USER_FOLDER"], "exists and is not an empty folder; pass a new one"),
        (["runs:/0123456789abcdef/adapter"], "--model-uri runs:/0123456789abcdef/adapter: "),
    ],
)
def test_bad_merge_input_is_one_line_and_nothing_is_touched(
    argv, expected, tmp_path, mlflow_experiment, capsys, tiny_adapter
):
    user_folder = tmp_path / "mine"
    user_folder.mkdir()
    (user_folder / "notes.txt").write_text("keep me")
    if "ADAPTER" in argv:
        argv = [f"runs:/{tiny_adapter[2]}/adapter" if a == "ADAPTER" else a for a in argv]
    argv = [str(user_folder) if a == "USER_FOLDER" else a for a in argv]
    capsys.readouterr()
    assert cli.main(["merge", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
    assert (user_folder / "notes.txt").read_text() == "keep me" and len(list(user_folder.iterdir())) == 1
    assert not [r for r in runs(mlflow_experiment) if r.data.tags.get("lora_study.stage") == "merge"]
