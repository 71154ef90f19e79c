"""The MLflow Model Registry: versions (`versions`: lookup, registration with what was measured),
aliases and promotion between versions (`promotion`: forward-only moves, their history), what a
version's test perplexity was measured on (`measured`, `comparability`), which servers can load it
(`servability`), and what the registry shows of it (`descriptions`).

What stages and components use is offered here, as `registry.<name>`.
"""

from lora_study.registry.descriptions import (
    COLUMN_TEST_DATA,
    COLUMN_TEST_DATA_DESCRIPTION,
    describe,
    version_description,
    versions_table,
)
from lora_study.registry.measured import measured_on, measured_on_tags, measured_tags
from lora_study.registry.promotion import (
    PROMOTION_METRIC,
    AliasMove,
    Comparison,
    advance,
    alias_history,
    alias_target,
    alias_version,
    aliases,
    compare,
    promote,
    set_alias,
)
from lora_study.registry.versions import (
    check_name,
    find_trial_version,
    get_version,
    manifest,
    register,
    register_measured,
    run_version,
    study_versions,
    tag_measured,
    tag_version,
    version_number,
    version_of_uri,
)

__all__ = [
    "COLUMN_TEST_DATA",
    "COLUMN_TEST_DATA_DESCRIPTION",
    "PROMOTION_METRIC",
    "AliasMove",
    "Comparison",
    "advance",
    "alias_history",
    "alias_target",
    "alias_version",
    "aliases",
    "check_name",
    "compare",
    "describe",
    "find_trial_version",
    "get_version",
    "manifest",
    "measured_on",
    "measured_on_tags",
    "measured_tags",
    "promote",
    "register",
    "register_measured",
    "run_version",
    "set_alias",
    "study_versions",
    "tag_measured",
    "tag_version",
    "version_description",
    "version_number",
    "version_of_uri",
    "versions_table",
]
