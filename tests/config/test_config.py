"""MLproject, the CLI and the config classes name the same parameters with the same defaults."""

import pytest
import yaml
from conftest import REPO
from pydantic import ValidationError

from lora_study import cli
from lora_study.config import BaseModelConfig, DataConfig, SweepConfig, TrainConfig, flag, parse_sections
from lora_study.errors import UserInputError

MLPROJECT = yaml.safe_load((REPO / "MLproject").read_text())
REQUIRED = {"model_uri": "base:tiny", "registered_model": "m", "version": "1", "study": "s"}  # no usable default


def test_every_command_but_the_listing_and_the_server_is_an_entry_point():
    assert set(MLPROJECT["entry_points"]) == set(cli.COMMANDS) - {"versions", "serve"}  # no run to track


@pytest.mark.parametrize("name", sorted(MLPROJECT["entry_points"]))
def test_mlproject_entry_point_matches_the_cli(name):
    entry = MLPROJECT["entry_points"][name]
    sections = cli.COMMANDS[name].sections
    fields = {key: f for section in sections for key, f in section.model_fields.items()}
    assert set(entry["parameters"]) == set(fields)
    for key, spec in entry["parameters"].items():
        positional = (fields[key].json_schema_extra or {}).get("positional")
        assert (f"{{{key}}}" if positional else f"{flag(key)} {{{key}}}") in entry["command"]
        if fields[key].is_required():
            assert spec in ("string", "float")  # MLproject's way of saying required
            continue
        if key in REQUIRED:
            continue
        required = {k: v for k, v in REQUIRED.items() if k in fields}
        parsed = parse_sections(sections, {**required, key: str(spec["default"])})
        assert getattr(next(c for c in parsed if key in type(c).model_fields), key) == fields[key].default
    assert (REPO / entry["command"].split()[1]).exists()


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_config_field_is_a_cli_flag(name):
    sub = cli.build_parser()._subparsers._group_actions[0].choices[name]
    flags = {opt for action in sub._actions for opt in action.option_strings}
    positional = {action.dest for action in sub._actions if not action.option_strings}
    for section in cli.COMMANDS[name].sections:
        for key, field in section.model_fields.items():
            assert key in positional if (field.json_schema_extra or {}).get("positional") else flag(key) in flags


def test_flag_names_do_not_collide_across_sections():
    for command in cli.COMMANDS.values():
        names = [key for section in command.sections for key in section.model_fields]
        assert len(names) == len(set(names))


def test_every_problem_is_reported_at_once_naming_its_flag():
    with pytest.raises(UserInputError) as caught:
        parse_sections(
            (DataConfig, BaseModelConfig),
            {"seq_len": "0", "format": "xml", "val_fraction": "2", "bogus": "1"},
        )
    problems = caught.value.problems
    assert len(problems) == 4
    assert any(p.startswith("--seq-len:") and "greater than 0" in p for p in problems)
    assert any(p.startswith("--format:") and "'instruction'" in p and "'xml'" in p for p in problems)
    assert any(p.startswith("--val-fraction:") for p in problems)
    assert "--bogus: unknown option" in problems


def test_fractions_must_leave_training_documents():
    with pytest.raises(UserInputError, match="val_fraction.*test_fraction"):
        parse_sections((DataConfig,), {"val_fraction": "0.5", "test_fraction": "0.45"})


def test_strings_from_mlproject_parse_to_typed_values():
    data, base = parse_sections(
        (DataConfig, BaseModelConfig), {"seq_len": "512", "trust_remote_code": "true", "split_seed": "3"}
    )
    assert (data.seq_len, data.split_seed, base.trust_remote_code) == (512, 3, True)


def test_a_study_name_with_quotes_is_refused_at_the_edge():
    with pytest.raises(UserInputError) as caught:
        parse_sections((SweepConfig,), {"study_name": "it's"})
    assert caught.value.problems == [
        '--study-name: must not contain quotes; use letters, digits, `-`, `_` and `.` (got "it\'s")'
    ]


def test_early_stopping_needs_evaluations_during_training():
    with pytest.raises(ValidationError, match="set --eval-every N"):
        TrainConfig(early_stopping_patience=2, eval_every=0)
    assert TrainConfig(early_stopping_patience=2, eval_every=5).keep_best
