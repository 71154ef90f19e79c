"""`evaluate`: an adapter against its base model, on the same held-out tokens and prompts.

The procedure, top to bottom: resolve the model URI -> load the base once and apply the adapter
-> load the test split the adapter was trained on (or `--data`) -> perplexity with the adapter
and, on the same tokens, with it switched off -> greedy generation on a prompt suite, both ways,
timed -> with `--merged`, merge the adapter into the base and compare -> log it all to a run
linked to the model, and tag a registered version with the headline metrics.

    lora-study evaluate --model-uri models:/lora-study-smollm2-135m@challenger --merged

The loss functions at the top are also what `train` evaluates with.
"""

import json
import math
import os
import re
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import torch
import torch.nn.functional as F

from lora_study import data as data_stage
from lora_study import models, registry, serving
from lora_study.config import DataConfig, EvaluateConfig
from lora_study.errors import UserInputError
from lora_study.memory import PeakMemory
from lora_study.packing import IGNORE_INDEX, collate, records
from lora_study.tracking import (
    ARTIFACT_GENERATIONS,
    BASE_PREFIX,
    MERGED_PREFIX,
    METRIC_BASE_ROUGE_L,
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_EVAL_PEAK_MEMORY_MB,
    METRIC_FIRST_TOKEN_LATENCY_MS,
    METRIC_GEN_LATENCY_P50_MS,
    METRIC_GEN_LATENCY_P95_MS,
    METRIC_GEN_TOKENS_PER_S,
    METRIC_MERGED_LOSS_DIFF_PCT,
    METRIC_MERGED_MATCHES,
    METRIC_MERGED_MAX_LOGPROB_DIFF,
    METRIC_MERGED_OUTPUTS_MATCH_PCT,
    METRIC_MERGED_SPEEDUP,
    METRIC_PERPLEXITY_IMPROVEMENT_PCT,
    METRIC_ROUGE_L,
    METRIC_TEST_LOSS,
    METRIC_TEST_PERPLEXITY,
    PARAM_BASE_MODEL_SHA256,
    PARAM_DATASET_DIGEST,
    TAG_EVALUATED_MODEL_URI,
    TAG_EVALUATED_REGISTERED_MODEL,
    TAG_EVALUATED_RUN_ID,
    TAG_EVALUATED_VERSION,
    TAG_EVALUATION_RUN_ID,
    TAG_MEMORY_KIND,
    log_params,
    param_value,
    stage_run,
)

TEXT_PROMPT_TOKENS = 32  # for plain text, a test row's first tokens are the prompt
# How far the merged model's test loss may stray from the unmerged adapter's: merging rounds
# W + BA to the weights' dtype (bf16 keeps 8 bits of mantissa; 4-bit bases are re-quantized).
MERGE_TOLERANCE_PCT = {"float32": 0.01, "bfloat16": 1.0, "float16": 0.5, "quantized": 2.0}


