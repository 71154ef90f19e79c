"""`train`: fine-tune one LoRA adapter, or one per group, and log everything a LoRA study compares.

    lora-study train --max-steps 30 --rank 16 --target-modules qkvo
    lora-study train --dataset topics.jsonl --group-by topic --max-steps 30

The recipe, top to bottom: check the settings against the base model and load the base and the
prepared data (bad input fails here, before any run) -> start the run -> log the inputs -> train
(the loop logs per-step and final metrics) -> measure forgetting on text outside the training
data -> log the adapter as the MLflow model `adapter`.

With --group-by, on one loaded base: each group is split by document on its own (no validation
or test document of any group in any group's training rows) -> the parent run of these same
inputs is continued, or started (a rerun trains only the groups not finished) -> per group, a
nested run does the recipe above and also measures the adapter against the base on every
group's test split; the base is itself again before the next group -> every group's adapter is
registered with the alias `group-<key>` -> the cross-group matrix goes on the parent, as a
table and a heatmap.
"""

import dataclasses
import hashlib
import json
import os
import time

import mlflow
import torch

from lora_study import (
    console,
    early_stopping,
    evaluation,
    forgetting,
    lora,
    parent_runs,
    plots,
    processes,
    registry,
    tracking,
    training,
)
from lora_study.config import AdapterConfig, BaseModelConfig, DataConfig, GroupsConfig, TrainConfig, flag
from lora_study.data import groups
from lora_study.errors import UserInputError
from lora_study.losses import mean_loss, perplexity
from lora_study.names import (
    ARTIFACT_ADAPTER,
    ARTIFACT_CROSS_GROUP,
    ARTIFACT_CROSS_GROUP_PLOT,
    ARTIFACT_GROUP_ROW,
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_BEST_STEP,
    METRIC_FAILED_GROUPS,
    METRIC_OTHER_GROUPS_IMPROVEMENT_PCT,
    METRIC_OWN_GROUP_IMPROVEMENT_PCT,
    METRIC_SKIPPED_GROUPS,
    METRIC_STOPPED_EARLY,
    METRIC_TEST_PERPLEXITY,
    METRIC_TRAINED_GROUPS,
    PARAM_GROUP,
    PARAM_STEPS,
    RUN_NAME_GROUP,
    RUN_NAME_TRAIN,
    RUN_NAME_TRAIN_GROUPS,
    STAGE_TRAIN,
    STAGE_TRAIN_GROUPS,
    STAGE_TRAIN_GROUPS_INVOCATION,
    TAG_BASE_MODEL,
    TAG_GROUP,
    TAG_GROUP_KEY,
    TAG_GROUPS_INPUTS,
)
from lora_study.registry import comparability

TEST_BATCH_SIZE = 8  # rows per forward pass for test losses, which batching does not change


def run_train(
    data: DataConfig,
    base: BaseModelConfig,
    adapter: AdapterConfig,
    train: TrainConfig,
    choice: GroupsConfig | None = None,
) -> str:
    """The `train` entry point; returns the MLflow run id (with --group-by, the parent's)."""
    choice = choice or GroupsConfig()
    if processes.world_size() > 1 and data.group_by:
        raise UserInputError("--group-by trains its groups one after another in one process: run it without torchrun")
    if data.group_by:
        return _train_groups(data, base, adapter, train, choice)
    given = [flag(name) for name, value in choice.model_dump().items() if value]
    if given:
        raise UserInputError(f"{', '.join(given)}: only with --group-by COLUMN (one adapter per group)")
    torch.set_num_threads(processes.threads())
    s = training.setup(data, base, adapter, train)
    general_text = None
    if processes.is_main():  # with several processes, the main one measures, logs and saves
        general_text = forgetting.load(train.forgetting_data, s.ref, s.tokenizer, s.model, data.seq_len, data.dataset)

    label = tracking.adapter_label(adapter.rank, adapter.target_modules, quantization=adapter.quantization)
    with tracking.stage_run(STAGE_TRAIN, log_system_metrics=True, name=RUN_NAME_TRAIN.format(adapter=label)) as run:
        training.log_inputs(s, data, base)
        result = training.fine_tune(s, adapter, train)
        kept = early_stopping.kept_words(
            result.adapter_step, result.metrics[METRIC_STOPPED_EARLY], result.planned_steps
        )
        if kept:
            console.say(f"train: {kept}")
        if general_text:
            forgot = forgetting.evaluate(result.model, general_text, s.tokenizer.pad_token_id, s.dtype)
            tracking.log_forgetting(forgot, general_text.description)
        if processes.is_main():
            info = training.log_trained_adapter(s, result, adapter, train)
            print(f"adapter {info.name}: {info.model_uri}")  # `runs:/<run id>/adapter` names it too
        tracking.flush()
    return run.info.run_id if run else None


