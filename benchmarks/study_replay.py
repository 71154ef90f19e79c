"""Studies replayed against the recorded grid: the study's own sampler, pruner, confirm phase
(replicates, neighbours, confirmations), recommendation rule and findings' rules run for real;
only the trainings are looked up.

The replayed studies search the grid's discretised space (configs/sweep/accuracy-grid.yaml: three
learning rates, alpha 2 x rank), not the default's continuous learning rate: TPE can draw a point
twice here, and the report's matched-learning-rate rule can fire, which it seldom does on a
continuous range. A replayed study draws its seeds from the grid's, in a random order: its explore
trials train with the first (as a sweep's do with the data seed), its replicates with the second,
its confirmations with the first `--confirm-seeds`. Each configuration's truth is its mean over
the grid's seeds; two columns use only the seeds the study did not train with (held out), which
is noisier with 3 seeds but not flattered by the study's own runs. A decided finding is
contradicted when the grid decides the other way at the budget and split of its figures: a
claimed win whose grid difference has the other sign (or none), a claimed tie that the grid calls
beaten (more than twice the noise of a difference of two grid means), or a trend whose grid sign
differs; it is supported when the grid decides the same way (a win by more than twice that noise,
a tie within it once).
"""

import dataclasses
import itertools
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
    METRIC_TEST_PERPLEXITY,
    METRIC_TRAINABLE_PARAMS,
    TAG_NEIGHBOUR_OF,
    TAG_REPLICATE_OF,
    TAG_TRIAL_NUMBER,
    TAG_TRIAL_STATE,
)
from lora_study.report import effects, findings, read
from lora_study.report.answer import CONFIG_PARAMS
from lora_study.report.read import StudyRuns
from lora_study.sweep import search_space
from lora_study.sweep.recommendation import Confirmed, pooled_std, recommend
from lora_study.sweep.study import (
    ATTR_NEIGHBOUR_OF,
    ATTR_REPLICATE_OF,
    ATTR_SEED,
    Plan,
    pruner,
    queue_neighbours,
    queue_replicates,
    sampled,
    sampler,
    to_confirm,
)
from lora_study.sweep.summary import confirmed_table


def point_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def grid_points(space: search_space.SearchSpace) -> list[dict]:
    """Every point of a grid search space, as Optuna params."""
    grid = space.grid()
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


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
        return cls(search_space.load(str(config)), rows, tuple(sorted({seed for _, seed in rows})))

    def points(self) -> list[dict]:
        """The grid's points (of its config) recorded with every seed."""
        return [p for p in grid_points(self.space) if all((point_key(p), s) in self.rows for s in self.seeds)]

    def row(self, params: dict, seed: int) -> dict:
        return self.rows[point_key(params), seed]

    def explore_schedule(self) -> tuple[int, int]:
        """The recorded explore budget and evaluation interval: (max_steps, eval_every)."""
        row = next(iter(self.rows.values()))
        return row["explore_steps"], min(int(step) for step in row["explore_eval_perplexity"])

    def figure(self, params: dict, seed: int, figures: str = findings.CONFIRMED) -> float:
        """One run's figure: test perplexity at the confirm budget, or validation at the explore budget's end."""
        row = self.row(params, seed)
        if figures == findings.CONFIRMED:
            return row["test_perplexity"]
        return row["explore_eval_perplexity"][str(row["explore_steps"])]

    def truth(self, params: dict, figures: str = findings.CONFIRMED, seeds=None) -> float:
        """The mean of a figure over `seeds` (all the grid's by default)."""
        return statistics.fmean(self.figure(params, s, figures) for s in seeds or self.seeds)

    def seed_std(self, figures: str = findings.CONFIRMED) -> float:
        """The seeds' spread of a figure, pooled over the points."""
        seeded = [[self.figure(p, s, figures) for s in self.seeds] for p in self.points()]
        return math.sqrt(statistics.fmean(statistics.variance(values) for values in seeded))

    def difference_noise(self, figures: str = findings.CONFIRMED, seeds: int = 0) -> float:
        """The spread from noise alone of a difference of two means of `seeds` seeds (all the grid's)."""
        return self.seed_std(figures) * math.sqrt(2 / (seeds or len(self.seeds)))

    def trend(self, factor: str, figures: str, seeds=None) -> int:
        """The sign of the Spearman correlation of `factor` with the grid's validation perplexity
        at the explore budget (EXPLORED) or the confirm budget (CONFIRMED)."""
        points = self.points()
        perplexities = [self._validation(p, figures, seeds) for p in points]
        return int(np.sign(findings.spearman(np.array([p[factor] for p in points]), np.array(perplexities))[0]))

    def _validation(self, params: dict, figures: str, seeds) -> float:
        if figures == findings.EXPLORED:
            return self.truth(params, findings.EXPLORED, seeds)
        return statistics.fmean(self.row(params, s)["confirm_eval_perplexity"] for s in seeds or self.seeds)

    def tokens(self) -> float:
        """What the grid trained at the confirm budget: every point with every seed."""
        return sum(self.row(p, s)["confirm_trained_tokens"] for p in self.points() for s in self.seeds)


