"""Evaluation: token-weighted loss and perplexity of a model on prepared rows."""

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from lora_study.packing import IGNORE_INDEX, collate


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def loss_sum(model, batch: dict, device: torch.device) -> tuple[torch.Tensor, int]:
    """Summed next-token loss over the batch's target tokens, and how many there are."""
    mask = batch["attention_mask"]
    logits = model(
        input_ids=batch["input_ids"].to(device),
        position_ids=batch["position_ids"].to(device),
        attention_mask=mask.to(device) if mask is not None else None,
    ).logits
    targets = batch["targets"].to(device)
    loss = F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
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


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))  # exp overflows a float past ~709
