"""`train`: fine-tune one LoRA adapter and log everything a LoRA study compares.

    lora-study train --max-steps 30 --rank 16 --target-modules qkvo

The recipe, top to bottom: check the settings against the base model and load the base and the
prepared data (bad input fails here, before any run) -> start the run -> log the inputs -> train
(the loop logs per-step and final metrics) -> log the adapter as the MLflow model `adapter`.
"""

import os

import torch

from lora_study import tracking, training
from lora_study.config import AdapterConfig, BaseModelConfig, DataConfig, TrainConfig
from lora_study.tracking import STAGE_TRAIN


def run_train(data: DataConfig, base: BaseModelConfig, adapter: AdapterConfig, train: TrainConfig) -> str:
    """The `train` entry point; returns the MLflow run id."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    s = training.setup(data, base, adapter, train)

    with tracking.stage_run(STAGE_TRAIN, log_system_metrics=True) as run:
        training.log_inputs(s, data, base)
        result = training.fine_tune(s, adapter, train, data.seed)
        training.log_trained_adapter(s, result.model, adapter)
        tracking.flush()
    return run.info.run_id
