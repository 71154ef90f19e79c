"""Measuring a model on held-out data: an adapter against its base on the same tokens and prompts,
and a merged model against the unmerged adapter.

`evaluate` reports both; `merge` refuses a merge that does not match; the sweep measures the
test perplexity of the adapters it registers.
"""

from dataclasses import dataclass

import pandas as pd
import torch

from lora_study import data, models, tracking
from lora_study.adapters import ModelSource
from lora_study.config import DataConfig
from lora_study.data import groups
from lora_study.data.packing import collate
from lora_study.errors import UserInputError
from lora_study.generation import Prompt, generate_timed, mean_rouge_l, prompts_from_rows, read_prompts
from lora_study.losses import mean_loss, perplexity, target_logprobs
from lora_study.names import (
    BASE_PREFIX,
    COLUMN_ADAPTER_OUTPUT,
    COLUMN_BASE_OUTPUT,
    COLUMN_MERGED_OUTPUT,
    COLUMN_PROMPT,
    COLUMN_REFERENCE,
    MERGED_PREFIX,
    METRIC_BASE_ROUGE_L,
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_GEN_TOKENS_PER_S,
    METRIC_MERGED_LOSS_DIFF_PCT,
    METRIC_MERGED_MATCHES,
    METRIC_MERGED_MAX_LOGPROB_DIFF,
    METRIC_MERGED_OUTPUTS_MATCH_PCT,
    METRIC_MERGED_SPEEDUP,
    METRIC_PERPLEXITY_IMPROVEMENT_PCT,
    METRIC_ROUGE_L,
    METRIC_TEST_LOSS,
    METRIC_TEST_PERPLEXITY,
    PARAM_DATA,
    PARAM_DATASET_DIGEST,
    PARAM_GROUP,
)

# How far the merged model's test loss may stray from the unmerged adapter's: merging rounds
# W + BA to the weights' dtype (bf16 keeps 8 bits of mantissa; 4-bit bases are re-quantized).
MERGE_TOLERANCE_PCT = {"float32": 0.01, "bfloat16": 1.0, "float16": 0.5, "quantized": 2.0}


@dataclass
class Evaluation:
    metrics: dict[str, float]
    table: pd.DataFrame  # prompt, reference, base and adapter outputs, side by side


@dataclass(frozen=True)
class HeldOut:
    """What a model is measured on: held-out rows, prompts cut from them (or a file), and the
    prepared data they come from."""

    rows: list[dict]
    prompts: list[Prompt]
    prepared: data.PreparedData


# --- the adapter against its base ------------------------------------------------------------------


def evaluate_adapter(
    model, tokenizer, rows: list[dict], prompts: list[Prompt], batch_size: int, max_new_tokens: int, dtype
) -> Evaluation:
    """Test loss and generation of a PEFT model, with its adapter and without (the base).

    A model with no adapter (`base:`) is measured once, and is its own base.
    """
    with_adapter = hasattr(model, "disable_adapter")
    test_loss = mean_loss(model, rows, batch_size, tokenizer.pad_token_id, dtype)
    base_loss = test_loss
    if with_adapter:
        with model.disable_adapter():
            base_loss = mean_loss(model, rows, batch_size, tokenizer.pad_token_id, dtype)
    metrics = {METRIC_TEST_LOSS: test_loss, **perplexity_metrics(test_loss, base_loss)}
    table = _prompt_table(prompts)
    if not prompts:
        return Evaluation(metrics, table)
    adapter_out = base_out = generate_timed(model, tokenizer, prompts, max_new_tokens, dtype)
    if with_adapter:
        with model.disable_adapter():
            base_out = generate_timed(model, tokenizer, prompts, max_new_tokens, dtype)
    metrics.update(adapter_out.metrics())
    metrics.update({BASE_PREFIX + key: value for key, value in base_out.metrics().items()})
    rouge, base_rouge = mean_rouge_l(adapter_out.texts, prompts), mean_rouge_l(base_out.texts, prompts)
    if rouge is not None:
        metrics.update({METRIC_ROUGE_L: rouge, METRIC_BASE_ROUGE_L: base_rouge})
    table[COLUMN_BASE_OUTPUT], table[COLUMN_ADAPTER_OUTPUT] = base_out.texts, adapter_out.texts
    return Evaluation(metrics, table)


def perplexity_metrics(test_loss: float, base_loss: float) -> dict[str, float]:
    """Test perplexity of an adapter and of its base on the same tokens, and the improvement."""
    adapted, base = perplexity(test_loss), perplexity(base_loss)
    return {
        METRIC_TEST_PERPLEXITY: adapted,
        METRIC_BASE_TEST_PERPLEXITY: base,
        METRIC_PERPLEXITY_IMPROVEMENT_PCT: 100 * (1 - adapted / base),
    }


def _prompt_table(prompts: list[Prompt]) -> pd.DataFrame:
    return pd.DataFrame({COLUMN_PROMPT: [p.text for p in prompts], COLUMN_REFERENCE: [p.reference for p in prompts]})


# --- merged against unmerged ---------------------------------------------------------------------


