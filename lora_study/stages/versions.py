"""`versions`: a registered model's versions, grouped by the test data their perplexities were
measured on (only numbers within a group compare), one row each: aliases, base model, adapter
shape, metrics and serving targets; then the history of its aliases.

    lora-study versions lora-study-smollm2-135m
"""

from lora_study import registry
from lora_study.config import VersionsConfig


def run_versions(cfg: VersionsConfig) -> None:
    """The `versions` command: prints the tables and the alias history."""
    name = cfg.registered_model
    table = registry.versions_table(name)
    if table.empty:
        print(f"{name} has no versions")
        return
    for key, group in table.groupby(registry.COLUMN_TEST_DATA, sort=False):
        if key:
            print(f"test data {key}: {group[registry.COLUMN_TEST_DATA_DESCRIPTION].iloc[0]}")
        else:
            print("test data not recorded (`lora-study evaluate` records it)")
        shown = group.drop(columns=[registry.COLUMN_TEST_DATA, registry.COLUMN_TEST_DATA_DESCRIPTION])
        print(shown.to_string(index=False))
        print()
    moves = registry.alias_history(name)
    print("alias history:" if moves else "alias history: no moves recorded")
    for move in moves:
        before = f"version {move.before}" if move.before else "(new)"
        print(f"  {move.at}  @{move.alias}  {before} -> version {move.after}  by {move.by}: {move.why}")
