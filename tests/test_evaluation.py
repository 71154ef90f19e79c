"""`evaluate` and its measures: perplexity as a direct computation, prompts, ROUGE-L, merging,
what the run logs and links, and the errors."""

import json
import math
import re
import shutil

import mlflow
import pytest
import torch

from lora_study import cli, data, evaluation, models, packing, registry, training
from lora_study.config import AdapterConfig, BaseModelConfig, DataConfig, EvaluateConfig, TrainConfig
from lora_study.errors import UserInputError
from lora_study.evaluation import loss_sum, mean_loss
from lora_study.packing import IGNORE_INDEX, collate, pack_records

from conftest import Echo, runs
from test_data import alpaca_records, write_jsonl

TINY = BaseModelConfig(base_model="tiny")


def per_token_losses(model, rows, pad_id):
    batch = collate(rows, pad_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       attention_mask=batch["attention_mask"]).logits  # fmt: skip
    losses = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), batch["targets"], ignore_index=IGNORE_INDEX, reduction="none"
    )
    return [losses[b][batch["targets"][b] != IGNORE_INDEX] for b in range(len(rows))]


def records(tokenizer):
    texts = [("Q: sort a list?", " Use sorted(items)."), ("Q: length?", " len(x) counts items."),
             ("Q: dict keys?", " d.keys() lists them."), ("Q: hello", " world")]  # fmt: skip
    out = []
    for prompt, answer in texts:
        p = tokenizer(prompt, add_special_tokens=False).input_ids
        a = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        out.append((p + a, [IGNORE_INDEX] * len(p) + a))
    return out


def test_a_packed_row_gives_the_same_per_token_losses_as_its_records_alone(tiny, tokenizer):
    model = models.load_model(tiny).eval()
    recs = records(tokenizer)
    packed = pack_records(recs, seq_len=64)
    assert len(packed) == 1 and len(packed[0]["doc_lengths"]) == 4
    (together,) = per_token_losses(model, packed, tokenizer.pad_token_id)
    # the packed order is longest first: run each record alone in that order
    start, alone = 0, []
    for length in packed[0]["doc_lengths"]:
        ids, labels = packed[0]["input_ids"][start : start + length], packed[0]["labels"][start : start + length]
        alone.append(per_token_losses(model, [{"input_ids": ids, "labels": labels, "doc_lengths": [length]}],
                                      tokenizer.pad_token_id)[0])  # fmt: skip
        start += length
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-5)


def test_without_the_block_mask_records_would_see_each_other(tiny, tokenizer):
    model = models.load_model(tiny).eval()
    packed = pack_records(records(tokenizer), seq_len=64)
    batch = collate(packed, tokenizer.pad_token_id)
    with torch.no_grad():
        masked, _ = loss_sum(model, batch, torch.device("cpu"))
        batch["attention_mask"] = None
        leaked, _ = loss_sum(model, batch, torch.device("cpu"))
    assert not torch.isclose(masked, leaked)


def test_mean_loss_does_not_depend_on_batching_or_padding(tiny, tokenizer):
    model = models.load_model(tiny).eval()
    rows = pack_records(records(tokenizer) * 3, seq_len=24)
    assert len({len(row["input_ids"]) for row in rows}) > 1  # batches need padding
    losses = [mean_loss(model, rows, batch_size, tokenizer.pad_token_id, None) for batch_size in (1, 2, 5)]
    assert max(losses) - min(losses) < 1e-5


# --- the `evaluate` stage ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter_run(tracking_uri, tmp_path_factory):
    """A tiny adapter trained on instruction records (response-only loss), as `train` logs it."""
    folder = tmp_path_factory.mktemp("evaluate")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("evaluate-fixture", str(folder / "artifacts")))
    dataset = write_jsonl(folder / "alpaca.jsonl", alpaca_records(40))
    train = TrainConfig(max_steps=10, batch_size=4, learning_rate=1e-2, eval_every=0)
    run_id = training.run_train(DataConfig(dataset=str(dataset), seq_len=128), TINY, AdapterConfig(), train)
    return run_id


def loaded(run_id, precision="fp32"):
    cfg = EvaluateConfig(model_uri=f"runs:/{run_id}/adapter", precision=precision)
    source = registry.resolve_model_uri(cfg.model_uri)
    model, tokenizer, ref = evaluation.load_subject(source, torch.device("cpu"), None)
    return cfg, model, tokenizer, evaluation.evaluation_data(cfg, source, ref, tokenizer)


def direct_perplexity(model, rows):
    """Each record alone, unpadded, through the model's own loss: token-weighted over records."""
    total, count = 0.0, 0
    for row in rows:
        for record_ids, record_labels in packing.records(row):
            ids, labels = torch.tensor([record_ids]), torch.tensor([record_labels])
            n = int((labels[0, 1:] != IGNORE_INDEX).sum())
            with torch.no_grad():
                total += float(model(input_ids=ids, labels=labels).loss) * n
            count += n
    return math.exp(total / count)


