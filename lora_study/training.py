"""The training loop: one LoRA adapter, fine-tuned on packed rows, measured as it goes.

`setup` checks the settings against the base model and loads the base and the prepared data;
`fine_tune` attaches a fresh adapter and runs the loop (autocast, gradient accumulation,
evaluation every `eval_every` steps), logging through `tracking` and returning what it measured.
`train` runs it once; the sweep runs it once per trial on a base loaded once.
"""

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lora_study import adapters, console, data, logged_models, lora, models, processes, tracking, updates
from lora_study.config import AdapterConfig, BaseModelConfig, DataConfig, TrainConfig
from lora_study.data.packing import IGNORE_INDEX, collate
from lora_study.early_stopping import BestAdapter
from lora_study.errors import UserInputError
from lora_study.losses import autocast, loss_sum, mean_loss, perplexity
from lora_study.memory import PeakMemory
from lora_study.names import (
    METRIC_BEST_EVAL_PERPLEXITY,
    METRIC_BEST_STEP,
    METRIC_EVAL_LOSS,
    METRIC_EVAL_PERPLEXITY,
    METRIC_LEARNING_RATE,
    METRIC_MODEL_MEMORY_MB,
    METRIC_PEAK_MEMORY_MB,
    METRIC_ROWS,
    METRIC_STOPPED_EARLY,
    METRIC_TOKENS_PER_S,
    METRIC_TOTAL_PARAMS,
    METRIC_TRAIN_LOSS,
    METRIC_TRAIN_RUNTIME_S,
    METRIC_TRAIN_TOKENS_PER_S,
    METRIC_TRAINABLE_PARAMS,
    METRIC_TRAINABLE_PERCENT,
    METRIC_TRAINED_TOKENS,
    PARAM_AUTOCAST_DTYPE,
    PARAM_BASE_MODEL_REVISION,
    PARAM_BASE_MODEL_SHA256,
    PARAM_DATASET_DIGEST,
    PARAM_DEVICE,
    PARAM_STEPS,
    PARAM_WORLD_SIZE,
    SPLITS,
    TAG_MEMORY_KIND,
    TAG_PEAK_MEMORY_PER_PROCESS,
)

EvalHook = Callable[[int, float], None]  # (step, eval_loss); the sweep prunes trials with it


@dataclass
class Setup:
    """What one training run works on: loaded once, and reused across trials by the sweep."""

    ref: models.BaseModelRef
    tokenizer: object
    model: torch.nn.Module
    prepared: data.PreparedData
    device: torch.device
    dtype: torch.dtype | None  # the autocast dtype; None trains in fp32
    weights_dtype: torch.dtype  # of the frozen base weights that are not quantized


# --- setup -----------------------------------------------------------------------------------


def check_settings(adapter: AdapterConfig, train: TrainConfig, seq_len: int, config) -> None:
    """Refuse settings that cannot work with this model, all at once, before any work."""
    problems = []
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        problems.append(f"--seq-len {seq_len} is over the model's maximum of {limit} positions")
    if adapter.quantization == "4bit" and train.precision == "fp32":
        problems.append("--quantization 4bit computes in bf16: use --precision auto or bf16")
    if problems:
        raise UserInputError(*problems)


@dataclass
class TrainResult:
    """What one `fine_tune` measured (and logged)."""

    model: torch.nn.Module  # the PeftModel: the base with the trained adapter (its best, with --keep-best)
    eval_losses: dict[int, float] = field(default_factory=dict)  # step -> validation loss; 0 is the base
    metrics: dict[str, float] = field(default_factory=dict)  # the run's final metrics, by their MLflow names
    adapter_step: int = 0  # the step the adapter in `model` is from: the best one's, or the last
    planned_steps: int = 0

    @property
    def final_eval_loss(self) -> float:
        """The validation loss of the adapter in `model`."""
        return self.eval_losses[self.adapter_step]


