"""Typed configuration, one pydantic model per concern, validated at the edge.

A field's name is its CLI flag (`seq_len` -> `--seq-len`), its MLproject parameter and its
MLflow param; `tests/config/test_config.py` checks that MLproject, the CLI and these classes agree.
Every problem in a set of values is reported at once, each naming its flag (`fields`). What trains
is in `training`, what measures adapters in `study`, the commands on what a study made in
`registered`; every config is offered here.
"""

from lora_study.config.fields import (
    POSITIONAL,
    STRICT,
    ForgettingData,
    Precision,
    PreparedDataUri,
    ServingTarget,
    flag,
    parse_sections,
)
from lora_study.config.registered import (
    InspectConfig,
    MergeConfig,
    PromoteConfig,
    ReportConfig,
    ServeConfig,
    VersionsConfig,
)
from lora_study.config.study import EvaluateConfig, SweepConfig
from lora_study.config.training import AdapterConfig, BaseModelConfig, DataConfig, GroupsConfig, TrainConfig

__all__ = [
    "POSITIONAL",
    "STRICT",
    "AdapterConfig",
    "BaseModelConfig",
    "DataConfig",
    "EvaluateConfig",
    "ForgettingData",
    "GroupsConfig",
    "InspectConfig",
    "MergeConfig",
    "Precision",
    "PreparedDataUri",
    "PromoteConfig",
    "ReportConfig",
    "ServeConfig",
    "ServingTarget",
    "SweepConfig",
    "TrainConfig",
    "VersionsConfig",
    "flag",
    "parse_sections",
]
