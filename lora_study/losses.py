"""The loss a LoRA study measures: token-weighted next-token cross-entropy over packed rows.

`train` optimizes it, evaluations report it (and its exp, perplexity); every target token counts
once, however the rows are batched or packed.
"""

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from lora_study.packing import IGNORE_INDEX, collate


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def logits(model, batch: dict, device: torch.device) -> torch.Tensor:
    """The model's logits for a collated batch of packed rows."""
    mask = batch["attention_mask"]
    return model(
        input_ids=batch["input_ids"].to(device),
        position_ids=batch["position_ids"].to(device),
        attention_mask=mask.to(device) if mask is not None else None,
    ).logits


def loss_sum(model, batch: dict, device: torch.device) -> tuple[torch.Tensor, int]:
    """Summed next-token loss over the batch's target tokens, and how many there are."""
    targets = batch["targets"].to(device)
    scores = logits(model, batch, device).flatten(0, 1).float()
    loss = F.cross_entropy(scores, targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((targets != IGNORE_INDEX).sum())


@torch.no_grad()
def mean_loss(model, rows: list[dict], batch_size: int, pad_id: int, dtype: torch.dtype | None) -> float:
    """Token-weighted mean loss over `rows`: every target token counts once, however batched."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size], pad_id)
        with autocast(device, dtype):
            loss, tokens = loss_sum(model, batch, device)
        total, count = total + float(loss), count + tokens
    model.train(was_training)
    return total / count


@torch.no_grad()
def target_logprobs(model, batch: dict, dtype) -> torch.Tensor:
    """Log-probabilities of the batch's target tokens: what the loss is made of."""
    device = next(model.parameters()).device
    model.eval()
    with autocast(device, dtype):
        scores = logits(model, batch, device)
    targets = batch["targets"].to(device)
    keep = targets != IGNORE_INDEX
    logprobs = torch.log_softmax(scores.float(), dim=-1)
    return logprobs[keep].gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))  # exp overflows a float past ~709
