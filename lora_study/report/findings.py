"""What a study found about each factor, in sentences produced by rules stated here.

Two rules, each of which says so when the study lacks the data to decide:

`compare_levels` reads a factor with few levels (rank, target modules, quantization, DoRA, ...)
from figures that differ in that factor alone (`confounders` names what else differs; the caller
decides only on matched figures). Noise is measured where the comparison is made: for confirmed
configurations, the seeds' spread at the confirm budget on the test split (`seed_std`, pooled),
so two means of n1 and n2 seeds differ by about seed_std x sqrt(1/n1 + 1/n2) from noise alone
(`difference_std`). A level at most half that behind the best is a tie, and among ties the
cheapest level is the answer ("rank 16 suffices"); a level more than twice that behind is beaten;
in between the rule does not decide. Half, not one: a tie asserts that no difference matters, and
replayed against the ground truth (benchmarks/RESULTS.md, study accuracy) ties called within one
noise unit were contradicted in 6.5% of decided findings, within half of one in 0.9%. Without
noise measured at the figures' budget and split (one seed, no confirm phase, or explore-budget
figures that no replicate measured) no difference can be called real, and the rule says only
what was measured.
Cost is trainable parameters, and peak memory for quantization (it shrinks the frozen base, not
the adapter); a factor that changes neither (alpha / rank, rsLoRA) is compared at equal cost.

`trend` reads a factor searched over a range (learning rate): the Spearman correlation of its
value with perplexity over complete trials (at least `MIN_TREND_TRIALS`), called a trend only
when a permutation test puts it below `TREND_P` (values shuffled `PERMUTATIONS` times, seeded);
and whether the best trial sits at an edge of the searched range, where the optimum may lie
beyond it.
"""

import math
import numbers
from dataclasses import dataclass

import numpy as np
import pandas as pd

MIN_TREND_TRIALS = 5
TREND_P = 0.05  # two-sided permutation p-value under which a correlation is called a trend
PERMUTATIONS = 20_000
EDGE_SHARE = 0.1  # the outer tenth of a (log) range counts as its edge
SAME_COST = 0.01  # costs within 1% of each other are the same cost
TIE_WITHIN = 0.5  # a level behind the best by at most this many noise units of a difference is a tie
BEATEN_BEYOND = 2.0  # ... and by more than this many, it is beaten


@dataclass(frozen=True)
class Level:
    """One level of a factor, as measured by its best trial."""

    level: object  # 16, "qv", True
    perplexity: float
    cost: float  # what choosing it costs: trainable parameters (peak memory for quantization)
    memory_mb: float
    trial: int | None = None  # the trial (explore, or the confirmed configuration's) its figure is of


# What a decided finding asserts, pair by pair, so that it can be checked against a ground truth
# (benchmarks/study_accuracy.py): `a` beats `b` (a lower perplexity), or they tie within noise.
BEATS, TIES = "beats", "ties"


@dataclass(frozen=True)
class Claim:
    relation: str  # BEATS or TIES
    a: Level
    b: Level


@dataclass(frozen=True)
class Finding:
    factor: str
    text: str
    decided: bool  # False: the rule lacked the data to call it
    claims: tuple[Claim, ...] = ()  # of a decided finding: what it asserts, pair by pair
    direction: int = 0  # of a decided trend: -1, lower perplexity at higher values; +1, at lower values
    figures: str = ""  # what it was read from: CONFIRMED or EXPLORED figures (set by the caller)


CONFIRMED, EXPLORED = "confirmed", "explored"  # test split at the confirm budget; validation at the explore budget


def level_name(factor: str, level) -> str:
    """A level as a sentence names it: `rank 16`, `qv`, `DoRA on`, `alpha 2x rank`."""
    if factor in ("use_dora", "use_rslora"):
        return f"{'DoRA' if factor == 'use_dora' else 'rsLoRA'} {'on' if _truthy(level) else 'off'}"
    if factor == "target_modules":
        return str(level)
    if factor == "alpha_per_rank":
        return f"alpha {_number(level)}x rank"
    return f"{factor.replace('_', ' ')} {_number(level) if isinstance(level, numbers.Real) else level}"


