"""`inspect`: what an adapter learned, layer by layer, read from its weights.

    lora-study inspect models:/lora-study-smollm2-135m@champion --compare models:/lora-study-smollm2-135m/1

The procedure, top to bottom: resolve the adapter (and `--compare`'s) -> load each onto its
base, unquantized, as `merge` does (the update is read, not run) -> per adapted module,
the update dW = scale * B @ A through its r x r factorisation (`lora_study.updates`): its norm,
relative to the frozen weight's, its singular values, effective rank and 90%-energy rank, and
with `--intruders` its intruder dimensions -> with `--compare`, per module, the subspace
similarity of the two updates -> log a run with the summary figures, the tables and heatmaps by
layer and module, and say the headline in a few lines.
"""

import dataclasses

import mlflow
import torch

from lora_study import adapters, console, plots, tracking, updates
from lora_study.config import InspectConfig
from lora_study.errors import UserInputError
from lora_study.names import (
    ARTIFACT_SIMILARITY,
    ARTIFACT_UPDATE_PLOT,
    ARTIFACT_UPDATES,
    COLUMN_EFFECTIVE_RANK,
    COLUMN_RANK,
    COLUMN_RELATIVE_NORM,
    COLUMN_SIMILARITY,
    METRIC_INTRUDERS,
    METRIC_SUBSPACE_SIMILARITY,
    METRIC_UPDATE_EFFECTIVE_RANK,
    METRIC_UPDATE_ENERGY_RANK,
    METRIC_UPDATE_RELATIVE_NORM_MAX,
    RUN_NAME_INSPECT,
    STAGE_INSPECT,
)

FIGURES = {  # column of the update table -> what its heatmap says
    COLUMN_RELATIVE_NORM: "||dW|| / ||W|| (Frobenius)",
    COLUMN_EFFECTIVE_RANK: "effective rank of dW",
}


def run_inspect(cfg: InspectConfig) -> str:
    """The `inspect` entry point; returns the MLflow run id. Bad input fails before the run."""
    source, model = _load(cfg.model_uri, "--model-uri")
    other = None
    if cfg.compare:
        compared, other = _load(cfg.compare, "--compare")
        _check_same_base(source, compared)
    top_k = cfg.intruder_top_k if cfg.intruders else 0
    table = updates.table(model, top_k, cfg.intruder_threshold)
    similarity = updates.similarity(model, other) if other is not None else None
    if similarity is not None and similarity.empty:
        raise UserInputError(f"--compare {cfg.compare}: it adapts none of the modules {cfg.model_uri} adapts")

    name = RUN_NAME_INSPECT.format(model_uri=cfg.model_uri)
    with tracking.stage_run(STAGE_INSPECT, name=name, **tracking.evaluated_model_tags(source)) as run:
        tracking.log_params(cfg.model_dump())
        figures = updates.summary(table)
        mlflow.log_table(table, ARTIFACT_UPDATES)
        for column, label in FIGURES.items():
            _log_figure(plots.by_layer(table, column, label), column)
        if similarity is not None:
            figures[METRIC_SUBSPACE_SIMILARITY] = float(similarity[COLUMN_SIMILARITY].mean())
            mlflow.log_table(similarity, ARTIFACT_SIMILARITY)
            label = f"subspace similarity with {cfg.compare}"
            _log_figure(plots.by_layer(similarity, COLUMN_SIMILARITY, label), COLUMN_SIMILARITY)
        mlflow.log_metrics(figures)
    for line in _headline(table, figures, cfg):
        console.say(line)
    return run.info.run_id


def _load(uri: str, flag: str):
    """The adapter `uri` names, and it on its base, unquantized (a QLoRA adapter's frozen weights
    as they were before quantization), its weights in the dtype they were trained beside."""
    source = adapters.resolve(uri, flag)
    if not source.is_adapter:
        raise UserInputError(f"{flag} {uri}: a base model has no update to inspect; pass an adapter")
    source = dataclasses.replace(source, reference=dataclasses.replace(source.reference, quantization="none"))
    return source, adapters.load(source, torch.device("cpu"), None).model


def _check_same_base(source, compared) -> None:
    """Directions of two updates compare only in the weights of one base."""
    mine, theirs = source.reference, compared.reference
    if (mine.name, mine.sha256, mine.revision) != (theirs.name, theirs.sha256, theirs.revision):
        raise UserInputError(
            f"--compare {compared.uri}: trained on `{theirs.name}` ({theirs.sha256 or theirs.revision}), not on "
            f"the base of {source.uri}, `{mine.name}` ({mine.sha256 or mine.revision}); compare adapters of one base"
        )


def _log_figure(figure, column: str) -> None:
    if figure is not None:  # None: the model's blocks are not numbered, there is no layer axis
        mlflow.log_figure(figure, ARTIFACT_UPDATE_PLOT.format(name=column))


def _headline(table, figures: dict, cfg: InspectConfig) -> list[str]:
    ranks = sorted(set(table[COLUMN_RANK]))
    energy = figures[METRIC_UPDATE_ENERGY_RANK]
    lines = [
        f"{len(table)} modules, rank {', '.join(map(str, ranks))}: the median update puts 90% of its energy in "
        f"{energy:g} direction(s) (effective rank {figures[METRIC_UPDATE_EFFECTIVE_RANK]:.1f})",
        f"largest update: {figures[METRIC_UPDATE_RELATIVE_NORM_MAX]:.3g} of its weight's norm, in "
        f"{table.loc[table[COLUMN_RELATIVE_NORM].idxmax(), 'module']}",
    ]
    if METRIC_SUBSPACE_SIMILARITY in figures:
        lines.append(
            f"subspace similarity with {cfg.compare}: {figures[METRIC_SUBSPACE_SIMILARITY]:.3f} (mean over modules)"
        )
    if cfg.intruders:
        lines.append(f"intruder dimensions: {int(figures[METRIC_INTRUDERS])} over {len(table)} modules")
    return lines
