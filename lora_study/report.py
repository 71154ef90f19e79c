"""The report of a study: its answer as one page, every sentence derived from its runs.

`build` turns what a study left in MLflow (a `StudyRuns`, read back by the `report` stage) into
six sections, in this order: the answer, trade-offs, effects of each factor, how the study ran,
every trial, provenance. `to_html` renders them as one self-contained file (CSS and SVG figures
inline, no script, no network) and `to_markdown` as its twin, beside the same figures as files.
"""

import html
import math
import numbers
from dataclasses import dataclass, field

import pandas as pd

from lora_study import comparability, findings, plots
from lora_study.recommendation import BEST, CHEAPEST_WITHIN_SE
from lora_study.search_space import ALPHA_PER_RANK
from lora_study.tracking import (
    COLUMN_CONFIG_TRIAL,
    COLUMN_RECOMMENDED,
    COLUMN_SEEDS,
    COLUMN_STDERR,
    COLUMN_STEPS,
    COLUMN_TEST_PERPLEXITY_MEAN,
    COLUMN_TEST_PERPLEXITY_STD,
    COLUMN_VERSION,
    METRIC_ADAPTER_SIZE_MB,
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_DOCUMENTS,
    METRIC_EVAL_PERPLEXITY,
    METRIC_FORGETTING_KL,
    METRIC_FORGETTING_LOSS_DELTA,
    METRIC_PEAK_MEMORY_MB,
    METRIC_SEED_STD,
    METRIC_TEST_PERPLEXITY,
    METRIC_TOKENS,
    METRIC_TRAIN_TOKENS_PER_S,
    METRIC_TRAINABLE_PARAMS,
    METRIC_UPDATE_ENERGY_RANK,
    PARAM_ALPHA,
    PARAM_BASE_MODEL,
    PARAM_BASE_MODEL_SHA256,
    PARAM_DATA,
    PARAM_DATASET,
    PARAM_DATASET_DIGEST,
    PARAM_DECONTAMINATE_NGRAM,
    PARAM_DECONTAMINATION,
    PARAM_DETECTED_FORMAT,
    PARAM_DROPOUT,
    PARAM_FORMAT,
    PARAM_LEARNING_RATE,
    PARAM_MAX_STEPS,
    PARAM_OBJECTIVES,
    PARAM_PRUNER,
    PARAM_QUANTIZATION,
    PARAM_RANK,
    PARAM_RECOMMEND,
    PARAM_SAMPLER,
    PARAM_SEED,
    PARAM_SEQ_LEN,
    PARAM_STORAGE,
    PARAM_TARGET_MODULES,
    PARAM_USE_DORA,
    PARAM_USE_RSLORA,
    PARAM_WITHIN_SE,
    SPLITS,
    TAG_CONFIG_TRIAL,
    TAG_MLFLOW_COMMIT,
    TAG_MLFLOW_ENTRY_POINT,
    TAG_MLFLOW_SOURCE,
    TAG_RECOMMENDATION,
    TAG_RETRY_OF,
    TAG_SEED,
    TAG_TEST_DATA,
    TAG_TRIAL_NUMBER,
    TAG_TRIAL_STATE,
    ui_run_link,
)

COLUMN_DURATION_S = "duration_s"  # of a trial's run, start to end
COLUMN_UPDATE_DIRECTIONS = "update: 90%-energy directions"  # of a level's best trial, median over its modules
COLUMN_PHASE = "phase"
CONFIG_PARAMS = (
    PARAM_RANK,
    PARAM_ALPHA,
    PARAM_TARGET_MODULES,
    PARAM_LEARNING_RATE,
    PARAM_QUANTIZATION,
    PARAM_USE_DORA,
    PARAM_USE_RSLORA,
    PARAM_DROPOUT,
)
# the columns of `confirmed.json` the report reads; a configuration's settings come from its trial's run
CONFIRMED_COLUMNS = (
    COLUMN_CONFIG_TRIAL,
    COLUMN_SEEDS,
    COLUMN_STEPS,
    COLUMN_TEST_PERPLEXITY_MEAN,
    COLUMN_TEST_PERPLEXITY_STD,
    COLUMN_STDERR,
    METRIC_TRAINABLE_PARAMS,
    METRIC_PEAK_MEMORY_MB,
    COLUMN_VERSION,
    COLUMN_RECOMMENDED,
)
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
DEFAULT_UI_URL = "http://127.0.0.1:5000"  # where `mlflow ui` listens


@dataclass(frozen=True)
class Version:
    """A registered version of the study's adapters."""

    uri: str  # models:/<name>/<version>
    aliases: tuple[str, ...]
    tags: dict