def confounders(rows: pd.DataFrame, factor: str, params: tuple[str, ...]) -> list[str]:
    """What besides `factor` differs among `rows` (one per level), in words: `learning rate (rank 8:
    0.001; rank 32: 0.0005)`. Alpha follows rank through alpha / rank, so it is not counted when
    either varies (`confounders_ignore`)."""
    found = []
    for param in params:
        if confounders_ignore(factor, param) or param not in rows or rows[param].nunique(dropna=False) < 2:
            continue
        values = "; ".join(f"{level_name(factor, level)}: {_short(v)}" for level, v in zip(rows[factor], rows[param]))
        found.append(f"{label(param)} ({values})")
    return found


def confounders_ignore(factor: str, param: str) -> bool:
    """Whether `param` moves with `factor` by definition: the factor itself; alpha with rank or
    alpha / rank (alpha = alpha / rank x rank); alpha / rank with alpha."""
    if param == factor:
        return True
    if factor in ("rank", "alpha_per_rank"):
        return param == "alpha"
    return factor == "alpha" and param == "alpha_per_rank"


def undecided_by_confounders(factor: str, levels: list[Level], differing: list[str], what: str) -> Finding:
    """The numbers of levels whose figures also differ in other settings: no decision."""
    ordered = sorted(levels, key=lambda x: x.perplexity)
    best, runner_up = ordered[0], ordered[1]
    return Finding(
        factor,
        f"{level_name(factor, best.level)} has the best {what} ({best.perplexity:.3f}), "
        f"{runner_up.perplexity - best.perplexity:.3f} ahead of {level_name(factor, runner_up.level)}; not decided: "
        f"those figures also differ in {'; '.join(differing)}, so they do not isolate {label(factor)}",
        False,
    )


def compare_levels(
    factor: str,
    levels: list[Level],
    seed_std: float | None,
    difference_std: float | None = None,
    tie_within: float = TIE_WITHIN,
    no_noise: str = "without a seed spread (--confirm-seeds 2 or more) the study cannot tell whether that is more "
    "than noise",
) -> Finding:
    """The finding of a factor with a few levels, measured alike (matched figures). `difference_std`
    is the noise of a difference of two of their figures (sqrt(2) x `seed_std` for single runs);
    `tie_within` the tie rule, in units of it (the replay measures others)."""
    if len(levels) < 2:
        only = level_name(factor, levels[0].level) if levels else "no level"
        return Finding(factor, f"{label(factor)}: only {only} has a complete trial; nothing to compare", False)
    ordered = sorted(levels, key=lambda x: x.perplexity)
    best, runner_up = ordered[0], ordered[1]
    gap = runner_up.perplexity - best.perplexity

    def name(x: Level) -> str:
        return level_name(factor, x.level)

    if not seed_std:
        return Finding(
            factor,
            f"{name(best)} has the best perplexity ({best.perplexity:.3f}), {gap:.3f} ahead of {name(runner_up)}; "
            + no_noise,
            False,
        )
    noise = difference_std or math.sqrt(2) * seed_std  # the spread of a difference of two figures
    ties = [x for x in ordered if x.perplexity - best.perplexity <= tie_within * noise]
    cheapest = min(ties, key=lambda x: (x.cost, x.perplexity))
    if not _same_cost(cheapest.cost, best.cost) and cheapest.cost < best.cost:
        return Finding(
            factor,
            f"{name(best)} is within noise of {name(cheapest)} ({cheapest.perplexity - best.perplexity:.3f} ppl "
            f"apart; seed std {seed_std:.3f}): {name(cheapest)} suffices",
            True,
            (Claim(TIES, cheapest, best),),
        )
    if len(ties) > 1 and all(_same_cost(x.cost, best.cost) for x in ties):
        return Finding(
            factor,
            f"{', '.join(name(x) for x in ties)} are within noise of each other "
            f"({ties[-1].perplexity - best.perplexity:.3f} ppl apart; seed std {seed_std:.3f}) at the same cost: "
            "the choice makes no measurable difference here",
            True,
            tuple(Claim(TIES, x, best) for x in ties[1:]),
        )
    if len(ties) > 1:
        return Finding(
            factor,
            f"{name(best)} is best, and {', '.join(name(x) for x in ties[1:])}, within noise of it (seed std "
            f"{seed_std:.3f}), cost as much or more: {name(best)} suffices",
            True,
            tuple(Claim(TIES, x, best) for x in ties[1:]),
        )
    said = f"{name(best)} beats {name(runner_up)} by {100 * gap / runner_up.perplexity:.1f}% perplexity ({gap:.3f} ppl"
    if gap <= BEATEN_BEYOND * noise:
        return Finding(
            factor,
            f"{said}; seed std {seed_std:.3f}), more than half and at most twice the noise of a difference of "
            f"two runs ({noise:.3f}): not decided either way; more seeds would decide it",
            False,
        )
    memory = f" at {best.memory_mb / runner_up.memory_mb:.2f}x peak memory" if runner_up.memory_mb > 0 else ""
    return Finding(factor, f"{said}; seed std {seed_std:.3f}){memory}", True, (Claim(BEATS, best, runner_up),))


