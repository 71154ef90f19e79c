"""The report's section on each factor's effect: per searched factor, the finding its strongest
matched figures support (`findings`: confirmed configurations that differ in it alone, else the
best explore trial per level against the explore budget's noise), and a table of the
configurations it was read from, a row each."""

import dataclasses
import math

import pandas as pd

from lora_study import plots
from lora_study.names import (
    COLUMN_CONFIG_TRIAL,
    COLUMN_SEEDS,
    COLUMN_TEST_PERPLEXITY_MEAN,
    COLUMN_TEST_PERPLEXITY_STD,
    METRIC_EVAL_PERPLEXITY,
    METRIC_PEAK_MEMORY_MB,
    METRIC_SEED_STD,
    METRIC_TEST_PERPLEXITY,
    METRIC_TRAINABLE_PARAMS,
    METRIC_UPDATE_ENERGY_RANK,
    PARAM_ALPHA,
    PARAM_DROPOUT,
    PARAM_LEARNING_RATE,
    PARAM_QUANTIZATION,
    PARAM_RANK,
    PARAM_TARGET_MODULES,
    PARAM_USE_DORA,
    PARAM_USE_RSLORA,
    TAG_REPLICATE_OF,
    TAG_TRIAL_NUMBER,
    TAG_TRIAL_STATE,
)
from lora_study.report import findings
from lora_study.report.answer import CONFIG_PARAMS, configurations, confirmed_configs, with_alpha_per_rank
from lora_study.report.read import StudyRuns
from lora_study.report.render import Heading, Section, Table
from lora_study.sweep.search_space import ALPHA_PER_RANK

COLUMN_UPDATE_DIRECTIONS = "update: 90%-energy directions"  # of a level's best trial, median over its modules


# Factors read level by level, and factors read as a trend (as is a numeric one with more than
# MAX_LEVELS levels); alpha / rank and rsLoRA change no cost, so their levels cost the same.
LEVEL_FACTORS = (
    PARAM_RANK,
    PARAM_TARGET_MODULES,
    PARAM_QUANTIZATION,
    PARAM_USE_DORA,
    PARAM_USE_RSLORA,
    ALPHA_PER_RANK,
    PARAM_ALPHA,
)
TREND_FACTORS = (PARAM_LEARNING_RATE, PARAM_DROPOUT)
COST_NEUTRAL = (ALPHA_PER_RANK, PARAM_USE_RSLORA)
MAX_LEVELS = 6
# The settings a configuration is: two figures compare one factor only when all the others match
# (alpha is alpha / rank x rank, so it is not one more). A learning rate searched at every level is
# matched by its best value.
MATCH_PARAMS = tuple(ALPHA_PER_RANK if param == PARAM_ALPHA else param for param in CONFIG_PARAMS)
MIN_LEARNING_RATES = 3  # values searched at a level for its best learning rate to count as found
EXPLORE_NOISE = (
    "no explore trial was trained again with another seed (--explore-replicates), so the study cannot tell "
    "whether that is more than noise at the explore budget"
)


