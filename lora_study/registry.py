"""The MLflow side of a trained adapter: what a model URI points at, and registry tags.

A model URI names an adapter the way MLflow does (`runs:/<id>/adapter`, `models:/<name>/<version>`,
`models:/<name>@<alias>`), or `base:<base model>` for a base model with no adapter, so that a base
can be measured by the same code as the adapters trained on it.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from lora_study.errors import UserInputError

BASE_PREFIX = "base:"


@dataclass(frozen=True)
class ModelSource:
    """An adapter as found in MLflow (or a bare base model), and where it came from."""

    uri: str
    base_model: str  # the name `--base-model` takes
    reference: dict | None  # the adapter's base_model.json; None for `base:`
    adapter_dir: Path | None  # the downloaded PEFT adapter folder; None for `base:`
    run_id: str | None = None  # the run that logged the adapter
    model_id: str | None = None  # the MLflow LoggedModel
    registered_model: str | None = None
    version: str | None = None

    @property
    def is_adapter(self) -> bool:
        return self.adapter_dir is not None


def resolve_model_uri(uri: str, flag: str = "--model-uri") -> ModelSource:
    """Find and download the adapter `uri` names; one clear line, naming `flag`, if it is not there
    or not one."""
    if uri.startswith(BASE_PREFIX):
        return ModelSource(uri, uri.removeprefix(BASE_PREFIX), None, None)
    registered_model, version = _registered_version(uri, flag)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except MlflowException as error:
        raise UserInputError(f"{flag} {uri}: {error.message}") from None
    if not (local / "MLmodel").exists():
        raise UserInputError(f"{flag} {uri}: no MLflow model there (no MLmodel file)")
    model = Model.load(local)
    artifacts = model.flavors.get("python_function", {}).get("artifacts", {})
    if "adapter" not in artifacts or "base_model" not in artifacts:
        raise UserInputError(
            f"{flag} {uri}: not a lora-study adapter (its MLmodel names no adapter and base "
            "model); pass the `adapter` model of a `train` or `sweep` run"
        )
    reference = json.loads((local / artifacts["base_model"]["path"]).read_text())
    return ModelSource(
        uri, reference["name"], reference, local / artifacts["adapter"]["path"],
        run_id=model.run_id, model_id=model.model_id, registered_model=registered_model, version=version,
    )  # fmt: skip


def _registered_version(uri: str, flag: str) -> tuple[str | None, str | None]:
    """(name, version) of a `models:/<name>/<version>` or `models:/<name>@<alias>` URI."""
    if not uri.startswith("models:/") or uri.startswith("models:/m-"):  # m-<id>: a LoggedModel
        return None, None
    name_and_version = uri.removeprefix("models:/").rstrip("/")
    client = mlflow.MlflowClient()
    try:
        if "@" in name_and_version:
            name, alias = name_and_version.split("@", 1)
            return name, client.get_model_version_by_alias(name, alias).version
        name, _, version = name_and_version.partition("/")
        return name, client.get_model_version(name, version).version
    except MlflowException as error:
        raise UserInputError(f"{flag} {uri}: {error.message}") from None


def tag_version(name: str, version: str, tags: dict) -> None:
    """Set tags on a registered model version, so the registry page shows them."""
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def find_trial_version(name: str, study: str, trial_number: int):
    """The version registered from this study's trial, if any: a resumed sweep must not repeat it."""
    from lora_study.tracking import TAG_STUDY, TAG_TRIAL_NUMBER

    query = f"name = '{name}' and tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_TRIAL_NUMBER}` = '{trial_number}'"
    try:
        found = mlflow.MlflowClient().search_model_versions(query)
    except MlflowException:  # no such registered model yet
        return None
    return found[0] if found else None


def register(model_uri: str, name: str, tags: dict):
    """Register `model_uri` as a new version of `name`, with its tags set."""
    version = mlflow.register_model(model_uri, name, tags={key: str(value) for key, value in tags.items()})
    return mlflow.MlflowClient().get_model_version(name, version.version)


