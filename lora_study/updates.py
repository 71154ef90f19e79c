"""What an adapter learned, module by module: its update dW = scale * B @ A, read from the weights.

The update of a rank-r module is d_out x d_in but has rank r at most, so its singular values
come exactly and cheaply from r x r matrices: B = Q_B R_B and A^T = Q_A R_A (thin QR), then
dW = Q_B (scale R_B R_A^T) Q_A^T, and the SVD of the r x r middle, U S V^T, gives dW's
singular values S and its left singular vectors Q_B U. Nothing d x d is decomposed but for
intruder dimensions, which need the singular vectors of the full weight (`intruders`).

- Effective rank: exp of the entropy of the singular values normalised to sum 1 (Roy and
  Vetterli 2007): 1 for one direction, r for r equal ones.
- Energy rank: the fewest directions holding `ENERGY` of sum(s^2), the squared Frobenius norm.
- Subspace similarity (Hu et al. 2021, LoRA, section 7): ||U1_k^T U2_k||_F^2 / k of the top-k
  left singular vectors of two updates of one module: 1 when they span the same k directions,
  0 when orthogonal.
- Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of
  Equivalence"): among the top-k left singular vectors of W + dW, those whose largest |cosine|
  with every singular vector of W is under a threshold: directions the base did not have.
"""

import math
import re
from dataclasses import dataclass

import torch

ENERGY = 0.9
LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.[^.]+)?\.weight$")
LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class Update:
    """One module's update, factored: dW = left @ diag(singular) @ right^T."""

    module: str  # the adapted module's name in the base model: model.layers.3.self_attn.q_proj
    singular: torch.Tensor  # r singular values, descending
    left: torch.Tensor  # d_out x r, orthonormal columns
    right: torch.Tensor  # d_in x r, orthonormal columns

    @property
    def layer(self) -> int | None:
        found = LAYER.search(f".{self.module}.")
        return int(found.group(1)) if found else None

    @property
    def kind(self) -> str:
        """The module's own name: q_proj, down_proj, ..."""
        return self.module.rsplit(".", 1)[-1]

    def dense(self) -> torch.Tensor:
        return self.left @ torch.diag(self.singular) @ self.right.T


def factor(b: torch.Tensor, a: torch.Tensor, scale: float, module: str = "") -> Update:
    """The update scale * b @ a (b: d_out x r, a: r x d_in) through its r x r core, in float64."""
    q_b, r_b = torch.linalg.qr(b.double())
    q_a, r_a = torch.linalg.qr(a.double().T)
    u, s, vh = torch.linalg.svd(scale * r_b @ r_a.T)
    return Update(module, s, q_b @ u, q_a @ vh.T)


def frobenius(update: Update) -> float:
    return float(update.singular.square().sum().sqrt())


def effective_rank(singular: torch.Tensor) -> float:
    """exp(entropy) of the singular values normalised to sum 1; 0 for a zero update."""
    total = singular.sum()
    if total <= 0:
        return 0.0
    p = singular[singular > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def energy_rank(singular: torch.Tensor, energy: float = ENERGY) -> int:
    """The fewest leading singular values whose squares hold `energy` of the total; 0 for a zero update."""
    squares = singular.square()
    if squares.sum() <= 0:
        return 0
    held = squares.cumsum(0) / squares.sum()
    return int((held < energy - 1e-12).sum()) + 1


def subspace_similarity(first: Update, second: Update, k: int | None = None) -> float:
    """||U1_k^T U2_k||_F^2 / k of the two updates' top-k left singular vectors (k: the smaller rank)."""
    k = k or min(first.left.shape[1], second.left.shape[1])
    overlap = first.left[:, :k].T @ second.left[:, :k].to(first.left.dtype)
    return float(overlap.square().sum()) / k


def intruders(weight: torch.Tensor, update: Update, top_k: int, threshold: float) -> int:
    """How many of the top-`top_k` left singular vectors of weight + dW have no singular vector of
    `weight` with |cosine| at least `threshold`. Two dense SVDs: asked for, not by default."""
    base = weight.double()
    u_base = torch.linalg.svd(base, full_matrices=False).U
    u_tuned = torch.linalg.svd(base + update.dense(), full_matrices=False).U[:, :top_k]
    best = (u_tuned.T @ u_base).abs().max(dim=1).values
    return int((best < threshold).sum())


def from_state_dict(state: dict[str, torch.Tensor], scale: float) -> list[Update]:
    """Every adapted module's update, from a PEFT adapter's weights (`adapter_model.safetensors`),
    in the order of the model's modules."""
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        found = LORA_KEY.match(key)
        if found:
            factors.setdefault(found.group("module"), {})[found.group("factor")] = tensor
    return [factor(f["B"], f["A"], scale, module) for module, f in factors.items() if {"A", "B"} <= set(f)]


def scale_of(config: dict) -> float:
    """alpha / r, or alpha / sqrt(r) for rsLoRA, from a PEFT `adapter_config.json`."""
    rank, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
