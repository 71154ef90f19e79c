"""The request contract of a served model, and which adapters `--adapters` names."""

import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import register_echo

from lora_study import registry, serving
from lora_study.errors import UserInputError


def test_adapter_entries_from_a_list_or_a_yaml_file(tmp_path):
    assert serving.adapter_entries("docs@champion, docs@3,runs:/abc/adapter") == [
        ("docs@champion", "models:/docs@champion"),
        ("docs@3", "models:/docs/3"),
        ("runs:/abc/adapter", "runs:/abc/adapter"),
    ]
    listing = tmp_path / "adapters.yaml"
    listing.write_text("- docs@champion\n- name: sql\n  model_uri: models:/sql/2\n")
    assert serving.adapter_entries(str(listing)) == [
        ("docs@champion", "models:/docs@champion"),
        ("sql", "models:/sql/2"),
    ]


def test_an_alias_pattern_names_every_alias_it_matches():
    """`--adapters name@group-*` serves every group's adapter (aliases `group-<value>`)."""
    for alias in ("group-fr", "group-de", "champion"):
        registry.set_alias("grouped", alias, register_echo("grouped"), "test")
    expected = [("grouped@group-de", "models:/grouped@group-de"), ("grouped@group-fr", "models:/grouped@group-fr")]
    assert serving.adapter_entries("grouped@group-*") == expected
    assert serving.adapter_entries("models:/grouped@group-*,grouped@champion") == [
        *expected,
        ("grouped@champion", "models:/grouped@champion"),
    ]
    with pytest.raises(UserInputError, match="no alias of the registered model `grouped` matches `persona-\\*`"):
        serving.adapter_entries("grouped@persona-*")
    with pytest.raises(UserInputError, match="no-such-model: Registered Model with name=no-such-model not found"):
        serving.adapter_entries("no-such-model@group-*")


@pytest.mark.parametrize(
    "spec, content, expected",
    [
        ("docs@1,docs@1", None, "the name docs@1 is given twice"),
        (" , ", None, "names no adapter"),
        ("docs", None, "'docs' is not name@alias, name@version or a model URI"),
        ("missing.yaml", None, "--adapters missing.yaml: no such file"),
        ("LIST", "name: sql\n", "must be a YAML list of adapters"),
        ("LIST", "- docs@champion\n- {name: sql}\n", "entry 2: give `name@alias`, or `name:` and `model_uri:`"),
    ],
)
def test_bad_adapter_lists_are_one_clear_line(spec, content, expected, tmp_path):
    if content is not None:
        spec = str(tmp_path / "adapters.yaml")
        Path(spec).write_text(content)
    with pytest.raises(UserInputError, match=re.escape(expected)):
        serving.adapter_entries(spec)


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be 1 to"),
        ({"temperature": 11.0}, "temperature must be 0 (greedy) to 10 (got 11.0)"),
        ({"top_p": 0.0}, "top_p must be in (0, 1] (got 0.0)"),
        ({"beams": 4}, "unknown params beams (known: max_new_tokens, temperature, top_p, adapter)"),
    ],
)
def test_params_out_of_bounds_are_a_bad_request_naming_the_bound(params, expected):
    with pytest.raises(serving.BadRequest, match=re.escape(expected)):
        serving.check_params({**serving.DEFAULT_PARAMS, **params})
    assert serving.check_params(dict(serving.DEFAULT_PARAMS)) == serving.DEFAULT_PARAMS


@pytest.mark.parametrize(
    "model_input, params, expected",
    [
        (pd.DataFrame({"text": ["x"]}), {}, "needs a `prompt` column or a list of prompts (got columns: text; "),
        (pd.DataFrame({"prompt": ["  "]}), {}, "every `prompt` must be a non-empty string"),
        (pd.DataFrame({"prompt": ["x"], "adapter": [3]}), {}, "every `adapter` must be a string"),
        (pd.DataFrame({"prompt": ["x"]}), {"adapter": "sql"}, "unknown adapter 'sql' (this server has: docs)"),
        (
            pd.DataFrame({"prompt": ["word " * 3000]}),
            {},
            "with max_new_tokens 64 that is over the model's 2048 positions",
        ),
    ],
)
def test_a_bad_request_is_refused_before_anything_is_generated(model_input, params, expected, tiny, tokenizer):
    from lora_study import models

    model = models.load_model(tiny)
    served = {"docs": serving.ServedAdapter("adapter-0", "text")}
    with pytest.raises(serving.BadRequest, match=re.escape(expected)):
        serving.answer(model, tokenizer, served, "text", model_input, params)
