"""Measuring an adapter: test perplexity as a direct computation, and a merge against the adapter."""

import math

import pytest
import torch
from conftest import loaded_adapter

from lora_study import evaluation
from lora_study.data import packing
from lora_study.data.packing import IGNORE_INDEX
from lora_study.generation import prompts_from_rows


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
    loaded, held_out = loaded_adapter(adapter_run)
    model, tokenizer, rows = loaded.model, loaded.tokenizer, held_out.rows
    assert any(len(row["doc_lengths"]) > 1 for row in rows)  # packed rows, and padded batches
    result = evaluation.evaluate_adapter(model, tokenizer, rows, [], 8, 0, None)
    assert result.metrics["test_perplexity"] == pytest.approx(direct_perplexity(model, rows), rel=1e-3)
    with model.disable_adapter():
        assert result.metrics["base_test_perplexity"] == pytest.approx(direct_perplexity(model, rows), rel=1e-3)
    # every token counted, prompts included, would be another number: the mask matters
    all_tokens = [{**row, "labels": row["input_ids"]} for row in rows]
    assert abs(direct_perplexity(model, all_tokens) / result.metrics["test_perplexity"] - 1) > 0.05
    assert result.metrics["test_perplexity"] < result.metrics["base_test_perplexity"]


def test_the_merged_model_matches_the_adapter_and_a_mismatch_is_reported(adapter_run):
    loaded, held_out = loaded_adapter(adapter_run)
    tokenizer, rows, weights = loaded.tokenizer, held_out.rows, loaded.source.reference.weights
    prompts = prompts_from_rows(rows, "instruction", tokenizer, 2, 6)
    measure = (tokenizer, rows, prompts, 8, 6, None)
    unmerged = evaluation.evaluate_adapter(loaded.model, *measure)
    # the base weights are in the adapter's training dtype (bf16 where the CPU has it): merging rounds W + BA
    merged_model, merged = evaluation.check_merged(loaded.model, *measure, unmerged, weights)
    assert not hasattr(merged_model, "disable_adapter")  # a plain transformers model now
    assert merged.metrics["merged_matches"] == 1.0 and merged.metrics["merged_loss_diff_pct"] < 0.1
    assert merged.metrics["merged_max_logprob_diff"] < 0.02
    assert merged.metrics["merged_outputs_match_pct"] == 100.0
    assert list(merged.table.columns) == ["prompt", "reference", "base_output", "adapter_output", "merged_output"]
    # the same comparison against an adapter whose loss was 5% lower fails
    unmerged.metrics["test_loss"] *= 0.95
    _, mismatch = evaluation.check_merged(loaded_adapter(adapter_run)[0].model, *measure, unmerged, weights)
    assert mismatch.metrics["merged_matches"] == 0.0
