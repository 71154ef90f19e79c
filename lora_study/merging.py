"""Merge an adapter into its base weights and log the result as an MLflow model.

The merged model is a plain transformers folder (config, safetensors weights, tokenizer) that
loads without PEFT, and generates without the adapter's extra matrix products. Before it is
logged, its test loss, target-token log-probabilities and greedy answers are compared with the
unmerged adapter's on the adapter's own test split; a merge outside the tolerance for its
weights' dtype is refused.

A quantized (QLoRA) adapter is merged into the unquantized base, in fp32: merging into 4-bit
weights would round most of the adapter's update away.
"""

import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import mlflow
import pandas as pd
import torch

from lora_study import evaluation, models, registry, serving
from lora_study.config import EvaluateConfig, MergeConfig
from lora_study.errors import UserInputError
from lora_study.tracking import (
    ARTIFACT_GENERATIONS,
    ARTIFACT_MERGED,
    METRIC_GEN_TOKENS_PER_S,
    METRIC_MERGED_LOSS_DIFF_PCT,
    METRIC_MERGED_MATCHES,
    METRIC_TEST_LOSS,
    PARAM_DATASET_DIGEST,
    log_params,
    stage_run,
)


def run_merge(cfg: MergeConfig) -> str:
    """The `merge` entry point; returns the MLflow run id. Bad input fails before the run."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    source = registry.resolve_model_uri(cfg.model_uri)
    if not source.is_adapter:
        raise UserInputError(f"--model-uri {cfg.model_uri}: a base model has no adapter to merge; pass an adapter's URI")
    output = _empty_folder(cfg.output_dir)
    source = replace(source, reference={**source.reference, "quantization": "none"})  # see the docstring
    reference = source.reference
    where = models.device()
    dtype = models.autocast_dtype(cfg.precision, where)
    model, tokenizer, ref = evaluation.load_subject(source, where, dtype)
    check = EvaluateConfig(model_uri=cfg.model_uri, data=cfg.data, max_prompts=cfg.max_prompts,
                           max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, precision=cfg.precision)  # fmt: skip
    prepared = evaluation.evaluation_data(check, source, ref, tokenizer)
    rows = prepared.rows("test")
    prompts = evaluation.prompt_suite(check, rows, prepared.meta["format"], tokenizer, reference["prompt_format"])
    with stage_run("merge", **evaluation.link_tags(source)) as run:
        log_params({**cfg.model_dump(), "base_model": ref.name, PARAM_DATASET_DIGEST: prepared.meta["digest"]})
        unmerged = unmerged_evaluation(model, tokenizer, rows, prompts, check, dtype)
        merged, result = evaluation.check_merged(model, tokenizer, rows, prompts, check, dtype, unmerged,
                                                 reference["dtype"])  # fmt: skip
        mlflow.log_table(result.table, ARTIFACT_GENERATIONS)
        difference = result.metrics[METRIC_MERGED_LOSS_DIFF_PCT]
        tolerance = evaluation.MERGE_TOLERANCE_PCT[reference["dtype"]]
        if not result.metrics[METRIC_MERGED_MATCHES]:
            mlflow.log_metrics(result.metrics)
            raise UserInputError(
                f"the merged model's test loss differs from the adapter's by {difference:.3f}%, over the "
                f"{tolerance}% allowed for {reference['dtype']} weights; not logged: serve the adapter unmerged"
            )
        info = log_merged(merged, tokenizer, {**reference, "merged_from": cfg.model_uri}, output)
        mlflow.log_metrics(result.metrics, model_id=info.model_id)
        if cfg.registered_model:
            version = registry.register(info.model_uri, cfg.registered_model, {"merged_from": cfg.model_uri})
            print(f"registered {cfg.registered_model} version {version.version}")
    print(f"merged model matches the adapter (test loss within {difference:.4f}%, tolerance {tolerance}%): "
          f"runs:/{run.info.run_id}/{ARTIFACT_MERGED}" + (f", written to {output}" if output else ""))  # fmt: skip
    return run.info.run_id


def unmerged_evaluation(model, tokenizer, rows: list[dict], prompts, cfg: EvaluateConfig, dtype) -> evaluation.Evaluation:
    """What `check_merged` compares against: the unmerged adapter's test loss and greedy answers."""
    loss = evaluation.mean_loss(model, rows, cfg.batch_size, tokenizer.pad_token_id, dtype)
    table = pd.DataFrame({"prompt": [p.text for p in prompts], "reference": [p.reference for p in prompts]})
    metrics = {METRIC_TEST_LOSS: loss}
    if prompts:
        out = evaluation.generate_timed(model, tokenizer, prompts, cfg.max_new_tokens, dtype)
        metrics[METRIC_GEN_TOKENS_PER_S] = out.metrics()[METRIC_GEN_TOKENS_PER_S]
        table["adapter_output"] = out.texts
    return evaluation.Evaluation(metrics, table)


def log_merged(model, tokenizer, reference: dict, output: Path | None):
    """Log the merged model under the active run as the MLflow model `merged`; copy it to `output`."""
    with tempfile.TemporaryDirectory() as folder:
        merged_dir, reference_file = Path(folder) / ARTIFACT_MERGED, Path(folder) / serving.BASE_REFERENCE
        model.save_pretrained(merged_dir)
        tokenizer.save_pretrained(merged_dir)
        reference_file.write_text(json.dumps(reference, indent=1))
        if output is not None:
            shutil.copytree(merged_dir, output, dirs_exist_ok=True)
        return mlflow.pyfunc.log_model(
            name=ARTIFACT_MERGED,
            python_model=serving.MODEL_CODE,
            artifacts={"merged": str(merged_dir), "base_model": str(reference_file)},
            signature=serving.SIGNATURE,
            pip_requirements=serving.requirements("none"),
            metadata={"base_model": reference},
        )


def _empty_folder(path: str) -> Path | None:
    """`--output-dir`, refused if it holds anything: a merge never writes over a user's files."""
    if not path:
        return None
    folder = Path(path)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserInputError(f"--output-dir {path}: exists and is not an empty folder; pass a new one")
    return folder