@dataclass
class StudyRuns:
    """What a study left in MLflow: its parent run, its trials and confirmations, its versions."""

    name: str
    experiment_id: str
    parent_run_id: str
    params: dict[str, str]  # of the parent run
    metrics: dict[str, float]
    tags: dict[str, str]
    trials: pd.DataFrame  # explore trials: `plots.trials_frame` with COLUMN_DURATION_S
    confirmations: pd.DataFrame  # confirmation runs: the same, with config_trial, seed and test metrics
    confirmed: pd.DataFrame | None  # the parent's `confirmed.json`: one row per confirmed configuration
    versions: list[Version]
    importances: dict[str, float]
    searched: tuple[str, ...]  # the parameters the search space varied (empty: unknown)
    ranges: dict[str, tuple[float, float]]  # the searched range of each numeric parameter
    space_file: str  # the search-space file the study ran on: its name and its text
    space_text: str
    environment: dict  # {machine, packages}, as the sweep recorded them
    command: str  # the command that ran the sweep
    wall_s: float  # wall-clock time of the sweep's parent run(s)
    # the versions @champion and @challenger point at now, in the registered model of the study's versions
    holders: dict[str, Version] = field(default_factory=dict)


# --- the document ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame
    links: dict[str, list[str]] = field(default_factory=dict)  # column -> a URL per row


@dataclass(frozen=True)
class Figure:
    name: str
    svg: str
    caption: str


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Heading:
    text: str


@dataclass(frozen=True)
class Items:
    texts: tuple[str, ...]


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    blocks: list  # str (a paragraph), Heading, Items, Table, Figure or Code


def build(study: StudyRuns, ui_url: str = DEFAULT_UI_URL) -> list[Section]:
    """The report's sections, in reading order."""
    return [
        answer(study),
        tradeoffs(study),
        factors(study),
        how_it_ran(study),
        every_trial(study, ui_url),
        provenance(study, ui_url),
    ]


# --- 1. the answer --------------------------------------------------------------------------------


def answer(s: StudyRuns) -> Section:
    recommended = _recommended(s)
    if recommended is None:
        return Section("answer", "The answer", _unconfirmed(s))
    config = int(recommended[COLUMN_CONFIG_TRIAL])
    runs = s.confirmations[s.confirmations[COLUMN_CONFIG_TRIAL] == config]
    if COLUMN_STEPS in recommended:  # a study resumed at another budget holds confirmations of both
        runs = runs[runs[COLUMN_STEPS] == recommended[COLUMN_STEPS]]
    mean, std, n = (
        recommended[COLUMN_TEST_PERPLEXITY_MEAN],
        recommended[COLUMN_TEST_PERPLEXITY_STD],
        recommended[COLUMN_SEEDS],
    )
    base = runs[METRIC_BASE_TEST_PERPLEXITY].mean()
    change = 100 * (1 - mean / base)
    rows = {
        "configuration": _config_text(recommended),
        "test perplexity": f"{mean:.3f} +- {std:.3f} over {n} seeds; base model {base:.3f} "
        f"({abs(change):.1f}% {'lower' if change >= 0 else 'higher'})",
        "forgetting": _forgetting_text(runs),
        "peak memory": f"{runs[METRIC_PEAK_MEMORY_MB].mean():.0f} MB",
        "train tokens/s": f"{runs[METRIC_TRAIN_TOKENS_PER_S].mean():.0f}",
        "adapter size": f"{runs[METRIC_ADAPTER_SIZE_MB].mean():.2f} MB "
        f"({int(recommended[METRIC_TRAINABLE_PARAMS]):,} trainable parameters)",
        "registered as": _version_text(s, config),
        "against the registry": _standing(s, _version_of(s, config)),
    }
    table = pd.DataFrame({"": list(rows), "value": list(rows.values())})
    return Section(
        "answer",
        "The answer",
        [s.tags.get(TAG_RECOMMENDATION, ""), Table(table), _why(s), Table(_confirmed_table(s))],
    )


def _recommended(s: StudyRuns) -> dict | None:
    confirmed = confirmed_configs(s)
    if confirmed is None:
        return None
    chosen = confirmed[confirmed[COLUMN_RECOMMENDED].astype(bool)]
    return chosen.iloc[0].to_dict() if len(chosen) else None


