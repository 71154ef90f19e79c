"""MLflow names: plain strings, config params that are config fields, one key per name unless aliased."""

import ast
from collections import defaultdict

import pytest
from pydantic import ValidationError

from lora_study import names
from lora_study.config import AdapterConfig, BaseModelConfig, DataConfig, SweepConfig, TrainConfig

CONFIG_FIELDS = {
    name
    for config in (DataConfig, BaseModelConfig, AdapterConfig, TrainConfig, SweepConfig)
    for name in config.model_fields
}
CONFIG_PARAMS = [
    "PARAM_BASE_MODEL",
    "PARAM_DATA",
    "PARAM_RANK",
    "PARAM_ALPHA",
    "PARAM_DROPOUT",
    "PARAM_TARGET_MODULES",
    "PARAM_QUANTIZATION",
    "PARAM_USE_RSLORA",
    "PARAM_USE_DORA",
    "PARAM_LEARNING_RATE",
    "PARAM_DATASET",
    "PARAM_FORMAT",
    "PARAM_SEQ_LEN",
    "PARAM_SPLIT_SEED",
    "PARAM_TRAINING_SEED",
    "PARAM_DECONTAMINATE_NGRAM",
    "PARAM_MAX_STEPS",
    "PARAM_OBJECTIVES",
    "PARAM_PRUNER",
    "PARAM_RECOMMEND",
    "PARAM_WITHIN_SE",
]
# Names that are the same MLflow key on purpose: one constant defined as the other's alias.
ALIASES = {
    frozenset({"TAG_BASE_MODEL_SHA256", "PARAM_BASE_MODEL_SHA256"}),
    frozenset({"METRIC_LEARNING_RATE", "PARAM_LEARNING_RATE"}),
    frozenset({"TAG_BASE_MODEL", "PARAM_BASE_MODEL"}),
    frozenset({"PARAM_DATA", "ARTIFACT_DATA"}),  # the `data` param names what the `data` artifact holds
    frozenset({"PARAM_SPLIT_SEED_BEFORE", "TAG_SEED"}),  # an old run's split seed (param); a confirmation's (tag)
}


def test_names_holds_constants_only():
    """No import and no function: importing it costs nothing (`lora-study --help` reads it)."""
    tree = ast.parse(open(names.__file__).read())
    kinds = {type(node).__name__ for node in tree.body} - {"Assign", "Expr"}
    assert kinds == set()


@pytest.mark.parametrize("constant", CONFIG_PARAMS)
def test_config_params_are_config_fields(constant):
    assert getattr(names, constant) in CONFIG_FIELDS


@pytest.mark.parametrize("objective", list(names.OBJECTIVE_METRICS))
def test_every_objective_is_a_sweep_objective(objective):
    assert SweepConfig(objectives=objective).objective_names == [objective]


def test_an_unknown_objective_is_refused():
    with pytest.raises(ValidationError, match="objectives"):
        SweepConfig(objectives="perplexity,latency")


def test_no_two_mlflow_names_share_a_key_unless_aliased():
    by_value = defaultdict(set)
    for name, value in vars(names).items():
        if name.isupper() and isinstance(value, str) and name.startswith(("METRIC_", "PARAM_", "TAG_", "ARTIFACT_")):
            by_value[value].add(name)
    shared = {frozenset(keys) for keys in by_value.values() if len(keys) > 1}
    assert shared - ALIASES == set()
    assert ALIASES <= shared  # an alias that no longer is one is dropped from ALIASES