def evaluate_unmerged(
    model, tokenizer, rows: list[dict], prompts: list[Prompt], batch_size: int, max_new_tokens: int, dtype
) -> Evaluation:
    """What `check_merged` compares against: the unmerged adapter's test loss and greedy answers."""
    metrics = {METRIC_TEST_LOSS: mean_loss(model, rows, batch_size, tokenizer.pad_token_id, dtype)}
    table = _prompt_table(prompts)
    if prompts:
        out = generate_timed(model, tokenizer, prompts, max_new_tokens, dtype)
        metrics[METRIC_GEN_TOKENS_PER_S] = out.metrics()[METRIC_GEN_TOKENS_PER_S]
        table[COLUMN_ADAPTER_OUTPUT] = out.texts
    return Evaluation(metrics, table)


def check_merged(
    model,
    tokenizer,
    rows: list[dict],
    prompts: list[Prompt],
    batch_size: int,
    max_new_tokens: int,
    dtype,
    unmerged: Evaluation,
    weights: str,
) -> tuple[torch.nn.Module, Evaluation]:
    """Merge the adapter into the base weights (in place) and compare with the unmerged adapter.

    `weights` is the base weights' dtype name, or `quantized`: it sets the tolerance.
    """
    batch = collate(rows[:batch_size], tokenizer.pad_token_id)
    unmerged_logprobs = target_logprobs(model, batch, dtype)
    merged = model.merge_and_unload()
    merged_loss = mean_loss(merged, rows, batch_size, tokenizer.pad_token_id, dtype)
    unmerged_loss = unmerged.metrics[METRIC_TEST_LOSS]
    loss_diff_pct = 100 * abs(merged_loss - unmerged_loss) / unmerged_loss
    logprob_diff = (target_logprobs(merged, batch, dtype) - unmerged_logprobs).abs().max()
    metrics = {
        METRIC_MERGED_MAX_LOGPROB_DIFF: float(logprob_diff),
        METRIC_MERGED_LOSS_DIFF_PCT: loss_diff_pct,
        METRIC_MERGED_MATCHES: float(loss_diff_pct <= MERGE_TOLERANCE_PCT[weights]),
    }
    table = unmerged.table.copy()
    if prompts:
        out = generate_timed(merged, tokenizer, prompts, max_new_tokens, dtype)
        same = sum(a == b for a, b in zip(out.texts, unmerged.table[COLUMN_ADAPTER_OUTPUT]))
        metrics[METRIC_MERGED_OUTPUTS_MATCH_PCT] = 100 * same / len(prompts)
        metrics.update({MERGED_PREFIX + key: value for key, value in out.metrics().items()})
        speed, unmerged_speed = out.metrics()[METRIC_GEN_TOKENS_PER_S], unmerged.metrics[METRIC_GEN_TOKENS_PER_S]
        metrics[METRIC_MERGED_SPEEDUP] = speed / unmerged_speed
        table[COLUMN_MERGED_OUTPUT] = out.texts
    return merged, Evaluation(metrics, table)


# --- what a model is measured on ---------------------------------------------------------------------


def held_out(
    source: ModelSource,
    data_uri: str,
    prompts_file: str,
    max_prompts: int,
    max_new_tokens: int,
    ref: models.BaseModelRef,
    tokenizer,
) -> HeldOut:
    """The test split of `data_uri` (a `prepare` run or folder), else of the data the adapter's
    run trained on, else (a bare base) of the default data; and the prompts to generate for:
    from `prompts_file`, else cut from the test rows."""
    prepared = _test_data(data_uri, source, ref, tokenizer)
    rows = prepared.rows("test")
    fmt = prepared.meta.format
    prompt_format = source.reference.prompt_format if source.is_adapter else fmt
    if max_prompts == 0:
        prompts = []
    elif prompts_file:
        prompts = read_prompts(prompts_file, tokenizer, prompt_format, max_prompts)
    else:
        prompts = prompts_from_rows(rows, fmt, tokenizer, max_prompts, max_new_tokens)
    return HeldOut(rows, prompts, prepared)


def _test_data(data_uri: str, source: ModelSource, ref, tokenizer) -> data.PreparedData:
    if data_uri:
        prepared = data.load_prepared(data_uri)
    elif source.run_id is not None:
        prepared = _training_data(source.run_id, ref, tokenizer)
    else:
        prepared = data.prepare(DataConfig(), ref, tokenizer)[0]
    data.check_tokenizer(prepared, models.tokenizer_digest(tokenizer), ref.name)
    return prepared


def _training_data(run_id: str, ref, tokenizer) -> data.PreparedData:
    """Rebuild (from the cache, usually) the prepared data the run trained on, from its params."""
    params = tracking.run_params(run_id)
    if params.get(PARAM_DATA):
        return _group_of(data.load_prepared(params[PARAM_DATA]), params)
    data_cfg = DataConfig.model_validate({key: params[key] for key in DataConfig.model_fields if key in params})
    prepared = _group_of(data.prepare(data_cfg, ref, tokenizer)[0], params)
    logged = params.get(PARAM_DATASET_DIGEST, prepared.meta.digest)
    if prepared.meta.digest != logged:
        raise UserInputError(
            f"the data of run {run_id} ({data_cfg.dataset}) no longer prepares to the rows it trained on "
            f"(dataset_digest {prepared.meta.digest[:12]}, the run has {logged[:12]}); "
            "pass --data with that data's `prepare` run or folder"
        )
    return prepared


def _group_of(prepared: data.PreparedData, params: dict) -> data.PreparedData:
    """The data a run trained on: of a group's run (`train --group-by`), its group's own splits."""
    if not params.get(PARAM_GROUP):
        return prepared
    (key,) = groups.select(prepared.groups, [params[PARAM_GROUP]], prepared.meta.group_by)
    return prepared.group(key)
