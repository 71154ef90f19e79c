"""`promote`: move an alias (`champion`) to a registered version that beats its holder; record why.

    lora-study promote lora-study-smollm2-135m --version 3 --reason "best of the rank ablation"
    lora-study promote lora-study-smollm2-135m --version 3 --target vllm

The version must have a lower `test_perplexity` tag (written by `evaluate`, or by the sweep when
it registers) than the alias's holder, measured on the same test data, unless `--force`; and the
`--target` server must be able to load it (`--force` does not change what a server loads). The
version then carries who moved the alias, when, why, and the two values compared; the registered
model keeps the move in its alias history (`lora-study versions`).
"""

from lora_study import registry
from lora_study.config import PromoteConfig


def run_promote(cfg: PromoteConfig) -> None:
    """The `promote` entry point: prints what it did."""
    print(registry.promote(cfg.registered_model, cfg.version, cfg.alias, cfg.force, cfg.reason, target=cfg.target))