def test_test_perplexity_is_the_response_tokens_perplexity_of_each_record_alone(adapter_run):
    cfg, model, tokenizer, prepared = loaded(adapter_run)
    rows = prepared.rows("test")
    assert any(len(row["doc_lengths"]) > 1 for row in rows)  # packed rows, and padded batches
    result = evaluation.evaluate_adapter(model, tokenizer, rows, [], cfg, None)
    assert result.metrics["test_perplexity"] == pytest.approx(direct_perplexity(model, rows), rel=1e-3)
    with model.disable_adapter():
        assert result.metrics["base_test_perplexity"] == pytest.approx(direct_perplexity(model, rows), rel=1e-3)
    # every token counted, prompts included, would be another number: the mask matters
    all_tokens = [{**row, "labels": row["input_ids"]} for row in rows]
    assert abs(direct_perplexity(model, all_tokens) / result.metrics["test_perplexity"] - 1) > 0.05
    assert result.metrics["test_perplexity"] < result.metrics["base_test_perplexity"]


def test_prompts_from_instruction_rows_are_the_prompt_and_its_answer(adapter_run):
    _, _, tokenizer, prepared = loaded(adapter_run)
    prompts = evaluation.prompts_from_rows(prepared.rows("test"), "instruction", tokenizer, 100, 16)
    assert len(prompts) == prepared.meta["counts"]["test_documents"]
    for prompt in prompts:
        assert prompt.text.startswith("Below is an instruction") and prompt.text.endswith("### Response:\n")
        assert re.fullmatch(r"Animal \d+ is a \w+\.", prompt.reference)
        assert tokenizer.decode(prompt.ids) == prompt.text


def test_prompts_from_text_rows_are_the_first_tokens_and_what_follows(tiny, tokenizer):
    prepared = data.prepare(DataConfig(max_samples=15, seq_len=64), tiny, tokenizer)[0]
    rows = prepared.rows("test")
    prompts = evaluation.prompts_from_rows(rows, "text", tokenizer, 2, 8)
    assert len(prompts) == 2
    assert prompts[0].ids == rows[0]["input_ids"][: evaluation.TEXT_PROMPT_TOKENS]
    assert prompts[0].reference == tokenizer.decode(rows[0]["input_ids"][32:40], skip_special_tokens=True).strip()


