"""Groups of one dataset (`--group-by`): their names, which of them to train, and the matrix of
each group's adapter measured on every group's test split.

A group's key is its value written as MLflow takes a name anywhere (an alias, a run name, an
artifact folder): `Team Ä/1` -> `team-a-1`. The alias of its adapter is `group-<key>`.
"""

import hashlib
import re
import unicodedata

import pandas as pd

from lora_study.errors import UserInputError

ALIAS_PREFIX = "group-"
KEY_LENGTH = 48  # an alias may hold 255 characters; a run name stays readable
COLUMN_ADAPTER = "adapter"  # of the cross-group matrix: the group an adapter was trained on, or `base`
BASE_ROW = "base"


def key_of(value: str) -> str:
    """`value` in lower-case ASCII letters, digits, `-` and `_`; a value with none of them, by its digest."""
    text = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode().lower()
    key = re.sub(r"[^a-z0-9_]+", "-", text).strip("-")[:KEY_LENGTH].strip("-")
    return key or _digest(value)


def keys_of(values: list[str]) -> dict[str, str]:
    """value -> key for every value; two values that would share a key each get their digest added."""
    plain = {value: key_of(value) for value in values}
    shared = {key for key in plain.values() if list(plain.values()).count(key) > 1}
    return {value: f"{key}-{_digest(value)}" if key in shared else key for value, key in plain.items()}


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:8]


def alias(key: str) -> str:
    return ALIAS_PREFIX + key


def select(groups: dict[str, dict], chosen: list[str], group_by: str) -> list[str]:
    """The keys of the groups to train: `chosen` (by value or key), in its order, else every group."""
    if not chosen:
        return list(groups)
    by_name = {name: key for key, group in groups.items() for name in (key, group["value"])}
    unknown = [name for name in chosen if name not in by_name]
    if unknown:
        known = ", ".join(group["value"] for group in groups.values())
        raise UserInputError(
            f"--groups: no group {', '.join(map(repr, unknown))} in column `{group_by}`; the groups are: {known}"
        )
    return list(dict.fromkeys(by_name[name] for name in chosen))


def cross_matrix(rows: dict[str, dict[str, float]], base: dict[str, float]) -> pd.DataFrame:
    """Test perplexity of each adapter (a row, by the group it was trained on; `base` first) on
    each group's test split (a column): how specialised each adapter is."""
    columns = list(base)
    frame = pd.DataFrame([{COLUMN_ADAPTER: BASE_ROW, **base}])
    trained = pd.DataFrame([{COLUMN_ADAPTER: key, **row} for key, row in rows.items()])
    return pd.concat([frame, trained], ignore_index=True)[[COLUMN_ADAPTER, *columns]]


def improvement_pct(matrix: pd.DataFrame) -> pd.DataFrame:
    """The matrix as % better than the base on each test split (positive: lower perplexity)."""
    values = matrix.set_index(COLUMN_ADAPTER)
    return 100 * (1 - values / values.loc[BASE_ROW])


def own_and_other(improvement: pd.DataFrame) -> tuple[float, float | None]:
    """Mean % improvement of the adapters on their own group's test split, and on the others'
    (None with a single group)."""
    trained = improvement.drop(index=BASE_ROW)
    own = [trained.loc[key, key] for key in trained.index]
    other = [trained.loc[key, column] for key in trained.index for column in trained.columns if column != key]
    return float(sum(own) / len(own)), float(sum(other) / len(other)) if other else None