def confirmed_configs(s: StudyRuns) -> pd.DataFrame | None:
    """The confirmed configurations, each with the settings its explore trial's run logged."""
    if s.confirmed is None or s.confirmed.empty:
        return None
    confirmed = s.confirmed[[c for c in CONFIRMED_COLUMNS if c in s.confirmed]]
    settings = _with_alpha_per_rank(s.trials)
    settings = settings[[c for c in (TAG_TRIAL_NUMBER, *CONFIG_PARAMS, ALPHA_PER_RANK) if c in settings]]
    merged = confirmed.merge(settings, how="left", left_on=COLUMN_CONFIG_TRIAL, right_on=TAG_TRIAL_NUMBER)
    return merged.drop(columns=[TAG_TRIAL_NUMBER])


def _unconfirmed(s: StudyRuns) -> list:
    complete = s.trials[s.trials[TAG_TRIAL_STATE] == plots.COMPLETE]
    if complete.empty:
        return ["No trial completed, so the study has no answer. See how it ran, below."]
    best = complete.loc[complete[METRIC_EVAL_PERPLEXITY].idxmin()]
    text = (
        f"The study confirmed no configuration with seeds (--confirm-top 0, or no confirmation completed), so it makes "
        f"no recommendation. Its best explore trial was trial {int(best[TAG_TRIAL_NUMBER])}: "
        f"{_config_text(best)}, validation perplexity {best[METRIC_EVAL_PERPLEXITY]:.3f} after "
        f"{s.params.get(PARAM_MAX_STEPS, '?')} steps. Without a seed spread, whether it beats the next trials by more "
        "than noise is unknown."
    )
    versions = pd.DataFrame(
        [
            {
                "registered as": v.uri + "".join(f" @{a}" for a in v.aliases),
                "trial": v.tags.get(TAG_TRIAL_NUMBER),
                "test perplexity": v.tags.get(METRIC_TEST_PERPLEXITY),
                "base test perplexity": v.tags.get(METRIC_BASE_TEST_PERPLEXITY),
            }
            for v in s.versions
        ]
    )
    if not s.versions:
        return [text]
    return [text, Table(versions), f"Against the registry, {s.versions[0].uri}: {_standing(s, s.versions[0])}."]


def _why(s: StudyRuns) -> str:
    table, rule = s.confirmed, s.params.get(PARAM_RECOMMEND, CHEAPEST_WITHIN_SE)
    best = table.loc[table[COLUMN_TEST_PERPLEXITY_MEAN].idxmin()]
    if rule == BEST:
        return (
            f"Why: the rule `best` takes the lowest mean test perplexity over seeds; trial "
            f"{int(best[COLUMN_CONFIG_TRIAL])}'s configuration has it ({best[COLUMN_TEST_PERPLEXITY_MEAN]:.3f})."
        )
    k = float(s.params.get(PARAM_WITHIN_SE, 1.0))
    threshold = best[COLUMN_TEST_PERPLEXITY_MEAN] + k * best[COLUMN_STDERR]
    within = int((table[COLUMN_TEST_PERPLEXITY_MEAN] <= threshold).sum())
    return (
        f"Why: the rule `cheapest-within-se` (--within-se {k:g}) accepts every confirmed configuration whose mean "
        f"test perplexity is within {k:g} standard error(s) of the best mean ({best[COLUMN_TEST_PERPLEXITY_MEAN]:.3f}, "
        f"standard error {best[COLUMN_STDERR]:.3f}: up to {threshold:.3f}) and takes the one with the fewest "
        f"trainable parameters, then the lowest peak memory. {within} of {len(table)} confirmed configurations "
        "were accepted."
    )


def _confirmed_table(s: StudyRuns) -> pd.DataFrame:
    table = confirmed_configs(s)
    varied = [p for p in CONFIG_PARAMS if p in table and table[p].nunique() > 1]
    columns = [COLUMN_CONFIG_TRIAL, *varied, COLUMN_SEEDS, COLUMN_TEST_PERPLEXITY_MEAN, COLUMN_TEST_PERPLEXITY_STD]
    columns += [COLUMN_STDERR, METRIC_TRAINABLE_PARAMS, METRIC_PEAK_MEMORY_MB, COLUMN_VERSION, COLUMN_RECOMMENDED]
    return table[[c for c in columns if c in table]].sort_values(COLUMN_TEST_PERPLEXITY_MEAN)


def _forgetting_text(runs: pd.DataFrame) -> str:
    if METRIC_FORGETTING_KL not in runs or runs[METRIC_FORGETTING_KL].isna().all():
        return "not measured"
    return (
        f"KL(base || adapter) {runs[METRIC_FORGETTING_KL].mean():.3f} nats/token; loss on general text "
        f"{runs[METRIC_FORGETTING_LOSS_DELTA].mean():+.3f} against the base"
    )


def _version_of(s: StudyRuns, config: int) -> Version | None:
    return next((v for v in s.versions if v.tags.get(TAG_CONFIG_TRIAL) == str(config)), None)