def test_a_prompt_file_is_read_and_wrapped_like_the_training_data(tmp_path, tokenizer):
    (tmp_path / "p.txt").write_text("Name a fruit.\n\nName a colour.\n")
    prompts = evaluation.read_prompts(str(tmp_path / "p.txt"), tokenizer, "instruction", 10)
    assert [p.reference for p in prompts] == [None, None]
    assert prompts[1].text.endswith("### Instruction:\nName a colour.\n\n### Response:\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "2+2?", "reference": "4"}\n{"prompt": 3}\n')
    with pytest.raises(UserInputError, match=r"p.jsonl, line 2: needs a string field `prompt`"):
        evaluation.read_prompts(str(tmp_path / "p.jsonl"), tokenizer, "text", 10)
    (tmp_path / "p.jsonl").write_text('{"prompt": "2+2?", "reference": "4"}\n')
    (prompt,) = evaluation.read_prompts(str(tmp_path / "p.jsonl"), tokenizer, "text", 10)
    assert (prompt.text, prompt.reference) == ("2+2?", "4")


def test_rouge_l_is_the_lcs_f1_over_words():
    assert evaluation.rouge_l("The cat sat.", "the cat sat") == 1.0
    assert evaluation.rouge_l("the cat ate", "the cat sat") == pytest.approx(2 / 3)
    # LCS "a c" of "a b c d" and "a c e": precision 2/4, recall 2/3
    assert evaluation.rouge_l("a b c d", "a c e") == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert evaluation.rouge_l("", "x") == 0.0 and evaluation.rouge_l("y", "x") == 0.0


def test_the_merged_model_matches_the_adapter_and_a_mismatch_is_reported(adapter_run):
    cfg, model, tokenizer, prepared = loaded(adapter_run)
    rows = prepared.rows("test")
    prompts = evaluation.prompts_from_rows(rows, "instruction", tokenizer, 2, 6)
    unmerged = evaluation.evaluate_adapter(model, tokenizer, rows, prompts, cfg, None)
    # the fixture trained with bf16 autocast, so the base weights are bf16: merging rounds W + BA
    merged_model, merged = evaluation.check_merged(model, tokenizer, rows, prompts, cfg, None, unmerged, "bfloat16")
    assert not hasattr(merged_model, "disable_adapter")  # a plain transformers model now
    assert merged.metrics["merged_matches"] == 1.0 and merged.metrics["merged_loss_diff_pct"] < 0.1
    assert merged.metrics["merged_max_logprob_diff"] < 0.02
    assert merged.metrics["merged_outputs_match_pct"] == 100.0
    assert list(merged.table.columns) == ["prompt", "reference", "base_output", "adapter_output", "merged_output"]
    # the same comparison against an adapter whose loss was 5% lower fails
    _, model, _, _ = loaded(adapter_run)
    unmerged.metrics["test_loss"] *= 0.95
    _, mismatch = evaluation.check_merged(model, tokenizer, rows, [], cfg, None, unmerged, "bfloat16")
    assert mismatch.metrics["merged_matches"] == 0.0


EVALUATE_METRICS = {
    "test_loss", "test_perplexity", "base_test_perplexity", "perplexity_improvement_pct",
    "gen_tokens_per_s", "gen_latency_p50_ms", "gen_latency_p95_ms", "first_token_latency_ms",
    "base_gen_tokens_per_s", "base_gen_latency_p50_ms", "base_gen_latency_p95_ms", "base_first_token_latency_ms",
    "rougeL", "base_rougeL", "eval_peak_memory_mb",
}  # fmt: skip
MERGED_METRICS = {
    "merged_max_logprob_diff", "merged_loss_diff_pct", "merged_matches", "merged_outputs_match_pct",
    "merged_speedup", "merged_gen_tokens_per_s", "merged_gen_latency_p50_ms", "merged_gen_latency_p95_ms",
    "merged_first_token_latency_ms",
}  # fmt: skip


def test_evaluate_logs_its_metrics_and_table_in_a_run_linked_to_the_model(adapter_run, mlflow_experiment):
    argv = ["evaluate", "--model-uri", f"runs:/{adapter_run}/adapter", "--max-prompts", "3",
            "--max-new-tokens", "6", "--merged"]  # fmt: skip
    assert cli.main(argv) == 0
    (run,) = runs(mlflow_experiment)
    assert run.info.status == "FINISHED"
    assert set(run.data.metrics) == EVALUATE_METRICS | MERGED_METRICS
    metrics = run.data.metrics
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
    version = str(mlflow.register_model(f"runs:/{adapter_run}/adapter", "evaluate-test").version)
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


def test_a_base_model_alone_is_its_own_baseline(adapter_run, mlflow_experiment):
    _, _, _, prepared = loaded(adapter_run)
    argv = ["evaluate", "--model-uri", "base:tiny", "--data", str(prepared.path), "--max-prompts", "2",
            "--max-new-tokens", "4"]  # fmt: skip
    assert cli.main(argv) == 0
    (run,) = runs(mlflow_experiment)
    metrics = run.data.metrics
    assert metrics["test_perplexity"] == metrics["base_test_perplexity"]
    assert metrics["perplexity_improvement_pct"] == 0.0 and metrics["rougeL"] == metrics["base_rougeL"]


def not_an_adapter():
    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(name="model", python_model=Echo())
    return f"runs:/{run.info.run_id}/model"


def other_tokenizer_data(run_id, tmp_path):
    _, _, _, prepared = loaded(run_id)
    copy = shutil.copytree(prepared.path, tmp_path / "prepared")
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "tokenizer_digest": "other", "base_model": "gpt2"}))
    return str(copy)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_run", "--model-uri runs:/0123456789abcdef0123456789abcdef/adapter: Run with id="),
        ("missing_model", "--model-uri models:/no-such-model/1: Model Version (name=no-such-model, version=1) not found"),
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
        mlflow.register_model(adapter, "evaluate-errors")
    argv = {
        "missing_run": ["--model-uri", "runs:/0123456789abcdef0123456789abcdef/adapter"],
        "missing_model": ["--model-uri", "models:/no-such-model/1"],
        "missing_alias": ["--model-uri", "models:/evaluate-errors@champion"],
        "not_an_adapter": ["--model-uri", not_an_adapter() if case == "not_an_adapter" else ""],
        "other_tokenizer": ["--model-uri", adapter, "--data", other_tokenizer_data(adapter_run, tmp_path)
                            if case == "other_tokenizer" else ""],
        "missing_prompts": ["--model-uri", adapter, "--prompts", "nowhere.txt"],
        "no_model_uri": [],
    }[case]  # fmt: skip
    before = {run.info.run_id for run in runs(mlflow_experiment)}
    assert cli.main(["evaluate", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lora-study: error: ") and expected in err[-1]
    assert {run.info.run_id for run in runs(mlflow_experiment)} == before
