"""`versions`: a registered model's versions, one row each: aliases, base model, adapter shape
and the metrics their tags hold.

    lora-study versions lora-study-smollm2-135m
"""

from lora_study import registry
from lora_study.config import VersionsConfig


def run_versions(cfg: VersionsConfig) -> None:
    """The `versions` command: prints the table."""
    table = registry.versions_table(cfg.registered_model)
    print(table.to_string(index=False) if not table.empty else f"{cfg.registered_model} has no versions")
