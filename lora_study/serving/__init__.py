"""Serving: the served model (`model.AdapterModel`), the request contract it answers by
(`contract`), the batching of requests that arrive together (`batching`), and the patches a
lora-study model makes to MLflow's scoring server when it loads in one (`server`).

The model class and the contract are offered here. A logged model's code file imports
`AdapterModel` from this package (models logged before this package existed too).
"""

from lora_study.serving.contract import (
    ADAPTER_FIELD,
    BATCH_WAIT_MS_ENV,
    DEFAULT_PARAMS,
    MAX_BATCH_SIZE_ENV,
    MAX_NEW_TOKENS,
    MAX_NEW_TOKENS_ENV,
    PROMPT_FIELD,
    BadRequest,
    ServedAdapter,
    adapter_entries,
    answer,
    batching_settings,
    check_lengths,
    check_params,
    generate_mixed,
    server_argv,
)
from lora_study.serving.model import AdapterModel

__all__ = [
    "ADAPTER_FIELD",
    "BATCH_WAIT_MS_ENV",
    "DEFAULT_PARAMS",
    "MAX_BATCH_SIZE_ENV",
    "MAX_NEW_TOKENS",
    "MAX_NEW_TOKENS_ENV",
    "PROMPT_FIELD",
    "AdapterModel",
    "BadRequest",
    "ServedAdapter",
    "adapter_entries",
    "answer",
    "batching_settings",
    "check_lengths",
    "check_params",
    "generate_mixed",
    "server_argv",
]