def _version_text(s: StudyRuns, config: int) -> str:
    version = _version_of(s, config)
    if version is None:
        return "not registered"
    aliases = ", ".join(f"@{alias}" for alias in version.aliases)
    return f"{version.uri} ({aliases})" if aliases else version.uri


def _standing(s: StudyRuns, version: Version | None) -> str:
    """A version of the study against the registered model's @champion and @challenger: compared
    only when measured on the same test data (`comparability`)."""
    if version is None or not s.holders:
        return "no @champion or @challenger to compare with"
    mine = comparability.Basis.from_json(version.tags.get(TAG_TEST_DATA))
    parts = []
    for alias, holder in s.holders.items():
        if holder.uri == version.uri:
            parts.append(f"it is @{alias}")
            continue
        theirs = comparability.Basis.from_json(holder.tags.get(TAG_TEST_DATA))
        apart = comparability.differences(mine, theirs)
        if apart:
            parts.append(f"@{alias} ({holder.uri}) was measured on other test data ({'; '.join(apart)}): not compared")
        else:
            parts.append(
                f"@{alias} ({holder.uri}) has test perplexity {holder.tags.get(METRIC_TEST_PERPLEXITY)} on the same "
                f"test data, against this version's {version.tags.get(METRIC_TEST_PERPLEXITY)}"
            )
    return "; ".join(parts)


def _config_text(row) -> str:
    """A configuration in words: `rank 16, alpha 32, qkvo, learning rate 0.002`."""
    parts = []
    for name in CONFIG_PARAMS:
        value = row.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if name == PARAM_TARGET_MODULES:
            parts.append(f"target modules {value}")
        elif name == PARAM_LEARNING_RATE:
            parts.append(f"learning rate {value:.3g}")
        elif name in (PARAM_USE_DORA, PARAM_USE_RSLORA, PARAM_QUANTIZATION, PARAM_DROPOUT):
            parts.append(findings.level_name(name, value))
        else:
            parts.append(f"{name} {_cell(value)}")
    return ", ".join(parts)


# --- 2. trade-offs ----------------------------------------------------------------------------------


def tradeoffs(s: StudyRuns) -> Section:
    complete = s.trials[s.trials[TAG_TRIAL_STATE] == plots.COMPLETE]
    if complete.empty:
        return Section("tradeoffs", "Trade-offs", ["No trial completed: there is nothing to trade off."])
    on_front: dict[int, list[str]] = {}
    for cost, label, higher in plots.TRADEOFFS:
        if cost in complete and complete[cost].notna().any():
            for number in plots.pareto_front(complete, cost, METRIC_EVAL_PERPLEXITY, higher)[TAG_TRIAL_NUMBER]:
                on_front.setdefault(int(number), []).append(label.split(" (")[0].split(",")[0])
    if not on_front:
        return Section("tradeoffs", "Trade-offs", ["The complete trials recorded none of the costs."])
    front = complete[complete[TAG_TRIAL_NUMBER].isin(on_front)].copy()
    front["on the front of"] = [", ".join(on_front[int(n)]) for n in front[TAG_TRIAL_NUMBER]]
    columns = [TAG_TRIAL_NUMBER, *_varied(complete, CONFIG_PARAMS), METRIC_EVAL_PERPLEXITY]
    columns += [c for c, _, _ in plots.TRADEOFFS if c in front] + ["on the front of"]
    return Section(
        "tradeoffs",
        "Trade-offs",
        [
            "Validation perplexity of every complete explore trial against what it costs. A trial is on a cost's "
            "Pareto front when no other trial is better on both perplexity and that cost.",
            Figure("tradeoffs", plots.to_svg(plots.tradeoffs(s.trials)), "Perplexity against each cost"),
            Table(front[columns].sort_values(METRIC_EVAL_PERPLEXITY)),
        ],
    )


# --- 3. effects of each factor -----------------------------------------------------------------------


