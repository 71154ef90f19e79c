"""Aliases and promotion between versions: an alias moves to a version that beats its holder's test
perplexity (or another metric asked for: higher is better for a generation objective's score)
measured on the same test data (`comparability`), and that the alias's serving target
can load (`servability`); `--force` overrides the comparison only. Sweeps that move one alias at
the same moment settle on the best. Every move is kept on the registered model as a tag, so
`alias_history` tells who moved which alias when, from what to what, and why."""

import getpass
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import mlflow
from mlflow.exceptions import MlflowException

from lora_study.errors import UserInputError
from lora_study.names import (
    HIGHER_IS_BETTER,
    METRIC_TEST_PERPLEXITY,
    TAG_ALIAS_MOVE_PREFIX,
    TAG_PROMOTED_ALIAS,
    TAG_PROMOTED_AT,
    TAG_PROMOTED_BY,
    TAG_PROMOTION_COMPARED,
    TAG_PROMOTION_REASON,
)
from lora_study.registry import comparability, servability
from lora_study.registry.measured import measured_on
from lora_study.registry.versions import get_version, manifest, tag_version

# What promotion compares: the test perplexity `evaluate` (or the sweep) recorded on a version.
PROMOTION_METRIC = METRIC_TEST_PERPLEXITY
# Sweeps on several machines stamp alias moves with their own clocks: moves this much before a
# sweep read the holder count as made at the same moment (`_settle`).
CLOCK_SKEW_MS = 2000


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
    """A tag on the version the alias moved to: the registered model's page lists its own tags
    above its versions, and a model-level tag per move (as lora-study wrote them before) buried
    the versions under the history after a few studies. The key holds the alias and the
    millisecond; one another move of that alias took (on any version) moves on to the next."""
    value = json.dumps({field: value for field, value in move.__dict__.items() if field != "ms"})
    client = mlflow.MlflowClient()
    ms = time.time_ns() // 1_000_000
    for _ in range(10):
        written = dict(_move_tags(name))
        while (key := f"{TAG_ALIAS_MOVE_PREFIX}{move.alias}.{ms}") in written:
            if written[key] == value:
                return  # another sweep recorded the same move at once: once is enough
            ms += 1
        try:
            client.set_model_version_tag(name, move.after, key, value)
        except MlflowException:  # another sweep wrote this key on this version between the read and the write
            continue
        # a store may upsert: another move written at once under this key would replace this one
        if client.get_model_version(name, move.after).tags.get(key) == value:
            return
    raise MlflowException(f"{name} version {move.after}: the move of @{move.alias} could not be recorded")


def _move_tags(name: str) -> list[tuple[str, str]]:
    """(key, value) of each move recorded on the model's versions, and on the model itself, where
    earlier lora-study versions recorded them."""
    client = mlflow.MlflowClient()
    try:
        tags = list(client.get_registered_model(name).tags.items())
    except MlflowException as error:
        raise UserInputError(f"{name}: {error.message}") from None
    for version in client.search_model_versions(f"name = '{name}'"):
        tags += version.tags.items()
    return [
        (key, value) for key, value in tags if key.startswith(TAG_ALIAS_MOVE_PREFIX) and key.rsplit(".", 1)[1].isdigit()
    ]


def alias_history(name: str) -> list[AliasMove]:
    """Every recorded move of the model's aliases, oldest first. Sweeps that set one alias at the
    same moment may each record the same move: it is listed once."""
    moves = []
    for key, value in sorted(_move_tags(name), key=lambda tag: int(tag[0].rsplit(".", 1)[1])):
        try:
            move = AliasMove(**json.loads(value), ms=int(key.rsplit(".", 1)[1]))
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
    """Point `alias` at `version` if `target` can serve it and it beats the alias's holder on `metric`
    (lower is better; higher for a generation objective's score) measured on the same test data,
    or with `force`; record who, when, why and what was compared on the version. Returns what
    was done, and what `target` needs to serve it. `force` overrides the comparison, never what
    a server cannot load."""
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
    better = float(mine) > float(theirs) if metric in HIGHER_IS_BETTER else float(mine) < float(theirs)
    if not better:
        return Comparison(words, f"is not better than @{alias} (version {holder.version}): {words}")
    return Comparison(words, None)


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
