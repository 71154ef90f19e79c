"""`train`: fine-tune one LoRA adapter and log everything a LoRA study compares.

    lora-study train --max-steps 30 --rank 16 --target-modules qkvo

With --group-by COLUMN it trains one adapter per group instead (`train_groups`).

The recipe, top to bottom: check the settings against the base model and load the base and the
prepared data (bad input fails here, before any run) -> start the run -> log the inputs -> train
(the loop logs per-step and final metrics) -> measure forgetting on text outside the training
data -> log the adapter as the MLflow model `adapter`.
"""

import os

import torch

from lora_study import forgetting, tracking, training
from lora_study.config import AdapterConfig, BaseModelConfig, DataConfig, GroupsConfig, TrainConfig, flag
from lora_study.errors import UserInputError
from lora_study.tracking import RUN_NAME_TRAIN, STAGE_TRAIN


def run_train(
    data: DataConfig,
    base: BaseModelConfig,
    adapter: AdapterConfig,
    train: TrainConfig,
    choice: GroupsConfig = GroupsConfig(),
) -> str:
    """The `train` entry point; returns the MLflow run id (with --group-by, the parent's)."""
    if data.group_by:
        from lora_study.stages.train_groups import run_train_groups

        return run_train_groups(data, base, adapter, train, choice)
    given = [flag(name) for name, value in choice.model_dump().items() if value]
    if given:
        raise UserInputError(f"{', '.join(given)}: only with --group-by COLUMN (one adapter per group)")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    s = training.setup(data, base, adapter, train)
    general_text = forgetting.load(train.forgetting_data, s.ref, s.tokenizer, s.model, data.seq_len, data.dataset)

    label = tracking.adapter_label(adapter.rank, adapter.target_modules, quantization=adapter.quantization)
    with tracking.stage_run(STAGE_TRAIN, log_system_metrics=True, name=RUN_NAME_TRAIN.format(adapter=label)) as run:
        training.log_inputs(s, data, base)
        result = training.fine_tune(s, adapter, train, data.seed)
        if general_text:
            forgot = forgetting.evaluate(result.model, general_text, s.tokenizer.pad_token_id, s.dtype)
            tracking.log_forgetting(forgot, general_text.description)
        training.log_trained_adapter(s, result.model, adapter)
        tracking.flush()
    return run.info.run_id
