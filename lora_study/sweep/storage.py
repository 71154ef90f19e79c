"""Optuna's storage as a sweep's workers share it: an RDB (SQLite or PostgreSQL) with heartbeats.

- A trial whose worker died is found stale and failed, even one that died before its first
  heartbeat.
- A database that goes away (a restart, a network cut) is waited for: each call is retried with
  a bounded backoff for up to `--storage-wait-s`, with one line per worker saying so (and one
  when it is back); past that, one line
  naming the storage ends the worker, and its runs end FAILED. Right after an outage no trial is
  judged stale: every heartbeat is as old as the outage, and live workers need a beat to catch up.
"""

import functools
import re
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import optuna
import sqlalchemy
from optuna.storages._rdb import models  # the trial table's columns; Optuna's own stale query reads them too
from optuna.trial import TrialState

from lora_study import console, parent_runs
from lora_study.errors import UserInputError

DEFAULT_WAIT_S = 600.0  # `--storage-wait-s` (SweepConfig.storage_wait_s): how long a worker waits for its database
MAX_BACKOFF_S = 10.0


def masked(storage: str) -> str:
    """The storage URL with its password, if any, replaced by ***."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", storage)


class SweepStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, which waits out a database that went away (every call Optuna makes
    is retried, `_retried`, but the stale check, skipped while it is away), and whose stale
    trials also include a RUNNING trial that has no heartbeat at all and started longer ago than
    the grace period: its worker was killed between Optuna's `ask` and the heartbeat thread's
    first beat. Optuna skips such a trial (RDBStorage._get_stale_trial_ids), so it would stay
    RUNNING and a sweep waiting for it would wait forever."""

    wait_s: float = DEFAULT_WAIT_S
    in_outage: bool = False  # a call met the database away and has not got through since
    back_at: float = float("-inf")  # time.monotonic() when the database answered again after an outage
    gave_up: UserInputError | None = None  # the database stayed away past wait_s: every later call ends so

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        if self.gave_up is not None:
            raise self.gave_up
        grace = self.grace_period or 2 * self.heartbeat_interval
        if self.in_outage or time.monotonic() - self.back_at < grace:
            return []  # every heartbeat is as old as the outage: let live workers beat first
        try:
            return self._stale_or_never_beat(study_id, grace)
        except Exception as error:
            if _unreachable(error) is None:
                raise
            return []  # the database is away: the worker's next call meets the outage and waits it out

    def _stale_or_never_beat(self, study_id: int, grace: float) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        # Optuna stores datetime_start in UTC, from the starting worker's clock: compared on this one's
        started_before = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=grace)
        with self.scoped_session() as session:
            never_beat = (
                session.query(models.TrialModel.trial_id)
                .filter(models.TrialModel.study_id == study_id)
                .filter(models.TrialModel.state == TrialState.RUNNING)
                .filter(models.TrialModel._datetime_start_utc < started_before)
                .filter(~models.TrialModel.heartbeats.any())
                .all()
            )
        return stale + [trial_id for (trial_id,) in never_beat if trial_id not in stale]


