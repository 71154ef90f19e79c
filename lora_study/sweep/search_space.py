"""The search space of a sweep, read from YAML and checked before the first trial.

    sampler: tpe                      # tpe (default) | grid | random
    space:
      rank: [4, 8, 16]                # a list is a choice
      alpha: {per_rank: [1, 2]}       # alpha = rank * choice; or a number, or a list of numbers
      target_modules: [qv, all-linear]
      learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}   # a range (float, or int fields)
      dropout: 0.05                   # a single value is fixed

Keys are the fields of `train`'s adapter and optimization options (`lora-study train --help`);
a key left out keeps `train`'s default. `max_steps`, `eval_every` and `data` belong to the
sweep's own flags. Every problem is reported at once, naming the file and the key.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from lora_study.config import AdapterConfig, TrainConfig, flag
from lora_study.data.text_files import read_utf8
from lora_study.errors import UserInputError

SAMPLERS = ("tpe", "grid", "random")
SWEEP_OWNED = {
    name: flag(name)
    for name in ("max_steps", "eval_every", "data", "early_stopping_patience", "early_stopping_min_delta", "keep_best")
} | {"epochs": "--max-steps"}
SECTIONS = (AdapterConfig, TrainConfig)
PER_RANK = "per_rank"
ALPHA_PER_RANK = "alpha_per_rank"  # the Optuna parameter behind `alpha: {per_rank: ...}`
RANGE_KEYS = {"low", "high", "log"}


@dataclass(frozen=True)
class Fixed:
    value: object


@dataclass(frozen=True)
class Choice:
    values: tuple


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool
    integer: bool


@dataclass(frozen=True)
class SearchSpace:
    path: str
    sampler: str
    dimensions: dict  # Optuna parameter name -> Fixed | Choice | Range

    def searched(self) -> dict:
        return {name: dim for name, dim in self.dimensions.items() if not isinstance(dim, Fixed)}

    def grid(self) -> dict[str, list]:
        """The grid sampler's search space: every choice dimension."""
        return {name: list(dim.values) for name, dim in self.searched().items()}

    def suggest(self, trial, train_defaults: dict) -> tuple[AdapterConfig, TrainConfig]:
        """The adapter and training settings of one trial, drawn through Optuna."""
        values = dict(train_defaults)
        for name, dim in self.dimensions.items():
            values[name] = _draw(trial, name, dim)
        if ALPHA_PER_RANK in values:
            values["alpha"] = float(values.pop(ALPHA_PER_RANK) * values.get("rank", AdapterConfig().rank))
        return (
            AdapterConfig(**{k: v for k, v in values.items() if k in AdapterConfig.model_fields}),
            TrainConfig(**{k: v for k, v in values.items() if k in TrainConfig.model_fields}),
        )

    def neighbours(self, params: dict, factors: list[str]) -> list[dict]:
        """`params` with one of `factors` moved one level down, then one up, among its choices as the
        space lists them (rank 8 -> 4 and 16; qkvo -> qv and all-linear); a factor the space does not
        offer as a choice has no neighbours."""
        found = []
        for factor in factors:
            dim = self.dimensions.get(factor)
            if not isinstance(dim, Choice) or params.get(factor) not in dim.values:
                continue
            at = dim.values.index(params[factor])
            found += [{**params, factor: dim.values[n]} for n in (at - 1, at + 1) if 0 <= n < len(dim.values)]
        return found

    def choices(self, name: str) -> list:
        """Every value `name` can take: its choices, its fixed value, or its default."""
        dim = self.dimensions.get(name)
        if isinstance(dim, Choice):
            return list(dim.values)
        if isinstance(dim, Fixed):
            return [dim.value]
        section = next(s for s in SECTIONS if name in s.model_fields)
        return [section.model_fields[name].default]


def _draw(trial, name: str, dim):
    if isinstance(dim, Fixed):
        return dim.value
    if isinstance(dim, Choice):
        return trial.suggest_categorical(name, list(dim.values))
    if dim.integer:
        return trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
    return trial.suggest_float(name, dim.low, dim.high, log=dim.log)


# --- reading and checking --------------------------------------------------------------------


