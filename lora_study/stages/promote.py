"""`promote`: move an alias (`champion`) to a registered version that beats its holder; record why.

    lora-study promote lora-study-smollm2-135m --version 3 --reason "best of the rank ablation"

The version must have a lower `test_perplexity` tag (written by `evaluate`, or by the sweep when
it registers) than the alias's holder, unless `--force`. The version then carries who moved the
alias, when, why, and the two values compared.
"""

from lora_study import registry
from lora_study.config import PromoteConfig


def run_promote(cfg: PromoteConfig) -> None:
    """The `promote` entry point: prints what it did."""
    print(registry.promote(cfg.registered_model, cfg.version, cfg.alias, cfg.force, cfg.reason))
