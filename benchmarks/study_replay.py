"""Studies replayed against the recorded grid: the study's own sampler, pruner, confirm phase,
recommendation rule and findings' rules run for real; only the trainings are looked up.

A replayed study draws its seeds from the grid's: the explore trials train with the first (as a
sweep's explore trials train with the data seed), the confirmations with the first
`--confirm-seeds` of them. The truth of a configuration is its mean test perplexity over all the
grid's seeds, which include the confirmations' own: the share within noise is an upper bound
for the strategies that confirm. A decided finding is contradicted when the grid decides the
other way: a claimed win whose grid difference has the other sign (or none), or a claimed tie that
the grid calls beaten (more than twice the noise of a difference of two grid means).
"""

import dataclasses
import json
import math
import statistics
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from lora_study.config import BaseModelConfig, DataConfig, SweepConfig
from lora_study.names import (
    METRIC_EVAL_PERPLEXITY,
    METRIC_PEAK_MEMORY_MB,
    METRIC_SEED_STD,
    METRIC_TRAINABLE_PARAMS,
    TAG_TRIAL_NUMBER,
    TAG_TRIAL_STATE,
)
from lora_study.report import effects, findings, read
from lora_study.report.answer import CONFIG_PARAMS
from lora_study.report.read import StudyRuns
from lora_study.sweep import search_space
from lora_study.sweep.recommendation import Confirmed, pooled_std, recommend
from lora_study.sweep.study import ATTR_NEIGHBOUR_OF, Plan, pruner, queue_neighbours, sampler, to_confirm
from lora_study.sweep.summary import confirmed_table


def point_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


@dataclasses.dataclass
class Grid:
    """The recorded grid: a row per (point, seed), and the truth read from it."""

    space: search_space.SearchSpace
    rows: dict  # (point_key, seed) -> row
    seeds: tuple[int, ...]

    @classmethod
    def load(cls, table: Path, config: Path) -> "Grid":
        rows = {}
        for line in table.read_text().splitlines():
            row = json.loads(line)
            rows[point_key(row["params"]), row["seed"]] = row
        seeds = tuple(sorted({seed for _, seed in rows}))
        return cls(search_space.load(str(config)), rows, seeds)

    def points(self) -> list[dict]:
        found = {key: json.loads(key) for key, _ in self.rows}
        return [params for key, params in found.items() if all((key, s) in self.rows for s in self.seeds)]

    def row(self, params: dict, seed: int) -> dict:
        return self.rows[point_key(params), seed]

    def truth(self, params: dict) -> float:
        return statistics.fmean(self.row(params, s)["test_perplexity"] for s in self.seeds)

    def validation_truth(self, params: dict, explore_budget: bool) -> float:
        """Mean validation perplexity at the end of the explore budget, or of the confirm budget."""
        rows = [self.row(params, s) for s in self.seeds]
        if explore_budget:
            return statistics.fmean(r["explore_eval_perplexity"][str(r["explore_steps"])] for r in rows)
        return statistics.fmean(r["confirm_eval_perplexity"] for r in rows)

    def trend(self, factor: str, explore_budget: bool) -> int:
        """The sign of the grid's Spearman correlation of `factor` with validation perplexity at a budget."""
        points = self.points()
        values = [p[factor] for p in points]
        perplexities = [self.validation_truth(p, explore_budget) for p in points]
        return int(np.sign(findings.spearman(np.array(values), np.array(perplexities))[0]))

    def seed_std(self) -> float:
        """The seeds' spread of test perplexity, pooled over the points."""
        variances = [
            statistics.variance([self.row(p, s)["test_perplexity"] for s in self.seeds]) for p in self.points()
        ]
        return math.sqrt(statistics.fmean(variances))

    def difference_noise(self) -> float:
        """The spread of a difference of two grid means from noise alone."""
        return self.seed_std() * math.sqrt(2 / len(self.seeds))

    def tokens(self) -> float:
        """What the grid trained at the confirm budget: every point with every seed."""
        return sum(self.row(p, s)["confirm_trained_tokens"] for p in self.points() for s in self.seeds)


@dataclasses.dataclass(frozen=True)
class Strategy:
    sampler: str  # tpe | random | grid
    explore_budget: bool  # explore at the explore budget (pruned), else every trial at the confirm budget
    confirm: bool  # confirm the top configurations with seeds, and recommend by the rule
    neighbours: tuple[str, ...] = ()  # factors whose one-level neighbours of the best are confirmed too
    n_trials: int = SweepConfig().n_trials
    confirm_top: int = 2  # the default's on the embedded default (--confirm-top -1)

    @property
    def name(self) -> str:
        if self.sampler == "grid":
            return "the grid, one seed"
        sampler = {"tpe": "TPE", "random": "random search"}[self.sampler]
        if not self.confirm:
            return f"{sampler}, {self.n_trials} trials at the confirm budget, one seed"
        said = f"{sampler} + Hyperband, {self.n_trials} trials; top {self.confirm_top} confirmed"
        if self.neighbours:
            said += f" with neighbours in {' and '.join(n.replace('_', ' ') for n in self.neighbours)}"
        return said + (" (the default)" if self == default_strategy() else "")


