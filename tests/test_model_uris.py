"""Model URIs parse into what they name; `--adapters` shorthand expands to registry URIs."""

import pytest

from lora_study.errors import UserInputError
from lora_study.model_uris import ModelUri, from_shorthand, parse


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("runs:/0123abcd/adapter", ModelUri("runs:/0123abcd/adapter")),
        ("models:/study-tiny/3", ModelUri("models:/study-tiny/3", registered_model="study-tiny", version="3")),
        ("models:/study-tiny/3/", ModelUri("models:/study-tiny/3/", registered_model="study-tiny", version="3")),
        (
            "models:/study-tiny@champion",
            ModelUri("models:/study-tiny@champion", registered_model="study-tiny", alias="champion"),
        ),
        ("models:/m-0a1b2c", ModelUri("models:/m-0a1b2c")),  # a LoggedModel, not a registered model
        ("base:tiny", ModelUri("base:tiny", base_model="tiny")),
    ],
)
def test_parse(uri, expected):
    assert parse(uri) == expected


def test_only_base_uris_are_base():
    assert parse("base:smollm2-135m").is_base
    assert not parse("models:/base@champion").is_base
    assert not parse("runs:/abc/adapter").is_base


@pytest.mark.parametrize(
    "entry, uri",
    [
        ("study-tiny@champion", "models:/study-tiny@champion"),
        ("study-tiny@3", "models:/study-tiny/3"),
        ("runs:/abc/adapter", "runs:/abc/adapter"),
        ("models:/study-tiny/2", "models:/study-tiny/2"),
    ],
)
def test_shorthand_expands_to_a_model_uri(entry, uri):
    assert from_shorthand(entry).uri == uri


def test_shorthand_version_and_alias_are_parsed():
    assert from_shorthand("study-tiny@3") == ModelUri(
        "models:/study-tiny/3", registered_model="study-tiny", version="3"
    )
    assert from_shorthand("study-tiny@champion").alias == "champion"


@pytest.mark.parametrize("entry", ["docs", "@champion", "docs@"])
def test_shorthand_without_name_and_pointer_is_refused(entry):
    with pytest.raises(UserInputError, match=f"--adapters: '{entry}' is not name@alias"):
        from_shorthand(entry)