# --- one adapter per group (--group-by) -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What every group is trained with."""

    data: DataConfig
    base: BaseModelConfig
    adapter: AdapterConfig
    train: TrainConfig
    label: str  # the adapter's configuration in a run name: `r16 qkvo`


@dataclasses.dataclass
class Measured:
    """What every group's run is measured against, measured once: the base on each test split."""

    test_rows: dict[str, list[dict]]  # group key -> its test rows
    base_losses: dict[str, float]  # group key -> the base's test loss on them
    general_text: forgetting.ForgettingSet | None
    base_distribution: forgetting.BaseDistribution | None = None


def _train_groups(
    data_cfg: DataConfig, base: BaseModelConfig, adapter: AdapterConfig, train: TrainConfig, choice: GroupsConfig
) -> str:
    """One adapter per group, each in a nested run; returns the parent run's id."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    name = choice.registered_model or f"lora-study-{groups.key_of(base.base_model)}-{groups.key_of(data_cfg.group_by)}"
    registry.check_name(name, "--registered-model")
    s = training.setup(data_cfg, base, adapter, train)
    training.prepare_base(s, adapter)  # the base row is measured on the base the adapters train on
    prepared = s.prepared  # checked by `setup`: prepared with this --group-by
    with_data = [key for key, group in prepared.groups.items() if "skipped" not in group]
    chosen = groups.select(prepared.groups, choice.chosen, data_cfg.group_by)
    inputs = _inputs_digest(s, adapter, train, data_cfg)
    invocation = os.environ.pop("MLFLOW_RUN_ID", None)  # `mlflow run`'s: nested runs must not take it up
    parent_id = _parent_to_continue(inputs) or invocation
    label = tracking.adapter_label(adapter.rank, adapter.target_modules, quantization=adapter.quantization)
    recipe = Recipe(data_cfg, base, adapter, train, label)
    test_rows = {key: prepared.group(key).rows("test") for key in with_data}
    measured = Measured(
        test_rows,
        base_losses={key: _test_loss(s, s.model, rows) for key, rows in test_rows.items()},
        general_text=forgetting.load(
            train.forgetting_data, s.ref, s.tokenizer, s.model, data_cfg.seq_len, data_cfg.dataset
        ),
    )

    run_name = RUN_NAME_TRAIN_GROUPS.format(adapter=label, group_by=data_cfg.group_by)
    with (
        tracking.stage_run(
            STAGE_TRAIN_GROUPS, run_id=parent_id, name=run_name, **{TAG_GROUPS_INPUTS: inputs}
        ) as parent,
        parent_runs.heartbeat(parent.info.run_id, parent_runs.HEARTBEAT_S),
    ):
        if invocation and invocation != parent.info.run_id:
            parent_runs.mark_invocation(invocation, parent.info.run_id, STAGE_TRAIN_GROUPS_INVOCATION)
        training.log_inputs(s, data_cfg, base)
        tracking.log_params({**adapter.model_dump(), **train.model_dump()})
        finished = _finished_groups(parent.info.run_id)
        console.say(
            f"groups {data_cfg.group_by}: {len(with_data)} with data enough, {len(prepared.groups) - len(with_data)} "
            f"without; {len(chosen)} chosen, {len([k for k in chosen if k in finished])} trained before"
        )
        versions, failed = {}, {}
        progress = console.progress(len(chosen), "groups", "group")
        for number, key in enumerate(chosen, start=1):
            group = prepared.groups[key]
            where = f"group {group['value']}  {number}/{len(chosen)}"
            if "skipped" in group:
                console.say(f"{where}  skipped: {group['skipped']}")
            elif key in finished:
                console.say(f"{where}  trained before (run {finished[key].info.run_id})")
            else:
                started = time.perf_counter()
                try:
                    finished[key] = _train_group(s, key, group["value"], recipe, measured)
                except Exception as error:  # its run ended FAILED with the reason; the other groups go on
                    failed[key] = _one_line(error)
                    console.say(f"{where}  failed: {failed[key]}")
                else:
                    console.say(f"{where}  {_trained_words(finished[key])}  {time.perf_counter() - started:.0f} s")
            if key in finished:  # registered as soon as trained: a later failure leaves it served
                measured_on = comparability.Basis.of(prepared.group(key).meta, s.ref, adapter.quantization)
                held = _registered(name, finished[key], group["value"], key, base, measured_on)
                if held is not None:
                    versions[key] = held
            progress.update(1)
        progress.close()
        _log_cross_group(finished, measured, data_cfg.group_by)
        mlflow.log_metrics(
            {
                METRIC_TRAINED_GROUPS: len(finished),
                METRIC_SKIPPED_GROUPS: len(prepared.groups) - len(with_data),
                METRIC_FAILED_GROUPS: len(failed),
            }
        )

    _print_where_to_look(name, versions)
    if failed:
        raise UserInputError(
            *[f"group {prepared.groups[key]['value']}: {reason}" for key, reason in failed.items()],
            f"{len(failed)} group(s) failed (their runs say why); the others are trained and registered: run the "
            "command again to retry the failed ones, or leave them out with --groups",
        )
    return parent.info.run_id


def _one_line(error: Exception) -> str:
    problems = getattr(error, "problems", None) or [f"{type(error).__name__}: {error}"]
    return "; ".join(problems).replace("\n", " ")


def _inputs_digest(s: training.Setup, adapter: AdapterConfig, train: TrainConfig, data_cfg: DataConfig) -> str:
    """What a group's adapter depends on: the same digest, the same adapters (a rerun continues)."""
    inputs = {
        "data": s.prepared.meta.digest,
        "base": s.ref.sha256 or s.ref.name,
        "revision": s.ref.revision or "",
        "seed": data_cfg.split_seed,  # the split's; the training seed is in `train`
        "adapter": adapter.model_dump(),
        # a training seed of 0 is what every run before the option trained with: the same digest
        "train": train.model_dump(exclude={"data", *(["training_seed"] if train.training_seed == 0 else [])}),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _parent_to_continue(inputs: str) -> str | None:
    """The parent run an earlier `train --group-by` of these inputs made; one whose process is
    alive (it beat lately) is refused, one left RUNNING by a process that died is continued."""
    run = parent_runs.groups_run(inputs)
    if run is None:
        return None
    age = parent_runs.heartbeat_age_s(run)
    if run.info.status == "RUNNING" and age is not None and age <= 2 * parent_runs.HEARTBEAT_S:
        raise UserInputError(
            f"run {run.info.run_id} is training these groups now (it said so {age:.0f} s ago); wait for it to end, "
            "or stop it"
        )
    for child in tracking.child_runs(run.info.run_id):
        if child.info.status == "RUNNING":
            parent_runs.end_dead_run(child.info.run_id, "its process died: this group is trained again")
    return run.info.run_id


def _finished_groups(parent_run_id: str) -> dict:
    """group key -> its FINISHED run under the parent (the latest, should there be two)."""
    return {
        run.data.tags[TAG_GROUP_KEY]: run
        for run in tracking.child_runs(parent_run_id)
        if run.info.status == "FINISHED" and TAG_GROUP_KEY in run.data.tags
    }


def _test_loss(s: training.Setup, model, rows: list[dict]) -> float:
    return mean_loss(model, rows, TEST_BATCH_SIZE, s.tokenizer.pad_token_id, s.dtype)


def _trained_words(run) -> str:
    """A group's trained adapter, measured: `test ppl 12.345 (base 15.678)`, and what it kept."""
    metrics = run.data.metrics
    words = f"test ppl {metrics[METRIC_TEST_PERPLEXITY]:.3f} (base {metrics[METRIC_BASE_TEST_PERPLEXITY]:.3f})"
    kept = early_stopping.kept_words(
        int(metrics[METRIC_BEST_STEP]), int(metrics[METRIC_STOPPED_EARLY]), int(run.data.params[PARAM_STEPS])
    )
    return f"{words}; {kept}" if kept else words


def _train_group(s: training.Setup, key: str, value: str, recipe: Recipe, measured: Measured):
    """One group's nested run: train, measure on every group's test split, log the adapter. The
    base is itself again afterwards, whatever happened."""
    own = dataclasses.replace(s, prepared=s.prepared.group(key))
    tags = {TAG_GROUP: value, TAG_GROUP_KEY: key}
    name = RUN_NAME_GROUP.format(group=value, adapter=recipe.label)
    try:
        with tracking.stage_run(STAGE_TRAIN, nested=True, name=name, **tags) as run:
            training.log_inputs(own, recipe.data, recipe.base)
            tracking.log_params({PARAM_GROUP: value})
            result = training.fine_tune(own, recipe.adapter, recipe.train)
            if measured.general_text:
                text, pad_id = measured.general_text, s.tokenizer.pad_token_id
                if measured.base_distribution is None:
                    measured.base_distribution = forgetting.base_distribution(result.model, text.rows, pad_id, s.dtype)
                forgot = forgetting.evaluate(result.model, text, pad_id, s.dtype, measured.base_distribution)
                tracking.log_forgetting(forgot, text.description)
            row = {other: _test_loss(s, result.model, rows) for other, rows in measured.test_rows.items()}
            tracking.log_metrics(evaluation.perplexity_metrics(row[key], measured.base_losses[key]))
            mlflow.log_dict({other: perplexity(loss) for other, loss in row.items()}, ARTIFACT_GROUP_ROW)
            training.log_trained_adapter(own, result, recipe.adapter, recipe.train)
            tracking.flush()
    finally:
        s.model = lora.detach(own.model)  # the next group starts from the base
        if recipe.train.gradient_checkpointing:
            s.model.gradient_checkpointing_disable()
    return mlflow.get_run(run.info.run_id)


def _registered(name: str, run, value: str, key: str, base: BaseModelConfig, measured_on) -> str | None:
    """The group's adapter as a version of `name`, registered once per run; its test perplexity was
    measured on its own group's test split (`measured_on`). The alias `group-<key>` moves to it only
    forward, as `challenger` does: if it beats the holder on the same test split (`promote --force`
    overrides). The version the alias holds afterwards, if any."""
    version = registry.run_version(name, run.info.run_id)
    if version is None:
        measured = {key: run.data.metrics[key] for key in (METRIC_TEST_PERPLEXITY, METRIC_BASE_TEST_PERPLEXITY)}
        tags = {TAG_GROUP: value, TAG_BASE_MODEL: base.base_model}
        uri = f"runs:/{run.info.run_id}/{ARTIFACT_ADAPTER}"
        version = registry.register_measured(uri, name, measured, measured_on, tags)
    alias = groups.alias(key)
    console.say(registry.advance(name, version.version, alias, f"train --group-by: group {value}"))
    held = registry.alias_version(name, alias)
    return held.version if held is not None else None


def _log_cross_group(finished: dict, measured: Measured, group_by: str) -> None:
    """The matrix of every finished group's adapter on every group's test split, with the base's
    row; its mean improvement on the adapters' own groups and on the others."""
    if not finished:
        return
    rows = {
        key: mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{ARTIFACT_GROUP_ROW}")
        for key, run in finished.items()
    }
    base = {key: perplexity(loss) for key, loss in measured.base_losses.items()}
    matrix = groups.cross_matrix(rows, base)
    tracking.log_table_replacing(matrix, ARTIFACT_CROSS_GROUP)
    improvement = groups.improvement_pct(matrix)
    mlflow.log_figure(plots.cross_group_improvement(improvement, group_by), ARTIFACT_CROSS_GROUP_PLOT)
    own, other = groups.own_and_other(improvement)
    mlflow.log_metric(METRIC_OWN_GROUP_IMPROVEMENT_PCT, own)
    line = f"cross-group: the adapters are {own:.1f}% better than the base on their own group's test split"
    if other is not None:
        mlflow.log_metric(METRIC_OTHER_GROUPS_IMPROVEMENT_PCT, other)
        line += f", {other:.1f}% on the other groups'"
    console.say(line)


def _print_where_to_look(name: str, versions: dict[str, str]) -> None:
    if not versions:
        return
    numbers = ", ".join(f"{groups.alias(key)} (version {version})" for key, version in versions.items())
    print(f"registered {name}: {numbers}")
    print(f"serve them all: lora-study serve --adapters 'models:/{name}@{groups.ALIAS_PREFIX}*'")
