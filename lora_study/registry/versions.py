"""Registered versions: found by name, number, alias, study trial or run; registered once, with
what was measured on them (`register_measured`, the one rule for `train`, `sweep` and
`evaluate`), the manifest of what a server needs (`servability`) and a description.
"""

import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from lora_study import logged_models, tracking
from lora_study.errors import UserInputError
from lora_study.names import (
    TAG_STUDY,
    TAG_TRIAL_NUMBER,
)
from lora_study.registry import servability
from lora_study.registry.descriptions import describe, describe_model
from lora_study.registry.measured import measured_tags


def check_name(name: str, flag: str) -> None:
    """Refuse, before any work, a registered-model name MLflow would refuse at registration."""
    from mlflow.utils.validation import _validate_model_name  # MLflow's own rule (no public API)

    try:
        _validate_model_name(name)
    except MlflowException as error:
        raise UserInputError(f"{flag} {name}: {error.message}") from None


def version_number(name: str, version: str | None = None, alias: str | None = None) -> str:
    """The version a `models:/` URI names, by number or alias; MlflowException if there is none."""
    client = mlflow.MlflowClient()
    if alias is not None:
        return client.get_model_version_by_alias(name, alias).version
    return client.get_model_version(name, version).version


def register(model_uri: str, name: str, tags: dict):
    """Register `model_uri` as a new version of `name`, with its tags and description set. A
    study's trial is registered once: should sweeps on other machines have registered it at the
    same moment, the first version (the lowest number, which every one of them sees) stands and
    this one goes."""
    tags = {key: str(value) for key, value in tags.items()}
    version = mlflow.register_model(logged_models.uri(model_uri), name, tags=tags)
    client = mlflow.MlflowClient()
    if TAG_STUDY in tags and TAG_TRIAL_NUMBER in tags:
        first = find_trial_version(name, tags[TAG_STUDY], tags[TAG_TRIAL_NUMBER]) or version
        if first.version != version.version:
            client.delete_model_version(name, version.version)
            return client.get_model_version(name, first.version)
    tag_version(name, version.version, servability.tags(manifest(version)))
    describe(name, version.version)
    describe_model(name)
    return client.get_model_version(name, version.version)


def register_measured(model_uri: str, name: str, metrics: dict, measured_on, tags: dict):
    """Register `model_uri` as a version of `name` with what was measured on it (`metrics`, on the
    test data `measured_on`: `measured.measured_tags`) beside its other `tags`."""
    return register(model_uri, name, {**tags, **measured_tags(metrics, measured_on)})


def tag_measured(name: str, version: str, metrics: dict, measured_on, tags: dict) -> None:
    """Record a new measurement on a registered version, as `register_measured` does, and write its
    description again."""
    tag_version(name, version, {**tags, **measured_tags(metrics, measured_on)})
    describe(name, version)


def manifest(mv) -> "servability.Manifest | None":
    """The manifest of the version `mv`: from its tag, else (a version registered before versions
    carried one) read from its model; None for a model that is not lora-study's."""
    recorded = servability.Manifest.from_tags(mv.tags)
    if recorded is not None:
        return recorded
    location = mlflow.MlflowClient().get_model_version_download_uri(mv.name, mv.version).rstrip("/")
    with tempfile.TemporaryDirectory() as folder:

        def fetch(path: str) -> Path | None:
            try:
                return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/{path}", dst_path=folder))
            except MlflowException:  # no such file
                return None

        return servability.read(fetch)


def tag_version(name: str, version: str, tags: dict) -> None:
    """Set tags on a registered model version, so the registry page shows them; workers finishing
    at once may tag one version together."""
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        tracking.once_more_if_raced(client.set_model_version_tag, name, version, key, str(value))


def find_trial_version(name: str, study: str, trial_number: int):
    """The version registered from this study's trial, if any: a resumed sweep must not repeat it."""
    query = f"name = '{name}' and tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_TRIAL_NUMBER}` = '{trial_number}'"
    try:
        found = mlflow.MlflowClient().search_model_versions(query)
    except MlflowException:  # no such registered model yet
        return None
    return min(found, key=lambda version: int(version.version), default=None)  # the one `register` keeps


def run_version(name: str, run_id: str):
    """The version of `name` registered from the run `run_id`, if any (the first)."""
    try:
        found = mlflow.MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:  # no such registered model yet
        return None
    return min(found, key=lambda version: int(version.version), default=None)


def study_versions(study: str) -> list:
    """Every version registered from this study, in any registered model, oldest first, each with
    its aliases."""
    client = mlflow.MlflowClient()
    found = client.search_model_versions(f"tags.`{TAG_STUDY}` = '{study}'")
    full = [client.get_model_version(v.name, v.version) for v in found]  # search leaves aliases out
    return sorted(full, key=lambda v: (v.name, int(v.version)))


def version_of_uri(uri) -> object:
    """The registered version a parsed `models:/` URI names; UserInputError if there is none."""
    try:
        number = version_number(uri.registered_model, uri.version, uri.alias)
        return mlflow.MlflowClient().get_model_version(uri.registered_model, number)
    except MlflowException as error:
        raise UserInputError(f"{uri.uri}: {error.message}") from None


def get_version(name: str, version: int):
    try:
        return mlflow.MlflowClient().get_model_version(name, str(version))
    except MlflowException as error:
        raise UserInputError(f"{name} version {version}: {error.message}") from None


# --- the versions table ----------------------------------------------------------------------------
