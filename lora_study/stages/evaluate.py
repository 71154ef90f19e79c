"""`evaluate`: an adapter against its base model, on the same held-out tokens and prompts.

    lora-study evaluate --model-uri models:/lora-study-smollm2-135m@challenger --merged

The procedure, top to bottom: resolve the model URI and load the base once with the adapter
applied -> take the test split the adapter was trained on (or `--data`) and the prompts ->
forgetting on text outside the training data -> perplexity with the adapter and, on the same
tokens, with it switched off -> greedy generation on the prompts, both ways, timed -> with
`--merged`, merge the adapter into the base and compare -> log it all to a run linked to the
model, and tag a registered version with the headline metrics and the test data they were
measured on. Bad input fails before the run starts.
"""

import os

import mlflow
import torch

from lora_study import adapters, evaluation, forgetting, models, registry, tracking
from lora_study.config import EvaluateConfig
from lora_study.memory import PeakMemory
from lora_study.names import (
    ARTIFACT_GENERATIONS,
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_EVAL_PEAK_MEMORY_MB,
    METRIC_GEN_TOKENS_PER_S,
    METRIC_MERGED_LOSS_DIFF_PCT,
    METRIC_MERGED_MATCHES,
    METRIC_PERPLEXITY_IMPROVEMENT_PCT,
    METRIC_ROUGE_L,
    METRIC_TEST_PERPLEXITY,
    PARAM_BASE_MODEL,
    PARAM_BASE_MODEL_SHA256,
    PARAM_DATASET_DIGEST,
    PARAM_PROMPT_COUNT,
    RUN_NAME_EVALUATE,
    STAGE_EVALUATE,
    TAG_EVALUATION_RUN_ID,
    TAG_MEMORY_KIND,
)
from lora_study.registry import comparability

# What a registered version shows of its evaluation, as version tags.
HEADLINE_METRICS = (
    METRIC_TEST_PERPLEXITY,
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_PERPLEXITY_IMPROVEMENT_PCT,
    METRIC_ROUGE_L,
    METRIC_GEN_TOKENS_PER_S,
)


def _tag_version(source, run_id: str, metrics: dict, measured_on: comparability.Basis) -> None:
    """The version's headline metrics and the test data they were measured on, as its tags; a
    version whose test perplexity was measured on other test data keeps its tags (promotion
    compares them), and this evaluation stays on its run."""
    version = registry.get_version(source.registered_model, int(source.version))
    before = registry.measured_on(version)
    apart = comparability.differences(measured_on, before) if before is not None else []
    if apart:
        print(
            f"models:/{source.registered_model}/{source.version} keeps its tags, measured on other test data "
            f"({'; '.join(apart)}): this evaluation is on run {run_id} only"
        )
        return
    headline = {key: metrics[key] for key in HEADLINE_METRICS if key in metrics}
    tags = {TAG_EVALUATION_RUN_ID: run_id}
    registry.tag_measured(source.registered_model, source.version, headline, measured_on, tags)


def run_evaluate(cfg: EvaluateConfig) -> str:
    """The `evaluate` entry point; returns the MLflow run id."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    where = models.device()
    dtype = models.autocast_dtype(cfg.precision, where)
    source = adapters.resolve(cfg.model_uri)
    loaded = adapters.load(source, where, dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    held_out = evaluation.held_out(
        source, cfg.data, cfg.prompts, cfg.max_prompts, cfg.max_new_tokens, loaded.base, tokenizer
    )
    seq_len = held_out.prepared.meta.seq_len
    forgetting_data = cfg.forgetting_data if source.is_adapter else forgetting.NONE  # a base forgets nothing
    trained_on = held_out.prepared.meta.dataset
    general_text = forgetting.load(forgetting_data, loaded.base, tokenizer, model, seq_len, trained_on)

    name = RUN_NAME_EVALUATE.format(model_uri=cfg.model_uri)
    with tracking.stage_run(STAGE_EVALUATE, name=name, **tracking.evaluated_model_tags(source)) as run:
        tracking.log_params(
            {
                **cfg.model_dump(),
                PARAM_BASE_MODEL: loaded.base.name,
                PARAM_BASE_MODEL_SHA256: loaded.base.sha256 or "",
                PARAM_DATASET_DIGEST: held_out.prepared.meta.digest,
                PARAM_PROMPT_COUNT: len(held_out.prompts),
            }
        )
        if general_text:  # before the merge below, outside the measured peak memory
            forgot = forgetting.evaluate(model, general_text, tokenizer.pad_token_id, dtype)
            tracking.log_forgetting(forgot, general_text.description)
        measure = (tokenizer, held_out.rows, held_out.prompts, cfg.batch_size, cfg.max_new_tokens, dtype)
        with PeakMemory(where) as peak:
            result = evaluation.evaluate_adapter(model, *measure)
            if cfg.merged and source.is_adapter:
                model, merged = evaluation.check_merged(model, *measure, result, source.reference.weights)
                result = evaluation.Evaluation({**result.metrics, **merged.metrics}, merged.table)
        metrics = {**result.metrics, METRIC_EVAL_PEAK_MEMORY_MB: peak.megabytes}
        mlflow.log_metrics(metrics, model_id=source.model_id)
        mlflow.set_tag(TAG_MEMORY_KIND, peak.kind)
        mlflow.log_table(result.table, ARTIFACT_GENERATIONS)
        if source.registered_model:
            measured_on = comparability.Basis.of(held_out.prepared.meta, loaded.base, source.reference.quantization)
            _tag_version(source, run.info.run_id, metrics, measured_on)

    print(
        f"test perplexity {metrics[METRIC_TEST_PERPLEXITY]:.3f} (base {metrics[METRIC_BASE_TEST_PERPLEXITY]:.3f}, "
        f"{metrics[METRIC_PERPLEXITY_IMPROVEMENT_PCT]:+.2f}% better)"
    )
    if METRIC_MERGED_MATCHES in metrics:
        verdict = "matches" if metrics[METRIC_MERGED_MATCHES] else "DOES NOT match"
        print(f"merged model {verdict} the adapter: test loss differs by {metrics[METRIC_MERGED_LOSS_DIFF_PCT]:.4f}%")
    return run.info.run_id
