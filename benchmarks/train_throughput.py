"""Our `train` loop against what a user would otherwise run, alternating, in one run.

    pip install -e ".[bench]"   # TRL, for the SFTTrainer baseline
    python benchmarks/train_throughput.py --steps 20 --rounds 2
    python benchmarks/train_throughput.py --steps 20 --rounds 3 --previous <commit>

Four kinds fine-tune the same base with the same LoRA settings, steps, batch size, learning
rate, schedule and gradient clipping on the same training documents (python-docs by default):
- `ours`: `lora-study train`: documents packed into full rows, bf16 autocast on a bf16 base
  (`--precision auto`), the loss in chunks (lora_study.losses);
- `trainer-fp32`: transformers.Trainer + PEFT as one would write it: one example per document,
  truncated to `seq_len`, padded per batch by `DataCollatorForLanguageModeling`, Trainer's CPU
  default (fp32);
- `trainer-bf16`: the same with `bf16=True`;
- `trl`: TRL's SFTTrainer + PEFT, `packing=True`, `packing_strategy="wrapped"` (full rows cut
  from the stream of documents, as ours) and `bf16=True`;
- `trl-padding-free`: the same with TRL's default packing, `bfd`, which makes it padding-free
  (a batch is one sequence, its documents kept apart by position ids): TRL documents
  padding-free for FlashAttention 2 and 3, which this CPU has not.
The baselines load the base as `from_pretrained` does (fp32 weights), as their defaults do.

`--kinds ours,ours-tcmalloc` runs ours against ours with tcmalloc preloaded
(`apt-get install libtcmalloc-minimal4`).

With `--previous`, our loop at that commit (a git worktree of it, first on PYTHONPATH) is what
ours is measured against instead: a change to the loop must not cost speed.

Reported per run: real (non-padding) tokens/s of the training steps, peak memory of training
(see lora_study.memory), and the validation loss of the trained adapter measured the same way
for all (fp32, on the validation rows of `prepare`). Each run is a fresh subprocess, so no
run inherits another's allocator state. Results are appended to benchmarks/RESULTS.md.
"""

import argparse
import contextlib
import ctypes.util
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from results import record

from lora_study import data, lora, models, tracking, training
from lora_study.config import AdapterConfig, BaseModelConfig, DataConfig, TrainConfig
from lora_study.losses import mean_loss
from lora_study.memory import PeakMemory


def settings(args):
    data_cfg = DataConfig(seq_len=args.seq_len)
    train = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, eval_every=0)
    return data_cfg, BaseModelConfig(base_model=args.base_model), AdapterConfig(), train


def run_ours(args) -> dict:
    import mlflow

    data_cfg, base, adapter, train = settings(args)
    mlflow.set_tracking_uri(f"sqlite:///{tempfile.mkdtemp()}/bench.db")
    s = training.setup(data_cfg, base, adapter, train)
    logging_time = []
    log_metrics = tracking.log_metrics

    def timed_log_metrics(*a, **k):  # what MLflow logging costs the training loop
        started = time.perf_counter()
        log_metrics(*a, **k)
        logging_time.append(time.perf_counter() - started)

    tracking.log_metrics = timed_log_metrics
    if args.compile:  # the adapted model compiled (inductor): compilation happens in the first steps, timed
        attach = lora.attach
        lora.attach = lambda *a, **k: torch.compile(attach(*a, **k))
    with mlflow.start_run() as run:
        model = training.fine_tune(s, adapter, train).model
    mlflow.flush_async_logging()
    metrics = mlflow.get_run(run.info.run_id).data.metrics
    step_time = metrics["train_runtime_s"]
    return {
        "tokens_per_s": metrics["train_tokens_per_s"],
        "runtime_s": metrics["train_runtime_s"],
        "peak_memory_mb": metrics["peak_memory_mb"],
        "eval_loss": _validation_loss(model, s.prepared, s.tokenizer),
        "logging_pct": 100 * sum(logging_time) / step_time,
    }


