"""What a version's test perplexity was measured on (a `comparability.Basis`): as its tags record
it, or, for a version registered before versions recorded it, as the runs that logged and measured
it did; and the tags that record it."""

import mlflow

from lora_study import tracking
from lora_study.names import (
    METRIC_TEST_PERPLEXITY,
    PARAM_DATASET_DIGEST,
    PARAM_QUANTIZATION,
    TAG_EVALUATION_RUN_ID,
    TAG_GROUP_KEY,
    TAG_TEST_DATA,
    TAG_TEST_DATA_KEY,
)
from lora_study.registry import comparability


def measured_on(version) -> "comparability.Basis | None":
    """What the version's test perplexity was measured on: as its tag records it, else (a version
    registered before versions recorded it) as the runs that logged and measured it did."""
    recorded = comparability.Basis.from_json(version.tags.get(TAG_TEST_DATA))
    if recorded is not None or not version.run_id or METRIC_TEST_PERPLEXITY not in version.tags:
        return recorded
    params = tracking.run_params(version.run_id)
    evaluation = version.tags.get(TAG_EVALUATION_RUN_ID)
    if evaluation:  # `evaluate` measured it last, perhaps on other data (`--data`)
        measured = tracking.run_params(evaluation)
        if measured.get(PARAM_DATASET_DIGEST) != params.get(PARAM_DATASET_DIGEST):
            params = {PARAM_QUANTIZATION: params.get(PARAM_QUANTIZATION, "none"), **measured}  # its settings unknown
    group = mlflow.MlflowClient().get_run(version.run_id).data.tags.get(TAG_GROUP_KEY, "")
    return comparability.Basis.from_params(params, group)


def measured_on_tags(basis: "comparability.Basis") -> dict[str, str]:
    """The tags that go beside a test perplexity on a version."""
    return {TAG_TEST_DATA: basis.to_json(), TAG_TEST_DATA_KEY: basis.key}


def measured_tags(metrics: dict, basis: comparability.Basis) -> dict[str, str]:
    """A version's tags for what was measured on it: each metric to 6 significant digits, and the
    test data they were measured on. The one rule for `train`, `sweep` and `evaluate`."""
    return {**{key: f"{float(value):.6g}" for key, value in metrics.items()}, **measured_on_tags(basis)}