def factors(s: StudyRuns) -> Section:
    complete = _with_alpha_per_rank(s.trials[s.trials[TAG_TRIAL_STATE] == plots.COMPLETE])
    seed_std = _seed_std(s)
    noise = (
        f"seed std {seed_std:.3f}, pooled over the confirmed configurations (test split, confirm budget)"
        if seed_std
        else "no seed spread (no configuration was confirmed with two seeds or more)"
    )
    blocks = [
        "Each factor the search space varied, read from the best complete explore trial at each level: its "
        f"validation perplexity at the explore budget. Noise: {noise}. Two single runs differ by about 1.41 "
        "seed std from noise alone: a level behind the best by less is a tie, and the cheapest tie suffices; "
        "by more than twice that, it is beaten; in between, undecided. Rank is read per target-module preset "
        "when those vary. A factor searched over a range is read by the Spearman correlation of its value with "
        "perplexity (a trend when a permutation test gives p < 0.05) and by where its best value lies in the range."
    ]
    found = 0
    for factor in LEVEL_FACTORS + TREND_FACTORS:
        if factor not in complete or not _searched(s, factor) or complete[factor].nunique() < 2:
            continue
        numeric = pd.api.types.is_numeric_dtype(complete[factor])
        for heading, rows in _groups(complete, factor):
            if factor in TREND_FACTORS or (numeric and complete[factor].nunique() > MAX_LEVELS):
                ppl = rows[METRIC_EVAL_PERPLEXITY]
                finding, table = findings.trend(factor, rows[factor], ppl, s.ranges.get(factor)), None
            else:
                finding, table = _levels(s, rows, factor, seed_std)
            blocks += [Heading(heading), finding.text + "."]
            if factor == PARAM_RANK and table is not None and COLUMN_UPDATE_DIRECTIONS in table:
                blocks.append(_directions_used(table))
            blocks += [Table(table)] if table is not None else []
            found += 1
    if not found:
        blocks.append("No searched factor varied among the complete trials: there is no effect to read.")
    return Section("factors", "Effects of each factor", blocks)


def _searched(s: StudyRuns, factor: str) -> bool:
    """Whether the search space varied `factor` (every factor that varies, if the space is unknown):
    alpha / rank varies with rank when alpha is fixed, and is not a factor then."""
    return factor in s.searched if s.searched else factor != ALPHA_PER_RANK


def _groups(complete: pd.DataFrame, factor: str) -> list[tuple[str, pd.DataFrame]]:
    """Rank per target-module preset when those vary (their trade-off differs); else one group."""
    if factor == PARAM_RANK and PARAM_TARGET_MODULES in complete and complete[PARAM_TARGET_MODULES].nunique() > 1:
        return [(f"rank, with {preset}", rows) for preset, rows in complete.groupby(PARAM_TARGET_MODULES)]
    return [(findings.label(factor), complete)]


def _levels(s: StudyRuns, complete: pd.DataFrame, factor: str, seed_std: float | None):
    """The finding of a factor with few levels, and its table: the best trial per level, with the
    confirmed configurations' test perplexity at that level."""
    best = complete.loc[complete.groupby(factor)[METRIC_EVAL_PERPLEXITY].idxmin()]
    cost = METRIC_PEAK_MEMORY_MB if factor == PARAM_QUANTIZATION else METRIC_TRAINABLE_PARAMS
    levels = [
        findings.Level(
            row[factor],
            row[METRIC_EVAL_PERPLEXITY],
            0.0 if factor in COST_NEUTRAL else row[cost],
            row[METRIC_PEAK_MEMORY_MB],
        )
        for _, row in best.iterrows()
    ]
    table = pd.DataFrame(
        {
            "level": [findings.level_name(factor, level) for level in best[factor]],
            "best validation perplexity": best[METRIC_EVAL_PERPLEXITY].to_numpy(),
            "its trial": best[TAG_TRIAL_NUMBER].to_numpy(),
            "its learning rate": best[PARAM_LEARNING_RATE].to_numpy() if PARAM_LEARNING_RATE in best else None,
            "trials at level": complete.groupby(factor).size().loc[best[factor]].to_numpy(),
            "confirmed: test perplexity": [_confirmed_at(s, complete, factor, level) for level in best[factor]],
            METRIC_TRAINABLE_PARAMS: best[METRIC_TRAINABLE_PARAMS].to_numpy(),
            METRIC_PEAK_MEMORY_MB: best[METRIC_PEAK_MEMORY_MB].to_numpy(),
        }
    )
    if METRIC_UPDATE_ENERGY_RANK in best and best[METRIC_UPDATE_ENERGY_RANK].notna().all():  # older trials lack it
        table[COLUMN_UPDATE_DIRECTIONS] = best[METRIC_UPDATE_ENERGY_RANK].to_numpy()
    return findings.compare_levels(factor, levels, seed_std), table


def _directions_used(table: pd.DataFrame) -> str:
    """How much of its rank each level's best adapter used, read off its weights (`lora-study inspect`)."""
    used = [f"{level} in {directions:g}" for level, directions in zip(table["level"], table[COLUMN_UPDATE_DIRECTIONS])]
    return (
        "Of their rank, the best adapters at each level put 90% of their update's energy (median over modules) "
        f"in this many directions: {'; '.join(used)}."
    )


