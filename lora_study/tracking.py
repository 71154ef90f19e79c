"""The run context and logging: the experiment, a stage's or trial's run, links into the UI, params,
metrics, datasets, and reading runs back.

Components log through these functions; the modules that call MLflow directly are listed in
`tests/test_architecture.py` (`MLFLOW_CALLERS`). The names logged are in `names`; a study's parent
run (its election, heartbeats, dead runs) is `parent_runs`'s.
"""

import json
import os
import posixpath
import shlex
import tempfile
from contextlib import contextmanager

import mlflow
from mlflow.exceptions import MlflowException

from lora_study import processes
from lora_study.errors import UserInputError
from lora_study.names import (
    ARTIFACT_REPORT,
    EXPERIMENT_KIND_TRAINING,
    EXPERIMENT_NAME,
    INPUT_CONTEXT_TRAINING,
    PARAM_FORGETTING_SET,
    PARAM_SPLIT_SEED,
    PARAM_SPLIT_SEED_BEFORE,
    REPORT_HTML,
    STAGE_TRIAL,
    TAG_ERROR,
    TAG_EVALUATED_MODEL_URI,
    TAG_EVALUATED_REGISTERED_MODEL,
    TAG_EVALUATED_RUN_ID,
    TAG_EVALUATED_VERSION,
    TAG_MLFLOW_EXPERIMENT_KIND,
    TAG_MLFLOW_PARENT_RUN,
    TAG_STAGE,
    TAG_TRIAL_STATE,
    UI_TRAINING_VIEW,
)

# --- the experiment and its runs ----------------------------------------------------------------


def use_experiment(name: str | None = None) -> str:
    """Point this process at the experiment its runs go to, and return its id: `name` (the
    `--experiment-name` flag), else the one `mlflow run` or MLFLOW_EXPERIMENT_NAME/_ID names,
    else `lora-study`. It is tagged as model training unless it has a kind already."""
    chosen_by_mlflow = any(
        os.environ.get(key) for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")
    )
    if name or not chosen_by_mlflow:
        experiment_id = _set_experiment(name or EXPERIMENT_NAME)
    else:
        experiment_id = mlflow.tracking.fluent._get_experiment_id()  # MLflow's own resolution (no public API)
    client = mlflow.MlflowClient()
    if TAG_MLFLOW_EXPERIMENT_KIND not in client.get_experiment(experiment_id).tags:
        try:
            client.set_experiment_tag(experiment_id, TAG_MLFLOW_EXPERIMENT_KIND, EXPERIMENT_KIND_TRAINING)
        except MlflowException:
            # machines starting together each add the tag; a store may refuse the second insert
            if TAG_MLFLOW_EXPERIMENT_KIND not in client.get_experiment(experiment_id).tags:
                raise
    return experiment_id


def _set_experiment(name: str) -> str:
    """Make `name` the active experiment, created if need be; a deleted one is one clear line."""
    found = mlflow.MlflowClient().get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage == "deleted":
        raise UserInputError(
            f"the experiment `{name}` is deleted: restore it with `mlflow experiments restore --experiment-id "
            f"{found.experiment_id}`, or pass --experiment-name with another name"
        )
    experiment = mlflow.set_experiment(name)
    # Should another process create it at the same moment, MLflow 3.17 returns it without making
    # it active (and runs would go to `Default`): make it so by its id.
    return mlflow.set_experiment(experiment_id=experiment.experiment_id).experiment_id


def adapter_label(
    rank: int, target_modules: str, learning_rate: float | None = None, quantization: str = "none"
) -> str:
    """An adapter's configuration in a few characters, for run names and terminal lines: `r32 qkvo lr1.9e-3`."""
    label = f"r{rank} {target_modules}"
    if learning_rate is not None:
        label += f" lr{short_number(learning_rate)}"
    return label if quantization == "none" else f"{label} {quantization}"