@dataclasses.dataclass(frozen=True)
class Strategy:
    sampler: str  # tpe | random | grid
    explore_budget: bool  # explore at the explore budget (pruned), else every trial at the confirm budget
    confirm: bool  # confirm the top configurations with seeds, and recommend by the rule
    neighbours: tuple[str, ...] = ()  # factors whose one-level neighbours of the best are confirmed too
    replicates: int = 0  # explore trials trained again with the next seed (the explore budget's noise)
    n_trials: int = SweepConfig().n_trials
    confirm_top: int = 2  # the default's on the embedded default (--confirm-top -1)
    recommend: str = SweepConfig().recommend
    tie_within: float = findings.TIE_WITHIN  # the report's tie rule, in noise units of a difference

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
        if self.replicates:
            said += f"; {self.replicates} explore trials replicated"
        if self.recommend != SweepConfig().recommend:
            said += f"; --recommend {self.recommend}"
        if self.tie_within != findings.TIE_WITHIN:
            said += f"; ties within {self.tie_within:g} noise unit of a difference"
        return said + (" (the default)" if self == default_strategy() else "")


def default_strategy() -> Strategy:
    """What `lora-study sweep` does with its defaults on the embedded default."""
    default = SweepConfig()
    return Strategy("tpe", True, True, tuple(default.neighbour_factors), default.explore_replicates)


@dataclasses.dataclass
class Outcome:
    recommended: dict  # params
    decided: list  # of decided findings: (Finding, {trial number: params})
    seeds: list  # the seeds the study trained with
    tokens: float


def replay(grid: Grid, strategy: Strategy, number: int) -> Outcome:
    """One study of `strategy`, its randomness drawn from `number`."""
    seeds = [int(s) for s in np.random.default_rng(number).permutation(grid.seeds)]
    max_steps, eval_every = grid.explore_schedule()
    pruning = "hyperband" if strategy.explore_budget else "none"
    cfg = SweepConfig(
        n_trials=strategy.n_trials,
        max_steps=max_steps,
        eval_every=eval_every,
        pruner=pruning,
        explore_replicates=strategy.replicates,
        recommend=strategy.recommend,
    )
    space = dataclasses.replace(grid.space, sampler=strategy.sampler)
    plan = Plan(DataConfig(split_seed=number), BaseModelConfig(), cfg, space, f"replay-{number}", "")
    study = optuna.create_study(sampler=sampler(plan), pruner=pruner(cfg))
    tokens, used = [0.0], {seeds[0]}
    objective = _objective(grid, seeds[0], strategy.explore_budget, cfg, tokens, used)
    study.optimize(objective, n_trials=len(grid.points()) if strategy.sampler == "grid" else strategy.n_trials)
    configs = to_confirm(study, strategy.confirm_top) if strategy.confirm else []
    if not configs:
        decided = _decided(grid, study, [], None, strategy)
        return Outcome(study.best_trial.params, decided, sorted(used), tokens[0])
    # the confirm phase as the sweep queues it: replicates, then neighbours, then confirmations
    queue_replicates(study, cfg.explore_replicates, seeds[1])
    for neighbour in queue_neighbours(study, configs[0], grid.space, list(strategy.neighbours)):
        if all(neighbour.params != c.params for c in configs):
            configs.append(neighbour)
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    if waiting:
        study.optimize(objective, n_trials=len(waiting))
    used |= set(seeds[: cfg.confirm_seeds])
    confirmed = [_confirmed(grid, t, seeds[: cfg.confirm_seeds], tokens) for t in configs]
    recommended = recommend(confirmed, cfg.recommend, cfg.within_se)
    decided = _decided(grid, study, confirmed, recommended, strategy)
    return Outcome(dict(recommended.chosen.params), decided, sorted(used), tokens[0])