def load(path: str) -> SearchSpace:
    """Read and check a search-space file; raise every problem in it at once."""
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"--config: file {path} does not exist (the shipped ones are in configs/sweep/)")
    try:
        document = yaml.safe_load(read_utf8(file)) or {}
    except RecursionError:
        raise UserInputError(f"{path}: YAML nested too deeply to read") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise UserInputError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(document, dict):
        raise UserInputError(f"{path}: must be a mapping with `sampler` and `space`")
    problems = [
        f"{path}: unknown key `{key}` (allowed: sampler, space)" for key in document if key not in ("sampler", "space")
    ]
    sampler = document.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        problems.append(f"{path}: sampler: `{sampler}` is not one of {', '.join(SAMPLERS)}")
    space = document.get("space") or {}
    if not isinstance(space, dict):
        raise UserInputError(*problems, f"{path}: space: must be a mapping of option names to values")
    dimensions = {}
    for key, spec in space.items():
        name, dim, found = _dimension(key, spec)
        problems += [f"{path}: space.{key}: {problem}" for problem in found]
        if dim is not None:
            dimensions[name] = dim
    if sampler == "grid":
        problems += [
            f"{path}: space.{name}: the grid sampler needs a list of values, not a range"
            for name, dim in dimensions.items()
            if isinstance(dim, Range)
        ]
    if problems:
        raise UserInputError(*problems)
    return SearchSpace(str(path), sampler, dimensions)


def _dimension(key: str, spec) -> tuple[str, object, list[str]]:
    """(Optuna name, dimension, problems) of one `space` entry."""
    if key in SWEEP_OWNED:
        return key, None, [f"set by the sweep's {SWEEP_OWNED[key]} flag, not the search space"]
    section = next((s for s in SECTIONS if key in s.model_fields), None)
    if section is None:
        names = sorted(set(AdapterConfig.model_fields) | set(TrainConfig.model_fields) - set(SWEEP_OWNED))
        return key, None, [f"unknown option (options: {', '.join(names)})"]
    if key == "alpha" and isinstance(spec, dict) and PER_RANK in spec:
        return _alpha_per_rank(spec)
    if isinstance(spec, list):
        if not spec:
            return key, None, ["empty list of choices: give at least one value"]
        return key, Choice(tuple(spec)), [p for value in spec for p in _check_value(section, key, value)]
    if isinstance(spec, dict):
        return _range(section, key, spec)
    return key, Fixed(spec), _check_value(section, key, spec)


def _alpha_per_rank(spec: dict) -> tuple[str, object, list[str]]:
    multiples = spec[PER_RANK] if isinstance(spec[PER_RANK], list) else [spec[PER_RANK]]
    problems = [f"unknown key `{k}` (alpha takes {{per_rank: ...}})" for k in spec if k != PER_RANK]
    if not multiples:
        problems.append("per_rank: empty list of choices: give at least one value")
    problems += [
        f"per_rank: {m!r} is not a positive number"
        for m in multiples
        if isinstance(m, bool) or not isinstance(m, (int, float)) or m <= 0
    ]
    dim = Choice(tuple(multiples)) if len(multiples) > 1 else Fixed(multiples[0] if multiples else 1)
    return ALPHA_PER_RANK, dim, problems


def _range(section, key: str, spec: dict) -> tuple[str, object, list[str]]:
    annotation = section.model_fields[key].annotation
    if annotation not in (int, float):
        return key, None, ["a range needs a numeric option; give a list of choices instead"]
    problems = [f"unknown key `{k}` in a range (keys: low, high, log)" for k in spec if k not in RANGE_KEYS]
    if "low" not in spec or "high" not in spec:
        return key, None, problems + ["a range needs `low` and `high`"]
    low, high, log = _numeric(spec["low"]), _numeric(spec["high"]), bool(spec.get("log", False))
    problems += [
        f"`{name}` must be a number (got {bound!r})"  # the config would coerce true; a range is compared
        for name, bound in (("low", low), ("high", high))
        if isinstance(bound, bool) or not isinstance(bound, (int, float))
    ]
    problems += _check_value(section, key, low) + _check_value(section, key, high)
    if not problems and not all(_finite(bound) for bound in (low, high)):
        problems.append(f"low and high must be finite numbers a float can hold (got {low!r}, {high!r})")
    if not problems and low >= high:
        problems.append(f"low ({low}) must be below high ({high})")
    if not problems and log and low <= 0:
        problems.append(f"a log range needs low > 0 (got {low})")
    if not all(_finite(bound) for bound in (low, high)):
        return key, None, problems
    return key, Range(float(low), float(high), log, annotation is int), problems


def _numeric(value):
    """A bound as written: YAML reads `1e-4` (no dot) as a string, which is meant as the number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (OverflowError, TypeError, ValueError):
        return False


def _check_value(section, key: str, value) -> list[str]:
    """The problems pydantic finds with `value` for the field `key`."""
    try:
        section.model_validate({key: value})
    except ValidationError as error:
        return [
            f"{problem['msg'].removeprefix('Value error, ')} (got {value!r})"
            for problem in error.errors()
            if problem["loc"] and problem["loc"][0] == key
        ]
    return []
