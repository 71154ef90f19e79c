"""The MLflow Model Registry: versions, their tags, aliases, and promotion between them.

Promotion compares the test perplexity that `evaluate` (or the sweep) recorded on each version,
measured on the same test data (`comparability`): an alias moves only to a better version, or
with `force`, and the version records why. Every alias move is kept on the registered model as a
tag, so `lora-study versions` shows who moved which alias when, from what to what. Every version
carries a manifest of what a server needs (`servability`), read at registration.
"""

import getpass
import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

from lora_study import comparability, servability, tracking
from lora_study.errors import UserInputError
from lora_study.tracking import (
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_EVAL_PERPLEXITY,
    METRIC_FORGETTING_KL,
    METRIC_FORGETTING_LOSS_DELTA,
    METRIC_PERPLEXITY_IMPROVEMENT_PCT,
    METRIC_TEST_PERPLEXITY,
    PARAM_ALPHA,
    PARAM_BASE_MODEL,
    PARAM_DATASET_DIGEST,
    PARAM_LEARNING_RATE,
    PARAM_QUANTIZATION,
    PARAM_RANK,
    PARAM_TARGET_MODULES,
    TAG_ALIAS_MOVE_PREFIX,
    TAG_BASE_MODEL,
    TAG_CONFIG_TRIAL,
    TAG_DESCRIPTION_DIGEST,
    TAG_EVALUATION_RUN_ID,
    TAG_GROUP,
    TAG_GROUP_KEY,
    TAG_MERGED_FROM,
    TAG_MLFLOW_PARENT_RUN,
    TAG_PROMOTED_ALIAS,
    TAG_PROMOTED_AT,
    TAG_PROMOTED_BY,
    TAG_PROMOTION_COMPARED,
    TAG_PROMOTION_REASON,
    TAG_SEED,
    TAG_SERVES_ON,
    TAG_STUDY,
    TAG_TEST_DATA,
    TAG_TEST_DATA_KEY,
    TAG_TEST_PERPLEXITY_MEAN,
    TAG_TEST_PERPLEXITY_N,
    TAG_TEST_PERPLEXITY_STD,
    TAG_TRIAL_NUMBER,
    param_value,
    report_link,
    ui_run_link,
)

# What promotion compares: the test perplexity `evaluate` (or the sweep) recorded on a version.
PROMOTION_METRIC = METRIC_TEST_PERPLEXITY
# Sweeps on several machines stamp alias moves with their own clocks: moves this much before a
# sweep read the holder count as made at the same moment (`_settle`).
CLOCK_SKEW_MS = 2000
VERSION_COLUMNS = (PARAM_RANK, PARAM_ALPHA, PARAM_TARGET_MODULES, PARAM_QUANTIZATION)  # from the run that logged it
VERSION_METRIC_TAGS = (METRIC_TEST_PERPLEXITY, METRIC_BASE_TEST_PERPLEXITY, METRIC_EVAL_PERPLEXITY)
COLUMN_TEST_DATA = TAG_TEST_DATA_KEY
COLUMN_TEST_DATA_DESCRIPTION = "test_data_description"  # what COLUMN_TEST_DATA's key stands for, in words


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
    version = mlflow.register_model(logged_model_uri(model_uri), name, tags=tags)
    client = mlflow.MlflowClient()
    if TAG_STUDY in tags and TAG_TRIAL_NUMBER in tags:
        first = find_trial_version(name, tags[TAG_STUDY], tags[TAG_TRIAL_NUMBER]) or version
        if first.version != version.version:
            client.delete_model_version(name, version.version)
            return client.get_model_version(name, first.version)
    tag_version(name, version.version, servability.tags(manifest(version)))
    describe(name, version.version)
    return client.get_model_version(name, version.version)


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