# --- loss and perplexity -----------------------------------------------------------------------


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
    loss = F.cross_entropy(
        logits(model, batch, device).flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
        reduction="sum",
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
        text = serving.format_prompt(prompt, prompt_format, tokenizer)
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
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                do_sample=False, pad_token_id=tokenizer.pad_token_id, streamer=clock,
            )  # fmt: skip
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


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased alphanumeric tokens (rouge-score's default tokenizer)."""
    a, b = _rouge_tokens(candidate), _rouge_tokens(reference)
    if not a or not b:
        return 0.0
    lcs = _lcs_length(a, b)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def _rouge_tokens(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def mean_rouge_l(texts: list[str], prompts: list[Prompt]) -> float | None:
    scored = [rouge_l(text, p.reference) for text, p in zip(texts, prompts) if p.reference]
    return sum(scored) / len(scored) if scored else None


# --- the adapter against its base ----------------------------------------------------------------


@dataclass
class Evaluation:
    metrics: dict[str, float]
    table: pd.DataFrame  # prompt, reference, base and adapter outputs, side by side


def evaluate_adapter(model, tokenizer, rows: list[dict], prompts: list[Prompt], cfg: EvaluateConfig,
                     dtype) -> Evaluation:  # fmt: skip
    """Test loss and generation of a PEFT model, with its adapter and without (the base).

    A model with no adapter (`base:`) is measured once, and is its own base.
    """
    with_adapter = hasattr(model, "disable_adapter")
    test_loss = mean_loss(model, rows, cfg.batch_size, tokenizer.pad_token_id, dtype)
    base_loss = test_loss
    if with_adapter:
        with model.disable_adapter():
            base_loss = mean_loss(model, rows, cfg.batch_size, tokenizer.pad_token_id, dtype)
    metrics = {
        METRIC_TEST_LOSS: test_loss,
        METRIC_TEST_PERPLEXITY: perplexity(test_loss),
        METRIC_BASE_TEST_PERPLEXITY: perplexity(base_loss),
        METRIC_PERPLEXITY_IMPROVEMENT_PCT: 100 * (1 - perplexity(test_loss) / perplexity(base_loss)),
    }
    table = pd.DataFrame({"prompt": [p.text for p in prompts], "reference": [p.reference for p in prompts]})
    if not prompts:
        return Evaluation(metrics, table)
    adapter_out = base_out = generate_timed(model, tokenizer, prompts, cfg.max_new_tokens, dtype)
    if with_adapter:
        with model.disable_adapter():
            base_out = generate_timed(model, tokenizer, prompts, cfg.max_new_tokens, dtype)
    metrics.update(adapter_out.metrics())
    metrics.update({BASE_PREFIX + key: value for key, value in base_out.metrics().items()})
    rouge, base_rouge = mean_rouge_l(adapter_out.texts, prompts), mean_rouge_l(base_out.texts, prompts)
    if rouge is not None:
        metrics.update({METRIC_ROUGE_L: rouge, METRIC_BASE_ROUGE_L: base_rouge})
    table["base_output"], table["adapter_output"] = base_out.texts, adapter_out.texts
    return Evaluation(metrics, table)


def check_merged(model, tokenizer, rows: list[dict], prompts: list[Prompt], cfg: EvaluateConfig, dtype,
                 unmerged: Evaluation, weights: str) -> tuple[torch.nn.Module, Evaluation]:  # fmt: skip
    """Merge the adapter into the base weights (in place) and compare with the unmerged adapter.

    `weights` is the base weights' dtype name, or `quantized`: it sets the tolerance.
    """
    batch = collate(rows[: cfg.batch_size], tokenizer.pad_token_id)
    unmerged_logprobs = _target_logprobs(model, batch, dtype)
    merged = model.merge_and_unload()
    merged_loss = mean_loss(merged, rows, cfg.batch_size, tokenizer.pad_token_id, dtype)
    unmerged_loss = unmerged.metrics[METRIC_TEST_LOSS]
    loss_diff_pct = 100 * abs(merged_loss - unmerged_loss) / unmerged_loss
    logprob_diff = (_target_logprobs(merged, batch, dtype) - unmerged_logprobs).abs().max()
    metrics = {
        METRIC_MERGED_MAX_LOGPROB_DIFF: float(logprob_diff),
        METRIC_MERGED_LOSS_DIFF_PCT: loss_diff_pct,
        METRIC_MERGED_MATCHES: float(loss_diff_pct <= MERGE_TOLERANCE_PCT[weights]),
    }
    table = unmerged.table.copy()
    if prompts:
        out = generate_timed(merged, tokenizer, prompts, cfg.max_new_tokens, dtype)
        same = sum(a == b for a, b in zip(out.texts, unmerged.table["adapter_output"]))
        metrics[METRIC_MERGED_OUTPUTS_MATCH_PCT] = 100 * same / len(prompts)
        metrics.update({MERGED_PREFIX + key: value for key, value in out.metrics().items()})
        speed, unmerged_speed = out.metrics()[METRIC_GEN_TOKENS_PER_S], unmerged.metrics[METRIC_GEN_TOKENS_PER_S]
        metrics[METRIC_MERGED_SPEEDUP] = speed / unmerged_speed
        table["merged_output"] = out.texts
    return merged, Evaluation(metrics, table)


@torch.no_grad()
def _target_logprobs(model, batch: dict, dtype) -> torch.Tensor:
    """Log-probabilities of the batch's target tokens: what the test loss is made of."""
    device = next(model.parameters()).device
    model.eval()
    with autocast(device, dtype):
        scores = logits(model, batch, device)
    targets = batch["targets"].to(device)
    keep = targets != IGNORE_INDEX
    logprobs = torch.log_softmax(scores.float(), dim=-1)
    return logprobs[keep].gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)


# --- what is evaluated, and on what ----------------------------------------------------------------


def load_subject(source: registry.ModelSource, where: torch.device, dtype):
    """The model under test (the base with the adapter applied) and its tokenizer and base ref."""
    if source.is_adapter:
        model, tokenizer, ref = serving.load_adapter(str(source.adapter_dir), source.reference)
    else:
        ref = models.resolve(source.base_model)
        model, tokenizer = models.load_base(ref, "none", dtype, where)[0].eval(), models.load_tokenizer(ref)
        return model, tokenizer, ref
    if source.reference["quantization"] == "none":
        model.to(where)
    return model, tokenizer, ref


def evaluation_data(cfg: EvaluateConfig, source: registry.ModelSource, ref, tokenizer) -> data_stage.PreparedData:
    """`--data`; else the data the adapter's run trained on; for a bare base, the default data."""
    if cfg.data:
        prepared = data_stage.load_prepared(cfg.data)
    elif source.run_id is not None:
        prepared = _training_data(source.run_id, ref, tokenizer)
    else:
        prepared = data_stage.prepare(DataConfig(), ref, tokenizer)[0]
    data_stage.check_tokenizer(prepared, models.tokenizer_digest(tokenizer), ref.name)
    return prepared


def _training_data(run_id: str, ref, tokenizer) -> data_stage.PreparedData:
    """Rebuild (from the cache, usually) the prepared data the run trained on, from its params."""
    logged = mlflow.MlflowClient().get_run(run_id).data.params
    params = {key: param_value(value) for key, value in logged.items()}
    if params.get("data"):
        return data_stage.load_prepared(params["data"])
    data = DataConfig.model_validate({key: params[key] for key in DataConfig.model_fields if key in params})
    prepared = data_stage.prepare(data, ref, tokenizer)[0]
    if prepared.meta["digest"] != params.get(PARAM_DATASET_DIGEST, prepared.meta["digest"]):
        raise UserInputError(
            f"the data of run {run_id} ({data.dataset}) no longer prepares to the rows it trained on "
            f"(dataset_digest {prepared.meta['digest'][:12]}, the run has {params[PARAM_DATASET_DIGEST][:12]}); "
            "pass --data with that data's `prepare` run or folder"
        )
    return prepared


def prompt_suite(cfg: EvaluateConfig, rows: list[dict], data_format: str, tokenizer, prompt_format: str) -> list[Prompt]:
    if cfg.max_prompts == 0:
        return []
    if cfg.prompts:
        return read_prompts(cfg.prompts, tokenizer, prompt_format, cfg.max_prompts)
    return prompts_from_rows(rows, data_format, tokenizer, cfg.max_prompts, cfg.max_new_tokens)


# --- the entry point ---------------------------------------------------------------------------------


def run_evaluate(cfg: EvaluateConfig) -> str:
    """The `evaluate` entry point; returns the MLflow run id. Bad input fails before the run."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    source = registry.resolve_model_uri(cfg.model_uri)
    where = models.device()
    dtype = models.autocast_dtype(cfg.precision, where)
    model, tokenizer, ref = load_subject(source, where, dtype)
    prepared = evaluation_data(cfg, source, ref, tokenizer)
    prompt_format = source.reference["prompt_format"] if source.is_adapter else prepared.meta["format"]
    rows = prepared.rows("test")
    prompts = prompt_suite(cfg, rows, prepared.meta["format"], tokenizer, prompt_format)
    with stage_run("evaluate", **link_tags(source)) as run:
        log_params({**cfg.model_dump(), "base_model": ref.name, PARAM_BASE_MODEL_SHA256: ref.sha256 or "",
                    PARAM_DATASET_DIGEST: prepared.meta["digest"], "prompt_count": len(prompts)})  # fmt: skip
        with PeakMemory(where) as peak:
            result = evaluate_adapter(model, tokenizer, rows, prompts, cfg, dtype)
            if cfg.merged and source.is_adapter:
                weights = "quantized" if source.reference["quantization"] != "none" else source.reference["dtype"]
                model, merged = check_merged(model, tokenizer, rows, prompts, cfg, dtype, result, weights)
                result = Evaluation({**result.metrics, **merged.metrics}, merged.table)
        metrics = {**result.metrics, METRIC_EVAL_PEAK_MEMORY_MB: peak.megabytes}
        mlflow.log_metrics(metrics, model_id=source.model_id)
        mlflow.set_tag(TAG_MEMORY_KIND, peak.kind)
        mlflow.log_table(result.table, ARTIFACT_GENERATIONS)
        if source.registered_model:
            registry.tag_version(source.registered_model, source.version,
                                 {**_headline(metrics), TAG_EVALUATION_RUN_ID: run.info.run_id})  # fmt: skip
    _print_summary(metrics)
    return run.info.run_id


def link_tags(source: registry.ModelSource) -> dict[str, str]:
    tags = {TAG_EVALUATED_MODEL_URI: source.uri}
    if source.run_id:
        tags[TAG_EVALUATED_RUN_ID] = source.run_id
    if source.registered_model:
        tags[TAG_EVALUATED_REGISTERED_MODEL] = source.registered_model
        tags[TAG_EVALUATED_VERSION] = source.version
    return tags


def _headline(metrics: dict[str, float]) -> dict[str, str]:
    keys = (METRIC_TEST_PERPLEXITY, METRIC_BASE_TEST_PERPLEXITY, METRIC_PERPLEXITY_IMPROVEMENT_PCT,
            METRIC_ROUGE_L, METRIC_GEN_TOKENS_PER_S)  # fmt: skip
    return {key: f"{metrics[key]:.4g}" for key in keys if key in metrics}


def _print_summary(metrics: dict[str, float]) -> None:
    print(
        f"test perplexity {metrics[METRIC_TEST_PERPLEXITY]:.3f} (base {metrics[METRIC_BASE_TEST_PERPLEXITY]:.3f}, "
        f"{metrics[METRIC_PERPLEXITY_IMPROVEMENT_PCT]:+.2f}% better)"
    )
    if METRIC_MERGED_MATCHES in metrics:
        verdict = "matches" if metrics[METRIC_MERGED_MATCHES] else "DOES NOT match"
        difference = metrics[METRIC_MERGED_LOSS_DIFF_PCT]
        print(f"merged model {verdict} the adapter: test loss differs by {difference:.4f}%")