def run_trainer(args, bf16: bool) -> dict:
    """transformers.Trainer + PEFT as a user would write it: one example per document,
    truncated to `seq_len`, padded per batch; fp32 (the CPU default) or `bf16=True`."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    model, texts, prepared, tokenizer, train = baseline_inputs(args)
    examples = [tokenizer(text, truncation=True, max_length=args.seq_len) for text in texts]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    arguments = TrainingArguments(**trainer_arguments(train, bf16))
    trainer = Trainer(model=model, args=arguments, train_dataset=examples, data_collator=collator)
    return measure(trainer, train, prepared, tokenizer)


def run_trl(args, strategy: str) -> dict:
    """TRL's SFTTrainer + PEFT with `packing=True` and bf16. `bfd` (TRL's default packing, best-fit
    decreasing) is padding-free: a batch's rows become one sequence, its documents kept apart
    by position ids, which TRL supports with FlashAttention only; `wrapped` cuts the stream of
    documents into full rows, as ours does."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, texts, prepared, tokenizer, train = baseline_inputs(args, peft=False)
    config = SFTConfig(
        **trainer_arguments(train, bf16=True),
        packing=True,
        packing_strategy=strategy,
        max_length=args.seq_len,
        gradient_checkpointing=False,  # TRL turns it on by default; ours and Trainer train without it
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
        peft_config=peft_config(model, AdapterConfig()),
    )
    return measure(trainer, train, prepared, tokenizer)


def baseline_inputs(args, peft: bool = True):
    """The base (fp32, as `from_pretrained` loads it) with a fresh adapter unless `peft` is False,
    the training documents of `prepare`'s split, and the settings ours trains with."""
    from peft import get_peft_model

    data_cfg, base, adapter, train = settings(args)
    ref = models.resolve(base.base_model)
    tokenizer = models.load_tokenizer(ref)
    prepared, documents = data.prepare(data_cfg, ref, tokenizer)
    texts = [documents.frame.iloc[i]["text"] for i in prepared.meta.documents["train"]]
    model = models.load_model(ref)
    torch.manual_seed(0)
    if peft:
        model = get_peft_model(model, peft_config(model, adapter))
    return model, texts, prepared, tokenizer, train


def peft_config(model, adapter: AdapterConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=adapter.rank,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=lora.resolve_targets(model, adapter.target_modules),
        task_type="CAUSAL_LM",
    )


def trainer_arguments(train: TrainConfig, bf16: bool) -> dict:
    """What Trainer and SFTTrainer are given alike: ours's steps, batch and schedule."""
    return {
        "output_dir": tempfile.mkdtemp(),
        "max_steps": train.max_steps,
        "per_device_train_batch_size": train.batch_size,
        "learning_rate": train.learning_rate,
        "lr_scheduler_type": train.lr_scheduler,
        "warmup_steps": round(train.warmup_ratio * train.max_steps),
        "max_grad_norm": 1.0,
        "save_strategy": "no",
        "report_to": [],
        "logging_steps": train.max_steps,
        "seed": 0,
        "bf16": bf16,
        "use_cpu": not torch.cuda.is_available(),
    }


