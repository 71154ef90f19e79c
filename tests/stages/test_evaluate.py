"""The `evaluate` stage: what the run logs and links, a registered version's tags, a bare base,
and bad input in one line before any run."""

import json
import shutil

import mlflow
import pytest
from conftest import Echo, loaded_adapter, runs

from lora_study import cli, data, logged_models
from lora_study.config import DataConfig
from lora_study.registry import comparability

EVALUATE_METRICS = {
    "test_loss",
    "test_perplexity",
    "base_test_perplexity",
    "perplexity_improvement_pct",
    "gen_tokens_per_s",
    "gen_latency_p50_ms",
    "gen_latency_p95_ms",
    "first_token_latency_ms",
    "base_gen_tokens_per_s",
    "base_gen_latency_p50_ms",
    "base_gen_latency_p95_ms",
    "base_first_token_latency_ms",
    "rougeL",
    "base_rougeL",
    "eval_peak_memory_mb",
}
MERGED_METRICS = {
    "merged_max_logprob_diff",
    "merged_loss_diff_pct",
    "merged_matches",
    "merged_outputs_match_pct",
    "merged_speedup",
    "merged_gen_tokens_per_s",
    "merged_gen_latency_p50_ms",
    "merged_gen_latency_p95_ms",
    "merged_first_token_latency_ms",
}


def test_evaluate_logs_its_metrics_and_table_in_a_run_linked_to_the_model(adapter_run, mlflow_experiment):
    argv = [
        "evaluate",
        "--model-uri",
        f"runs:/{adapter_run}/adapter",
        *"--max-prompts 3 --max-new-tokens 6 --merged".split(),
    ]
    assert cli.main(argv) == 0
    (run,) = runs(mlflow_experiment)
    assert run.info.status == "FINISHED"
    assert set(run.data.metrics) == EVALUATE_METRICS | MERGED_METRICS | {"forgetting_loss_delta", "forgetting_kl"}
    metrics = run.data.metrics
    assert metrics["forgetting_kl"] > 0 and "sampled from tiny" in run.data.params["forgetting_set"]
    assert metrics["test_perplexity"] < metrics["base_test_perplexity"] and metrics["merged_matches"] == 1.0
    assert metrics["perplexity_improvement_pct"] == pytest.approx(
        100 * (1 - metrics["test_perplexity"] / metrics["base_test_perplexity"])
    )
    assert metrics["gen_latency_p50_ms"] <= metrics["gen_latency_p95_ms"]
    tags = run.data.tags
    assert tags["lora_study.stage"] == "evaluate" and tags["lora_study.source_run_id"] == adapter_run
    table = mlflow.load_table("generations.json", run_ids=[run.info.run_id])
    assert len(table) == 3 and {"prompt", "reference", "base_output", "adapter_output"} <= set(table.columns)
    model_id = mlflow.get_run(adapter_run).outputs.model_outputs[0].model_id
    linked = {m.key: m.value for m in mlflow.get_logged_model(model_id).metrics}
    assert linked["test_perplexity"] == metrics["test_perplexity"]


def test_a_registered_version_is_tagged_with_the_headline_metrics(adapter_run, mlflow_experiment):
    version = str(mlflow.register_model(logged_models.of_run(adapter_run), "evaluate-test").version)
    mlflow.MlflowClient().set_registered_model_alias("evaluate-test", "challenger", version)
    argv = ["evaluate", "--model-uri", "models:/evaluate-test@challenger", "--max-prompts", "0"]
    assert cli.main(argv) == 0
    (run,) = runs(mlflow_experiment)
    assert run.data.tags["lora_study.registered_model"] == "evaluate-test"
    assert run.data.tags["lora_study.model_version"] == version
    tags = mlflow.MlflowClient().get_model_version("evaluate-test", version).tags
    assert tags["evaluation_run_id"] == run.info.run_id
    assert float(tags["test_perplexity"]) == pytest.approx(run.data.metrics["test_perplexity"], rel=1e-3)
    assert "perplexity_improvement_pct" in tags and "gen_tokens_per_s" not in tags  # no prompts, no speed
    # ... and the test data they were measured on: the data the adapter trained on, by its base
    measured_on = comparability.Basis.from_json(tags["lora_study.test_data"])
    trained_on = loaded_adapter(adapter_run)[1].prepared
    assert measured_on.prepared_digest == trained_on.meta.digest and measured_on.seq_len == 128
    assert measured_on.quantization == "none" and tags["test_data"] == measured_on.key


