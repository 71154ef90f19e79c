"""Early stopping on per-group adapters: steps saved and test perplexity, against no early stopping.

    python benchmarks/early_stopping.py --max-steps 60 --eval-every 5 --patience 2

The grouped training example of docs/train.md (SmolLM2, the embedded default; the Python docs'
paragraphs of five topics, each topic a group of about 30 documents) trained three times in one
fresh MLflow store, one run after the other, each evaluating every `--eval-every` steps:
- last: every planned step, the adapter of the last (`--keep-best false`, as before keep-best);
- best: every planned step, the adapter of the best step kept (`--keep-best`, the default);
- early: `--early-stopping-patience N`, the adapter of the best step kept.
Per group: steps trained, the logged adapter's step and its test perplexity on the group's own
test split, beside the base's. Results are appended to benchmarks/RESULTS.md.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import record

from lora_study import names

TOPICS = ("string-methods", "debugger", "formatstrings", "typesmapping", "try")


def write_topics(path: Path) -> None:
    """docs/train.md's grouped dataset: each paragraph of a topic a document, its topic its group."""
    import pydoc_data.topics

    with path.open("w") as out:
        for topic in TOPICS:
            for text in re.split(r"\n\s*\n", pydoc_data.topics.topics[topic]):
                if len(text.strip()) > 200:
                    out.write(json.dumps({"topic": topic, "text": text.strip()}) + "\n")


ARMS = {"last": (0, False), "best": (0, True), "early": (None, True)}  # (patience, keep_best); None: --patience


def train_groups(data: Path, arm: str, patience: int, keep_best: bool, args, env: dict) -> tuple[float, dict]:
    """One `train --group-by topic`; its wall time and, per group, what its run logged."""
    import mlflow

    argv = [sys.executable, "-m", "lora_study", "train", "--dataset", str(data), "--group-by", "topic"]
    argv += ["--seq-len", "128", "--max-steps", str(args.max_steps), "--eval-every", str(args.eval_every)]
    argv += ["--learning-rate", "1e-3", "--rank", "16", "--alpha", "32", "--target-modules", "qkvo"]
    argv += ["--early-stopping-patience", str(patience), "--keep-best", str(keep_best).lower()]
    argv += ["--registered-model", f"topics-{arm}"]
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True)
    wall_s = time.perf_counter() - started
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(names.EXPERIMENT_NAME)
    kept = str(keep_best).lower()  # as lora-study logs a bool param
    found = client.search_runs(
        [experiment.experiment_id],
        f"params.{names.PARAM_EARLY_STOPPING_PATIENCE} = '{patience}' and params.{names.PARAM_KEEP_BEST} = '{kept}' "
        f"and params.{names.PARAM_GROUP} != ''",
    )
    groups = {}
    for run in found:
        m = run.data.metrics
        groups[run.data.params[names.PARAM_GROUP]] = {
            "steps": int(m[names.METRIC_STOPPED_EARLY] or run.data.params[names.PARAM_STEPS]),
            "kept step": int(m[names.METRIC_BEST_STEP]),
            "test perplexity": m[names.METRIC_TEST_PERPLEXITY],
            "base": m[names.METRIC_BASE_TEST_PERPLEXITY],
            "train s": m[names.METRIC_TRAIN_RUNTIME_S],
        }
    return wall_s, groups


def table(results: dict) -> list[str]:
    """A row per group: each arm's steps, kept step and test perplexity, and the base's."""
    header = "| group | " + " | ".join(f"{arm}: steps, kept step, test ppl" for arm in results) + " | base test ppl |"
    rows = [header, "|---|" + "---|" * len(results) + "---|"]
    first = next(iter(results.values()))[1]
    for group in sorted(first):
        cells = []
        for _, groups in results.values():
            g = groups[group]
            cells.append(f"{g['steps']}, {g['kept step']}, {g['test perplexity']:.2f}")
        rows.append(f"| {group} | " + " | ".join(cells) + f" | {first[group]['base']:.2f} |")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--patience", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-early-stopping-"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    os.environ.update(env)
    data = folder / "topics.jsonl"
    write_topics(data)
    results = {
        arm: train_groups(data, arm, args.patience if patience is None else patience, keep_best, args, env)
        for arm, (patience, keep_best) in ARMS.items()
    }
    totals = {
        arm: (sum(g["steps"] for g in groups.values()), sum(g["train s"] for g in groups.values()), wall_s)
        for arm, (wall_s, groups) in results.items()
    }
    body = [
        *table(results),
        "",
        "Steps trained over the groups, training loops and end to end: "
        + "; ".join(f"{arm} {steps} steps, {train:.0f} s, {wall:.0f} s" for arm, (steps, train, wall) in totals.items())
        + ".",
    ]
    command = (
        f"python benchmarks/early_stopping.py --max-steps {args.max_steps} --eval-every {args.eval_every} "
        f"--patience {args.patience}"
    )
    setup = (
        f" (`train --group-by topic` on SmolLM2, docs/train.md's grouped data, rank 16 qkvo, lr 1e-3, seq-len 128, "
        f"evaluated every {args.eval_every} steps; last: --keep-best false; best: --keep-best; early: "
        f"--early-stopping-patience {args.patience} --keep-best)."
    )
    record("early stopping on per-group adapters", command, setup, body)


if __name__ == "__main__":
    main()