def default_strategy() -> Strategy:
    """What `lora-study sweep` does with its defaults on the embedded default."""
    return Strategy("tpe", True, True, tuple(SweepConfig().neighbour_factors))


@dataclasses.dataclass
class Outcome:
    recommended: dict  # params
    decided: list  # per decided finding, its claims: (findings.Claim, params of a, params of b)
    trends: list  # decided trends: (factor, direction)
    tokens: float


def replay(grid: Grid, strategy: Strategy, number: int) -> Outcome:
    """One study of `strategy`, its randomness drawn from `number`."""
    rng = np.random.default_rng(number)
    seeds = [int(s) for s in rng.permutation(grid.seeds)]
    cfg = SweepConfig(n_trials=strategy.n_trials, pruner="hyperband" if strategy.explore_budget else "none")
    space = dataclasses.replace(grid.space, sampler=strategy.sampler)
    plan = Plan(DataConfig(seed=number), BaseModelConfig(), cfg, space, f"replay-{number}", "")
    study = optuna.create_study(sampler=sampler(plan), pruner=pruner(cfg))
    tokens = [0.0]
    objective = _objective(grid, seeds[0], strategy.explore_budget, cfg, tokens)
    n_trials = len(grid.points()) if strategy.sampler == "grid" else strategy.n_trials
    study.optimize(objective, n_trials=n_trials)
    if not strategy.confirm:
        best = study.best_trial
        return Outcome(best.params, *_decided(grid, study, [], None), tokens[0])
    configs = to_confirm(study, strategy.confirm_top)
    for neighbour in _explore_neighbours(grid, study, objective, configs[0], strategy.neighbours):
        if all(neighbour.number != c.number for c in configs):
            configs.append(neighbour)
    confirmed = [_confirmed(grid, t, seeds[: cfg.confirm_seeds], tokens) for t in configs]
    recommended = recommend(confirmed, cfg.recommend, cfg.within_se)
    return Outcome(dict(recommended.chosen.params), *_decided(grid, study, confirmed, recommended), tokens[0])


def _objective(grid: Grid, seed: int, explore_budget: bool, cfg: SweepConfig, tokens: list):
    defaults = {"max_steps": cfg.max_steps, "eval_every": cfg.eval_every}

    def objective(trial: optuna.Trial) -> float:
        grid.space.suggest(trial, defaults)  # the sweep's own draw of the trial's settings
        row = grid.row(trial.params, seed)
        if not explore_budget:
            tokens[0] += row["confirm_trained_tokens"]
            return row["confirm_eval_perplexity"]
        curve = {int(step): ppl for step, ppl in row["explore_eval_perplexity"].items()}
        per_step = row["explore_trained_tokens"] / row["explore_steps"]
        for step in sorted(curve):
            tokens[0] += per_step * (step - max((s for s in curve if s < step), default=0))
            trial.report(curve[step], step)
            if step < row["explore_steps"] and ATTR_NEIGHBOUR_OF not in trial.user_attrs and trial.should_prune():
                raise optuna.TrialPruned()
        return curve[row["explore_steps"]]

    return objective


def _explore_neighbours(grid: Grid, study, objective, best, factors: tuple[str, ...]) -> list:
    """The neighbours of the best configuration, queued as the sweep queues them and explored."""
    trials = queue_neighbours(study, best, grid.space, list(factors))
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    if waiting:
        study.optimize(objective, n_trials=len(waiting))
    return [study.trials[t.number] for t in trials]


def _confirmed(grid: Grid, trial, seeds: list[int], tokens: list) -> Confirmed:
    rows = [grid.row(trial.params, s) for s in seeds]
    tokens[0] += sum(r["confirm_trained_tokens"] for r in rows)
    return Confirmed(
        config=trial.number,
        params=trial.params,
        test_perplexities=tuple(r["test_perplexity"] for r in rows),
        trainable_params=rows[0]["trainable_params"],
        peak_memory_mb=statistics.fmean(r["peak_memory_mb"] for r in rows),
    )


def _decided(grid: Grid, study, confirmed: list, recommended) -> tuple[list, list]:
    """The study's decided findings by the report's own rules: those between levels, each as its
    claims with the params of the two configurations each compares, and the trends."""
    runs = _study_runs(grid, study, confirmed, recommended)
    by_number = {t.number: t.params for t in study.trials}
    decided = [finding for _, finding, _ in effects.factor_findings(runs) if finding.decided]
    levels = [[(c, by_number[c.a.trial], by_number[c.b.trial]) for c in f.claims] for f in decided if f.claims]
    return levels, [(f.factor, f.direction) for f in decided if f.direction]


