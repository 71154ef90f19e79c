"""How often a study's answer and findings are right: a ground truth, and studies replayed against it.

    python benchmarks/study_accuracy.py record     # the grid: hours, resumable (run it alone)
    python benchmarks/study_accuracy.py replay     # studies replayed against it: minutes

`record` trains every point of a discretised search space (configs/sweep/accuracy-grid.yaml)
with each seed, twice, on the embedded default (SmolLM2-135M on Python's docs): at the explore
budget (`--max-steps`, validation perplexity every `--eval-every` steps, as a trial) and at the
confirm budget (`3 x --max-steps` steps, then test perplexity, as a confirmation). Each (point,
seed) is one line of benchmarks/study_accuracy/grid.jsonl, written as it finishes: a killed
`record` goes on where it stopped. The grid's mean test perplexity per point is the truth.

`replay` (study_replay.py) runs studies whose trainings are looked up in that table: Optuna's
sampler and pruner, the confirm phase, the recommendation rule and the findings' rules run for
real. Its figures are appended to benchmarks/RESULTS.md.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
import study_replay

from lora_study import console, lora, training
from lora_study.config import AdapterConfig, BaseModelConfig, DataConfig, SweepConfig, TrainConfig
from lora_study.losses import mean_loss, perplexity
from lora_study.names import METRIC_PEAK_MEMORY_MB, METRIC_TRAINABLE_PARAMS, METRIC_TRAINED_TOKENS
from lora_study.sweep import search_space

HERE = Path(__file__).resolve().parent
GRID_CONFIG = HERE.parent / "configs" / "sweep" / "accuracy-grid.yaml"
GRID_TABLE = HERE / "study_accuracy" / "grid.jsonl"
TEST_BATCH_SIZE = 8


def recorded(table: Path) -> set[tuple[str, int]]:
    """The (point, seed) pairs the table holds, keyed as `study_replay.Grid` keys its rows."""
    if not table.is_file():
        return set()
    rows = map(json.loads, table.read_text().splitlines())
    return {(study_replay.point_key(row["params"]), row["seed"]) for row in rows}


def train_once(s: training.Setup, adapter: AdapterConfig, train: TrainConfig, seed: int, base_eval_loss):
    """One training in its own MLflow run (the loop logs into it); the model is left detached."""
    with mlflow.start_run():
        train = train.model_copy(update={"training_seed": seed})
        result = training.fine_tune(s, adapter, train, base_eval_loss=base_eval_loss)
        test_loss = None
        if train.eval_every == 0:  # the confirm budget: measured on the test split too
            rows = s.prepared.rows("test")
            test_loss = mean_loss(result.model, rows, TEST_BATCH_SIZE, s.tokenizer.pad_token_id, s.dtype)
    s.model = lora.detach(s.model)
    return result, test_loss


def record(args) -> None:
    space = search_space.load(str(args.grid))
    sweep = SweepConfig(config=str(args.grid), max_steps=args.max_steps, eval_every=args.eval_every)
    data = DataConfig(max_samples=args.max_samples, seq_len=args.seq_len)
    base = BaseModelConfig(base_model=args.base_model)
    mlflow.set_tracking_uri(f"sqlite:///{Path(args.work) / 'mlflow.db'}")
    mlflow.set_experiment("study-accuracy-grid")
    s = training.setup(data, base, AdapterConfig(), TrainConfig(max_steps=1))
    done = recorded(args.table)
    pairs = [(p, seed) for p in study_replay.grid_points(space) for seed in args.seeds]
    todo = [(p, seed) for p, seed in pairs if (study_replay.point_key(p), seed) not in done]
    console.say(f"grid {args.grid.name}: {len(pairs) - len(todo)} of {len(pairs)} (point, seed) pairs recorded")
    args.table.parent.mkdir(parents=True, exist_ok=True)
    base_eval_loss = None
    defaults = {"max_steps": sweep.max_steps, "eval_every": sweep.eval_every}
    for number, (params, seed) in enumerate(todo, start=1):
        started = time.perf_counter()
        adapter, train = space.suggest(optuna.trial.FixedTrial(params), defaults)
        explore, _ = train_once(s, adapter, train, seed, base_eval_loss)
        base_eval_loss = explore.eval_losses[0]
        confirm_train = train.model_copy(update={"max_steps": sweep.steps_to_confirm, "eval_every": 0})
        confirm, test_loss = train_once(s, adapter, confirm_train, seed, base_eval_loss)
        row = {
            "params": params,
            "seed": seed,
            "explore_steps": sweep.max_steps,
            "explore_eval_perplexity": {str(k): perplexity(v) for k, v in explore.eval_losses.items() if k},
            "confirm_steps": sweep.steps_to_confirm,
            "confirm_eval_perplexity": perplexity(confirm.final_eval_loss),
            "test_perplexity": perplexity(test_loss),
            "explore_trained_tokens": explore.metrics[METRIC_TRAINED_TOKENS],
            "confirm_trained_tokens": confirm.metrics[METRIC_TRAINED_TOKENS],
            "trainable_params": confirm.metrics[METRIC_TRAINABLE_PARAMS],
            "peak_memory_mb": confirm.metrics[METRIC_PEAK_MEMORY_MB],
            "seconds": time.perf_counter() - started,
        }
        with args.table.open("a") as table:
            table.write(json.dumps(row) + "\n")
        console.say(
            f"{number}/{len(todo)}  {params} seed {seed}: explore ppl "
            f"{row['explore_eval_perplexity'][str(sweep.max_steps)]:.3f}, test ppl {row['test_perplexity']:.3f}  "
            f"{row['seconds']:.0f} s"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    grid = commands.add_parser("record", help="train the grid (resumable)")
    grid.add_argument("--grid", type=Path, default=GRID_CONFIG)
    grid.add_argument("--table", type=Path, default=GRID_TABLE)
    grid.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    grid.add_argument("--max-steps", type=int, default=SweepConfig().max_steps)
    grid.add_argument("--eval-every", type=int, default=SweepConfig().eval_every)
    grid.add_argument("--work", default=tempfile.mkdtemp(prefix="study-accuracy-"), help="its MLflow store")
    grid.add_argument("--base-model", default=BaseModelConfig().base_model)
    grid.add_argument("--max-samples", type=int, default=DataConfig().max_samples)
    grid.add_argument("--seq-len", type=int, default=DataConfig().seq_len)
    replay = commands.add_parser("replay", help="replay studies against the recorded grid")
    replay.add_argument("--grid", type=Path, default=GRID_CONFIG)
    replay.add_argument("--table", type=Path, default=GRID_TABLE)
    replay.add_argument("--studies", type=int, default=100, help="replayed studies per strategy")
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args)
    else:
        study_replay.main(args)


if __name__ == "__main__":
    sys.exit(main())