def _unreachable(error: BaseException) -> BaseException | None:
    """The database error under `error` that says the database could not be reached (a refused or
    dropped connection, SQLite's lock), if that is what it is; not once the storage gave up."""
    while error is not None:
        if isinstance(error, UserInputError):
            return None
        if isinstance(error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return error
        if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
            return error
        error = error.__cause__ or error.__context__
    return None


def _retried(method):
    """`method`, called again while the database cannot be reached (`waiting_out`). A state written
    before the connection dropped may have reached the database: Optuna then refuses the write
    again (UpdateFinishedTrialError), which is done if the trial holds the state asked for."""

    @functools.wraps(method)
    def call(storage: SweepStorage, *args, **kwargs):
        if storage.gave_up is not None:
            raise storage.gave_up
        met_outage = [False]

        def attempt():
            try:
                return method(storage, *args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                if met_outage[0] and method.__name__ == "set_trial_state_values":
                    trial_id, state = args[0], kwargs.get("state", args[1] if len(args) > 1 else None)
                    if storage.get_trial(trial_id).state == state:
                        return True
                raise
            except Exception as error:
                met_outage[0] = met_outage[0] or _unreachable(error) is not None
                raise

        return waiting_out(storage.url, storage.wait_s, attempt, storage)

    return call


def waiting_out(url: str, wait_s: float, attempt, storage: SweepStorage | None = None):
    """`attempt()`, made again while the database at `url` cannot be reached, for up to `wait_s`:
    after 0.5 s, then twice as long each time up to MAX_BACKOFF_S. One line when it goes away and
    one when it is back; past `wait_s`, one line naming the storage (UserInputError), which the
    storage then raises at once for every later call."""
    deadline, pause = None, 0.5
    while True:
        try:
            result = attempt()
        except Exception as error:  # only a database that is away is waited for
            cause = _unreachable(error)
            if cause is None:
                raise
            now = time.monotonic()
            first = _outage_begins(storage)
            if deadline is None:
                deadline = now + wait_s
                if first:
                    console.say(
                        f"optuna storage {masked(url)}: unreachable ({_first_line(cause)}); retrying for up to "
                        f"{wait_s:.0f} s (--storage-wait-s)"
                    )
            if now >= deadline:
                gave_up = UserInputError(
                    f"optuna storage {masked(url)}: unreachable for {wait_s:.0f} s ({_first_line(cause)}); the "
                    "study is kept there: run the same command again once it is back (--storage-wait-s waits longer)"
                )
                if storage is not None:
                    storage.gave_up = gave_up
                raise gave_up from None
            time.sleep(min(pause, deadline - now))
            pause = min(2 * pause, MAX_BACKOFF_S)
            continue
        if deadline is not None and (storage is None or _outage_ends(storage)):
            console.say(f"optuna storage {masked(url)}: back; going on")
        return result


# A worker's calls meet an outage together (its main thread, its trial's heartbeat thread): the
# first to meet it says so, the first through says it is back; one line each per worker.
_outage_state = threading.Lock()


def _outage_begins(storage: SweepStorage | None) -> bool:
    """Mark the storage away; whether this call is the first to find it so (or has no storage)."""
    if storage is None:
        return True
    with _outage_state:
        first, storage.in_outage = not storage.in_outage, True
    return first


def _outage_ends(storage: SweepStorage) -> bool:
    """Mark the storage back; whether this call is the first through since it went away."""
    with _outage_state:
        ended = storage.in_outage
        if ended:
            storage.in_outage, storage.back_at = False, time.monotonic()
    return ended


@contextmanager
def gave_up_is_one_line(study: optuna.Study):
    """Whatever Optuna raises once the study's storage gave up waiting (it catches the objective's
    errors, and then fails itself writing the trial down), the give-up's one line is raised."""
    backend = getattr(study._storage, "_backend", study._storage)  # Optuna caches an RDB storage
    try:
        yield
    except Exception:
        if getattr(backend, "gave_up", None) is not None:
            raise backend.gave_up from None
        raise


def _first_line(error: BaseException) -> str:
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0]


# Every call Optuna makes of an RDB storage: optuna.storages.BaseStorage and BaseHeartbeat, and the
# private ones its _CachedStorage (which wraps an RDB storage in every study) calls instead.
for _name in (
    "_create_new_trial",
    "_set_trial_param",
    "_get_trials",
    "_get_best_trial_id",
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "get_all_trials",
    "get_best_trial",
    "record_heartbeat",
):
    setattr(SweepStorage, _name, _retried(getattr(SweepStorage, _name)))


def open_storage(url: str, on_stale, wait_s: float = DEFAULT_WAIT_S, attempts: int = 5) -> SweepStorage:
    """The storage at `url`, with heartbeats every `parent_runs.HEARTBEAT_S`; `on_stale(study,
    trial)` runs for each trial found stale; a database that is away is waited for up to `wait_s`.
    Workers started together on an empty database each create its tables, and all but one fail
    on what the first made (PostgreSQL: a duplicate type or table); a second look finds the
    tables there."""
    for attempt in range(attempts):
        try:
            return waiting_out(url, wait_s, lambda: _opened(url, on_stale, wait_s))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(1 + attempt)


def _opened(url: str, on_stale, wait_s: float) -> SweepStorage:
    storage = SweepStorage(
        url,
        heartbeat_interval=parent_runs.HEARTBEAT_S,
        heartbeat_stale_trial_callback=on_stale,
        engine_kwargs={"pool_pre_ping": True},
    )
    storage.wait_s = wait_s
    return storage