def _study_runs(grid: Grid, study, confirmed: list, recommended) -> StudyRuns:
    """What the report would read of this study in MLflow."""
    defaults = {"max_steps": 1, "eval_every": 1}
    rows = []
    for trial in study.trials:
        adapter, train = grid.space.suggest(optuna.trial.FixedTrial(trial.params), defaults)
        settings = {**adapter.model_dump(), **train.model_dump()}
        row = grid.row(trial.params, grid.seeds[0])  # costs: the same for every seed
        value = trial.value if trial.value is not None else trial.intermediate_values[max(trial.intermediate_values)]
        rows.append(
            {
                TAG_TRIAL_NUMBER: trial.number,
                TAG_TRIAL_STATE: trial.state.name,
                **{p: settings[p] for p in CONFIG_PARAMS if p in settings},
                METRIC_EVAL_PERPLEXITY: value,
                METRIC_TRAINABLE_PARAMS: row["trainable_params"],
                METRIC_PEAK_MEMORY_MB: row["peak_memory_mb"],
            }
        )
    table = confirmed_table(confirmed, recommended, 0) if confirmed else None
    searched = tuple(grid.space.searched())
    return StudyRuns(
        name=study.study_name,
        experiment_id="",
        parent_run_id="",
        params={},
        metrics={METRIC_SEED_STD: pooled_std(confirmed)} if confirmed else {},
        tags={},
        trials=pd.DataFrame(rows),
        confirmations=pd.DataFrame(),
        confirmed=table,
        versions=[],
        importances={},
        searched=searched,
        ranges=read.ranges(grid.space),
        space_file="",
        space_text="",
        environment={},
        command="",
        wall_s=0.0,
    )


def contradicted(grid: Grid, claim: findings.Claim, a: dict, b: dict) -> bool:
    """Whether the grid decides against `claim` (see the module's docstring)."""
    gap = grid.truth(b) - grid.truth(a)  # > 0: a is better
    if claim.relation == findings.BEATS:
        return gap <= 0
    return abs(gap) > 2 * grid.difference_noise()


STRATEGIES = (
    Strategy("tpe", True, True),
    Strategy("tpe", True, True, ("rank",)),
    Strategy("tpe", True, True, ("target_modules",)),
    Strategy("tpe", True, True, ("rank", "target_modules")),
    Strategy("tpe", True, True, ("rank", "target_modules"), n_trials=10),
    Strategy("tpe", False, False),  # what Oumi's `tune` does: each trial trained in full, one seed
    Strategy("random", False, False),
    Strategy("grid", False, False),
)


def measure(grid: Grid, strategy: Strategy, studies: int) -> dict:
    """The strategy over `studies` replayed studies, against the grid."""
    best = min(grid.truth(p) for p in grid.points())
    noise, std, total = grid.difference_noise(), grid.seed_std(), grid.tokens()
    outcomes = [replay(grid, strategy, number) for number in range(studies)]
    regrets = [grid.truth(o.recommended) - best for o in outcomes]
    found = [f for o in outcomes for f in o.decided]
    wrong = [f for f in found if any(contradicted(grid, c, a, b) for c, a, b in f)]
    trends = [t for o in outcomes for t in o.trends]
    wrong += [t for t in trends if grid.trend(t[0], strategy.explore_budget) != t[1]]
    found += trends
    return {
        "strategy": strategy.name,
        "studies": studies,
        "within noise of the true best": f"{100 * np.mean([r <= noise for r in regrets]):.0f}%",
        "median regret (seed stds)": f"{np.median(regrets) / std:.2f}",
        "decided findings per study": f"{len(found) / studies:.2f}",
        "false discoveries": f"{len(wrong)} of {len(found)}"
        + (f" ({100 * len(wrong) / len(found):.1f}%)" if found else ""),
        "compute (share of the grid)": f"{100 * np.mean([o.tokens for o in outcomes]) / total:.1f}%",
    }


def ground_truth(grid: Grid) -> list[str]:
    """The grid in a few lines: its best points, and its noise."""
    ranked = sorted(grid.points(), key=grid.truth)
    lines = [
        f"Grid: {len(grid.points())} configurations x {len(grid.seeds)} seeds. Seed std of test perplexity "
        f"{grid.seed_std():.3f} (pooled); noise of a difference of two grid means {grid.difference_noise():.3f}.",
        "",
        "| rank in the grid | configuration | mean test perplexity |",
        "|---|---|---|",
    ]
    lines += [f"| {i + 1} | {point_key(p)} | {grid.truth(p):.3f} |" for i, p in enumerate(ranked[:5])]
    lines += [f"| {len(ranked)} | {point_key(ranked[-1])} | {grid.truth(ranked[-1]):.3f} |"]
    return lines


def markdown(rows: list[dict]) -> list[str]:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]


def main(args) -> None:
    from results import record
    from study_accuracy import GRID_CONFIG

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid = Grid.load(args.table, GRID_CONFIG)
    rows = [measure(grid, strategy, args.studies) for strategy in STRATEGIES]
    body = ground_truth(grid) + ["", *markdown(rows)]
    record(
        "Study accuracy: studies replayed against a ground-truth grid",
        f"python benchmarks/study_accuracy.py replay --studies {args.studies}",
        f"; {args.table.name} recorded by `python benchmarks/study_accuracy.py record` on this machine kind",
        body,
    )