def alias_version(name: str, alias: str):
    """The version an alias points at, or None."""
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)


# --- promotion and the versions table ------------------------------------------------------------

# What promotion compares: the test perplexity `evaluate` (or the sweep) recorded on a version.
PROMOTION_METRIC = "test_perplexity"
VERSION_COLUMNS = ("rank", "alpha", "target_modules", "quantization")  # from the run that logged it


def get_version(name: str, version: int):
    try:
        return mlflow.MlflowClient().get_model_version(name, str(version))
    except MlflowException as error:
        raise UserInputError(f"{name} version {version}: {error.message}") from None


def promote(name: str, version: int, alias: str, force: bool, reason: str, metric: str = PROMOTION_METRIC) -> str:
    """Point `alias` at `version` if it beats the alias's holder on `metric` (lower is better), or
    with `force`; record who, when, why and what was compared on the version. Returns what was done."""
    import getpass
    from datetime import datetime, timezone

    candidate = get_version(name, version)
    holder = alias_version(name, alias)
    if holder is not None and holder.version == candidate.version:
        return f"{name}@{alias} is version {version} already"
    compared = _compare(name, candidate, holder, alias, force, metric)
    set_alias(name, alias, candidate.version)
    tag_version(name, candidate.version, {
        "promoted_alias": alias,
        "promoted_by": getpass.getuser(),
        "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "promotion_reason": reason or "(none given)",
        "promotion_compared": compared,
    })  # fmt: skip
    return f"{name}@{alias} -> version {version} ({compared})"


def _compare(name: str, candidate, holder, alias: str, force: bool, metric: str) -> str:
    """The comparison, in words; refuses a worse or unevaluated candidate unless `force`."""
    mine = candidate.tags.get(metric)
    if mine is None and not force:
        raise UserInputError(
            f"{name} version {candidate.version} has no {metric} tag: run `lora-study evaluate "
            f"--model-uri models:/{name}/{candidate.version}` first, or pass --force"
        )
    if holder is None:
        return f"{metric} {mine}; no version held @{alias} before"
    theirs = holder.tags.get(metric)
    words = f"{metric} {mine} vs {theirs} of version {holder.version}"
    if mine is not None and theirs is not None and float(mine) >= float(theirs) and not force:
        raise UserInputError(
            f"{name} version {candidate.version} is not better than @{alias} (version {holder.version}): "
            f"{words}; pass --force to move the alias anyway"
        )
    return words + (" (forced)" if force else "")


def versions_table(name: str):
    """One row per version: aliases, base model, adapter shape and headline metrics."""
    import pandas as pd

    client = mlflow.MlflowClient()
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as error:
        raise UserInputError(f"{name}: {error.message}") from None
    rows = []
    for mv in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)):
        params = client.get_run(mv.run_id).data.params if mv.run_id else {}
        rows.append({
            "version": int(mv.version),
            "aliases": ",".join(sorted(a for a, v in aliases.items() if str(v) == str(mv.version))),
            "base_model": mv.tags.get("base_model", params.get("base_model", "")),
            **{column: params.get(column, "") for column in VERSION_COLUMNS},
            "test_perplexity": mv.tags.get(PROMOTION_METRIC, ""),
            "base_test_perplexity": mv.tags.get("base_test_perplexity", ""),
            "eval_perplexity": mv.tags.get("eval_perplexity", ""),
        })  # fmt: skip
    return pd.DataFrame(rows)


def run_promote(cfg) -> None:
    """The `promote` entry point: prints what it did."""
    print(promote(cfg.registered_model, cfg.version, cfg.alias, cfg.force, cfg.reason))


def run_versions(cfg) -> None:
    """The `versions` command: prints the table."""
    table = versions_table(cfg.registered_model)
    print(table.to_string(index=False) if not table.empty else f"{cfg.registered_model} has no versions")