def factors(s: StudyRuns) -> Section:
    seed_std, explore = _seed_std(s), explore_noise(s.trials)
    noise = (
        f"seed std {seed_std:.3f}, pooled over the confirmed configurations (test split, confirm budget)"
        if seed_std
        else "no seed spread at the confirm budget (no configuration was confirmed with two seeds or more)"
    )
    noise += (
        f"; seed std {explore[0]:.3f} from {explore[1]} explore trial(s) trained again with another seed "
        "(validation split, explore budget)"
        if explore
        else "; none measured at the explore budget (no explore trial was trained again with another seed)"
    )
    blocks = [
        f"Each factor the search space varied. Noise: {noise}. A finding is decided only from figures that "
        "differ in that factor alone, with the noise measured at their budget and split. The strongest such "
        "figures decide: confirmed configurations (test split, confirm budget) that differ in the factor alone, "
        "against the confirmations' noise; else the best complete explore trial at each level (validation "
        "perplexity at the explore budget), against the explore budget's noise, when nothing else differs "
        f"between them (a learning rate searched at {MIN_LEARNING_RATES} or more values at every level, its "
        "best inside them, counts as matched); else the numbers are shown, undecided, naming what else differs. "
        "Two means of n seeds differ by about seed std x sqrt(2/n) from noise alone: a level behind the best "
        "by at most half that is a tie, and the cheapest tie suffices; by more than twice that, it is beaten; "
        "in between, undecided. Rank is read per target-module preset when those vary. A factor searched "
        "over a range is read by the Spearman correlation of its value with perplexity (a trend when a "
        "permutation test gives p < 0.05) and by where its best value lies in the range."
    ]
    read = factor_findings(s)
    for heading, finding, table in read:
        blocks += [Heading(heading), finding.text + "."]
        if finding.factor == PARAM_RANK and table is not None and COLUMN_UPDATE_DIRECTIONS in table:
            blocks.append(_directions_used(table))
        blocks += [Table(table)] if table is not None else []
    if not read:
        blocks.append("No searched factor varied among the complete trials: there is no effect to read.")
    return Section("factors", "Effects of each factor", blocks)


def factor_findings(
    s: StudyRuns, tie_within: float = findings.TIE_WITHIN
) -> list[tuple[str, findings.Finding, pd.DataFrame | None]]:
    """Each searched factor's finding, under its heading, with the table it was read from (if any);
    `tie_within` is the tie rule (`findings.compare_levels`)."""
    complete = configurations(with_alpha_per_rank(s.trials[s.trials[TAG_TRIAL_STATE] == plots.COMPLETE]))
    seed_std, explore, read = _seed_std(s), explore_noise(s.trials), []
    for factor in LEVEL_FACTORS + TREND_FACTORS:
        if factor not in complete or not _searched(s, factor) or complete[factor].nunique() < 2:
            continue
        numeric = pd.api.types.is_numeric_dtype(complete[factor])
        for heading, rows in _groups(complete, factor):
            if factor in TREND_FACTORS or (numeric and complete[factor].nunique() > MAX_LEVELS):
                ppl = rows[METRIC_EVAL_PERPLEXITY]
                finding, table = findings.trend(factor, rows[factor], ppl, s.ranges.get(factor)), None
            else:
                finding, table = _levels(s, rows, factor, seed_std, explore[0] if explore else None, tie_within)
            read.append((heading, finding, table))
    return read


def _searched(s: StudyRuns, factor: str) -> bool:
    """Whether the search space varied `factor` (every factor that varies, if the space is unknown):
    alpha / rank varies with rank when alpha is fixed, and is not a factor then."""
    return factor in s.searched if s.searched else factor != ALPHA_PER_RANK


def _groups(complete: pd.DataFrame, factor: str) -> list[tuple[str, pd.DataFrame]]:
    """Rank per target-module preset when those vary (their trade-off differs); else one group."""
    if factor == PARAM_RANK and PARAM_TARGET_MODULES in complete and complete[PARAM_TARGET_MODULES].nunique() > 1:
        return [(f"rank, with {preset}", rows) for preset, rows in complete.groupby(PARAM_TARGET_MODULES)]
    return [(findings.label(factor), complete)]


