"""A study's parent run, and the runs of processes that died.

Every sweep of a study continues one parent run: the first made, elected among sweeps that start
together. Each sweep process beats on its run (a tag with the time); a run whose process stopped
beating is ended by the next sweep, with the reason. A `train --group-by` continues its parent the
same way."""

import os
import sys
import threading
import time
from contextlib import contextmanager

import mlflow
from mlflow.entities import RunTag

from lora_study.names import (
    RUN_NAME_INVOCATION,
    RUN_NAME_SWEEP,
    STAGE_SWEEP,
    STAGE_SWEEP_INVOCATION,
    STAGE_TRAIN_GROUPS,
    TAG_ERROR,
    TAG_GROUPS_INPUTS,
    TAG_HEARTBEAT,
    TAG_MLFLOW_ENTRY_POINT,
    TAG_MLFLOW_PARENT_RUN,
    TAG_MLFLOW_PROJECT_ENV,
    TAG_PROPOSED_AT,
    TAG_STAGE,
    TAG_STUDY,
    TAG_STUDY_RUN,
    TAG_STUDY_STORAGE,
)

# A process (a sweep, or a trial's worker) that sends no heartbeat for 2 intervals is taken for dead.
HEARTBEAT_S = int(os.environ.get("LORA_STUDY_HEARTBEAT_S", "10"))
# How long the first sweeps of a study, started together, wait for each other's parent run
# proposal to land before they take the first one (one database write; seconds are plenty).
ELECTION_S = 2.0
# A sweep's process beats on its runs within seconds of starting (the `sweep` entry point before
# its heavy imports); a sweep run that has not beaten this long after it began is taken for dead.
ORPHAN_GRACE_S = 60.0


def study_run(study: str, storage: str):
    """The parent run of the study `study` in `storage` (the masked URL) in the experiment this
    process logs to: the first one made (by start time, then id), or None. Every sweep of a
    study continues it."""
    experiment_id = mlflow.tracking.fluent._get_experiment_id()  # where a new run would go (no public API)
    found = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_STUDY_STORAGE}` = '{storage}' "
        f"and tags.`{TAG_STAGE}` = '{STAGE_SWEEP}'",
        output_format="list",
    )
    return first_made(found)


def first_made(runs: list):
    """The run proposed first (by the time it was proposed, else its start time; then id), or
    None: the one every process agrees on. A run `mlflow run` made is proposed when its sweep
    starts, maybe minutes after the run began (an environment built first): its start time
    would let a late proposal win an election already settled."""
    return min(runs, key=lambda run: (proposed_at(run), run.info.run_id), default=None)


def proposed_at(run) -> float:
    """When the run was proposed as a study's parent (s since the epoch); its start for one made
    before proposals were tagged."""
    tagged = run.data.tags.get(TAG_PROPOSED_AT)
    return float(tagged) if tagged else run.info.start_time / 1000


def elect_study_run(study: str, storage: str, settle_s: float, candidate: str | None = None) -> str:
    """The parent run of a study that has none. Sweeps that start the study together (a machine
    each) each propose a candidate, wait `settle_s` for the others' to land, and all take the first
    made (`study_run`); a losing candidate becomes a pointer to the winner, ended FINISHED. The
    candidate is the run `mlflow run` made for this sweep (`candidate`) where there is one, so that
    a new study is one run in the experiment, not that run beside a parent; else a new run."""
    experiment_id = mlflow.tracking.fluent._get_experiment_id()
    tags = {TAG_PROPOSED_AT: f"{time.time():.3f}", TAG_STUDY: study, TAG_STUDY_STORAGE: storage, TAG_STAGE: STAGE_SWEEP}
    client, name = mlflow.MlflowClient(), RUN_NAME_SWEEP.format(study=study)
    invoked = bool(candidate) and client.get_run(candidate).info.experiment_id == experiment_id
    if invoked:  # its tags in one write: a search never sees it as a sweep without its proposal time
        client.update_run(candidate, name=name)
        client.log_batch(candidate, tags=[RunTag(key, value) for key, value in tags.items()])
        mine = candidate
    else:
        mine = client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
    time.sleep(settle_s)
    elected = study_run(study, storage)
    if elected is None or elected.info.run_id == mine:  # None: the others' were deleted meanwhile
        return mine
    mark_invocation(mine, elected.info.run_id)
    if not invoked:  # a run `mlflow run` made ends when its sweep does
        client.set_terminated(mine, "FINISHED")
    return elected.info.run_id


def run_age_s(run) -> float:
    """Seconds since the run started (by the clock of the process that made it)."""
    return time.time() - run.info.start_time / 1000


def heartbeat_age_s(run) -> float | None:
    """Seconds since the run's sweep last said it was alive; None if it never did."""
    beat = run.data.tags.get(TAG_HEARTBEAT)
    return time.time() - float(beat) if beat else None


@contextmanager
def heartbeat(run_id: str | None, interval_s: float):
    """Tag the run (if any) with the time every `interval_s` while the block runs: a later sweep
    tells a live sweep from a dead one by it."""
    if run_id is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        client = mlflow.MlflowClient()
        while True:
            try:
                client.set_tag(run_id, TAG_HEARTBEAT, f"{time.time():.0f}")
            except Exception as error:  # a store that did not answer this time: beat again next time
                print(f"lora-study: warning: heartbeat on run {run_id} not recorded ({error})", file=sys.stderr)
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=beat, name="sweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _builds_no_env(run) -> bool:
    """`mlflow run` with a conda, virtualenv or docker environment makes its run before building
    it, minutes before the sweep can beat: such a run is judged by its heartbeats alone."""
    return run.data.tags.get(TAG_MLFLOW_PROJECT_ENV, "local") == "local"


def mark_invocation(run_id: str, parent_run_id: str, stage: str = STAGE_SWEEP_INVOCATION) -> None:
    """A run made for a sweep that continues its study's parent (`mlflow run` made it, or it lost
    to another candidate for the parent), or for a `train --group-by` that continues its parent:
    say where its work went."""
    client = mlflow.MlflowClient()
    client.set_tag(run_id, TAG_STAGE, stage)
    client.set_tag(run_id, TAG_STUDY_RUN, parent_run_id)
    # nested under the parent it continued: the experiment's table shows the study as one row
    client.set_tag(run_id, TAG_MLFLOW_PARENT_RUN, parent_run_id)
    client.update_run(run_id, name=RUN_NAME_INVOCATION.format(parent_name=client.get_run(parent_run_id).info.run_name))


def fail_run(run_id: str, reason: str, **tags: str) -> None:
    """End another process's run FAILED, with the reason: its process died."""
    client = mlflow.MlflowClient()
    client.set_tag(run_id, TAG_ERROR, reason)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, "FAILED")


def end_dead_run(run_id: str, reason: str) -> None:
    """End a sweep run KILLED, with the reason: its process died (a sweep was killed)."""
    client = mlflow.MlflowClient()
    client.set_tag(run_id, TAG_ERROR, reason)
    client.set_terminated(run_id, "KILLED")


def dead_sweep_runs(experiment_id: str, interval_s: float, grace_s: float) -> list[tuple[str, str]]:
    """(run id, why) of each sweep run in the experiment left RUNNING by a process that died: no
    heartbeat for two intervals of `interval_s`, or none at all `grace_s` after it started (`mlflow run` makes
    its run before the sweep's Python starts, so a kill then leaves one that never beat)."""
    found = {}
    for condition in (f"tags.`{TAG_MLFLOW_ENTRY_POINT}` = '{STAGE_SWEEP}'", f"tags.`{TAG_STAGE}` = '{STAGE_SWEEP}'"):
        for run in mlflow.search_runs(
            [experiment_id], filter_string=f"{condition} and attributes.status = 'RUNNING'", output_format="list"
        ):
            found[run.info.run_id] = run
    dead = []
    for run_id, run in found.items():
        age = heartbeat_age_s(run)
        if age is not None and age > 2 * interval_s:
            dead.append((run_id, f"its sweep died: no heartbeat for {age:.0f} s"))
        elif age is None and _builds_no_env(run) and run_age_s(run) > grace_s:
            dead.append(
                (run_id, f"its sweep died before it started (no heartbeat {grace_s:.0f} s after the run began)")
            )
    return dead


def groups_run(inputs: str):
    """The parent run of a `train --group-by` of these inputs (`TAG_GROUPS_INPUTS`) in the
    experiment this process logs to, the first made; or None. A rerun continues it."""
    experiment_id = mlflow.tracking.fluent._get_experiment_id()
    found = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_GROUPS_INPUTS}` = '{inputs}' and tags.`{TAG_STAGE}` = '{STAGE_TRAIN_GROUPS}'",
        output_format="list",
    )
    return first_made(found)