def _confirmed_at(s: StudyRuns, trials: pd.DataFrame, factor: str, level) -> str:
    """The best confirmed configuration of `trials` at this level: mean +- std (n seeds), or empty."""
    table = confirmed_configs(s)
    if table is None or factor not in table:
        return ""
    at = table[(table[factor] == level) & table[COLUMN_CONFIG_TRIAL].isin(trials[TAG_TRIAL_NUMBER])]
    if at.empty:
        return ""
    row = at.loc[at[COLUMN_TEST_PERPLEXITY_MEAN].idxmin()]
    return (
        f"{row[COLUMN_TEST_PERPLEXITY_MEAN]:.3f} +- {row[COLUMN_TEST_PERPLEXITY_STD]:.3f} (n={int(row[COLUMN_SEEDS])})"
    )


def _with_alpha_per_rank(frame: pd.DataFrame) -> pd.DataFrame:
    if PARAM_ALPHA in frame and PARAM_RANK in frame:
        return frame.assign(**{ALPHA_PER_RANK: pd.to_numeric(frame[PARAM_ALPHA]) / pd.to_numeric(frame[PARAM_RANK])})
    return frame


def _seed_std(s: StudyRuns) -> float | None:
    """The seed noise, when some confirmed configuration had two seeds or more."""
    if s.confirmed is None or s.confirmed.empty or (s.confirmed[COLUMN_SEEDS] < 2).all():
        return None
    return s.metrics.get(METRIC_SEED_STD)


# --- 4. how the study ran -------------------------------------------------------------------------


def how_it_ran(s: StudyRuns) -> Section:
    gone = _lost(s.trials)
    states, p = s.trials[~s.trials[TAG_TRIAL_NUMBER].isin(gone)][TAG_TRIAL_STATE].value_counts(), s.params
    counts = f"{states.get(plots.COMPLETE, 0)} complete, {states.get(plots.PRUNED, 0)} pruned, "
    counts += f"{states.get(plots.FAIL, 0)} failed" + (
        f", {len(gone)} lost with their worker and run again" if gone else ""
    )
    blocks = [
        Items(
            (
                f"Explore: {len(s.trials) - len(gone)} trials of {p.get(PARAM_MAX_STEPS, '?')} steps each ({counts}); "
                "sampler "
                f"{p.get(PARAM_SAMPLER, '?')}, pruner {p.get(PARAM_PRUNER, '?')}, "
                f"objectives {p.get(PARAM_OBJECTIVES, '?')}.",
                _confirm_text(s),
                f"Time: {_duration(s.wall_s)} wall-clock; {_duration(s.trials[COLUMN_DURATION_S].sum())} in explore "
                f"trials, {_duration(s.confirmations[COLUMN_DURATION_S].sum())} in confirmations.",
                _pruning_text(s.trials),
            )
        )
    ]
    if s.importances:
        blocks += [
            Heading("Parameter importances"),
            "fANOVA over the complete explore trials: each searched parameter's share of the variance of the "
            "first objective.",
            Table(pd.DataFrame({"parameter": list(s.importances), "importance": list(s.importances.values())})),
        ]
    else:
        blocks.append("Parameter importances: not computed (they need two complete trials that differ).")
    finished = s.trials[s.trials[TAG_TRIAL_STATE].isin([plots.COMPLETE, plots.PRUNED])]
    if not finished.empty and finished[METRIC_EVAL_PERPLEXITY].notna().any():
        history = plots.to_svg(plots.optimization_history(s.trials))
        blocks.append(Figure("optimization_history", history, "Validation perplexity by trial"))
    blocks += [Heading(f"Search space: {s.space_file or 'not recorded'}"), Code(s.space_text or "")]
    return Section("how-it-ran", "How the study ran", blocks)


def _lost(runs: pd.DataFrame) -> set[int]:
    """Trials whose worker died and that ran again (a later run names them `retry_of`)."""
    return {int(n) for n in runs[TAG_RETRY_OF].dropna()} if TAG_RETRY_OF in runs else set()


def _confirm_text(s: StudyRuns) -> str:
    c = s.confirmations
    if c.empty:
        return "Confirm: no configuration was confirmed (--confirm-top 0, or no complete trial)."
    states = c[TAG_TRIAL_STATE].value_counts()
    return (
        f"Confirm: {c[COLUMN_CONFIG_TRIAL].nunique()} configurations x {c[TAG_SEED].nunique()} seeds at "
        f"{_steps(c)} steps each, on the test split "
        f"({states.get(plots.COMPLETE, 0)} complete, {states.get(plots.FAIL, 0)} failed)."
    )


def _steps(runs: pd.DataFrame) -> str:
    return "/".join(str(int(n)) for n in sorted(runs[COLUMN_STEPS].dropna().unique())) or "?"


