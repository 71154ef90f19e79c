"""Search-space files: the shipped ones, every problem at once, and what a trial draws."""

import optuna
import pytest
import yaml
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_study.errors import UserInputError
from lora_study.sweep import search_space
from lora_study.sweep.search_space import Choice, Fixed, Range


def write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def test_the_shipped_configs_parse():
    default = search_space.load(str(REPO / "configs/sweep/default.yaml"))
    assert default.sampler == "tpe"
    assert default.dimensions["rank"] == Choice((4, 8, 16, 32))
    assert default.dimensions["alpha_per_rank"] == Choice((1, 2))
    assert default.dimensions["learning_rate"] == Range(1e-4, 3e-3, log=True, integer=False)
    assert default.dimensions["quantization"] == Fixed("none")
    grids = {
        name: search_space.load(str(REPO / f"configs/sweep/{name}.yaml"))
        for name in ("rank", "modules", "quantization")
    }
    assert all(space.sampler == "grid" for space in grids.values())
    rates = {"learning_rate": [3e-4, 1e-3, 3e-3]}  # searched per level: ablations compare each level's best
    assert grids["rank"].grid() == {"rank": [4, 8, 16, 32, 64], **rates}
    assert grids["modules"].grid() == {"target_modules": ["q", "v", "qv", "qkvo", "mlp", "all-linear"], **rates}
    assert grids["quantization"].grid() == {"quantization": ["none", "8bit", "4bit"], **rates}


def test_a_trial_draws_typed_configs_and_alpha_per_rank():
    space = search_space.load(str(REPO / "configs/sweep/default.yaml"))
    trial = optuna.trial.FixedTrial({"rank": 16, "alpha_per_rank": 2, "target_modules": "qkvo", "learning_rate": 1e-3})
    adapter, train = space.suggest(trial, {"max_steps": 7, "eval_every": 2})
    assert (adapter.rank, adapter.alpha, adapter.target_modules, adapter.dropout) == (16, 32.0, "qkvo", 0.05)
    assert (train.learning_rate, train.batch_size, train.max_steps, train.eval_every) == (1e-3, 1, 7, 2)


def test_an_integer_range_draws_integers(tmp_path):
    space = search_space.load(write(tmp_path, "space:\n  rank: {low: 2, high: 64, log: true}\n"))
    assert space.dimensions["rank"] == Range(2, 64, log=True, integer=True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    adapter, _ = space.suggest(study.ask(), {})
    assert isinstance(adapter.rank, int) and 2 <= adapter.rank <= 64


def test_a_range_written_without_a_dot_is_the_number_and_a_boolean_is_refused(tmp_path):
    space = search_space.load(write(tmp_path, "space:\n  learning_rate: {low: 1e-4, high: 3e-3, log: true}\n"))
    assert space.dimensions["learning_rate"] == Range(1e-4, 3e-3, log=True, integer=False)  # YAML reads 1e-4 as text
    with pytest.raises(UserInputError, match="`low` must be a number \\(got True\\)"):
        search_space.load(write(tmp_path, "space:\n  rank: {low: true, high: 8}\n"))


def test_every_problem_is_listed_at_once_naming_the_file_and_key(tmp_path):
    path = write(
        tmp_path,
        """
sampler: grid
colour: blue
space:
  rank: [0, 8]
  target_modules: []
  learning_rate: {low: 1.0e-2, high: 1.0e-4}
  dropout: {low: 0.0, high: 0.2}
  alpha: {per_rank: [2, -1]}
  max_steps: 10
  rnak: 4
  quantization: [none, 2bit]
""",
    )
    with pytest.raises(UserInputError) as caught:
        search_space.load(path)
    problems = caught.value.problems
    expected = [
        "unknown key `colour`",
        "space.rank: Input should be greater than 0 (got 0)",
        "space.target_modules: empty list of choices",
        "space.learning_rate: low (0.01) must be below high (0.0001)",
        "space.alpha: per_rank: -1 is not a positive number",
        "space.max_steps: set by the sweep's --max-steps flag",
        "space.rnak: unknown option (options: alpha, batch_size",
        "space.quantization: Input should be 'none', '8bit' or '4bit' (got '2bit')",
        "space.learning_rate: the grid sampler needs a list of values, not a range",
        "space.dropout: the grid sampler needs a list of values, not a range",
    ]
    assert len(problems) == len(expected)
    for fragment in expected:
        assert any(p.startswith(f"{path}: ") and fragment in p for p in problems), fragment


def test_bad_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "space:\n  rank: [4, 8\n  alpha: 16\n")
    with pytest.raises(UserInputError, match=r"space.yaml, line \d: not valid YAML"):
        search_space.load(path)