def setup(data_cfg: DataConfig, base: BaseModelConfig, adapter: AdapterConfig, train: TrainConfig) -> Setup:
    """Load the base model and the prepared data, and check they fit together."""
    from transformers import AutoConfig

    where = models.device()
    started = time.perf_counter()
    ref = models.resolve(base.base_model, base.trust_remote_code)  # the first time, builds it (GGUF)
    resolve_s = time.perf_counter() - started
    config = AutoConfig.from_pretrained(ref.path, revision=ref.revision, trust_remote_code=ref.trust_remote_code)
    check_settings(adapter, train, data_cfg.seq_len, config)
    dtype = models.autocast_dtype(train.precision, where)
    tokenizer = models.load_tokenizer(ref)
    started = time.perf_counter()
    if train.data:
        prepared = data.load_prepared(train.data)
    else:
        prepared = data.prepare(data_cfg, ref, tokenizer)[0]
    check_prepared(prepared, data_cfg, models.tokenizer_digest(tokenizer), base.base_model)
    data_s, started = time.perf_counter() - started, time.perf_counter()
    model, weights_dtype = models.load_base(ref, adapter.quantization, dtype, where)
    lora.resolve_targets(model, adapter.target_modules)  # an unknown name fails before the run
    # said once all is well: bad input stays one line
    rows = ", ".join(f"{prepared.meta.counts[METRIC_ROWS.format(split=split)]} {split}" for split in SPLITS)
    console.say(f"data {train.data or data_cfg.dataset}: rows of {data_cfg.seq_len} tokens: {rows}  {data_s:.0f} s")
    loaded = f"loaded on {where.type}, quantization {adapter.quantization}"
    console.say(f"base {base.base_model}: {loaded}  {resolve_s + time.perf_counter() - started:.0f} s")
    return Setup(ref, tokenizer, model, prepared, where, dtype, weights_dtype)


def check_prepared(prepared, data_cfg: DataConfig, tokenizer_digest: str, base_model: str) -> None:
    data.check_tokenizer(prepared, tokenizer_digest, base_model)
    seq_len, group_by = data_cfg.seq_len, data_cfg.group_by
    if prepared.meta.seq_len != seq_len:
        raise UserInputError(
            f"--seq-len {seq_len} differs from the prepared data's {prepared.meta.seq_len}: pass "
            f"--seq-len {prepared.meta.seq_len} or prepare the data again"
        )
    held = prepared.meta.group_by
    if group_by and held != group_by:  # without --group-by, grouped data trains as one data set
        how = f"with --group-by {held}" if held else "without --group-by"
        raise UserInputError(
            f"--data: prepared {how}, not --group-by {group_by}; prepare it with --group-by {group_by}, "
            "or leave --data empty"
        )


def planned_steps(train: TrainConfig, train_rows: int, processes_: int = 1) -> int:
    """Optimizer steps: --max-steps, or the steps --epochs takes when each reads
    batch size x grad accum x processes rows."""
    if train.max_steps:
        return train.max_steps
    return max(1, math.ceil(train.epochs * train_rows / (train.batch_size * train.grad_accum * processes_)))


# --- the loop --------------------------------------------------------------------------------


