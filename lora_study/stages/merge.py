"""`merge`: an adapter merged into its base weights, checked, and logged as an MLflow model.

    lora-study merge models:/lora-study-smollm2-135m@champion --output-dir merged-model

The merged model is a plain transformers folder (config, safetensors weights, tokenizer) that
loads without PEFT, and generates without the adapter's extra matrix products. The procedure:
resolve the adapter and refuse a bare base or a non-empty `--output-dir` -> load the base with
the adapter (a QLoRA adapter onto the unquantized base, in fp32: merging into 4-bit weights would
round most of the adapter's update away) -> measure the unmerged adapter on its test split ->
merge and compare (test loss, target-token log-probabilities, greedy answers) -> a merge outside
the tolerance for its weights' dtype fails the run and logs no model; else log it as `merged`,
copy it to `--output-dir` and register it if asked.
"""

import dataclasses
import os
from pathlib import Path

import mlflow
import torch

from lora_study import adapters, evaluation, models, registry, tracking
from lora_study.config import MergeConfig
from lora_study.errors import UserInputError
from lora_study.names import (
    ARTIFACT_GENERATIONS,
    ARTIFACT_MERGED,
    METRIC_MERGED_LOSS_DIFF_PCT,
    METRIC_MERGED_MATCHES,
    PARAM_BASE_MODEL,
    PARAM_DATASET_DIGEST,
    RUN_NAME_MERGE,
    STAGE_MERGE,
    TAG_MERGED_FROM,
)


def run_merge(cfg: MergeConfig) -> str:
    """The `merge` entry point; returns the MLflow run id. Bad input fails before the run."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    source = adapters.resolve(cfg.model_uri)
    if not source.is_adapter:
        raise UserInputError(
            f"--model-uri {cfg.model_uri}: a base model has no adapter to merge; pass an adapter's URI"
        )
    output = _empty_folder(cfg.output_dir)
    source = dataclasses.replace(source, reference=dataclasses.replace(source.reference, quantization="none"))
    reference = source.reference
    where = models.device()
    dtype = models.autocast_dtype(cfg.precision, where)
    loaded = adapters.load(source, where, dtype)
    tokenizer = loaded.tokenizer
    held_out = evaluation.held_out(source, cfg.data, "", cfg.max_prompts, cfg.max_new_tokens, loaded.base, tokenizer)
    tolerance = evaluation.MERGE_TOLERANCE_PCT[reference.weights]

    name = RUN_NAME_MERGE.format(model_uri=cfg.model_uri)
    with tracking.stage_run(STAGE_MERGE, name=name, **tracking.evaluated_model_tags(source)) as run:
        tracking.log_params(
            {
                **cfg.model_dump(),
                PARAM_BASE_MODEL: loaded.base.name,
                PARAM_DATASET_DIGEST: held_out.prepared.meta.digest,
            }
        )
        measure = (tokenizer, held_out.rows, held_out.prompts, cfg.batch_size, cfg.max_new_tokens, dtype)
        unmerged = evaluation.evaluate_unmerged(loaded.model, *measure)
        merged, result = evaluation.check_merged(loaded.model, *measure, unmerged, reference.weights)
        mlflow.log_table(result.table, ARTIFACT_GENERATIONS)
        difference = result.metrics[METRIC_MERGED_LOSS_DIFF_PCT]
        if not result.metrics[METRIC_MERGED_MATCHES]:
            mlflow.log_metrics(result.metrics)
            raise UserInputError(
                f"the merged model's test loss differs from the adapter's by {difference:.3f}%, over the "
                f"{tolerance}% allowed for {reference.weights} weights; not logged: serve the adapter unmerged"
            )
        merged_reference = dataclasses.replace(reference, merged_from=cfg.model_uri)
        info = adapters.log_merged(merged, tokenizer, merged_reference, output)
        mlflow.log_metrics(result.metrics, model_id=info.model_id)
        if cfg.registered_model:
            version = registry.register(info.model_uri, cfg.registered_model, {TAG_MERGED_FROM: cfg.model_uri})
            print(f"registered {cfg.registered_model} version {version.version}")

    written = f", written to {output}" if output else ""
    print(
        f"merged model matches the adapter (test loss within {difference:.4f}%, tolerance {tolerance}%): "
        f"runs:/{run.info.run_id}/{ARTIFACT_MERGED}{written}"
    )
    return run.info.run_id


def _empty_folder(path: str) -> Path | None:
    """`--output-dir`, refused if it holds anything: a merge never writes over a user's files."""
    if not path:
        return None
    folder = Path(path)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserInputError(f"--output-dir {path}: exists and is not an empty folder; pass a new one")
    return folder
