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

import pandas as pd
import torch

from lora_study.names import (
    COLUMN_EFFECTIVE_RANK,
    COLUMN_ENERGY_RANK,
    COLUMN_INTRUDERS,
    COLUMN_KIND,
    COLUMN_LAYER,
    COLUMN_MODULE,
    COLUMN_NORM,
    COLUMN_RANK,
    COLUMN_RELATIVE_NORM,
    COLUMN_SIMILARITY,
    COLUMN_SIMILARITY_CHANCE,
    COLUMN_SIMILARITY_TOP1,
    COLUMN_SINGULAR_VALUES,
    METRIC_INTRUDERS,
    METRIC_UPDATE_EFFECTIVE_RANK,
    METRIC_UPDATE_ENERGY_RANK,
    METRIC_UPDATE_RELATIVE_NORM_MAX,
    METRIC_UPDATE_RELATIVE_NORM_MEDIAN,
)

ENERGY = 0.9
LAYER = re.compile(r"\.(?:layers|layer|h|blocks)\.(\d+)\.")  # Llama, BERT, GPT-2 and Falcon, MPT blocks


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


def lora_layers(model) -> dict[str, torch.nn.Module]:
    """Module name in the base model -> its LoRA layer, in module order."""
    from peft.tuners.lora import LoraLayer

    found = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and module.lora_A:
            found[re.sub(r"^(base_model\.model\.)", "", name)] = module
    return found


def of_layer(name: str, layer) -> Update:
    """A LoRA layer's update (of its active adapter), scaled as PEFT scales it (alpha / r, or
    alpha / sqrt(r) with rsLoRA). The weights are read as stored, in their (Linear) orientation:
    B is d_out x r, A r x d_in."""
    adapter = layer.active_adapters[0]
    b, a = layer.lora_B[adapter].weight.detach().cpu(), layer.lora_A[adapter].weight.detach().cpu()
    return factor(b, a, layer.scaling[adapter], name)


def base_weight(layer) -> torch.Tensor:
    """The frozen weight under a LoRA layer, dequantized if the base is 8- or 4-bit, where it is."""
    from peft.utils.integrations import dequantize_module_weight

    return dequantize_module_weight(layer.get_base_layer()).detach()


def weight_norm(layer) -> float:
    """||W||_F of the frozen weight under a LoRA layer, computed where it is."""
    return float(torch.linalg.norm(base_weight(layer).float()))


# --- a model's updates as a table, and its summary -------------------------------------------------


def table(model, intruder_top_k: int = 0, intruder_threshold: float = 0.5) -> pd.DataFrame:
    """One row per adapted module of a PEFT model: its update's norms, ranks and singular values;
    with `intruder_top_k`, its intruder dimensions too."""
    rows = []
    for name, layer in lora_layers(model).items():
        update = of_layer(name, layer)
        norm = frobenius(update)
        row = {
            COLUMN_MODULE: name,
            COLUMN_LAYER: update.layer,
            COLUMN_KIND: update.kind,
            COLUMN_RANK: len(update.singular),
            COLUMN_NORM: norm,
            COLUMN_RELATIVE_NORM: norm / weight_norm(layer),
            COLUMN_EFFECTIVE_RANK: effective_rank(update.singular),
            COLUMN_ENERGY_RANK: energy_rank(update.singular),
            COLUMN_SINGULAR_VALUES: [round(float(s), 6) for s in update.singular],
        }
        if intruder_top_k:
            weight = base_weight(layer).cpu()
            row[COLUMN_INTRUDERS] = intruders(weight, update, intruder_top_k, intruder_threshold)
        rows.append(row)
    return pd.DataFrame(rows)


def summary(frame: pd.DataFrame) -> dict[str, float]:
    """The few figures a run (an inspection, a sweep trial) keeps of a model's update table."""
    figures = {
        METRIC_UPDATE_EFFECTIVE_RANK: float(frame[COLUMN_EFFECTIVE_RANK].median()),
        METRIC_UPDATE_ENERGY_RANK: float(frame[COLUMN_ENERGY_RANK].median()),
        METRIC_UPDATE_RELATIVE_NORM_MAX: float(frame[COLUMN_RELATIVE_NORM].max()),
        METRIC_UPDATE_RELATIVE_NORM_MEDIAN: float(frame[COLUMN_RELATIVE_NORM].median()),
    }
    if COLUMN_INTRUDERS in frame:
        figures[METRIC_INTRUDERS] = float(frame[COLUMN_INTRUDERS].sum())
    return figures


def similarity(first, second) -> pd.DataFrame:
    """Per module both PEFT models adapt: the subspace similarity of their updates' top directions
    (k: the smaller rank), of their single top direction, and its value by chance."""
    theirs = lora_layers(second)
    rows = []
    for name, layer in lora_layers(first).items():
        if name in theirs:
            mine, other = of_layer(name, layer), of_layer(name, theirs[name])
            rows.append(
                {
                    COLUMN_MODULE: name,
                    COLUMN_LAYER: mine.layer,
                    COLUMN_KIND: mine.kind,
                    COLUMN_SIMILARITY: subspace_similarity(mine, other),
                    COLUMN_SIMILARITY_TOP1: subspace_similarity(mine, other, 1),
                    COLUMN_SIMILARITY_CHANCE: min(mine.left.shape[1], other.left.shape[1]) / mine.left.shape[0],
                }
            )
    return pd.DataFrame(rows)
