"""LoggedModels as the experiment's Models tab lists them: named for what they are
(`r32-qkvo-lr19e-4-seed1-200steps`), tagged with their kind (`adapter` or `merged`), carrying their run's
leaderboard metrics, and found again from `runs:/<run id>/adapter`, the URI lora-study wrote before
its models had names of their own.

MLflow 3 resolves `runs:/<run id>/<name>` by the LoggedModel's name; `models:/<model id>` names one
whatever it is called, and is what lora-study prints.
"""

import mlflow
from mlflow.entities import Metric
from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

from lora_study.names import (
    ARTIFACT_ADAPTER,
    ARTIFACT_MERGED,
    INPUT_CONTEXT_TRAINING,
    LOGGED_MODEL_METRICS,
    LOGGED_MODEL_METRICS_ON_DATA,
    TAG_MODEL_KIND,
)

NOT_IN_A_NAME = ("/", ":", ".", "%", '"', "'")  # MLflow refuses these in a LoggedModel's name


def name(
    rank: int, target_modules: str, learning_rate: float, quantization: str, seed: int, steps: int, planned: int = 0
) -> str:
    """`r32-qkvo-lr19e-4-seed1-200steps`: the adapter's configuration, the seed that trained it and
    its training steps (a sweep trains a configuration at two budgets); `120of200steps` when the
    adapter kept is of an earlier step than the `planned` budget; the learning rate to 2
    significant digits, written without a decimal point."""
    parts = [f"r{rank}", target_modules, f"lr{_number(learning_rate)}"]
    if quantization != "none":
        parts.append(quantization)
    budget = f"{steps}of{planned}steps" if planned > steps else f"{steps}steps"
    text = "-".join([*parts, f"seed{seed}", budget])
    for character in NOT_IN_A_NAME:
        text = text.replace(character, "_")
    return text


def _number(value: float) -> str:
    """1.9e-3 -> 19e-4; 2.0e-3 -> 2e-3."""
    mantissa, exponent = f"{value:.1e}".split("e")
    digits, power = int(mantissa.replace(".", "")), int(exponent) - 1
    if digits % 10 == 0:
        digits, power = digits // 10, power + 1
    return f"{digits}e{power}"


def link_run_metrics(model_id: str, run_id: str, step: int) -> None:
    """The run's leaderboard metrics as they were at the model's `step` (the latest value logged at
    or before it: a kept best adapter's validation perplexity, not the last evaluation's), logged
    on its model too, where MLflow did not link them as it logged the model (it links those of the
    model's step, without a dataset). Those
    measured on the prepared data's splits are linked to that dataset (the run's training input),
    so the Models tab shows validation and test perplexity side by side under it; one MLflow
    linked already is logged again a millisecond later, as the run keeps a metric of one step and
    time once."""
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    linked = {metric.key for metric in client.get_logged_model(model_id).metrics or []}
    dataset = next(
        (
            given.dataset
            for given in run.inputs.dataset_inputs
            if any(tag.key == "mlflow.data.context" and tag.value == INPUT_CONTEXT_TRAINING for tag in given.tags)
        ),
        None,
    )
    metrics = []
    for key in (*LOGGED_MODEL_METRICS_ON_DATA, *LOGGED_MODEL_METRICS):
        on_data = dataset is not None and key in LOGGED_MODEL_METRICS_ON_DATA
        if key not in run.data.metrics or (key in linked and not on_data):
            continue
        history = [metric for metric in client.get_metric_history(run_id, key) if metric.step <= step]
        if not history:
            continue
        latest = max(history, key=lambda metric: (metric.step, metric.timestamp))
        metrics.append(
            Metric(
                key,
                latest.value,
                latest.timestamp + (key in linked),
                latest.step,
                model_id=model_id,
                dataset_name=dataset.name if on_data else None,
                dataset_digest=dataset.digest if on_data else None,
            )
        )
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def uri(model_uri: str) -> str:
    """`runs:/<run id>/<name>` as `models:/<model id>` of the model logged there: found by its name,
    or where `name` is a kind (`adapter`, `merged`), by its kind. Any other URI as it is."""
    if not model_uri.startswith("runs:/"):
        return model_uri
    run_id, path = RunsArtifactRepository.parse_runs_uri(model_uri)
    if not path or "/" in path.strip("/"):  # a run's artifact, or a file inside a model
        return model_uri
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    model_name = path.strip("/")
    queries = [f"name = '{model_name}'"]
    if model_name in (ARTIFACT_ADAPTER, ARTIFACT_MERGED):
        queries.append(f"tags.`{TAG_MODEL_KIND}` = '{model_name}'")
    for query in queries:
        found = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}' AND {query}")
        if found:
            return f"models:/{found[0].model_id}"
    return model_uri


def of_run(run_id: str, kind: str = ARTIFACT_ADAPTER) -> str:
    """`models:/<model id>` of the run's model of that kind."""
    return uri(f"runs:/{run_id}/{kind}")
