"""`prepare`: tokenize, split and pack a data set; log it to MLflow.

    lora-study prepare --dataset data.jsonl --seq-len 512

Everything that can be wrong with the input fails before the run starts; preparing the same
inputs again reuses the cached result.
"""

import hashlib

import mlflow

from lora_study import data, models, tracking
from lora_study.config import BaseModelConfig, DataConfig
from lora_study.names import (
    ARTIFACT_DATA,
    ARTIFACT_PREVIEW,
    PARAM_BASE_MODEL_REVISION,
    PARAM_BASE_MODEL_SHA256,
    PARAM_DATASET_DIGEST,
    PARAM_DECONTAMINATION,
    PARAM_DETECTED_FORMAT,
    PARAM_SOURCE_DIGEST,
    PARAM_TOKENIZER_DIGEST,
    RUN_NAME_PREPARE,
    SPLITS,
    STAGE_PREPARE,
)


def run_prepare(data_cfg: DataConfig, base: BaseModelConfig) -> str:
    """The `prepare` entry point: prepare (or reuse) the splits and log them; returns the run id."""
    ref = models.resolve(base.base_model, base.trust_remote_code)
    tokenizer = models.load_tokenizer(ref)
    prepared, documents = data.prepare(data_cfg, ref, tokenizer)

    name = RUN_NAME_PREPARE.format(dataset=data_cfg.dataset, base_model=base.base_model)
    with tracking.stage_run(STAGE_PREPARE, name=name) as run:
        tracking.log_params({**data_cfg.model_dump(), **base.model_dump()})
        tracking.log_params(
            {
                PARAM_DETECTED_FORMAT: prepared.meta.format,
                PARAM_DECONTAMINATION: prepared.meta.decontamination,
                PARAM_DATASET_DIGEST: prepared.meta.digest,
                PARAM_SOURCE_DIGEST: documents.digest,
                PARAM_TOKENIZER_DIGEST: prepared.meta.tokenizer_digest,
                PARAM_BASE_MODEL_SHA256: ref.sha256 or "",
                PARAM_BASE_MODEL_REVISION: ref.revision or "",
            }
        )
        mlflow.log_metrics(prepared.meta.counts)
        # one MLflow dataset input per split: the documents it holds, with their digest
        source = tracking.dataset_source(**documents.source)
        for split in SPLITS:
            indices = prepared.meta.documents[split]
            digest = hashlib.sha256(f"{documents.digest}:{indices}".encode()).hexdigest()[:16]
            frame = documents.frame.iloc[indices].reset_index(drop=True)
            tracking.log_dataset_input(frame, source, documents.name, digest, split)
        mlflow.log_table(data.preview(prepared, tokenizer), ARTIFACT_PREVIEW)
        mlflow.log_artifacts(str(prepared.path), ARTIFACT_DATA)
    return run.info.run_id
