"""Forgetting: how far an adapter moved the base model on text outside its training data.

Two numbers, on the same rows: `forgetting_loss_delta`, the mean token loss with the adapter
minus without it, and `forgetting_kl`, the mean per-token KL(base || adapter) over the whole
vocabulary. The default text is sampled from the base model itself (seeded, cached per base
model), so it needs no download and measures how far the adapter moved the base's own
distribution; `--forgetting-data` takes any `prepare` source instead (its test split). Biderman et al. 2024
("LoRA Learns Less and Forgets Less") treat this as half of the trade-off.
"""

import json
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from lora_study import cache, data, models
from lora_study.config import DataConfig
from lora_study.data.packing import IGNORE_INDEX, collate
from lora_study.errors import UserInputError
from lora_study.losses import autocast, logits
from lora_study.names import METRIC_FORGETTING_KL, METRIC_FORGETTING_LOSS_DELTA

SELF = "self"  # text sampled from the base model
NONE = "none"  # no forgetting measurement
TOKENS = 1024  # 16 rows of 64: under 10% of a default sweep trial's time on a 2-core CPU
ROW_TOKENS = 64  # short rows, many at once: sampling is 63 steps of a batch of 16, not 1023 of one
SAMPLING_SEED = 0
BATCH_SIZE = 8


@dataclass(frozen=True)
class ForgettingSet:
    """The rows forgetting is measured on, and what they are."""

    rows: list[dict]
    description: str


@dataclass(frozen=True)
class BaseDistribution:
    """The base model's next-token distributions on a forgetting set: computed once, compared per adapter."""

    logprobs: list[torch.Tensor]  # per batch: (scored positions, vocabulary), on the CPU
    loss: float  # mean token loss


def load(spec: str, ref: models.BaseModelRef, tokenizer, model, seq_len: int, trained_on: str) -> ForgettingSet | None:
    """The forgetting set named by `--forgetting-data`: `self`, `none` (None) or a `prepare`
    source other than `trained_on`, the adapter's own `--dataset`."""
    if spec == NONE:
        return None
    if spec == trained_on:
        raise UserInputError(
            f"--forgetting-data {spec} is the training data: forgetting is measured on other text; "
            f"pass another source, or `{SELF}`"
        )
    length = min(seq_len, ROW_TOKENS)
    if spec == SELF:
        samples = _sampled_from_base(ref, tokenizer, model, TOKENS // length, length)
        rows = [_row(ids) for ids in samples]
        return ForgettingSet(rows, f"{len(rows) * length} tokens sampled from {ref.name} (seed {SAMPLING_SEED})")
    prepared, _ = data.prepare(DataConfig(dataset=spec, seq_len=length, decontaminate_ngram=0), ref, tokenizer)
    rows = prepared.rows("test")[: max(1, TOKENS // length)]
    return ForgettingSet(rows, f"{sum(len(r['input_ids']) for r in rows)} tokens of {spec}")


def _row(ids: list[int]) -> dict:
    """A packed row of one document, every token scored."""
    return {"input_ids": ids, "labels": list(ids), "doc_lengths": [len(ids)]}


def _sampled_from_base(ref: models.BaseModelRef, tokenizer, model, count: int, length: int) -> list[list[int]]:
    """`count` sequences of `length` tokens drawn from the base at temperature 1; cached per base."""
    identity = (ref.sha256 or ref.revision or ref.name).replace("/", "_")[:32]
    path = cache.cache_root() / "forgetting" / f"{identity}-seed{SAMPLING_SEED}-{count}x{length}.json"
    if path.exists():
        return json.loads(path.read_text())
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]), torch.no_grad(), _adapter_disabled(model):
        torch.manual_seed(SAMPLING_SEED)
        out = model.generate(
            input_ids=torch.full((count, 1), start, device=device),
            attention_mask=torch.ones((count, 1), dtype=torch.long, device=device),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            min_new_tokens=length - 1,
            max_new_tokens=length - 1,
            pad_token_id=tokenizer.pad_token_id,
        )
    samples = out.tolist()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(json.dumps(samples))
    partial.replace(path)  # atomic: another process reads all of it or nothing
    return samples


def evaluate(model, general_text: ForgettingSet, pad_id: int, dtype, base: BaseDistribution | None = None):
    """Forgetting of `model` (a base with its adapter) on `general_text`; `base`, the base's
    distribution on it, saves a forward pass where it is known already."""
    base = base or base_distribution(model, general_text.rows, pad_id, dtype)
    return measure(model, general_text.rows, base, pad_id, dtype)


@torch.no_grad()
def base_distribution(model, rows: list[dict], pad_id: int, dtype) -> BaseDistribution:
    """The base's log-probabilities on `rows`; with adapters attached, they are disabled for it."""
    batches, loss, count = [], 0.0, 0
    with _adapter_disabled(model):
        for logprobs, targets in _scored_logprobs(model, rows, pad_id, dtype):
            loss += float(-logprobs.gather(-1, targets.unsqueeze(-1)).sum())
            batches.append(logprobs.cpu())  # kept for the whole sweep: not in a GPU's peak memory
            count += len(targets)
    return BaseDistribution(batches, loss / count)


@torch.no_grad()
def measure(model, rows: list[dict], base: BaseDistribution, pad_id: int, dtype) -> dict[str, float]:
    """`forgetting_loss_delta` and `forgetting_kl` of `model` (the base with its adapter)."""
    loss, kl, count = 0.0, 0.0, 0
    for (adapted, targets), logprobs in zip(_scored_logprobs(model, rows, pad_id, dtype), base.logprobs):
        adapted, targets = adapted.cpu(), targets.cpu()
        loss += float(-adapted.gather(-1, targets.unsqueeze(-1)).sum())
        # KL(base || adapter) = sum_v p_base (log p_base - log p_adapter): the difference first,
        # so that a tiny KL is not lost between two large sums
        kl += float(torch.linalg.vecdot(logprobs.exp(), logprobs - adapted).sum())
        count += len(targets)
    return {METRIC_FORGETTING_LOSS_DELTA: loss / count - base.loss, METRIC_FORGETTING_KL: kl / count}


def _adapter_disabled(model):
    """The base alone: a PeftModel's adapters off for the block; any other model as it is."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()


def _scored_logprobs(model, rows: list[dict], pad_id: int, dtype):
    """(log-probabilities, targets) of the scored positions, batch by batch."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for start in range(0, len(rows), BATCH_SIZE):
        batch = collate(rows[start : start + BATCH_SIZE], pad_id)
        with autocast(device, dtype):
            scores = logits(model, batch, device)
        targets = batch["targets"].to(device)
        keep = targets != IGNORE_INDEX
        yield torch.log_softmax(scores[keep].float(), dim=-1), targets[keep]
    model.train(was_training)