def logged_model_uri(model_uri: str) -> str:
    """`runs:/<run id>/<name>` as the URI of the model logged there, `models:/<model id>`: MLflow 3
    keeps models apart from a run's artifacts, and registering the run path makes it warn."""
    if not model_uri.startswith("runs:/"):
        return model_uri
    run_id, name = RunsArtifactRepository.parse_runs_uri(model_uri)
    client = mlflow.MlflowClient()
    found = client.search_logged_models(
        [client.get_run(run_id).info.experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{name}'"
    )
    return f"models:/{found[0].model_id}" if found else model_uri


def describe(name: str, version: str) -> None:
    """Write the version's Markdown description (the registry page shows it) from its tags and its
    run, unless a person has written or edited it since: theirs stands."""
    client = mlflow.MlflowClient()
    mv = client.get_model_version(name, version)
    if mv.description and _digest(mv.description) != mv.tags.get(TAG_DESCRIPTION_DIGEST):
        return
    run = client.get_run(mv.run_id) if mv.run_id else None
    text = version_description(mv, run)
    client.update_model_version(name, version, description=text)
    client.set_model_version_tag(name, version, TAG_DESCRIPTION_DIGEST, _digest(text))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tag_version(name: str, version: str, tags: dict) -> None:
    """Set tags on a registered model version, so the registry page shows them."""
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


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


def aliases(name: str) -> list[str]:
    """The aliases a registered model has; UserInputError if there is no such model."""
    try:
        return list(mlflow.MlflowClient().get_registered_model(name).aliases)
    except MlflowException as error:
        raise UserInputError(f"{name}: {error.message}") from None


def alias_version(name: str, alias: str):
    """The version an alias points at, or None."""
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def set_alias(
    name: str, alias: str, version: str, why: str, target: str = servability.DEFAULT_TARGET, attempts: int = 3
) -> None:
    """Point `alias` at `version`, and record the move (`alias_history`), with why and the server
    `target` it was checked for, if it moved. Sweeps on several machines set the same alias at
    the same moment, and MLflow's store may refuse the second insert (a unique constraint): once
    it points where this one would, or on a second try, it is done."""
    client = mlflow.MlflowClient()
    before = alias_version(name, alias)
    if before is not None and str(before.version) == str(version):
        return
    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(name, alias, version)
            break
        except MlflowException:
            current = alias_version(name, alias)
            if current is not None and str(current.version) == str(version):
                return  # another process moved it, and recorded the move
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    before_version = str(before.version) if before is not None else None
    _record_move(name, AliasMove(alias, before_version, str(version), _now(), getpass.getuser(), why, target))


# --- alias history ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AliasMove:
    alias: str
    before: str | None  # the version it pointed at; None: it was new
    after: str
    at: str  # UTC, ISO 8601
    by: str
    why: str
    target: str = servability.DEFAULT_TARGET  # the server the version was checked for
    ms: int = 0  # when, in ms since the epoch (from the tag's key)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _record_move(name: str, move: AliasMove) -> None:
    key = f"{TAG_ALIAS_MOVE_PREFIX}{move.alias}.{time.time_ns() // 1_000_000}"
    fields = {field: value for field, value in move.__dict__.items() if field != "ms"}
    mlflow.MlflowClient().set_registered_model_tag(name, key, json.dumps(fields))


def alias_history(name: str) -> list[AliasMove]:
    """Every recorded move of the model's aliases, oldest first. Sweeps that set one alias at the
    same moment may each record the same move: it is listed once."""
    try:
        tags = mlflow.MlflowClient().get_registered_model(name).tags
    except MlflowException as error:
        raise UserInputError(f"{name}: {error.message}") from None
    keys = [key for key in tags if key.startswith(TAG_ALIAS_MOVE_PREFIX) and key.rsplit(".", 1)[1].isdigit()]
    moves = []
    for key in sorted(keys, key=lambda key: int(key.rsplit(".", 1)[1])):
        try:
            move = AliasMove(**json.loads(tags[key]), ms=int(key.rsplit(".", 1)[1]))
        except (ValueError, TypeError):  # a tag of that name that lora-study did not write
            continue
        last = next((m for m in reversed(moves) if m.alias == move.alias), None)
        if last is None or (last.before, last.after) != (move.before, move.after):
            moves.append(move)
    return moves


def alias_target(name: str, alias: str) -> str:
    """The server the alias's holder was last checked for (`promote --target`); mlflow if none."""
    moves = [move for move in alias_history(name) if move.alias == alias]
    return moves[-1].target if moves else servability.DEFAULT_TARGET


def get_version(name: str, version: int):
    try:
        return mlflow.MlflowClient().get_model_version(name, str(version))
    except MlflowException as error:
        raise UserInputError(f"{name} version {version}: {error.message}") from None


# --- promotion -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    words: str  # what was compared: `test_perplexity 13.1 vs 14.9 of version 1`
    refusal: str | None  # why the candidate may not take the alias (it follows `<name> version <n>`); None: it may


def promote(
    name: str,
    version: int,
    alias: str,
    force: bool,
    reason: str,
    metric: str = PROMOTION_METRIC,
    target: str = servability.DEFAULT_TARGET,
) -> str:
    """Point `alias` at `version` if `target` can serve it and it beats the alias's holder on
    `metric` (lower is better) measured on the same test data, or with `force`; record who, when,
    why and what was compared on the version. Returns what was done, and what `target` needs to
    serve it. `force` overrides the comparison, never what a server cannot load."""
    candidate = get_version(name, version)
    found = manifest(candidate)
    refused = servability.refusals(found, target)
    if refused:
        raise UserInputError(f"{name} version {version} cannot be served by {target}: {'; '.join(refused)}")
    needs = servability.requirements(found, target)
    needed = f"; {target} needs {'; '.join(needs)}" if needs else ""
    holder = alias_version(name, alias)
    if holder is not None and str(holder.version) == str(candidate.version):
        return f"{name}@{alias} is version {version} already{needed}"
    comparison = compare(candidate, holder, alias, metric)
    if comparison.refusal and not force:
        raise UserInputError(f"{name} version {version} {comparison.refusal}; pass --force to move the alias anyway")
    compared = comparison.words + (" (forced)" if force else "")
    _move(name, candidate.version, alias, reason or "(none given)", compared, target)
    return f"{name}@{alias} -> version {version} ({compared}){needed}"


def advance(name: str, version: str, alias: str, reason: str, metric: str = PROMOTION_METRIC) -> str:
    """Move `alias` forward only: to `version` if it beats the holder on `metric`, measured on the
    same test data, and the server the alias was last promoted for can load it. Either way, one
    line that says what happened."""
    read_ms = time.time_ns() // 1_000_000
    candidate = get_version(name, int(version))
    holder = alias_version(name, alias)
    if holder is not None and str(holder.version) == str(candidate.version):
        return f"{name}@{alias} is version {candidate.version} already"
    target = alias_target(name, alias)
    refused = servability.refusals(manifest(candidate), target)
    comparison = compare(candidate, holder, alias, metric)
    refusal = f"cannot be served by {target}: {'; '.join(refused)}" if refused else comparison.refusal
    if refusal:
        stays = f"stays on version {holder.version}" if holder is not None else "is not set"
        force = f"`lora-study promote {name} --version {candidate.version} --alias {alias} --force` moves it anyway"
        return f"{name}@{alias} {stays}: version {candidate.version} {refusal}; {force}"
    _move(name, candidate.version, alias, reason, comparison.words, target)
    _settle(name, alias, metric, read_ms - CLOCK_SKEW_MS, target)
    return f"{name}@{alias} -> version {candidate.version} ({comparison.words})"


def _settle(name: str, alias: str, metric: str, since_ms: int, target: str) -> None:
    """Sweeps that moved `alias` at the same moment each compared with the holder they read, and
    the last to write wins: of the versions it was moved to since `since_ms`, the best (on the
    same test data) takes it back. Each sweep looks after its own write, so one sees the other."""
    holder = best = alias_version(name, alias)
    for move in alias_history(name):
        if move.alias == alias and move.ms >= since_ms and move.after != str(best.version):
            other = get_version(name, int(move.after))
            if compare(other, best, alias, metric).refusal is None:
                best = other
    if str(best.version) != str(holder.version):
        set_alias(name, alias, best.version, f"the best of the moves made at the same moment ({metric})", target)


def compare(candidate, holder, alias: str, metric: str) -> Comparison:
    """`candidate` against the alias's holder on `metric`, if the two were measured on the same
    test data (`comparability`)."""
    mine = candidate.tags.get(metric)
    if mine is None:
        return Comparison(
            f"{metric} not measured",
            f"has no {metric} tag: run `lora-study evaluate --model-uri models:/{candidate.name}/{candidate.version}` "
            "first",
        )
    if holder is None:
        return Comparison(f"{metric} {mine}; no version held @{alias} before", None)
    theirs = holder.tags.get(metric)
    if theirs is None:  # an unmeasured holder (moved there with --force): anything measured beats it
        return Comparison(f"{metric} {mine} vs version {holder.version}, unmeasured", None)
    words = f"{metric} {mine} vs {theirs} of version {holder.version}"
    mine_on, theirs_on = measured_on(candidate), measured_on(holder)
    if mine_on is None or theirs_on is None:
        unknown = candidate if mine_on is None else holder
        return Comparison(
            f"{words}, test data unknown",
            f"cannot be compared with @{alias} (version {holder.version}): the test data of version "
            f"{unknown.version} is not recorded (`lora-study evaluate --model-uri models:/{unknown.name}/"
            f"{unknown.version}` records it)",
        )
    apart = comparability.differences(mine_on, theirs_on)
    if apart:
        return Comparison(
            f"{words}, on other test data ({'; '.join(apart)})",
            f"was measured on other test data than @{alias} (version {holder.version}): {'; '.join(apart)}",
        )
    if float(mine) >= float(theirs):
        return Comparison(words, f"is not better than @{alias} (version {holder.version}): {words}")
    return Comparison(words, None)


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


def _move(name: str, version: str, alias: str, reason: str, compared: str, target: str) -> None:
    set_alias(name, alias, version, f"{reason}: {compared}", target)
    tag_version(
        name,
        version,
        {
            TAG_PROMOTED_ALIAS: alias,
            TAG_PROMOTED_BY: getpass.getuser(),
            TAG_PROMOTED_AT: _now(),
            TAG_PROMOTION_REASON: reason,
            TAG_PROMOTION_COMPARED: compared,
        },
    )


# --- the versions table ----------------------------------------------------------------------------


def versions_table(name: str) -> pd.DataFrame:
    """One row per version: aliases, base model, adapter shape, headline metrics, the key of the
    test data they were measured on (and what it is, in words), and the serving targets that can
    load it."""
    client = mlflow.MlflowClient()
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as error:
        raise UserInputError(f"{name}: {error.message}") from None
    rows = []
    for mv in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)):
        params = client.get_run(mv.run_id).data.params if mv.run_id else {}
        rows.append(
            {
                "version": int(mv.version),
                "aliases": ",".join(sorted(a for a, v in aliases.items() if str(v) == str(mv.version))),
                TAG_BASE_MODEL: mv.tags.get(TAG_BASE_MODEL, params.get(PARAM_BASE_MODEL, "")),
                **{column: params.get(column, "") for column in VERSION_COLUMNS},
                **{metric: mv.tags.get(metric, "") for metric in VERSION_METRIC_TAGS},
                COLUMN_TEST_DATA: basis.key if (basis := measured_on(mv)) else "",
                COLUMN_TEST_DATA_DESCRIPTION: basis.describe() if basis else "",
                TAG_SERVES_ON: mv.tags.get(TAG_SERVES_ON, ""),
            }
        )
    return pd.DataFrame(rows)