def trend(factor: str, values: pd.Series, perplexities: pd.Series, searched: tuple[float, float] | None) -> Finding:
    """The finding of a factor searched over a range: its direction, and the best value's place in the range."""
    frame = pd.DataFrame({"value": pd.to_numeric(values), "ppl": perplexities}).dropna()
    name = label(factor)
    if len(frame) < MIN_TREND_TRIALS or frame.value.nunique() < 3:
        return Finding(
            factor,
            f"{name}: {len(frame)} complete trials at {frame.value.nunique()} values; the trend rule needs "
            f"{MIN_TREND_TRIALS} trials at 3 or more values",
            False,
        )
    rho, p = spearman(frame.value.to_numpy(), frame.ppl.to_numpy())
    measured = f"Spearman rho {rho:+.2f}, permutation p {p:.3f}, over {len(frame)} trials"
    decided = p < TREND_P
    if decided:
        text = f"{name}: lower perplexity at {'higher' if rho < 0 else 'lower'} values ({measured})"
    else:
        text = f"{name}: no trend shown ({measured}; a trend needs p < {TREND_P})"
    best = frame.loc[frame.ppl.idxmin(), "value"]
    edge = _edge(best, searched) if searched else None
    if edge:
        low, high = searched
        text += (
            f"; the best value, {best:.3g}, lies at the {edge} edge of the searched range {low:.3g} to {high:.3g}: "
            f"the optimum may lie beyond it, widen the range {'up' if edge == 'upper' else 'down'}ward"
        )
    else:
        text += f"; best at {best:.3g}"
    return Finding(factor, text, decided, direction=int(np.sign(rho)) if decided else 0)


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's rho, and its two-sided p-value by permuting `y` (seeded: the same data, the same p)."""
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    rho = float(np.corrcoef(rx, ry)[0, 1])
    shuffled = np.random.default_rng(0).permuted(np.tile(ry, (PERMUTATIONS, 1)), axis=1)
    centred = shuffled - shuffled.mean(axis=1, keepdims=True)
    rx_centred = rx - rx.mean()
    null = centred @ rx_centred / (np.linalg.norm(centred, axis=1) * np.linalg.norm(rx_centred))
    return rho, float((np.abs(null) >= abs(rho) - 1e-12).mean())


def _edge(value: float, searched: tuple[float, float]) -> str | None:
    """`upper` or `lower` when `value` lies in the outer tenth of the (log) range, else None."""
    low, high = searched
    scale = math.log if low > 0 else (lambda x: x)
    if high <= low:
        return None
    position = (scale(value) - scale(low)) / (scale(high) - scale(low))
    if position >= 1 - EDGE_SHARE:
        return "upper"
    if position <= EDGE_SHARE:
        return "lower"
    return None


def label(factor: str) -> str:
    """A factor as a heading names it: `rank`, `alpha / rank`, `DoRA`."""
    return {"alpha_per_rank": "alpha / rank", "use_dora": "DoRA", "use_rslora": "rsLoRA"}.get(
        factor, factor.replace("_", " ")
    )


def _same_cost(a: float, b: float) -> bool:
    return abs(a - b) <= SAME_COST * max(abs(a), abs(b), 1e-12)


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, numbers.Real) else str(value)


def _short(value) -> str:
    """A setting's value in a sentence: 3 significant digits for a fraction (a learning rate)."""
    return f"{value:.3g}" if isinstance(value, numbers.Real) and not isinstance(value, bool) else str(value)


def _truthy(value) -> bool:
    return str(value).lower() in ("true", "1")