def _levels(
    s: StudyRuns,
    complete: pd.DataFrame,
    factor: str,
    seed_std: float | None,
    explore_std: float | None,
    tie_within: float,
):
    """The finding of a factor with few levels, and its table: a row per level, each of one
    configuration. The strongest matched evidence decides: confirmed configurations that differ in
    this factor alone, with the confirmations' noise; else the best explore trial per level, with
    the explore budget's noise (`explore_std`) when nothing else differs between them, and naming
    what does otherwise."""
    cost = METRIC_PEAK_MEMORY_MB if factor == PARAM_QUANTIZATION else METRIC_TRAINABLE_PARAMS
    matched = _matched_confirmed(s, complete, factor, cost)
    if matched is not None and seed_std:
        levels, seeds = matched
        difference_std = seed_std * math.sqrt(2 / seeds)  # of two means of `seeds` seeds each (at least)
        finding = findings.compare_levels(factor, levels, seed_std, difference_std, tie_within)
        return dataclasses.replace(finding, figures=findings.CONFIRMED), _table(s, complete, factor, levels)
    best = complete.loc[complete.groupby(factor)[METRIC_EVAL_PERPLEXITY].idxmin()]
    levels = _as_levels(best, factor, METRIC_EVAL_PERPLEXITY, cost, TAG_TRIAL_NUMBER)
    table = _table(s, complete, factor, levels)
    differing = findings.confounders(best, factor, _present(best, MATCH_PARAMS))
    if differing and _learning_rate_found_at_every_level(complete, best, factor):
        differing = [text for text in differing if not text.startswith(findings.label(PARAM_LEARNING_RATE))]
    if differing:
        what = "validation perplexity at the explore budget"
        return findings.undecided_by_confounders(factor, levels, differing, what), table
    if explore_std:  # single runs: a difference of two has sqrt(2) x their noise
        finding = findings.compare_levels(factor, levels, explore_std, math.sqrt(2) * explore_std, tie_within)
        return dataclasses.replace(finding, figures=findings.EXPLORED), table
    return findings.compare_levels(factor, levels, None, no_noise=EXPLORE_NOISE), table


def _table(s: StudyRuns, complete: pd.DataFrame, factor: str, levels: list) -> pd.DataFrame:
    """A row per level, all of it of the one configuration (trial) that level's figure is of."""
    rows = complete.set_index(TAG_TRIAL_NUMBER).loc[[level.trial for level in levels]]
    table = pd.DataFrame(
        {
            "level": [findings.level_name(factor, level.level) for level in levels],
            "trial": [level.trial for level in levels],
            "validation perplexity (explore)": rows[METRIC_EVAL_PERPLEXITY].to_numpy(),
            "learning rate": rows[PARAM_LEARNING_RATE].to_numpy() if PARAM_LEARNING_RATE in rows else None,
            "trials at level": complete.groupby(factor).size().loc[rows[factor]].to_numpy(),
            "confirmed: test perplexity": [_confirmed_of(s, level.trial) for level in levels],
            METRIC_TRAINABLE_PARAMS: rows[METRIC_TRAINABLE_PARAMS].to_numpy(),
            METRIC_PEAK_MEMORY_MB: rows[METRIC_PEAK_MEMORY_MB].to_numpy(),
        }
    )
    if METRIC_UPDATE_ENERGY_RANK in rows and rows[METRIC_UPDATE_ENERGY_RANK].notna().all():  # older trials lack it
        table[COLUMN_UPDATE_DIRECTIONS] = rows[METRIC_UPDATE_ENERGY_RANK].to_numpy()
    return table


def _as_levels(rows: pd.DataFrame, factor: str, perplexity: str, cost: str, trial: str) -> list:
    """One `findings.Level` per row (one row per level), measured by its `perplexity` column, the
    trial its figure is of in its `trial` column."""
    return [
        findings.Level(
            row[factor],
            row[perplexity],
            0.0 if factor in COST_NEUTRAL else row[cost],
            row[METRIC_PEAK_MEMORY_MB],
            int(row[trial]),
        )
        for _, row in rows.iterrows()
    ]


def _present(frame: pd.DataFrame, columns) -> tuple[str, ...]:
    return tuple(c for c in columns if c in frame)