def measure(trainer, train: TrainConfig, prepared, tokenizer) -> dict:
    """Train, timing the steps from the first one's start to the last one's end (as ours times
    its loop: batches collated inside, setup outside), counting the real (non-padding) tokens
    of the batches trained on."""
    from transformers import TrainerCallback

    real_tokens, marks = [], []
    collator = trainer.data_collator

    def counting_collator(features):
        batch = collator(features)
        mask = batch.get("attention_mask")
        real_tokens.append(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
        return batch

    class StepClock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            marks.append(("begin", time.perf_counter()))

        def on_step_end(self, *_, **__):
            marks.append(("end", time.perf_counter()))

    trainer.data_collator = counting_collator
    trainer.add_callback(StepClock())
    with PeakMemory(models.device()) as peak:
        trainer.train()
    elapsed = marks[-1][1] - next(t for kind, t in marks if kind == "begin")
    tokens = sum(real_tokens[: train.max_steps])  # the dataloader may collate a batch ahead of the last step
    return {
        "tokens_per_s": tokens / elapsed,
        "peak_memory_mb": peak.megabytes,
        "eval_loss": _validation_loss(trainer.model, prepared, tokenizer),
    }


BASELINES = {
    "trainer-fp32": lambda args: run_trainer(args, bf16=False),
    "trainer-bf16": lambda args: run_trainer(args, bf16=True),
    "trl": lambda args: run_trl(args, "wrapped"),
    "trl-padding-free": lambda args: run_trl(args, "bfd"),
}


def _validation_loss(model, prepared, tokenizer) -> float:
    model.float()
    return mean_loss(model, prepared.rows("validation"), 8, tokenizer.pad_token_id, None)


def one(kind: str, args, previous_tree: str | None = None) -> dict:
    """Run one measurement in a fresh subprocess; `previous`: ours, from the code in `previous_tree`."""
    argv = [
        sys.executable,
        __file__,
        "--only",
        kind if kind in BASELINES else "ours",
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--seq-len",
        str(args.seq_len),
        "--base-model",
        args.base_model,
        *(["--compile"] if kind == "compiled" else []),
    ]
    env = {**os.environ, "PYTHONPATH": previous_tree} if kind == "previous" else None
    if kind == "ours-tcmalloc":  # gperftools' allocator in place of glibc's malloc, for the whole process
        library = ctypes.util.find_library("tcmalloc_minimal")
        if library is None:  # the loader would skip a missing preload and measure glibc's malloc
            sys.exit("ours-tcmalloc needs tcmalloc: apt-get install libtcmalloc-minimal4")
        env = {**os.environ, "LD_PRELOAD": library}
    done = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def means(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Each kind's figures, averaged over its runs."""
    return {kind: {k: statistics.mean(r[k] for r in runs) for k in runs[0]} for kind, runs in results.items()}


def per_run(results: dict[str, list[dict]]) -> str:
    """Every run's tokens/s, by kind: the spread behind the means."""
    runs_text = "; ".join(
        f"{kind} " + ", ".join(f"{r['tokens_per_s']:.0f} tok/s" for r in runs) for kind, runs in results.items()
    )
    return f"Per run: {runs_text}."


def report_compiled(args, results: dict[str, list[dict]]) -> None:
    """Ours against ours compiled, end to end (compilation included): offered only if 10% faster."""
    mean = means(results)
    eager, compiled = mean["ours"], mean["compiled"]
    command = (
        f"python benchmarks/train_throughput.py --steps {args.steps} --rounds {args.rounds} "
        f"--batch-size {args.batch_size} --seq-len {args.seq_len} --base-model {args.base_model} --compile"
    )
    lines = [
        "| | training loop s (compilation included) | real tokens/s | peak memory MB | validation loss |",
        "|---|---|---|---|---|",
        *(
            f"| {kind} | {m['runtime_s']:.1f} | {m['tokens_per_s']:.0f} | {m['peak_memory_mb']:.0f} | "
            f"{m['eval_loss']:.4f} |"
            for kind, m in (("eager", eager), ("torch.compile", compiled))
        ),
        f"| compiled / eager | {compiled['runtime_s'] / eager['runtime_s']:.2f}x | "
        f"{compiled['tokens_per_s'] / eager['tokens_per_s']:.2f}x | "
        f"{compiled['peak_memory_mb'] / eager['peak_memory_mb']:.2f}x | |",
    ]
    record("train time: torch.compile against eager", command, f" ({args.rounds} alternating rounds).", lines)


def report_previous(args, results: dict[str, list[dict]]) -> None:
    """Ours against ours at `--previous`: the goal is no more than 3% fewer tokens/s."""
    mean = means(results)
    ours, before = mean["ours"], mean["previous"]
    command = (
        f"python benchmarks/train_throughput.py --steps {args.steps} --rounds {args.rounds} "
        f"--batch-size {args.batch_size} --seq-len {args.seq_len} --base-model {args.base_model} "
        f"--previous {args.previous}"
    )
    lines = [
        "| | real tokens/s | peak memory MB | validation loss |",
        "|---|---|---|---|",
        f"| ours at {args.previous} | {before['tokens_per_s']:.0f} | {before['peak_memory_mb']:.0f} | "
        f"{before['eval_loss']:.4f} |",
        f"| ours now | {ours['tokens_per_s']:.0f} | {ours['peak_memory_mb']:.0f} | {ours['eval_loss']:.4f} |",
        f"| now / before | {ours['tokens_per_s'] / before['tokens_per_s']:.3f}x | "
        f"{ours['peak_memory_mb'] / before['peak_memory_mb']:.2f}x | {ours['eval_loss'] / before['eval_loss']:.4f}x |",
        "",
        per_run(results),
    ]
    record(
        "train throughput: the loop now vs at an earlier commit",
        command,
        f" ({args.rounds} alternating rounds).",
        lines,
    )


GOALS = {"trl": 1.2, "trl-padding-free": 1.2, "trainer-bf16": 1.5}  # ours / baseline, real tokens/s, on this CPU


def report(args, results: dict[str, list[dict]]) -> None:
    mean = means(results)
    ours = mean["ours"]
    command = (
        f"python benchmarks/train_throughput.py --steps {args.steps} --rounds {args.rounds} "
        f"--batch-size {args.batch_size} --seq-len {args.seq_len} --base-model {args.base_model}"
    )
    lines = [
        "| | real tokens/s | peak memory MB | validation loss | ours: tokens/s | ours: memory | ours: loss | goal |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {kind} | {m['tokens_per_s']:.0f} | {m['peak_memory_mb']:.0f} | {m['eval_loss']:.4f} | "
            + (
                "| | | |"
                if kind == "ours"
                else f"{ours['tokens_per_s'] / m['tokens_per_s']:.2f}x | "
                f"{ours['peak_memory_mb'] / m['peak_memory_mb']:.2f}x | "
                f"{100 * (ours['eval_loss'] / m['eval_loss'] - 1):+.2f}% | "
                + (f"{GOALS[kind]}x tokens/s |" if kind in GOALS else "|")
            )
            for kind, m in mean.items()
        ),
        "",
        "The ours columns: ours divided by the row's kind (tokens/s, memory), and how far ours's",
        "validation loss is from the row's.",
        "",
        f"MLflow logging inside our loop: {ours['logging_pct']:.2f}% of its run time.",
        "",
        per_run(results),
    ]
    record(
        "train throughput: ours vs Trainer (fp32, bf16) and TRL's SFTTrainer (packing, bf16)",
        command,
        f" ({args.rounds} alternating rounds, each run a fresh process).",
        lines,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--base-model", default=models.SMOLLM2)
    parser.add_argument("--previous", help="a git commit: measure ours against our loop at it, not the baselines")
    parser.add_argument("--compile", action="store_true", help="measure ours against ours under torch.compile")
    parser.add_argument("--kinds", default=",".join(["ours", *BASELINES]), help="which of them to run")
    parser.add_argument("--only", choices=["ours", *BASELINES], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    if args.only:
        print(json.dumps(run_ours(args) if args.only == "ours" else BASELINES[args.only](args)))
        return
    if args.compile:
        report_compiled(args, alternate(args, ("ours", "compiled")))
        return
    if args.previous:
        with previous_tree(args.previous) as tree:
            results = alternate(args, ("ours", "previous"), tree)
        report_previous(args, results)
        return
    kinds = tuple(args.kinds.split(","))
    if any(kind.startswith("trl") for kind in kinds) and importlib.util.find_spec("trl") is None:
        sys.exit('the trl baseline needs TRL: pip install -e ".[bench]", or leave it out of --kinds')
    report(args, alternate(args, kinds))


def alternate(args, kinds: tuple[str, ...], tree: str | None = None) -> dict[str, list[dict]]:
    results = {kind: [] for kind in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            results[kind].append(one(kind, args, tree))
            print(kind, results[kind][-1], flush=True)
    return results


@contextlib.contextmanager
def previous_tree(commit: str):
    """A checkout of `commit` beside this one (a detached git worktree), removed afterwards."""
    folder = tempfile.mkdtemp(prefix="previous-")
    subprocess.run(["git", "worktree", "add", "--detach", folder, commit], check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", folder], check=True, capture_output=True)


if __name__ == "__main__":
    main()