def test_a_missing_file_points_at_the_shipped_ones():
    with pytest.raises(UserInputError, match="--config: file nowhere.yaml does not exist"):
        search_space.load("nowhere.yaml")


def test_a_range_needs_a_numeric_option(tmp_path):
    with pytest.raises(UserInputError, match="space.target_modules: a range needs a numeric option"):
        search_space.load(write(tmp_path, "space:\n  target_modules: {low: 1, high: 2}\n"))


# --- fuzzing: whatever the file holds, the answer is a space or one line per problem ---------------

JSON_LEAVES = st.none() | st.booleans() | st.integers(-(10**400), 10**400) | st.floats() | st.text(max_size=20)
VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [
        "rank",
        "alpha",
        "target_modules",
        "learning_rate",
        "dropout",
        "quantization",
        "use_dora",
        "batch_size",
        "max_steps",
        "per_rank",
        "low",
        "high",
        "log",
    ]
) | st.text(max_size=8)
RANGES = st.fixed_dictionaries({"low": JSON_LEAVES, "high": JSON_LEAVES}, optional={"log": JSON_LEAVES})
SPACES = st.fixed_dictionaries(
    {"space": st.dictionaries(KEYS, VALUES | RANGES | st.dictionaries(KEYS, VALUES, max_size=3), max_size=5)},
    optional={"sampler": st.sampled_from(["tpe", "grid", "random"]) | JSON_LEAVES, "extra": VALUES},
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def loads_or_says_why(path) -> None:
    """The property: a SearchSpace, or UserInputError with one line per problem; nothing else."""
    try:
        search_space.load(str(path))
    except UserInputError as error:
        assert error.problems and all("\n" not in p and "\r" not in p for p in error.problems)


@FUZZ
@given(document=SPACES)
def test_any_structured_space_loads_or_is_refused_in_lines(tmp_path, document):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    loads_or_says_why(path)


@FUZZ
@given(content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_load_or_are_refused_in_lines(tmp_path, content):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(content)
    loads_or_says_why(path)


def test_deep_nesting_is_refused_in_a_line(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("space:\n  rank: " + "[" * 50_000 + "]" * 50_000)
    loads_or_says_why(path)


def test_neighbours_move_one_choice_one_level_down_then_up_and_leave_ranges_alone():
    space = search_space.load(str(REPO / "configs" / "sweep" / "default.yaml"))
    best = {"rank": 8, "alpha_per_rank": 2, "target_modules": "qkvo", "learning_rate": 1.9e-3}
    assert space.neighbours(best, ["rank", "target_modules", "learning_rate", "dropout"]) == [
        {**best, "rank": 4},
        {**best, "rank": 16},
        {**best, "target_modules": "qv"},
        {**best, "target_modules": "all-linear"},
    ]
    at_the_edges = {**best, "rank": 32, "target_modules": "qv"}
    assert space.neighbours(at_the_edges, ["rank", "target_modules"]) == [
        {**at_the_edges, "rank": 16},
        {**at_the_edges, "target_modules": "qkvo"},
    ]
    assert space.neighbours(best, []) == []