def _matched_confirmed(s: StudyRuns, trials: pd.DataFrame, factor: str, cost: str):
    """Confirmed configurations of `trials` at two levels or more that differ in `factor` alone, as
    levels measured by their seeds' mean test perplexity, and the fewest seeds among them; or None.
    Of several such sets, the one holding the best confirmed mean."""
    table = confirmed_configs(s)
    if table is None or factor not in table:
        return None
    table = table[table[COLUMN_CONFIG_TRIAL].isin(trials[TAG_TRIAL_NUMBER]) & (table[COLUMN_SEEDS] >= 2)]
    others = [p for p in _present(table, MATCH_PARAMS) if not findings.confounders_ignore(factor, p)]
    groups = [rows for _, rows in table.groupby(others, dropna=False)] if others else [table]
    sets = [rows for rows in groups if rows[factor].nunique() > 1]
    if not sets:
        return None
    chosen = min(sets, key=lambda rows: rows[COLUMN_TEST_PERPLEXITY_MEAN].min())
    chosen = chosen.loc[chosen.groupby(factor)[COLUMN_TEST_PERPLEXITY_MEAN].idxmin()]
    levels = _as_levels(chosen, factor, COLUMN_TEST_PERPLEXITY_MEAN, cost, COLUMN_CONFIG_TRIAL)
    return levels, int(chosen[COLUMN_SEEDS].min())


def _learning_rate_found_at_every_level(complete: pd.DataFrame, best: pd.DataFrame, factor: str) -> bool:
    """Whether each level's best trial has the best of `MIN_LEARNING_RATES` or more learning rates
    tried with everything else as it has, and not at the edge of those tried."""
    if PARAM_LEARNING_RATE not in complete or factor == PARAM_LEARNING_RATE:
        return False
    others = [p for p in _present(complete, MATCH_PARAMS) if p != PARAM_LEARNING_RATE and p != factor]
    for _, row in best.iterrows():
        alike = complete[(complete[factor] == row[factor])]
        for param in others:
            if not findings.confounders_ignore(factor, param):
                alike = alike[alike[param] == row[param]]
        tried = sorted(alike[PARAM_LEARNING_RATE].unique())
        if len(tried) < MIN_LEARNING_RATES or row[PARAM_LEARNING_RATE] in (tried[0], tried[-1]):
            return False
    return True


def _directions_used(table: pd.DataFrame) -> str:
    """How much of its rank each level's best adapter used, read off its weights (`lora-study inspect`)."""
    used = [f"{level} in {directions:g}" for level, directions in zip(table["level"], table[COLUMN_UPDATE_DIRECTIONS])]
    return (
        "Of their rank, the best adapters at each level put 90% of their update's energy (median over modules) "
        f"in this many directions: {'; '.join(used)}."
    )


def _confirmed_of(s: StudyRuns, trial: int) -> str:
    """The confirmed figure of trial `trial`'s configuration: mean +- std (n seeds), or empty."""
    table = confirmed_configs(s)
    if table is None:
        return ""
    rows = table[table[COLUMN_CONFIG_TRIAL] == trial]
    if rows.empty:
        return ""
    row = rows.iloc[0]
    return (
        f"{row[COLUMN_TEST_PERPLEXITY_MEAN]:.3f} +- {row[COLUMN_TEST_PERPLEXITY_STD]:.3f} (n={int(row[COLUMN_SEEDS])})"
    )


def explore_noise(trials: pd.DataFrame) -> tuple[float, int] | None:
    """The seed std of validation perplexity at the explore budget, pooled over the explore trials
    trained again with another seed (each against its original), and how many; None without any."""
    if TAG_REPLICATE_OF not in trials:
        return None
    complete = trials[trials[TAG_TRIAL_STATE] == plots.COMPLETE].set_index(TAG_TRIAL_NUMBER)
    replicates = complete[complete[TAG_REPLICATE_OF].notna()]
    pairs = [
        (row[METRIC_EVAL_PERPLEXITY], complete.loc[int(row[TAG_REPLICATE_OF]), METRIC_EVAL_PERPLEXITY])
        for _, row in replicates.iterrows()
        if int(row[TAG_REPLICATE_OF]) in complete.index
    ]
    if not pairs:
        return None
    return math.sqrt(sum((a - b) ** 2 / 2 for a, b in pairs) / len(pairs)), len(pairs)


def _seed_std(s: StudyRuns) -> float | None:
    """The seed noise, when some confirmed configuration had two seeds or more."""
    if s.confirmed is None or s.confirmed.empty or (s.confirmed[COLUMN_SEEDS] < 2).all():
        return None
    return s.metrics.get(METRIC_SEED_STD.format(metric=METRIC_TEST_PERPLEXITY))
