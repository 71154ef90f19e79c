"""Which servers can load a registered version: its manifest, and each target's limits.

A version's manifest is what a server needs to know to load it: the PEFT version, the method and
its options (rank, alpha, target modules, DoRA, rsLoRA, `modules_to_save`, bias, initialization),
the base it was trained on (name, sha256 or revision, quantization, tokenizer digest) and the
prompt format. It is read from the logged model (its `adapter_config.json` and `base_model.json`)
when the version is registered, and kept on the version as a tag.

Targets:
- `mlflow`: `mlflow models serve` or `lora-study serve`; the adapter's own pyfunc model loads any
  adapter PEFT trained, on the base it names. The default.
- `vllm`: vLLM's LoRA support (`--enable-lora`), as `LIMITS_VLLM` cites.
- `lorax`: LoRAX (predibase/lorax), as `LIMITS_LORAX` cites.

Reading a manifest imports no torch: `promote` checks a version without loading a model.

Not checked: the architecture (both servers take LoRA on Llama-family models, which lora-study's
bases are; vLLM refuses others that do not implement `SupportsLoRA`), and LoRAX's padding of ranks
below 16 (`config.r = padded_rank` in adapters/lora.py may scale later layer types by alpha over the
padded rank: read in its code, not confirmed by a run, so not refused).
"""

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import get_args

import yaml

from lora_study.config import PromoteConfig, ServingTarget
from lora_study.names import (
    MODEL_BASE_REFERENCE,
    MODEL_KEY_ADAPTER,
    MODEL_KEY_BASE,
    MODEL_KEY_MERGED,
    TAG_MANIFEST,
    TAG_SERVES_ON,
)

TARGETS = get_args(ServingTarget)
DEFAULT_TARGET = PromoteConfig.model_fields["target"].default
ADAPTER, MERGED = MODEL_KEY_ADAPTER, MODEL_KEY_MERGED  # a manifest's kinds: what the model holds
MLMODEL, PYFUNC = "MLmodel", "python_function"  # MLflow's own: a model's description, its pyfunc flavour
PEFT_CONFIG = "adapter_config.json"  # PEFT's


@dataclass(frozen=True)
class Manifest:
    """What a server must know to load a version."""

    kind: str  # ADAPTER (a PEFT adapter on a base) or MERGED (a whole model)
    base_model: str
    base_sha256: str | None
    base_revision: str | None
    quantization: str  # of the base the adapter was trained (and is served) on: none | 8bit | 4bit
    dtype: str  # of the base weights that are not quantized
    prompt_format: str  # text | instruction | chat
    tokenizer_digest: str | None
    peft_version: str | None = None  # an adapter's, from here on
    peft_type: str | None = None  # LORA
    rank: int | None = None
    alpha: float | None = None
    target_modules: tuple[str, ...] = ()
    use_dora: bool = False
    use_rslora: bool = False
    modules_to_save: tuple[str, ...] = ()
    bias: str = "none"
    lora_bias: bool = False
    init_lora_weights: str = "True"
    per_module_ranks: bool = False  # rank_pattern or alpha_pattern set: ranks differ by module

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_tags(cls, tags: dict) -> "Manifest | None":
        """The manifest a version's tag holds; None without one."""
        try:
            values = json.loads(tags.get(TAG_MANIFEST) or "")
            known = {f.name for f in fields(cls)}
            values = {key: tuple(v) if isinstance(v, list) else v for key, v in values.items() if key in known}
            return cls(**values)
        except (ValueError, TypeError, AttributeError):
            return None