def test_a_version_measured_on_other_test_data_keeps_its_tags(adapter_run, mlflow_experiment, tokenizer, tiny, capsys):
    """`evaluate --data` on other data: the measurement stays on its run, the version's tags (which
    promotion compares) stay as they were."""
    version = str(mlflow.register_model(logged_models.of_run(adapter_run), "evaluate-other").version)
    argv = ["evaluate", "--model-uri", f"models:/evaluate-other/{version}", "--max-prompts", "0"]
    assert cli.main(argv) == 0
    before = mlflow.MlflowClient().get_model_version("evaluate-other", version).tags
    trained_on = loaded_adapter(adapter_run)[1].prepared.meta.dataset
    shorter, _ = data.prepare(DataConfig(dataset=trained_on, seq_len=64), tiny, tokenizer)
    capsys.readouterr()
    assert cli.main([*argv, "--data", str(shorter.path)]) == 0
    assert mlflow.MlflowClient().get_model_version("evaluate-other", version).tags == before
    assert (
        f"models:/evaluate-other/{version} keeps its tags, measured on other test data (seq_len 64 vs 128): this "
        "evaluation is on run "
    ) in capsys.readouterr().out


def test_a_base_model_alone_is_its_own_baseline(adapter_run, mlflow_experiment):
    prepared = loaded_adapter(adapter_run)[1].prepared
    argv = ["evaluate", "--model-uri", "base:tiny", "--data", str(prepared.path), "--max-prompts", "2"]
    argv += ["--max-new-tokens", "4"]
    assert cli.main(argv) == 0
    (run,) = runs(mlflow_experiment)
    metrics = run.data.metrics
    assert metrics["test_perplexity"] == metrics["base_test_perplexity"]
    assert metrics["perplexity_improvement_pct"] == 0.0 and metrics["rougeL"] == metrics["base_rougeL"]


def not_an_adapter():
    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
    return f"runs:/{run.info.run_id}/model"


def other_tokenizer_data(run_id, tmp_path):
    prepared = loaded_adapter(run_id)[1].prepared
    copy = shutil.copytree(prepared.path, tmp_path / "prepared")
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "tokenizer_digest": "other", "base_model": "gpt2"}))
    return str(copy)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_run", "--model-uri runs:/0123456789abcdef0123456789abcdef/adapter: Run with id="),
        (
            "missing_model",
            "--model-uri models:/no-such-model/1: Model Version (name=no-such-model, version=1) not found",
        ),
        ("missing_alias", "--model-uri models:/evaluate-errors@champion: Registered model alias champion not found"),
        ("not_an_adapter", "not a lora-study adapter"),
        ("other_tokenizer", "--data: prepared with the tokenizer of `gpt2`, not that of `tiny`"),
        ("missing_prompts", "--prompts: file nowhere.txt does not exist"),
        ("no_model_uri", "`model_uri` is required"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_run(case, expected, adapter_run, mlflow_experiment, tmp_path, capsys):
    adapter = f"runs:/{adapter_run}/adapter"
    if case == "missing_alias":
        mlflow.register_model(logged_models.of_run(adapter_run), "evaluate-errors")
    argv = {
        "missing_run": ["--model-uri", "runs:/0123456789abcdef0123456789abcdef/adapter"],
        "missing_model": ["--model-uri", "models:/no-such-model/1"],
        "missing_alias": ["--model-uri", "models:/evaluate-errors@champion"],
        "not_an_adapter": ["--model-uri", not_an_adapter() if case == "not_an_adapter" else ""],
        "other_tokenizer": [
            "--model-uri",
            adapter,
            "--data",
            other_tokenizer_data(adapter_run, tmp_path) if case == "other_tokenizer" else "",
        ],
        "missing_prompts": ["--model-uri", adapter, "--prompts", "nowhere.txt"],
        "no_model_uri": [],
    }[case]
    before = {run.info.run_id for run in runs(mlflow_experiment)}
    assert cli.main(["evaluate", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lora-study: error: ") and expected in err[-1]
    assert {run.info.run_id for run in runs(mlflow_experiment)} == before
