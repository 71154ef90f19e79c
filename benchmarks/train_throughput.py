"""Our `train` loop against a plain transformers.Trainer + PEFT script, alternating, in one run.

    python benchmarks/train_throughput.py --steps 20 --rounds 2

Both fine-tune the same base with the same LoRA settings, steps, batch size, learning rate and
schedule on the same training documents (python-docs by default). The baseline is what a user
would otherwise write: one example per document, truncated to `seq_len`, padded per batch by
`DataCollatorForLanguageModeling`, Trainer defaults (fp32 on the CPU). Ours packs the documents
into full rows and trains under bf16 autocast (`--precision auto`).

Reported per run: real (non-padding) tokens/s of the training loop, peak memory of training
(see lora_study.memory), and the validation loss of the trained adapter measured the same way
for both (fp32, on the validation rows of `prepare`). Each run is a fresh subprocess, so no
run inherits another's allocator state. Results are appended to benchmarks/RESULTS.md.
"""

import argparse
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
    with mlflow.start_run() as run:
        model = training.fine_tune(s, adapter, train, data_cfg.seed).model
    mlflow.flush_async_logging()
    metrics = mlflow.get_run(run.info.run_id).data.metrics
    step_time = metrics["train_runtime_s"]
    return {
        "tokens_per_s": metrics["train_tokens_per_s"],
        "peak_memory_mb": metrics["peak_memory_mb"],
        "eval_loss": _validation_loss(model, s.prepared, s.tokenizer),
        "logging_pct": 100 * sum(logging_time) / step_time,
    }


def run_baseline(args) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    data_cfg, base, adapter, train = settings(args)
    ref = models.resolve(base.base_model)
    tokenizer = models.load_tokenizer(ref)
    prepared, documents = data.prepare(data_cfg, ref, tokenizer)
    texts = [documents.frame.iloc[i]["text"] for i in prepared.meta["documents"]["train"]]
    examples = [tokenizer(text, truncation=True, max_length=data_cfg.seq_len) for text in texts]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    real_tokens = []

    def counting_collator(features):
        batch = collator(features)
        real_tokens.append(int(batch["attention_mask"].sum()))
        return batch

    model = models.load_model(ref)
    peft_config = LoraConfig(
        r=adapter.rank,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=lora.resolve_targets(model, adapter.target_modules),
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(0)
    model = get_peft_model(model, peft_config)
    arguments = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=round(train.warmup_ratio * train.max_steps),
        save_strategy="no",
        report_to=[],
        logging_steps=train.max_steps,
        seed=0,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=examples, data_collator=counting_collator)
    with PeakMemory(models.device()) as peak:
        started = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - started
    # the dataloader may collate a batch ahead of the last step: count the batches trained on
    tokens = sum(real_tokens[: train.max_steps])
    return {
        "tokens_per_s": tokens / elapsed,
        "peak_memory_mb": peak.megabytes,
        "eval_loss": _validation_loss(model, prepared, tokenizer),
    }


def _validation_loss(model, prepared, tokenizer) -> float:
    model.float()
    return mean_loss(model, prepared.rows("validation"), 8, tokenizer.pad_token_id, None)


def one(kind: str, args) -> dict:
    """Run one measurement in a fresh subprocess."""
    argv = [
        sys.executable,
        __file__,
        "--only",
        kind,
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--seq-len",
        str(args.seq_len),
        "--base-model",
        args.base_model,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(args, results: dict[str, list[dict]]) -> None:
    mean = {kind: {k: statistics.mean(r[k] for r in runs) for k in runs[0]} for kind, runs in results.items()}
    ours, base = mean["ours"], mean["baseline"]
    command = (
        f"python benchmarks/train_throughput.py --steps {args.steps} --rounds {args.rounds} "
        f"--batch-size {args.batch_size} --seq-len {args.seq_len} --base-model {args.base_model}"
    )
    lines = [
        "| | real tokens/s | peak memory MB | validation loss |",
        "|---|---|---|---|",
        f"| ours | {ours['tokens_per_s']:.0f} | {ours['peak_memory_mb']:.0f} | {ours['eval_loss']:.4f} |",
        f"| baseline | {base['tokens_per_s']:.0f} | {base['peak_memory_mb']:.0f} | {base['eval_loss']:.4f} |",
        f"| ours / baseline | {ours['tokens_per_s'] / base['tokens_per_s']:.2f}x | "
        f"{ours['peak_memory_mb'] / base['peak_memory_mb']:.2f}x | {ours['eval_loss'] / base['eval_loss']:.3f}x |",
        "",
        f"MLflow logging inside our loop: {ours['logging_pct']:.2f}% of its run time.",
        "",
        "Per run: "
        + "; ".join(
            f"{kind} " + ", ".join(f"{r['tokens_per_s']:.0f} tok/s" for r in runs) for kind, runs in results.items()
        )
        + ".",
    ]
    record(
        "train throughput: ours vs transformers.Trainer + PEFT",
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
    parser.add_argument("--only", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    if args.only:
        print(json.dumps(run_ours(args) if args.only == "ours" else run_baseline(args)))
        return
    results = {"ours": [], "baseline": []}
    for _ in range(args.rounds):
        for kind in results:
            results[kind].append(one(kind, args))
            print(kind, results[kind][-1], flush=True)
    report(args, results)


if __name__ == "__main__":
    main()