def read(fetch: Callable[[str], Path | None]) -> Manifest | None:
    """The manifest of an MLflow model, from a few small files, not the weights: `fetch(path)`
    downloads one file of the model and says where it is, or None if there is none
    (`registry.manifest` passes MLflow's). None for a model that is not a lora-study adapter or
    merged model."""
    mlmodel = fetch(MLMODEL)
    if mlmodel is None:
        return None
    artifacts = yaml.safe_load(mlmodel.read_text()).get("flavors", {}).get(PYFUNC, {}).get("artifacts", {})
    reference = fetch(artifacts[MODEL_KEY_BASE]["path"]) if MODEL_KEY_BASE in artifacts else None
    if reference is None or not ({ADAPTER, MERGED} & set(artifacts)):
        return None
    base = json.loads(reference.read_text())
    common = dict(
        base_model=base["name"],
        base_sha256=base.get("sha256"),
        base_revision=base.get("revision"),
        quantization=base.get("quantization", "none"),
        dtype=base.get("dtype", "float32"),
        prompt_format=base.get("prompt_format", "text"),
        tokenizer_digest=base.get("tokenizer_digest"),
    )
    if ADAPTER not in artifacts:
        return Manifest(kind=MERGED, **common)
    config = json.loads(fetch(f"{artifacts[ADAPTER]['path']}/{PEFT_CONFIG}").read_text())
    return Manifest(kind=ADAPTER, **common, **_peft_options(config))


def _peft_options(config: dict) -> dict:
    """The options of a PEFT `adapter_config.json` a server may refuse."""
    targets = config.get("target_modules") or ()
    return dict(
        peft_version=config.get("peft_version"),
        peft_type=config.get("peft_type"),
        rank=config.get("r"),
        alpha=config.get("lora_alpha"),
        target_modules=tuple(sorted([targets] if isinstance(targets, str) else targets)),
        use_dora=bool(config.get("use_dora")),
        use_rslora=bool(config.get("use_rslora")),
        modules_to_save=tuple(config.get("modules_to_save") or ()),
        bias=config.get("bias") or "none",
        lora_bias=bool(config.get("lora_bias")),
        init_lora_weights=str(config.get("init_lora_weights", True)),
        per_module_ranks=bool(config.get("rank_pattern") or config.get("alpha_pattern")),
    )


# --- what each target refuses ---------------------------------------------------------------------
# Read from the servers' source, not guessed (2026-12): vLLM v0.34.0 (commit 62d4bc3c7, the newest
# release on PyPI), `vllm/lora/peft_helper.py` `PEFTHelper._validate_features` and
# `validate_legal`, and `vllm/config/lora.py`; LoRAX at predibase/lorax a7394ba3,
# `server/lorax_server/adapters/lora.py` `LoraConfig.load`, which reads only r, target_modules,
# fan_in_fan_out, lora_alpha and use_rslora, and loads only the lora_A and lora_B weights: any other
# option is dropped without a word, and the adapter served wrongly. What LoRAX drops is refused here,
# as vLLM refuses it itself.

VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # `--max-lora-rank` takes these (vllm/config/lora.py)
VLLM_DEFAULT_MAX_LORA_RANK = 16
# init_lora_weights that change the base weights when PEFT loads the adapter (vLLM refuses them:
# "Inits such as PiSSA, OLoRA, CorDA and LoftQ modify the base model weights ..."; LoRAX drops them).
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")


def _dora(server: str, how: str):
    return lambda m: f"DoRA: {server} {how}" if m.use_dora else None


def _modules_to_save(server: str, how: str):
    return lambda m: f"modules_to_save {list(m.modules_to_save)}: {server} {how}" if m.modules_to_save else None


def _bias(server: str, how: str):
    def check(m: Manifest) -> str | None:
        if m.bias != "none" or m.lora_bias:
            return f"bias {m.bias!r}{', lora_bias' if m.lora_bias else ''}: {server} {how}"
        return None

    return check


def _base_changing_init(server: str, how: str):
    def check(m: Manifest) -> str | None:
        if m.init_lora_weights.lower().startswith(BASE_CHANGING_INITS):
            return f"init_lora_weights {m.init_lora_weights!r} changes the base weights: {server} {how}"
        return None

    return check


def _vllm_rank(m: Manifest) -> str | None:
    if m.rank is not None and m.rank > VLLM_MAX_LORA_RANKS[-1]:
        return f"rank {m.rank}: vLLM's --max-lora-rank goes up to {VLLM_MAX_LORA_RANKS[-1]} (vllm/config/lora.py)"
    return None


