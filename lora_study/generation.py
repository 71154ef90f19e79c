"""Generating text: the prompt suite an evaluation asks, timed greedy answers, batched greedy
answers, ROUGE-L and exact match, and the one answer a served model gives a request."""

import functools
import json
import math
import re
import statistics
import string
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lora_study.data.packing import IGNORE_INDEX, records
from lora_study.data.templates import user_prompt
from lora_study.errors import UserInputError
from lora_study.losses import autocast
from lora_study.names import (
    METRIC_FIRST_TOKEN_LATENCY_MS,
    METRIC_GEN_LATENCY_P50_MS,
    METRIC_GEN_LATENCY_P95_MS,
    METRIC_GEN_TOKENS_PER_S,
)

TEXT_PROMPT_TOKENS = 32  # for plain text, a test row's first tokens are the prompt


# --- the prompt suite --------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    ids: list[int]  # what the model is given, exactly as it would see it
    text: str
    reference: str | None  # the expected answer, where the data has one


def prompts_from_rows(rows: list[dict], fmt: str, tokenizer, limit: int, max_new_tokens: int) -> list[Prompt]:
    """Prompts cut from the test rows, in the tokens the model was trained on.

    Instruction and chat records: the tokens before the answer, and the answer as reference.
    Plain text: a row's first TEXT_PROMPT_TOKENS tokens, and the tokens after them.
    """
    prompts = []
    for row in rows:
        for ids, labels in records(row):
            if fmt == "text":
                cut, end = TEXT_PROMPT_TOKENS, TEXT_PROMPT_TOKENS + max_new_tokens
            else:
                cut = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), 0)
                end = next((i for i in range(cut, len(labels)) if labels[i] == IGNORE_INDEX), len(labels))
            if cut == 0 or cut >= len(ids):
                continue
            reference = tokenizer.decode(ids[cut:end], skip_special_tokens=True).strip()
            prompts.append(Prompt(ids[:cut], tokenizer.decode(ids[:cut]), reference))
            if len(prompts) == limit:
                return prompts
    return prompts


def read_prompts(path: str, tokenizer, prompt_format: str, limit: int) -> list[Prompt]:
    """Prompts from a file: one per line (.txt), or JSONL with `prompt` and optional `reference`.

    Each prompt is wrapped the way the adapter's training data was, as the served model does.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserInputError(f"--prompts: file {path} does not exist")
    prompts = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        prompt, reference = line, None
        if file.suffix == ".jsonl":
            prompt, reference = _jsonl_prompt(line, f"--prompts {path}, line {number}")
        text = user_prompt(prompt, prompt_format, tokenizer)
        prompts.append(Prompt(tokenizer(text, add_special_tokens=False)["input_ids"], text, reference))
    if not prompts:
        raise UserInputError(f"--prompts {path}: no prompts in the file")
    return prompts[:limit]


def _jsonl_prompt(line: str, where: str) -> tuple[str, str | None]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserInputError(f"{where}: not valid JSON ({error.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise UserInputError(f'{where}: needs a string field `prompt`, as in {{"prompt": "...", "reference": "4"}}')
    reference = record.get("reference")
    return record["prompt"], None if reference is None else str(reference)


# --- generation, timed ---------------------------------------------------------------------------


@dataclass
class Generations:
    texts: list[str]
    new_tokens: list[int]
    latencies_s: list[float]
    first_token_s: list[float]

    def metrics(self) -> dict[str, float]:
        latencies_ms = sorted(1000 * s for s in self.latencies_s)
        return {
            METRIC_GEN_TOKENS_PER_S: sum(self.new_tokens) / sum(self.latencies_s),
            METRIC_GEN_LATENCY_P50_MS: statistics.median(latencies_ms),
            METRIC_GEN_LATENCY_P95_MS: _percentile(latencies_ms, 95),
            METRIC_FIRST_TOKEN_LATENCY_MS: 1000 * statistics.median(self.first_token_s),
        }


class _FirstTokenClock:
    """A `generate` streamer that notes when the first new token arrives.

    `generate` hands a streamer the prompt first, then each new token as it is chosen.
    """

    def __init__(self):
        self.started, self.first_token_s, self._puts = time.perf_counter(), math.nan, 0

    def put(self, value):
        self._puts += 1
        if self._puts == 2:
            self.first_token_s = time.perf_counter() - self.started

    def end(self):
        pass


@torch.no_grad()
def generate_timed(model, tokenizer, prompts: list[Prompt], max_new_tokens: int, dtype) -> Generations:
    """Greedy answers, one prompt at a time (a request's latency), after one warm-up call."""
    device = next(model.parameters()).device
    model.eval()
    out = Generations([], [], [], [])
    for number, prompt in enumerate([prompts[0], *prompts]):
        ids = torch.tensor([prompt.ids], device=device)
        clock = _FirstTokenClock()
        with autocast(device, dtype):
            output = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                streamer=clock,
            )
        elapsed = time.perf_counter() - clock.started
        if number == 0:
            continue  # the warm-up: first-call costs are not a request's latency
        new = output[0, ids.shape[1] :]
        out.texts.append(tokenizer.decode(new, skip_special_tokens=True))
        out.new_tokens.append(len(new))
        out.latencies_s.append(elapsed)
        out.first_token_s.append(clock.first_token_s)
    return out


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile, as numpy's default."""
    position = (len(sorted_values) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


BASE_ROW = "__base__"  # PEFT's adapter name for a row of a mixed batch that takes no adapter


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    adapter_names: list[str] | None = None,
) -> list[str]:
    """Answers to prompts, as a served model gives them, in one batch: greedy at temperature 0,
    else sampled. Left-padded, so each row's answer is the one it gets alone. `adapter_names`
    gives each row its adapter (PEFT's mixed-adapter batch; BASE_ROW for none); without it, the
    model's active adapter answers all."""
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(model.device)
    sampling = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
    if adapter_names is not None:
        sampling["adapter_names"] = adapter_names
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling)
    return tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@torch.no_grad()
def greedy_answers(
    model, tokenizer, prompts: list[Prompt], max_new_tokens: int, dtype, batch_size: int = 8
) -> list[str]:
    """Greedy answers to prompts as the model sees them (their token ids), a batch at a time,
    left-padded with an attention mask: each row's answer is the one it gets alone."""
    device = next(model.parameters()).device
    model.eval()
    answers = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(p.ids) for p in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(batch):
            ids[row, width - len(prompt.ids) :], mask[row, width - len(prompt.ids) :] = torch.tensor(prompt.ids), 1
        with autocast(device, dtype):
            output = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        answers += tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
    return answers


# --- scoring answers ----------------------------------------------------------------------------


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 by rouge-score, the reference implementation users compare with (its default
    tokenizer: lower-cased alphanumeric words, no stemming)."""
    return _rouge_scorer().score(reference, candidate)["rougeL"].fmeasure


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer  # it imports nltk: only when answers are scored

    return rouge_scorer.RougeScorer(["rougeL"])


def mean_rouge_l(texts: list[str], prompts: list[Prompt]) -> float | None:
    scored = [rouge_l(text, p.reference) for text, p in zip(texts, prompts) if p.reference]
    return sum(scored) / len(scored) if scored else None


def exact_match(candidate: str, reference: str) -> float:
    """1.0 if the answer is the reference once both are normalized as SQuAD's evaluation script
    does (lower case, no punctuation, no articles a/an/the, single spaces), else 0.0."""
    return float(_squad_normalized(candidate) == _squad_normalized(reference))


def _squad_normalized(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())