def of_study(study: str, storage: str, invocation: str | None = None) -> str:
    """The id of the study's parent run: the one an earlier sweep of it made, which this sweep
    continues, else one elected now (`elect_study_run`; `invocation`, the run `mlflow run` made
    for this sweep, is its candidate)."""
    return continued_study_run(study, storage) or elect_study_run(study, storage, ELECTION_S, invocation)


def continued_study_run(study: str, storage: str) -> str | None:
    """The study's parent run, if an earlier sweep of it made one: this sweep continues it. One
    left RUNNING by a sweep that died is said to be so; one just proposed by a sweep starting
    the study too is waited on, as that sweep waits (the election may yet pick another)."""
    run = study_run(study, storage)
    if run is not None and time.time() - proposed_at(run) < ELECTION_S + 5:
        time.sleep(ELECTION_S + 1)
        run = study_run(study, storage)
    if run is None:
        return None
    age = heartbeat_age_s(run)
    if run.info.status == "RUNNING" and age is not None and age > 2 * HEARTBEAT_S:
        print(f"lora-study: continuing run {run.info.run_id} of {study}, left RUNNING by a sweep that died")
    return run.info.run_id


def end_dead_sweeps(experiment_id: str, *live: str | None) -> None:
    """End KILLED, with the reason, every sweep run of the experiment whose process died (but
    the `live` ones, this sweep's): a killed sweep leaves nothing RUNNING past the next one.
    Housekeeping: a store that fails it now leaves it to the next sweep."""
    try:
        for run_id, reason in dead_sweep_runs(experiment_id, HEARTBEAT_S, ORPHAN_GRACE_S):
            if run_id not in live:
                end_dead_run(run_id, reason)
    except Exception as error:
        print(f"lora-study: warning: sweep runs of dead processes not ended this time ({error})", file=sys.stderr)
