"""Groups: keys MLflow takes anywhere, choosing groups by value or key, and the cross-group matrix."""

import pandas as pd
import pytest

from lora_study.data import groups
from lora_study.errors import UserInputError


@pytest.mark.parametrize(
    "value, key",
    [("de", "de"), ("Team Ä/1", "team-a-1"), ("  customer_42 ", "customer_42"), ("a" * 80, "a" * 48)],
)
def test_a_key_is_lower_case_letters_digits_dash_and_underscore(value, key):
    assert groups.key_of(value) == key


def test_a_value_without_letters_or_digits_gets_its_digest_and_shared_keys_are_told_apart():
    assert groups.key_of("ü!?") == "u"
    assert groups.key_of("!?") == groups.key_of("!?") and len(groups.key_of("!?")) == 8
    keys = groups.keys_of(["Sales EU", "sales-eu", "support"])
    assert keys["support"] == "support"
    assert keys["Sales EU"] != keys["sales-eu"] and all(
        k.startswith("sales-eu-") for k in (keys["Sales EU"], keys["sales-eu"])
    )
    assert groups.alias("sales-eu") == "group-sales-eu"


PREPARED = {"team-a": {"value": "Team A"}, "b": {"value": "b"}, "c": {"value": "c", "skipped": "too few"}}


def test_groups_are_chosen_by_value_or_key_in_the_order_given():
    assert groups.select(PREPARED, [], "team") == ["team-a", "b", "c"]
    assert groups.select(PREPARED, ["b", "Team A", "team-a"], "team") == ["b", "team-a"]


def test_an_unknown_group_names_the_groups_there_are():
    with pytest.raises(UserInputError, match=r"no group 'x' in column `team`; the groups are: Team A, b, c"):
        groups.select(PREPARED, ["b", "x"], "team")


def test_the_cross_group_matrix_has_the_base_first_then_an_adapter_per_row():
    base = {"a": 10.0, "b": 20.0}
    rows = {"a": {"a": 5.0, "b": 19.0}, "b": {"a": 11.0, "b": 10.0}}
    matrix = groups.cross_matrix(rows, base)
    assert list(matrix.columns) == ["adapter", "a", "b"] and list(matrix["adapter"]) == ["base", "a", "b"]
    improvement = groups.improvement_pct(matrix)
    assert improvement.loc["a", "a"] == pytest.approx(50.0) and improvement.loc["b", "a"] == pytest.approx(-10.0)
    own, other = groups.own_and_other(improvement)
    assert own == pytest.approx((50.0 + 50.0) / 2) and other == pytest.approx((5.0 - 10.0) / 2)


def test_one_group_has_no_other_groups_to_compare():
    matrix = groups.cross_matrix({"a": {"a": 5.0}}, {"a": 10.0})
    assert groups.own_and_other(groups.improvement_pct(matrix)) == (pytest.approx(50.0), None)
    assert isinstance(matrix, pd.DataFrame) and matrix.shape == (2, 2)