def _objective(grid: Grid, seed: int, explore_budget: bool, cfg: SweepConfig, tokens: list, used: set):
    defaults = {"max_steps": cfg.max_steps, "eval_every": cfg.eval_every}

    def objective(trial: optuna.Trial) -> float:
        grid.space.suggest(trial, defaults)  # the sweep's own draw of the trial's settings
        trained_with = trial.user_attrs.get(ATTR_SEED, seed)  # a replicate's is its own
        used.add(trained_with)
        row = grid.row(trial.params, trained_with)
        if not explore_budget:
            tokens[0] += row["confirm_trained_tokens"]
            return row["confirm_eval_perplexity"]
        curve = {int(step): ppl for step, ppl in row["explore_eval_perplexity"].items()}
        per_step = row["explore_trained_tokens"] / row["explore_steps"]
        reached = 0
        for step in sorted(curve):
            tokens[0] += per_step * (step - reached)
            reached = step
            trial.report(curve[step], step)
            if step < row["explore_steps"] and sampled(trial) and trial.should_prune():
                raise optuna.TrialPruned()
        return curve[row["explore_steps"]]

    return objective


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


def _decided(grid: Grid, study, confirmed: list, recommended, strategy: Strategy) -> list:
    """The study's decided findings by the report's own rules (its tie rule as `strategy` sets
    it), with the params of its trials; a trend is marked with the budget its explore trials
    trained at."""
    runs = _study_runs(grid, study, confirmed, recommended)
    by_number = {t.number: t.params for t in study.trials}
    decided = [finding for _, finding, _ in effects.factor_findings(runs, strategy.tie_within) if finding.decided]
    budget = findings.EXPLORED if strategy.explore_budget else findings.CONFIRMED
    return [(dataclasses.replace(f, figures=budget) if f.direction else f, by_number) for f in decided]


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
                TAG_NEIGHBOUR_OF: trial.user_attrs.get(ATTR_NEIGHBOUR_OF),
                TAG_REPLICATE_OF: trial.user_attrs.get(ATTR_REPLICATE_OF),
                **{p: settings[p] for p in CONFIG_PARAMS if p in settings},
                METRIC_EVAL_PERPLEXITY: value,
                METRIC_TRAINABLE_PARAMS: row["trainable_params"],
                METRIC_PEAK_MEMORY_MB: row["peak_memory_mb"],
            }
        )
    return StudyRuns(
        name=study.study_name,
        experiment_id="",
        parent_run_id="",
        params={},
        metrics={METRIC_SEED_STD.format(metric=METRIC_TEST_PERPLEXITY): pooled_std(confirmed)} if confirmed else {},
        tags={},
        trials=pd.DataFrame(rows),
        confirmations=pd.DataFrame(),
        confirmed=confirmed_table(confirmed, recommended, 0) if confirmed else None,
        versions=[],
        importances={},
        searched=tuple(grid.space.searched()),
        ranges=read.ranges(grid.space),
        space_file="",
        space_text="",
        environment={},
        command="",
        wall_s=0.0,
    )


# --- scoring ---------------------------------------------------------------------------------------

CONTRADICTED, UNRESOLVED, SUPPORTED = "contradicted", "unresolved", "supported"


def verdict(grid: Grid, finding: findings.Finding, by_number: dict, seeds=None, figures: str = "") -> str:
    """What the grid (over `seeds`) says of a decided finding, at the budget and split of its
    figures unless `figures` names another: the worst verdict of its claims."""
    figures = figures or finding.figures or findings.EXPLORED
    if finding.direction:  # a trend, read from explore trials (validation split)
        trend_figures = findings.EXPLORED if finding.figures != findings.CONFIRMED else figures
        return SUPPORTED if grid.trend(finding.factor, trend_figures, seeds) == finding.direction else CONTRADICTED
    noise = grid.difference_noise(figures, len(seeds or grid.seeds))
    verdicts = []
    for claim in finding.claims:
        gap = grid.truth(by_number[claim.b.trial], figures, seeds) - grid.truth(
            by_number[claim.a.trial], figures, seeds
        )
        if claim.relation == findings.BEATS:  # gap > 0: a is better, as claimed
            verdicts.append(CONTRADICTED if gap <= 0 else SUPPORTED if gap > 2 * noise else UNRESOLVED)
        else:
            verdicts.append(CONTRADICTED if abs(gap) > 2 * noise else SUPPORTED if abs(gap) <= noise else UNRESOLVED)
    for worst in (CONTRADICTED, UNRESOLVED):
        if worst in verdicts:
            return worst
    return SUPPORTED


BOTH = ("rank", "target_modules")
OLD_RULE = "cheapest-within-se"  # the default rule until this benchmark
STRATEGIES = (
    Strategy("tpe", True, True, recommend=OLD_RULE),  # the default before neighbours and replicates
    Strategy("tpe", True, True, BOTH, 2, recommend=OLD_RULE),
    Strategy("tpe", True, True),
    Strategy("tpe", True, True, replicates=2),
    Strategy("tpe", True, True, ("rank",), 2),
    Strategy("tpe", True, True, ("target_modules",), 2),
    Strategy("tpe", True, True, BOTH, 2),
    Strategy("tpe", True, True, BOTH, 2, tie_within=1.0),  # the tie rule before this benchmark
    Strategy("tpe", True, True, BOTH, 2, confirm_top=1),
    Strategy("tpe", True, True, BOTH, 2, n_trials=10),
    Strategy("tpe", False, False),  # what Oumi's `tune` does: each trial trained in full, one seed
    Strategy("random", False, False),
    Strategy("grid", False, False),
)


