"""LoRA adapters: which modules they wrap, attaching them with PEFT, and what they cost.

`--target-modules` takes a preset or comma-separated module names (`q_proj,v_proj`):
- `q`, `v`, `qv`, `qkvo`: Llama-style projection names;
- `attention`, `mlp`: every linear layer inside the attention or MLP blocks, whatever they are
  called in this architecture;
- `all-linear`: every linear layer but the output head (PEFT's own preset).
"""

import re

import torch
from torch import nn

from lora_study.errors import UserInputError

NAMED_PRESETS = {
    "q": ["q_proj"],
    "v": ["v_proj"],
    "qv": ["q_proj", "v_proj"],
    "qkvo": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
BLOCK_PRESETS = {"attention": r"attn|attention", "mlp": r"mlp|feed_forward|ffn"}
PRESETS = [*NAMED_PRESETS, *BLOCK_PRESETS, "all-linear"]


def linear_names(model: nn.Module) -> dict[str, str]:
    """Leaf name -> full name of one of its instances, for every linear layer but the head."""
    names = {}
    for full_name, module in model.named_modules():
        is_linear = isinstance(module, nn.Linear) or type(module).__name__.startswith("Linear")
        if is_linear and not full_name.endswith("lm_head") and "." in full_name:
            names.setdefault(full_name.rsplit(".", 1)[1], full_name)
    return names


def resolve_targets(model: nn.Module, target_modules: str) -> list[str] | str:
    """The module names PEFT should wrap; an unknown name lists those the model has."""
    available = linear_names(model)
    if target_modules == "all-linear":
        return "all-linear"
    if target_modules in BLOCK_PRESETS:
        pattern = re.compile(BLOCK_PRESETS[target_modules])
        wanted = sorted(leaf for leaf, full in available.items() if pattern.search(full))
    else:
        wanted = NAMED_PRESETS.get(target_modules) or [
            name.strip() for name in target_modules.split(",") if name.strip()
        ]
    missing = [name for name in wanted if name not in available]
    if missing or not wanted:
        raise UserInputError(
            f"--target-modules {target_modules}: the model has no linear module named "
            f"{', '.join(missing) or '(none matched)'}; use a preset ({', '.join(PRESETS)}) or "
            f"names from: {', '.join(sorted(available))}"
        )
    return wanted


def attach(model: nn.Module, config, seed: int):
    """Wrap `model` with a fresh LoRA adapter; the seed fixes its initial weights."""
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=resolve_targets(model, config.target_modules),
        use_rslora=config.use_rslora,
        use_dora=config.use_dora,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, peft_config)
    if next(model.parameters()).device.type == "cpu":  # CUDA's own dropout draws its mask fast
        for module in peft_model.modules():
            for name, dropout in getattr(module, "lora_dropout", {}).items():
                if isinstance(dropout, nn.Dropout):
                    module.lora_dropout[name] = Dropout(dropout.p)
    return peft_model


def inputs_uncast(model: nn.Module, config, dtype: torch.dtype | None):
    """A context in which PEFT leaves each LoRA layer's input in the autocast dtype, instead of
    casting it to the adapter's fp32 weights for autocast to cast it back for the matmul: two
    copies of every input, each way, saved. Not for DoRA or a quantized base, whose layers
    compute more than matmuls on the input."""
    from peft.helpers import disable_input_dtype_casting

    active = dtype is not None and config.quantization == "none" and not config.use_dora
    return disable_input_dtype_casting(model, active=active)


class Dropout(nn.Module):
    """nn.Dropout, with the keep mask drawn four elements at a time: each 64-bit random integer
    gives four 16-bit draws, each kept when at or above p x 65536 (p exact to 1/65536). On the
    CPU, drawing one number per element is most of nn.Dropout's cost: on a bf16 input of 8 x
    256 x 576, forward and backward take 3.5 ms here against 6.1 ms for nn.Dropout."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        count = x.numel()
        draws = torch.randint(-(2**63), 2**63 - 1, (-(-count // 4),), dtype=torch.int64, device=x.device)
        kept = draws.view(torch.int16)[:count].view(x.shape) >= round(self.p * 65536) - 32768
        return x.mul(kept).mul_(1 / (1 - self.p))  # the scale as a Python float: exact, not rounded to bf16

    def extra_repr(self) -> str:
        return f"p={self.p}"


def detach(model: nn.Module) -> nn.Module:
    """Take every adapter layer out of `model` (without merging): the base as it was loaded.

    Works on the base a PeftModel was built on, so a sweep can reuse it after a trial that
    failed halfway.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    vars(model).pop("peft_config", None)  # PEFT notes its config on the base it wraps
    return model


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as the values they hold."""
    trainable = total = 0
    for parameter in model.parameters():
        count = parameter.numel()
        if type(parameter).__name__ == "Params4bit":  # two 4-bit values per stored byte
            count *= 2
        total += count
        trainable += count if parameter.requires_grad else 0
    return trainable, total
