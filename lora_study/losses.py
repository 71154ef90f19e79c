"""The loss a LoRA study measures: token-weighted next-token cross-entropy over packed rows.

`train` optimizes it, evaluations report it (and its exp, perplexity); every target token counts
once, however the rows are batched or packed.

Where the model's output head is a plain linear layer that takes no gradient (the LoRA case),
the loss is taken from the last hidden states a chunk of tokens at a time, as Liger's and
torchtune's chunked losses do: the (tokens x vocabulary) logits, 400 MB in fp32 for 8 rows of
256 tokens over SmolLM2's 49k words, never exist whole, and each chunk's gradient is taken while
its logits are at hand, so backward is one multiply. The arithmetic is the plain path's: the
head's matmul in the autocast dtype, the softmax in fp32.
"""

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from lora_study.data.packing import IGNORE_INDEX, collate


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def logits(model, batch: dict, device: torch.device) -> torch.Tensor:
    """The model's logits for a collated batch of packed rows."""
    mask = batch["attention_mask"]
    return model(
        input_ids=batch["input_ids"].to(device),
        position_ids=batch["position_ids"].to(device),
        attention_mask=mask.to(device) if mask is not None else None,
    ).logits


CHUNK_ELEMENTS = 128 * 49152  # logits per chunk (128 rows of SmolLM2's): 24 MB in fp32, in a buffer every chunk reuses
# config fields by which a model scales or caps its logits after the head: such a model takes the plain path
LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


def loss_sum(model, batch: dict, device: torch.device) -> tuple[torch.Tensor, int]:
    """Summed next-token loss over the batch's target tokens, and how many there are."""
    targets = batch["targets"].to(device)
    head = chunkable_head(model)
    if head is None:
        scores = logits(model, batch, device).flatten(0, 1).float()
        loss = F.cross_entropy(scores, targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    else:
        with head_skipped(head):  # the model returns its last hidden states where logits would be
            hidden = logits(model, batch, device).flatten(0, 1)
        rows = max(1, CHUNK_ELEMENTS // head.out_features)
        loss = ChunkedCrossEntropy.apply(hidden, head.weight, head.bias, targets.flatten(), rows)
    return loss, int((targets != IGNORE_INDEX).sum())


def chunkable_head(model) -> nn.Linear | None:
    """The model's output head where the chunked loss applies: an `nn.Linear` that takes no
    gradient here, whose output the model returns unchanged; else None (a head in training, a
    quantized or wrapped one, logits capped or scaled after the head)."""
    inner = getattr(model, "module", model)  # under DistributedDataParallel
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    config = getattr(inner, "config", None)
    if type(head) is not nn.Linear:
        return None
    trained = head.weight.requires_grad or (head.bias is not None and head.bias.requires_grad)
    if trained and torch.is_grad_enabled():
        return None
    configs = [config, config.get_text_config()] if hasattr(config, "get_text_config") else [config]
    if any(getattr(c, name, None) not in (None, 1.0) for c in configs for name in LOGIT_TRANSFORMS):
        return None
    return head


@contextlib.contextmanager
def head_skipped(head: nn.Module):
    """The head returns its input, for the span of one forward pass, as an instance attribute:
    the class's forward is untouched, and an instance's own (accelerate's hooks) is put back."""
    own = head.__dict__.get("forward")
    head.forward = _unchanged
    try:
        yield
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def _unchanged(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


class ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T + bias` against `targets` (IGNORE_INDEX: no
    loss), `rows` tokens at a time, in two buffers reused by every chunk. With a gradient to
    take, each chunk's gradient for `hidden`, (softmax - one-hot) @ weight, is computed in the
    forward pass and kept (tokens x hidden size); the weight and bias are frozen and get none."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, rows):
        dtype = compute_dtype(hidden)  # the head's matmul in the autocast dtype, as the model computes it
        weight, rows = weight.to(dtype), min(rows, hidden.size(0))
        logits = torch.empty(rows, weight.size(0), dtype=dtype, device=hidden.device)
        scores = torch.empty(rows, weight.size(0), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if hidden.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.size(0), rows):
            chunk, wanted = hidden[start : start + rows].to(dtype), targets[start : start + rows]
            size, counted = chunk.size(0), (wanted != IGNORE_INDEX).unsqueeze(1)
            picked = wanted.clamp(min=0).unsqueeze(1)
            torch.mm(chunk, weight.T, out=logits[:size])
            chunk_scores = scores[:size].copy_(logits[:size])
            if bias is not None:
                chunk_scores.add_(bias)
            target_scores = chunk_scores.gather(1, picked)
            top = chunk_scores.amax(1, keepdim=True)
            sums = chunk_scores.sub_(top).exp_().sum(1, keepdim=True)  # the scores become exp(score - top)
            total += ((top + sums.log() - target_scores) * counted).sum()
            if grad_hidden is not None:
                probs = chunk_scores.mul_(counted / sums).scatter_add_(1, picked, -counted.float())
                grad_hidden[start : start + size] = torch.mm(logits[:size].copy_(probs), weight)
        ctx.save_for_backward(grad_hidden)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_output.to(grad_hidden.dtype), None, None, None, None


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    device = tensor.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else tensor.dtype


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