def measure(grid: Grid, strategy: Strategy, studies: int) -> dict:
    """The strategy over `studies` replayed studies, against the grid: the truth over all its
    seeds, and over the seeds each study did not train with."""
    outcomes = [replay(grid, strategy, number) for number in range(studies)]
    within, regrets, held_within = [], [], []
    for outcome in outcomes:
        regret = _regret(grid, outcome.recommended)
        within.append(regret <= grid.difference_noise())
        regrets.append(regret / grid.seed_std())
        held = [s for s in grid.seeds if s not in outcome.seeds]
        if held:
            held_within.append(_regret(grid, outcome.recommended, held) <= grid.difference_noise(seeds=len(held)))
    found = [(f, numbers, o) for o in outcomes for f, numbers in o.decided]
    verdicts = [verdict(grid, f, numbers) for f, numbers, _ in found]
    held_verdicts = [
        verdict(grid, f, numbers, [s for s in grid.seeds if s not in o.seeds])
        for f, numbers, o in found
        if len(o.seeds) < len(grid.seeds)
    ]
    explored = [(f, numbers) for f, numbers, _ in found if f.figures == findings.EXPLORED and f.claims]
    at_confirm = [verdict(grid, f, numbers, figures=findings.CONFIRMED) for f, numbers in explored]
    return {
        "strategy": strategy.name,
        "studies": studies,
        "within noise of the true best": _share(within),
        "(held-out seeds)": _share(held_within),
        "median regret (seed stds)": f"{np.median(regrets):.2f}",
        "decided findings per study": f"{len(found) / studies:.2f}",
        "contradicted": _count(verdicts, CONTRADICTED),
        "(held-out seeds) ": _count(held_verdicts, CONTRADICTED),
        "supported": _count(verdicts, SUPPORTED),
        "explore-figure findings contradicted at the confirm budget": _count(at_confirm, CONTRADICTED),
        "compute (share of the grid)": f"{100 * np.mean([o.tokens for o in outcomes]) / grid.tokens():.1f}%",
    }


def _regret(grid: Grid, params: dict, seeds=None) -> float:
    """How far `params` is behind the grid's best, by test perplexity over `seeds`."""
    return grid.truth(params, seeds=seeds) - min(grid.truth(p, seeds=seeds) for p in grid.points())


def _share(flags: list) -> str:
    return f"{100 * np.mean(flags):.0f}%" if flags else "-"


def _count(verdicts: list, which: str) -> str:
    hits = sum(v == which for v in verdicts)
    return f"{hits} of {len(verdicts)}" + (f" ({hits / len(verdicts):.1%})" if verdicts else "")


def ground_truth(grid: Grid) -> list[str]:
    """The grid in a few lines: its best points, and its noise."""
    ranked = sorted(grid.points(), key=grid.truth)
    lines = [
        f"Grid: {len(grid.points())} configurations x {len(grid.seeds)} seeds. Seed std, pooled: test perplexity "
        f"at the confirm budget {grid.seed_std():.3f}, validation perplexity at the explore budget "
        f"{grid.seed_std(findings.EXPLORED):.3f}; noise of a difference of two grid means of test perplexity "
        f"{grid.difference_noise():.3f}.",
        "",
        "| rank in the grid | configuration | mean test perplexity |",
        "|---|---|---|",
    ]
    lines += [f"| {i + 1} | {point_key(p)} | {grid.truth(p):.3f} |" for i, p in enumerate(ranked[:5])]
    lines += [f"| {len(ranked)} | {point_key(ranked[-1])} | {grid.truth(ranked[-1]):.3f} |"]
    return lines


def markdown(rows: list[dict]) -> list[str]:
    columns = list(rows[0])
    lines = ["| " + " | ".join(c.strip() for c in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]


def main(args) -> None:
    from results import record

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid = Grid.load(args.table, args.grid)
    rows = [measure(grid, strategy, args.studies) for strategy in STRATEGIES]
    record(
        "Study accuracy: studies replayed against a ground-truth grid",
        f"python benchmarks/study_accuracy.py replay --studies {args.studies}",
        f"; {args.table.name} recorded by `python benchmarks/study_accuracy.py record` on this machine",
        ground_truth(grid) + ["", *markdown(rows)],
    )