# --- the description ------------------------------------------------------------------------------


def version_description(mv, run) -> str:
    """A version in Markdown, as its registry page shows it: what it is, how it measured against
    its base, what it forgets, and the run (and study report) it came from."""
    params = {key: param_value(value) for key, value in run.data.params.items()} if run else {}
    metrics = {**(run.data.metrics if run else {}), **{k: float(v) for k, v in mv.tags.items() if _number(v)}}
    parts = [_what(mv.tags, params), _measured(mv, metrics), _serving(mv.tags)]
    if METRIC_FORGETTING_KL in metrics and METRIC_FORGETTING_LOSS_DELTA in metrics:
        parts.append(
            f"Forgetting: KL(base || adapter) {metrics[METRIC_FORGETTING_KL]:.4g} nats per token; loss on text "
            f"outside the training data {metrics[METRIC_FORGETTING_LOSS_DELTA]:+.4g}."
        )
    if run:
        parts.append(_source(mv.tags, run))
    return "\n\n".join(parts)


def _what(tags: dict, params: dict) -> str:
    base = tags.get(TAG_BASE_MODEL) or params.get(PARAM_BASE_MODEL, "its base")
    if TAG_MERGED_FROM in tags:
        return f"The base model `{base}` with the adapter `{tags[TAG_MERGED_FROM]}` merged into its weights."
    if PARAM_RANK not in params:
        return f"A model on `{base}`."
    targets = params.get(PARAM_TARGET_MODULES)
    shape = f"rank {params[PARAM_RANK]}, alpha {params.get(PARAM_ALPHA)}, target modules `{targets}`"
    if PARAM_LEARNING_RATE in params:
        shape += f", learning rate {float(params[PARAM_LEARNING_RATE]):.3g}"
    if params.get(PARAM_QUANTIZATION, "none") != "none":
        shape += f", base quantized {params[PARAM_QUANTIZATION]}"
    group = f" It was trained on the group `{tags[TAG_GROUP]}` of its data." if TAG_GROUP in tags else ""
    return f"A LoRA adapter on `{base}`: {shape}.{group}"