def _pruning_text(trials: pd.DataFrame) -> str:
    """Time saved by pruning, estimated as what each pruned trial would have taken at the mean
    duration of a complete trial, less what it took."""
    pruned = trials[trials[TAG_TRIAL_STATE] == plots.PRUNED]
    complete = trials[trials[TAG_TRIAL_STATE] == plots.COMPLETE]
    if pruned.empty:
        return "Pruning: no trial was pruned."
    if complete.empty:
        return f"Pruning: {len(pruned)} trials pruned; no complete trial to estimate the time saved from."
    full = complete[COLUMN_DURATION_S].mean()
    saved = (full - pruned[COLUMN_DURATION_S]).clip(lower=0).sum()
    return (
        f"Pruning: {len(pruned)} trials stopped early, taking {_duration(pruned[COLUMN_DURATION_S].sum())}; at the "
        f"mean duration of a complete trial ({_duration(full)}) they would have taken {_duration(full * len(pruned))}: "
        f"about {_duration(saved)} saved."
    )


# --- 5. every trial -------------------------------------------------------------------------------


def every_trial(s: StudyRuns, ui_url: str) -> Section:
    frame = pd.concat(
        [s.trials.assign(**{COLUMN_PHASE: "explore"}), s.confirmations.assign(**{COLUMN_PHASE: "confirm"})]
    )
    frame = frame.sort_values(TAG_TRIAL_NUMBER).reset_index(drop=True)
    columns = [TAG_TRIAL_NUMBER, COLUMN_PHASE, TAG_TRIAL_STATE, COLUMN_CONFIG_TRIAL, TAG_SEED, *CONFIG_PARAMS]
    columns += [METRIC_EVAL_PERPLEXITY, METRIC_TEST_PERPLEXITY, *plots.METRICS, COLUMN_DURATION_S]
    shown = [TAG_TRIAL_NUMBER] + _varied(frame, dict.fromkeys(columns[1:]))
    links = [f"{ui_url.rstrip('/')}/{ui_run_link(s.experiment_id, run_id)}" for run_id in frame["run_id"]]
    return Section(
        "trials",
        "Every trial",
        [
            "One row per trial and confirmation, with only the columns that vary; a trial's number opens its "
            "MLflow run.",
            Table(frame[shown], links={TAG_TRIAL_NUMBER: links}),
        ],
    )


def _varied(frame: pd.DataFrame, columns) -> list[str]:
    return [c for c in columns if c in frame and frame[c].astype(str).nunique(dropna=True) > 1]


# --- 6. provenance --------------------------------------------------------------------------------


def provenance(s: StudyRuns, ui_url: str) -> Section:
    p, m = s.params, s.metrics
    splits = ", ".join(
        f"{split} {int(m[METRIC_DOCUMENTS.format(split=split)])} documents / "
        f"{int(m[METRIC_TOKENS.format(split=split)]):,} tokens"
        for split in SPLITS
        if METRIC_TOKENS.format(split=split) in m and METRIC_DOCUMENTS.format(split=split) in m
    )
    rows = {
        "base model": p.get(PARAM_BASE_MODEL, "?"),
        "base model sha256": p.get(PARAM_BASE_MODEL_SHA256) or "not recorded",
        "dataset": f"{p.get(PARAM_DATASET, '?')} (format {p.get(PARAM_DETECTED_FORMAT, p.get(PARAM_FORMAT, '?'))}, "
        f"seq_len {p.get(PARAM_SEQ_LEN, '?')}, split seed {p.get(PARAM_SEED, '?')})",
        "prepared data": p.get(PARAM_DATA) or "prepared by the sweep",
        "dataset digest": p.get(PARAM_DATASET_DIGEST) or "not recorded",
        "split sizes": splits or "not recorded",
        "decontamination": f"{p.get(PARAM_DECONTAMINATION, 'not recorded')} "
        f"({p.get(PARAM_DECONTAMINATE_NGRAM, '?')}-token spans)",
        "hardware": s.environment.get("machine", "not recorded"),
        "packages": ", ".join(f"{k} {v}" for k, v in s.environment.get("packages", {}).items()) or "not recorded",
        "study": f"{s.name}, Optuna storage {p.get(PARAM_STORAGE, '?')}",
        "MLflow": f"experiment {s.experiment_id}, parent run {s.parent_run_id}",
    }
    commands = [f"# the sweep\n{s.command or 'not recorded'}"]
    if TAG_MLFLOW_ENTRY_POINT in s.tags:
        source = s.tags.get(TAG_MLFLOW_SOURCE, "?") + (
            f" (commit {s.tags[TAG_MLFLOW_COMMIT]})" if TAG_MLFLOW_COMMIT in s.tags else ""
        )
        commands[0] = (
            f"# the sweep: `mlflow run` of entry point {s.tags[TAG_MLFLOW_ENTRY_POINT]} of {source}, "
            f"which ran\n{s.command}"
        )
    commands += [
        f"# this report\nlora-study report runs:/{s.parent_run_id} --ui-url {ui_url}",
    ]
    return Section(
        "provenance",
        "Provenance",
        [Table(pd.DataFrame({"": list(rows), "value": list(rows.values())})), Code("\n\n".join(commands))],
    )


