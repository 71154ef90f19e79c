"""Trials per hour: one `sweep` process against one `train` process per trial, same trials, one run.

    python benchmarks/sweep_throughput.py --ranks 4,8,16,32 --max-steps 8

Both sides run the same trials: LoRA on `qv` with alpha = 2 * rank, one trial per rank, batch
size 4, `--max-steps` steps with the validation loss every `--eval-every` steps, on the default
data (python-docs) and base model (SmolLM2). The sweep runs them as a grid study with pruning
off (so the comparison is before pruning's gains), loading the base and the data once; the
baseline starts `lora-study train` once per trial, as a shell loop or a job scheduler would.
Each side gets a fresh MLflow store and Optuna storage; the prepared data and the rebuilt model
are cached beforehand so neither side pays for building them. Wall time covers everything from
starting the processes to their exit. Results are appended to benchmarks/RESULTS.md.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import record

LORA_STUDY = [sys.executable, "-m", "lora_study"]


def common(args) -> list[str]:
    return [
        "--base-model",
        args.base_model,
        "--seq-len",
        str(args.seq_len),
        "--max-steps",
        str(args.max_steps),
        "--eval-every",
        str(args.eval_every),
    ]


def timed(argv: list[str], folder: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        argv,
        cwd=folder,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"},
    )
    return time.perf_counter() - started


def run_sweep(args, ranks: list[int]) -> float:
    folder = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    config = folder / "ranks.yaml"
    config.write_text(
        "sampler: grid\nspace:\n"
        f"  rank: [{', '.join(map(str, ranks))}]\n  alpha: {{per_rank: 2}}\n  target_modules: qv\n"
        "  learning_rate: 1.0e-3\n  batch_size: 4\n"
    )
    argv = [
        *LORA_STUDY,
        "sweep",
        *common(args),
        "--config",
        str(config),
        "--n-trials",
        str(len(ranks)),
        "--pruner",
        "none",
    ]
    return timed(argv, folder)


def run_trains(args, ranks: list[int]) -> float:
    folder = Path(tempfile.mkdtemp(prefix="bench-train-"))
    total = 0.0
    for rank in ranks:
        argv = [
            *LORA_STUDY,
            "train",
            *common(args),
            "--rank",
            str(rank),
            "--alpha",
            str(2 * rank),
            "--target-modules",
            "qv",
            "--learning-rate",
            "1e-3",
            "--batch-size",
            "4",
        ]
        total += timed(argv, folder)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="4,8,16,32")
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--base-model", default="smollm2-135m")
    args = parser.parse_args()
    ranks = [int(rank) for rank in args.ranks.split(",")]
    # build the model cache and the prepared data first: neither side should pay for them
    subprocess.run(
        [*LORA_STUDY, "prepare", "--base-model", args.base_model, "--seq-len", str(args.seq_len)],
        cwd=tempfile.mkdtemp(),
        check=True,
        capture_output=True,
    )
    trains = run_trains(args, ranks)
    sweep = run_sweep(args, ranks)
    per_hour = {name: 3600 * len(ranks) / seconds for name, seconds in (("sweep", sweep), ("train", trains))}
    command = (
        f"python benchmarks/sweep_throughput.py --ranks {args.ranks} --max-steps {args.max_steps} "
        f"--eval-every {args.eval_every} --seq-len {args.seq_len} --base-model {args.base_model}"
    )
    record(
        "sweep throughput: one sweep process vs one train process per trial",
        command,
        f" ({len(ranks)} trials per side, pruning off).",
        [
            "| | wall time s | trials per hour |",
            "|---|---|---|",
            f"| sweep (one process) | {sweep:.0f} | {per_hour['sweep']:.0f} |",
            f"| train per trial | {trains:.0f} | {per_hour['train']:.0f} |",
            f"| sweep / train | | {per_hour['sweep'] / per_hour['train']:.2f}x |",
        ],
    )


if __name__ == "__main__":
    main()