def _lorax_rslora(m: Manifest) -> str | None:
    if m.use_rslora:
        return (
            "rsLoRA: LoRAX's image pins peft 0.4.0 (server/pyproject.toml), whose LoraConfig has no use_rslora, so "
            "LoRAX scales by alpha/r instead of alpha/sqrt(r) (adapters/lora.py; read from its code, not run)"
        )
    return None


def _lorax_per_module_ranks(m: Manifest) -> str | None:
    if m.per_module_ranks:
        return "rank_pattern/alpha_pattern: LoRAX does not read them and scales every layer by lora_alpha/r"
    return None


def _lorax_embeddings(m: Manifest) -> str | None:
    if "embed_tokens" in m.target_modules:
        return "LoRA on embed_tokens: LoRAX does not load it (models/flash_llama.py ADAPTER_LAYERS)"
    return None


VLLM_REFUSES = "refuses it when it loads the adapter (vllm/lora/peft_helper.py)"
LORAX_DROPS = "drops it without a word and serves the adapter wrongly (server/lorax_server/adapters/lora.py)"
LIMITS = {
    "vllm": (
        _dora("vLLM", 'refuses it: "vLLM does not yet support DoRA." (vllm/lora/peft_helper.py)'),
        _modules_to_save("vLLM", VLLM_REFUSES),
        _bias("vLLM", VLLM_REFUSES),
        _base_changing_init("vLLM", VLLM_REFUSES),
        _vllm_rank,
    ),
    "lorax": (
        _dora(
            "LoRAX",
            "never reads use_dora nor loads the magnitude vectors, and serves it as plain LoRA, wrongly "
            "(server/lorax_server/adapters/lora.py)",
        ),
        _lorax_rslora,
        _modules_to_save("LoRAX", LORAX_DROPS),
        _bias("LoRAX", LORAX_DROPS),
        _base_changing_init("LoRAX", LORAX_DROPS),
        _lorax_per_module_ranks,
        _lorax_embeddings,
    ),
}


def refusals(manifest: Manifest | None, target: str) -> list[str]:
    """Why `target` cannot load a version with this manifest (or would serve it wrongly); empty
    when it can."""
    if target == "mlflow":
        return []  # its own pyfunc model: whatever MLflow logged, it serves
    if manifest is None:
        return [f"not a lora-study adapter (its model holds no {PEFT_CONFIG} and {MODEL_BASE_REFERENCE})"]
    if manifest.kind == MERGED:
        return [
            f"a merged model is a whole model, not a LoRA adapter: {target} serves it as a plain model, "
            "which this check does not cover"
        ]
    return [reason for check in LIMITS[target] if (reason := check(manifest))]


def requirements(manifest: Manifest | None, target: str) -> list[str]:
    """What `target` needs to serve a version it can load as it was measured: server flags, versions."""
    if manifest is None or manifest.kind != ADAPTER or target == "mlflow":
        return []
    needs = []
    if target == "vllm":
        rank = next(r for r in VLLM_MAX_LORA_RANKS if r >= (manifest.rank or 1))
        needs.append("--enable-lora" + (f" --max-lora-rank {rank}" if rank > VLLM_DEFAULT_MAX_LORA_RANK else ""))
        if manifest.use_rslora:
            needs.append("vLLM 0.7 or later (0.6.5 and 0.6.6 refuse rsLoRA; earlier ones scale it wrongly)")
        if manifest.quantization != "none":
            needs.append(
                f"a {manifest.quantization} bitsandbytes base, as it was measured on: vLLM 0.27 or earlier (0.28 "
                "removed bitsandbytes); on an unquantized base its outputs differ from what was measured"
            )
    if target == "lorax" and manifest.quantization != "none":
        flag = "bitsandbytes-nf4" if manifest.quantization == "4bit" else "bitsandbytes"
        needs.append(f"--quantize {flag} (the base it was measured on; launcher/src/main.rs)")
    return needs


def tags(manifest: Manifest | None) -> dict[str, str]:
    """The version tags: the manifest, and the targets that can load it."""
    serves_on = ", ".join(target for target in TARGETS if not refusals(manifest, target))
    return {TAG_MANIFEST: manifest.to_json(), TAG_SERVES_ON: serves_on} if manifest else {TAG_SERVES_ON: serves_on}