def _measured(mv, metrics: dict) -> str:
    if METRIC_TEST_PERPLEXITY not in metrics:
        return f"Not measured on the test split yet: `lora-study evaluate --model-uri models:/{mv.name}/{mv.version}`."
    # 6 significant digits, as the version's tags hold them: no digit the tags do not have
    text = f"Test perplexity {metrics[METRIC_TEST_PERPLEXITY]:.6g}"
    if TAG_TEST_PERPLEXITY_MEAN in mv.tags:
        text = (
            f"Test perplexity {float(mv.tags[TAG_TEST_PERPLEXITY_MEAN]):.6g} +- "
            f"{float(mv.tags[TAG_TEST_PERPLEXITY_STD]):.3g} over {mv.tags[TAG_TEST_PERPLEXITY_N]} seeds "
            f"(this seed's {metrics[METRIC_TEST_PERPLEXITY]:.6g})"
        )
    if METRIC_BASE_TEST_PERPLEXITY in metrics:
        text += f", against the base's {metrics[METRIC_BASE_TEST_PERPLEXITY]:.6g}"
        if METRIC_PERPLEXITY_IMPROVEMENT_PCT in metrics:
            text += f" ({metrics[METRIC_PERPLEXITY_IMPROVEMENT_PCT]:.1f}% better)"
    basis = measured_on(mv)
    if basis is not None:
        text += f", on the test data `{basis.key}`: {basis.describe()}"
    return text + "."