def short_number(value: float) -> str:
    """2 significant digits, exponent unpadded: 1.9e-3, 0.02 -> 2.0e-2."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


@contextmanager
def stage_run(
    stage: str,
    log_system_metrics: bool = False,
    run_id: str | None = None,
    name: str | None = None,
    nested: bool = False,
    **tags: str,
):
    """Start the stage's run named `name` (or continue, and rename, the one `mlflow run` made,
    or `run_id`), nested under the active run if `nested`; never leave it RUNNING.

    An exception ends the run FAILED and Ctrl-C ends it KILLED, each with the reason as a tag.
    """
    if not processes.is_main():  # one of several training processes: the main one logs
        yield None
        return
    with mlflow.start_run(
        run_id, run_name=name, nested=nested, tags={TAG_STAGE: stage, **tags}, log_system_metrics=log_system_metrics
    ) as run:
        if TAG_ERROR in run.data.tags:  # a run continued: why it ended before no longer holds
            mlflow.MlflowClient().delete_tag(run.info.run_id, TAG_ERROR)
        try:
            yield run
        except (KeyboardInterrupt, Exception) as error:
            _end_on(error)
            raise


@contextmanager
def trial_run(name: str, experiment_id: str, parent_run_id: str, tags: dict, pruned: type[Exception]):
    """A trial's run, nested under its sweep; yields its id.

    It ends with `TAG_TRIAL_STATE`: COMPLETE; PRUNED when `pruned` is raised (the run itself
    finished); FAIL on any other exception (the run FAILED, or KILLED on Ctrl-C, with the reason).
    """
    run = mlflow.start_run(
        run_name=name,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        nested=mlflow.active_run() is not None,
        tags={TAG_STAGE: STAGE_TRIAL, **tags},
        log_system_metrics=False,
    )
    try:
        yield run.info.run_id
    except pruned:
        mlflow.set_tag(TAG_TRIAL_STATE, "PRUNED")
        mlflow.end_run("FINISHED")
        raise
    except (KeyboardInterrupt, Exception) as error:
        mlflow.set_tag(TAG_TRIAL_STATE, "FAIL")
        _end_on(error)
        raise
    mlflow.set_tag(TAG_TRIAL_STATE, "COMPLETE")
    mlflow.end_run("FINISHED")


def _end_on(error: BaseException) -> None:
    """End the active run KILLED on Ctrl-C, else FAILED, with the reason as a tag."""
    if isinstance(error, KeyboardInterrupt):
        mlflow.set_tag(TAG_ERROR, "interrupted (Ctrl-C)")
        mlflow.end_run("KILLED")
    else:
        mlflow.set_tag(TAG_ERROR, f"{type(error).__name__}: {error}"[:5000])
        mlflow.end_run("FAILED")


def evaluated_model_tags(source) -> dict[str, str]:
    """The tags of a run that measures a model (an `adapters.ModelSource`): its URI, the run that
    logged it and its registered version."""
    tags = {TAG_EVALUATED_MODEL_URI: source.uri}
    if source.run_id:
        tags[TAG_EVALUATED_RUN_ID] = source.run_id
    if source.registered_model:
        tags[TAG_EVALUATED_REGISTERED_MODEL] = source.registered_model
        tags[TAG_EVALUATED_VERSION] = source.version
    return tags


def log_table_replacing(frame, artifact_file: str) -> None:
    """Log `frame` as the active run's table `artifact_file`, replacing the one an earlier sweep
    of the study logged there (`mlflow.log_table` would append to it)."""
    run_id = mlflow.active_run().info.run_id
    folder = posixpath.dirname(artifact_file) or None
    if artifact_file not in [f.path for f in mlflow.MlflowClient().list_artifacts(run_id, folder)]:
        mlflow.log_table(frame, artifact_file)  # also tags the run so the UI shows it as a table
        return
    with tempfile.TemporaryDirectory() as temporary:
        path = os.path.join(temporary, posixpath.basename(artifact_file))
        frame.to_json(path, orient="split", index=False, date_format="iso")  # as log_table writes it
        mlflow.log_artifact(path, folder)


def child_runs(parent_run_id: str) -> list:
    """The runs nested under a run, oldest first."""
    experiment_id = mlflow.MlflowClient().get_run(parent_run_id).info.experiment_id
    found = mlflow.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_MLFLOW_PARENT_RUN}` = '{parent_run_id}'", output_format="list"
    )
    return sorted(found, key=lambda run: (run.info.start_time, run.info.run_id))


# --- links into the MLflow UI: relative, so they work wherever it is served ----------------------


def ui_run_link(experiment_id: str, run_id: str, artifact: str = "") -> str:
    """The UI page of a run, or of one of its artifacts (MLflow 3.17's routes), on the
    model-training view: a run page opens on the GenAI view too unless its address says so."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    return f"{page}/artifacts/{artifact}?{UI_TRAINING_VIEW}" if artifact else f"{page}?{UI_TRAINING_VIEW}"


def ui_experiment_link(experiment_id: str) -> str:
    """The UI page of an experiment, on its model-training view (runs, not traces)."""
    return f"#/experiments/{experiment_id}?{UI_TRAINING_VIEW}"


def ui_version_link(name: str, version: str) -> str:
    """A registered version's page, its menu that of model training (not prompts and gateways)."""
    return f"#/models/{name}/versions/{version}?{UI_TRAINING_VIEW}"


def report_link(experiment_id: str, parent_run_id: str) -> str:
    """The UI page of a study's report, on its parent run."""
    return ui_run_link(experiment_id, parent_run_id, f"{ARTIFACT_REPORT}/{REPORT_HTML}")


# --- logging into the active run ---------------------------------------------------------------


def log_params(params: dict) -> None:
    """Log params the run does not hold yet.

    `mlflow run` logs the MLproject parameters itself, as typed (`false`, `256`); logging the
    parsed values again (`False`) would be refused as a change.
    """
    if not processes.is_main():
        return
    run = mlflow.active_run()
    held = mlflow.get_run(run.info.run_id).data.params
    mlflow.log_params({key: _param_text(value) for key, value in params.items() if key not in held})


def log_forgetting(metrics: dict[str, float], measured_on: str) -> None:
    """A trained adapter's forgetting metrics, and what text they were measured on."""
    log_params({PARAM_FORGETTING_SET: measured_on})
    mlflow.log_metrics(metrics)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Metrics of the active run; with a step, logged asynchronously (the training loop's)."""
    if processes.is_main():
        mlflow.log_metrics(metrics, step=step, synchronous=step is None)


def set_tag(key: str, value: str) -> None:
    """A tag on the active run; a study's parent run is shared, hence `once_more_if_raced`."""
    if processes.is_main():
        once_more_if_raced(mlflow.set_tag, key, value)


# What the stores say when a unique constraint refused an insert: SQLite, PostgreSQL, MySQL.
_UNIQUE_VIOLATIONS = ("UNIQUE constraint failed", "UniqueViolation", "Duplicate entry")


def once_more_if_raced(write, *args):
    """`write(*args)` to something workers share (a study's parent run, a registered model, its
    versions). MLflow's SQL store reads, then inserts: of two processes adding the same key at one
    moment, the second is refused on a unique constraint. The key exists then, and writing it
    again updates it."""
    try:
        return write(*args)
    except MlflowException as error:
        if not any(words in str(error) for words in _UNIQUE_VIOLATIONS):
            raise
        return write(*args)


def flush() -> None:
    """Wait for asynchronously logged metrics to be written."""
    if processes.is_main():
        mlflow.flush_async_logging()


# --- reading back ----------------------------------------------------------------------------------


def run_params(run_id: str) -> dict[str, str]:
    """A run's params, as they were given (see `params_of`)."""
    return params_of(mlflow.MlflowClient().get_run(run_id))


def params_of(run) -> dict[str, str]:
    """A run's params, as they were given (see `param_value`), under today's names: a run logged
    before the split seed was named so holds it as `seed`."""
    params = {key: param_value(value) for key, value in run.data.params.items()}
    if PARAM_SPLIT_SEED not in params and PARAM_SPLIT_SEED_BEFORE in params:
        params[PARAM_SPLIT_SEED] = params[PARAM_SPLIT_SEED_BEFORE]
    return params


def param_value(text: str) -> str:
    """A param as it was given: `mlflow run` logs string parameters shell-quoted (`''` for empty)."""
    try:
        words = shlex.split(text)
    except ValueError:
        return text
    return words[0] if len(words) == 1 else text


def download(artifact_uri: str) -> str:
    """A local copy of an artifact (`runs:/<id>/path`, `models:/...`): its path."""
    return mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri)


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def set_tracking_uri(uri: str) -> None:
    """Point this process at a store: a spawned sweep worker, at its parent's."""
    mlflow.set_tracking_uri(uri)


def _param_text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


# --- datasets ----------------------------------------------------------------------------------


def dataset_source(kind: str, **where):
    """An MLflow dataset source: `local` (uri=path) or `hub` (path, split, revision), as
    `data.Documents.source` describes it."""
    if kind == "hub":
        from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

        return HuggingFaceDatasetSource(**where)
    # Built from JSON: resolving a plain path string makes MLflow warn that two of its own
    # source classes match it.
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json

    return get_dataset_source_from_json(json.dumps({"uri": str(where["uri"])}), source_type="local")


def log_training_rows(path: str, name: str, digest: str) -> None:
    """The packed rows a run trains on (the prepared folder `path`) as its MLflow dataset input,
    context `training`: the UI lists it on the run. The rows themselves stay in the cache."""
    from mlflow.data.meta_dataset import MetaDataset

    if not processes.is_main():
        return
    dataset = MetaDataset(dataset_source("local", uri=path), name=name, digest=digest[:16])
    mlflow.log_input(dataset, context=INPUT_CONTEXT_TRAINING)


def log_dataset_input(frame, source, name: str, digest: str, split: str) -> None:
    """One split's documents as an MLflow dataset input of the active run."""
    dataset = mlflow.data.from_pandas(frame, source=source, name=name, digest=digest)
    mlflow.log_input(dataset, context=split)