def batches(rows: list[dict], batch_size: int, seed: int, pad_id: int):
    """Shuffled batches, epoch after epoch, in an order fixed by the seed."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(rows), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size) or [0]:
            yield collate([rows[i] for i in order[start : start + batch_size]], pad_id)


def prepare_base(s: Setup, adapter: AdapterConfig) -> None:
    """A quantized base made ready to train under an adapter (PEFT's `prepare_model_for_kbit_training`:
    its unquantized weights in fp32); a base in full precision is left as it is."""
    from peft import prepare_model_for_kbit_training

    if adapter.quantization != "none":
        s.model = prepare_model_for_kbit_training(s.model, use_gradient_checkpointing=False)


def fine_tune(
    s: Setup,
    adapter: AdapterConfig,
    train: TrainConfig,
    on_eval: EvalHook | None = None,
    base_eval_loss: float | None = None,
) -> TrainResult:
    """Attach a fresh adapter to `s.model`, train it with `train.training_seed` (its initial
    weights, dropout and batch order), and log as it goes into the active run.

    `on_eval(step, eval_loss)` sees every evaluation, step 0 included. Step 0 is the base model's
    loss (a fresh adapter changes nothing); a sweep that measured it already passes
    `base_eval_loss` instead of measuring it again for every trial.
    """
    prepare_base(s, adapter)
    if train.gradient_checkpointing:
        s.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    seed = train.training_seed
    model = lora.attach(s.model, adapter, seed)
    result = TrainResult(model)
    accelerator = processes.accelerator(s.device)
    trained = accelerator.prepare_model(model)  # the model itself in one process, DDP-wrapped in several
    if processes.rank() > 0:  # its own dropout masks; rank 0 draws as a single process does
        torch.manual_seed(seed + processes.rank())
    world = accelerator.num_processes
    train_rows, validation_rows = s.prepared.rows("train"), s.prepared.rows("validation")
    steps = result.planned_steps = planned_steps(train, len(train_rows), world)
    trainable, total = lora.parameter_counts(model)
    tracking.log_params(
        {
            **adapter.model_dump(),
            **train.model_dump(),
            PARAM_STEPS: steps,
            PARAM_DEVICE: s.device.type,
            PARAM_AUTOCAST_DTYPE: str(s.dtype or "none"),
            PARAM_WORLD_SIZE: world,
        }
    )
    result.metrics = {
        METRIC_TRAINABLE_PARAMS: trainable,
        METRIC_TOTAL_PARAMS: total,
        METRIC_TRAINABLE_PERCENT: 100 * trainable / total,
        METRIC_MODEL_MEMORY_MB: model.get_memory_footprint() / 2**20,
    }
    tracking.log_metrics(result.metrics)

    update = Update.of(model, s, train, steps, accelerator)
    stream = processes.shard(batches(train_rows, train.batch_size, seed, s.tokenizer.pad_token_id))

    best = BestAdapter(train.early_stopping_patience, train.early_stopping_min_delta, train.keep_best)

    def evaluate(step: int, eval_loss: float | None = None) -> None:
        if eval_loss is None:
            eval_loss = mean_loss(model, validation_rows, train.batch_size, s.tokenizer.pad_token_id, s.dtype)
        result.eval_losses[step] = eval_loss
        tracking.log_metrics({METRIC_EVAL_LOSS: eval_loss, METRIC_EVAL_PERPLEXITY: perplexity(eval_loss)}, step=step)
        best.saw(model, step, eval_loss)
        if on_eval is not None:
            on_eval(step, eval_loss)

    progress = console.progress(steps, "train", "step")
    tokens_seen, step_time, started, stopped_early = 0, 0.0, time.perf_counter(), 0
    evaluate(0, base_eval_loss)
    model.train()
    with PeakMemory(s.device) as peak, lora.inputs_uncast(model, adapter, s.dtype):
        for step in range(1, steps + 1):
            tick = time.perf_counter()
            micro = [next(stream) for _ in range(train.grad_accum)]
            step_loss = train_step(trained, micro, s, step, update)
            elapsed = time.perf_counter() - tick
            tokens = sum(b["tokens"] for b in micro)
            tokens_seen, step_time = tokens_seen + tokens, step_time + elapsed
            (step_tokens_per_s,) = processes.summed(accelerator, [tokens / elapsed])
            tracking.log_metrics(
                {
                    METRIC_TRAIN_LOSS: step_loss,
                    METRIC_LEARNING_RATE: update.scheduler.get_last_lr()[0],
                    METRIC_TOKENS_PER_S: step_tokens_per_s,
                },
                step=step,
            )
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{step_tokens_per_s:.0f}")
            if step == steps or (train.eval_every and step % train.eval_every == 0):
                evaluate(step)
                if step < steps and processes.summed(accelerator, [float(best.should_stop)])[0]:
                    stopped_early = step  # every process stops at once
                    break
    progress.close()
    result.adapter_step = best.put_back(model, step)
    peaks = processes.gathered(accelerator, peak.megabytes)
    tokens_per_s = processes.summed(accelerator, [tokens_seen / step_time])[0]
    final = {
        METRIC_TRAIN_TOKENS_PER_S: tokens_per_s,
        METRIC_TRAINED_TOKENS: processes.summed(accelerator, [tokens_seen])[0],
        METRIC_TRAIN_RUNTIME_S: time.perf_counter() - started,
        METRIC_PEAK_MEMORY_MB: max(peaks),
        METRIC_BEST_STEP: result.adapter_step,  # the logged adapter's step, and its validation perplexity
        METRIC_BEST_EVAL_PERPLEXITY: perplexity(result.eval_losses[result.adapter_step]),
        METRIC_STOPPED_EARLY: stopped_early,  # the step early stopping ended it at; 0: it ran every planned step
    }
    if not adapter.use_dora:  # a DoRA update also rescales each column: B @ A is not all of it
        final.update(updates.summary(updates.table(model)))  # a thin QR per factor: no d x d decomposition
    tracking.log_metrics(final)
    tracking.set_tag(TAG_MEMORY_KIND, peak.kind)
    if world > 1:
        tracking.set_tag(TAG_PEAK_MEMORY_PER_PROCESS, ", ".join(f"{mb:.0f}" for mb in peaks))
    result.metrics.update(final)
    return result


@dataclass
class Update:
    """What turns a step's gradients into the adapter's update."""

    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler  # fp16 (CUDA only) needs loss scaling against underflow; else it passes through
    accelerator: object  # lora_study.processes: one process, or several under torchrun

    @classmethod
    def of(cls, model, s: Setup, train: TrainConfig, steps: int, accelerator) -> "Update":
        from transformers import get_scheduler

        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=train.learning_rate)
        scheduler = get_scheduler(train.lr_scheduler, optimizer, round(train.warmup_ratio * steps), steps)
        scaler = torch.amp.GradScaler(s.device.type, enabled=s.dtype == torch.float16)
        return cls(optimizer, scheduler, scaler, accelerator)


def train_step(model, micro: list[dict], s: Setup, step: int, update: Update) -> float:
    """One optimizer step over this process's micro-batches: forward, backward, clipping, the
    update. Returns the step's loss over every process: all of them stop together on a NaN."""
    accelerator, optimizer, scaler = update.accelerator, update.optimizer, update.scaler
    (step_loss,) = processes.summed(accelerator, [_accumulate_gradients(model, micro, s, step, scaler, accelerator)])
    if not math.isfinite(step_loss):
        raise UserInputError(
            f"train_loss became {step_loss} at step {step}: lower --learning-rate, or train with --precision fp32"
        )
    scaler.unscale_(optimizer)
    accelerator.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    update.scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss


def _accumulate_gradients(model, micro: list[dict], s: Setup, step: int, scaler, accelerator) -> float:
    """Forward and backward over this process's micro-batches of the step; returns its share of
    the step's mean loss. Every target token of the step, in every process, weighs the same: the
    loss is divided by the step's target tokens over all processes, and multiplied by their
    number, which DDP's averaging of gradients divides out again. Gradients are synced once,
    with the last micro-batch."""
    local = sum(int((batch["targets"] != IGNORE_INDEX).sum()) for batch in micro)
    (targets,) = processes.summed(accelerator, [local])
    world, step_loss = accelerator.num_processes, 0.0
    try:
        for number, batch in enumerate(micro, start=1):
            syncs = number == len(micro)
            with contextlib.nullcontext() if syncs else accelerator.no_sync(model):
                with autocast(s.device, s.dtype):
                    loss, _ = loss_sum(model, batch, s.device)
                accelerator.backward(scaler.scale(loss * world / targets))
            step_loss += float(loss.detach()) / targets
    except torch.OutOfMemoryError:
        raise UserInputError(
            f"out of memory at step {step}: lower --batch-size (raise --grad-accum to keep the "
            "batch), or use --gradient-checkpointing or --quantization 4bit"
        ) from None
    return step_loss


# --- what a training run logs besides the loop's metrics ----------------------------------------


def log_inputs(s: Setup, data_cfg: DataConfig, base: BaseModelConfig) -> None:
    """The data and base-model params of a run that trains (`train`, and each sweep trial)."""
    tracking.log_params(
        {
            **data_cfg.model_dump(),
            **base.model_dump(),
            PARAM_BASE_MODEL_SHA256: s.ref.sha256 or "",
            PARAM_BASE_MODEL_REVISION: s.ref.revision or "",
            PARAM_DATASET_DIGEST: s.prepared.meta.digest,
        }
    )
    tracking.log_training_rows(str(s.prepared.path), data_cfg.dataset, s.prepared.meta.digest)


def log_trained_adapter(s: Setup, result: TrainResult, adapter: AdapterConfig, train: TrainConfig):
    """The trained adapter as an MLflow model of kind `adapter`, named for its configuration,
    training seed and steps, with the reference to the base it was trained on, logged at its step (the
    best one's, or the last): MLflow links that step's metrics to it (its validation perplexity, not
    the base's at step 0); the run's other leaderboard metrics so far are linked after."""
    meta = s.prepared.meta
    reference = models.AdapterReference.of(
        s.ref, adapter.quantization, s.weights_dtype, meta.format, meta.tokenizer_digest
    )
    steps = result.adapter_step  # the kept adapter's step, or the last
    name = logged_models.name(
        adapter.rank,
        adapter.target_modules,
        train.learning_rate,
        adapter.quantization,
        train.training_seed,
        steps,
        result.planned_steps,
    )
    tracking.flush()  # the loop's last metrics are logged asynchronously: MLflow links them as it logs the model
    info = adapters.log_adapter(result.model, reference, name, step=steps)
    logged_models.link_run_metrics(info.model_id, info.run_id, steps)
    return info