def _serving(tags: dict) -> str:
    """Which servers load it, and why the others do not."""
    manifest = servability.Manifest.from_tags(tags)
    text = f"Serves on: {tags.get(TAG_SERVES_ON) or servability.DEFAULT_TARGET}."
    for target in servability.TARGETS:
        reasons = servability.refusals(manifest, target)
        needs = servability.requirements(manifest, target)
        if reasons:
            text += f" Not on {target}: {'; '.join(reasons)}."
        elif needs:
            text += f" On {target}, with {'; '.join(needs)}."
    return text


def _source(tags: dict, run) -> str:
    """Links into the MLflow UI (relative: they work wherever it is served)."""
    experiment = run.info.experiment_id
    text = f"Logged by the run [{run.info.run_name}]({ui_run_link(experiment, run.info.run_id)})"
    if TAG_CONFIG_TRIAL in tags:
        text += f": the configuration of trial {tags[TAG_CONFIG_TRIAL]} again, with seed {tags.get(TAG_SEED)},"
    if TAG_STUDY in tags:
        text += f" as trial {tags.get(TAG_TRIAL_NUMBER)} of the study `{tags[TAG_STUDY]}`"
    parent = run.data.tags.get(TAG_MLFLOW_PARENT_RUN)
    if parent:
        text += f"; the study's answer is [its report]({report_link(experiment, parent)})"
    return text + "."


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