# --- rendering ------------------------------------------------------------------------------------

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { margin-bottom: 0.2em; }
.table { overflow-x: auto; } table { border-collapse: collapse; margin: 0.8em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; } td.n { text-align: right; }
th { background: #f3f3f3; }
.answer { font-size: 1.15em; background: #eef6ee; border-left: 4px solid #3a3; padding: 0.6em 1em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 13px; }
svg { max-width: 100%; height: auto; } nav a { margin-right: 1em; }
"""


def title(study: StudyRuns) -> str:
    return f"lora-study report: {study.name}"


def to_html(study: StudyRuns, sections: list[Section]) -> str:
    """One self-contained page: styles and figures inline, no script."""
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(_html_section(s) for s in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title(study))}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title(study))}</h1><nav>{nav}</nav>{body}</body></html>\n"
    )


def _html_section(section: Section) -> str:
    blocks = []
    for i, block in enumerate(section.blocks):
        if isinstance(block, str):
            css = ' class="answer"' if section.id == "answer" and i == 0 else ""
            blocks.append(f"<p{css}>{html.escape(block)}</p>")
        elif isinstance(block, Heading):
            blocks.append(f"<h3>{html.escape(block.text)}</h3>")
        elif isinstance(block, Items):
            blocks.append("<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in block.texts) + "</ul>")
        elif isinstance(block, Table):
            blocks.append(_html_table(block))
        elif isinstance(block, Figure):
            svg = block.svg[block.svg.index("<svg") :]  # inline: without the XML prolog
            blocks.append(
                f'<figure id="figure-{block.name}">{svg}<figcaption>{html.escape(block.caption)}</figcaption></figure>'
            )
        else:
            blocks.append(f"<pre>{html.escape(block.text)}</pre>")
    return f'<section id="{section.id}"><h2>{html.escape(section.title)}</h2>{"".join(blocks)}</section>'


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.frame.columns)
    rows = []
    for i, (_, row) in enumerate(table.frame.iterrows()):
        cells = []
        for column, value in row.items():
            text = html.escape(_cell(value))
            if column in table.links:
                text = f'<a href="{html.escape(table.links[column][i])}">{text}</a>'
            numeric = isinstance(value, numbers.Real) and not isinstance(value, bool)
            cells.append(f'<td class="n">{text}</td>' if numeric else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def to_markdown(study: StudyRuns, sections: list[Section], figures_dir: str) -> tuple[str, dict[str, str]]:
    """The same page in Markdown, and its figures (file name -> SVG text) to write in `figures_dir`."""
    lines, figures = [f"# {title(study)}", ""], {}
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, str):
                lines += [block, ""]
            elif isinstance(block, Heading):
                lines += [f"### {block.text}", ""]
            elif isinstance(block, Items):
                lines += [*(f"- {t}" for t in block.texts), ""]
            elif isinstance(block, Table):
                lines += [*_markdown_table(block), ""]
            elif isinstance(block, Figure):
                figures[f"{block.name}.svg"] = block.svg
                lines += [f"![{block.caption}]({figures_dir}/{block.name}.svg)", ""]
            else:
                lines += ["```", block.text, "```", ""]
    return "\n".join(lines), figures


def _markdown_table(table: Table) -> list[str]:
    def cell(column, i, value) -> str:
        text = _cell(value).replace("|", "\\|")
        return f"[{text}]({table.links[column][i]})" if column in table.links else text

    columns = list(table.frame.columns)
    rows = [
        "| " + " | ".join(cell(c, i, v) for c, v in row.items()) + " |"
        for i, (_, row) in enumerate(table.frame.iterrows())
    ]
    return ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns), *rows]


def _cell(value) -> str:
    """A table cell: numbers to 4 significant digits, counts whole, missing values empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, numbers.Real):
        return f"{value:,.0f}" if abs(value) >= 10000 else f"{value:.4g}"
    return str(value)


def _duration(seconds: float) -> str:
    seconds = float(seconds or 0)
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"
