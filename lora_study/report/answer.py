"""The report's first section: the study's answer, the rule that chose it, each confirmed
configuration with its seeds' test perplexity, forgetting, registered version, and where it stands
against the registry's `champion` and `challenger`."""

import math

import pandas as pd

from lora_study import plots
from lora_study.config import SweepConfig
from lora_study.names import (
    BASE_PREFIX,
    COLUMN_CONFIG_TRIAL,
    COLUMN_RECOMMENDED,
    COLUMN_SEEDS,
    COLUMN_STDERR,
    COLUMN_STDERR_OF,
    COLUMN_STEPS,
    COLUMN_TEST_PERPLEXITY_MEAN,
    COLUMN_TEST_PERPLEXITY_STD,
    COLUMN_VERSION,
    HIGHER_IS_BETTER,
    METRIC_ADAPTER_SIZE_MB,
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_EVAL_PERPLEXITY,
    METRIC_FORGETTING_KL,
    METRIC_FORGETTING_LOSS_DELTA,
    METRIC_PEAK_MEMORY_MB,
    METRIC_TEST_PERPLEXITY,
    METRIC_TRAIN_TOKENS_PER_S,
    METRIC_TRAINABLE_PARAMS,
    PARAM_ALPHA,
    PARAM_DROPOUT,
    PARAM_LEARNING_RATE,
    PARAM_MAX_STEPS,
    PARAM_OBJECTIVES,
    PARAM_QUANTIZATION,
    PARAM_RANK,
    PARAM_RECOMMEND,
    PARAM_TARGET_MODULES,
    PARAM_USE_DORA,
    PARAM_USE_RSLORA,
    PARAM_WITHIN_SE,
    TAG_CONFIG_TRIAL,
    TAG_HORIZON,
    TAG_MEAN,
    TAG_RECOMMENDATION,
    TAG_REPLICATE_OF,
    TAG_STD,
    TAG_TEST_DATA,
    TAG_TRIAL_NUMBER,
    TAG_TRIAL_STATE,
)
from lora_study.registry import comparability
from lora_study.report import findings
from lora_study.report.read import StudyRuns, Version
from lora_study.report.render import Section, Table, cell_text
from lora_study.sweep.recommendation import BEST, CHEAPEST_WITHIN_SE, rule_columns, words
from lora_study.sweep.search_space import ALPHA_PER_RANK

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


def answer(s: StudyRuns) -> Section:
    recommended = _recommended(s)
    if recommended is None:
        return Section("answer", "The answer", _unconfirmed(s))
    config = int(recommended[COLUMN_CONFIG_TRIAL])
    runs = s.confirmations[s.confirmations[COLUMN_CONFIG_TRIAL] == config]
    if COLUMN_STEPS in recommended:  # a study resumed at another budget holds confirmations of both
        runs = runs[runs[COLUMN_STEPS] == recommended[COLUMN_STEPS]]
    metric = rule_metric(s)
    rows = {"configuration": _config_text(recommended)}
    for shown in dict.fromkeys((metric, METRIC_TEST_PERPLEXITY)):  # the rule's metric first
        rows[words(shown)] = _against_base(recommended, runs, shown)
    rows |= {
        "forgetting": _forgetting_text(runs),
        "peak memory": f"{runs[METRIC_PEAK_MEMORY_MB].mean():.0f} MB",
        "train tokens/s": f"{runs[METRIC_TRAIN_TOKENS_PER_S].mean():.0f}",
        "adapter size": f"{runs[METRIC_ADAPTER_SIZE_MB].mean():.2f} MB "
        f"({int(recommended[METRIC_TRAINABLE_PARAMS]):,} trainable parameters)",
        "registered as": _version_text(s, config),
        "against the registry": _standing(s, _version_of(s, config)),
    }
    if TAG_HORIZON in s.tags:  # studies made before it was recorded say nothing of it
        rows["holds for"] = s.tags[TAG_HORIZON]
    table = pd.DataFrame({"": list(rows), "value": list(rows.values())})
    return Section(
        "answer",
        "The answer",
        [s.tags.get(TAG_RECOMMENDATION, ""), Table(table), _why(s), Table(_confirmed_table(s))],
    )


def rule_metric(s: StudyRuns) -> str:
    """The test-split metric the study's recommendation rule read: its first objective's, if that
    is a generation objective (`test_rougeL`), else test perplexity."""
    objectives = s.params.get(PARAM_OBJECTIVES) or SweepConfig.model_fields[PARAM_OBJECTIVES].default
    return SweepConfig(objectives=objectives).rule_metric


def _against_base(recommended: dict, runs: pd.DataFrame, metric: str) -> str:
    """`12.345 +- 0.123 over 2 seeds; base model 15.678 (21.3% lower)`: a score's change is in points."""
    mean, std = recommended[TAG_MEAN.format(metric=metric)], recommended[TAG_STD.format(metric=metric)]
    n = recommended[COLUMN_SEEDS]
    base = runs[BASE_PREFIX + metric].mean() if BASE_PREFIX + metric in runs else math.nan
    said = f"{mean:.3f} +- {std:.3f} over {n} seeds; base model {base:.3f}"
    if metric in HIGHER_IS_BETTER:
        return f"{said} ({mean - base:+.3f})"
    change = 100 * (1 - mean / base)
    return f"{said} ({abs(change):.1f}% {'lower' if change >= 0 else 'higher'})"


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
    confirmed = s.confirmed[[c for c in (*CONFIRMED_COLUMNS, *rule_columns(rule_metric(s))) if c in s.confirmed]]
    settings = with_alpha_per_rank(s.trials)
    settings = settings[[c for c in (TAG_TRIAL_NUMBER, *CONFIG_PARAMS, ALPHA_PER_RANK) if c in settings]]
    merged = confirmed.merge(settings, how="left", left_on=COLUMN_CONFIG_TRIAL, right_on=TAG_TRIAL_NUMBER)
    return merged.drop(columns=[TAG_TRIAL_NUMBER])


def _unconfirmed(s: StudyRuns) -> list:
    complete = configurations(s.trials[s.trials[TAG_TRIAL_STATE] == plots.COMPLETE])
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
    table, rule, metric = s.confirmed, s.params.get(PARAM_RECOMMEND, CHEAPEST_WITHIN_SE), rule_metric(s)
    means, higher = table[TAG_MEAN.format(metric=metric)], metric in HIGHER_IS_BETTER
    best = table.loc[means.idxmax() if higher else means.idxmin()]
    best_mean, stderr = best[TAG_MEAN.format(metric=metric)], best[COLUMN_STDERR_OF.format(metric=metric)]
    if rule == BEST:
        return (
            f"Why: the rule `best` takes the {'highest' if higher else 'lowest'} mean {words(metric)} over seeds; "
            f"trial {int(best[COLUMN_CONFIG_TRIAL])}'s configuration has it ({best_mean:.3f})."
        )
    k = float(s.params.get(PARAM_WITHIN_SE, 1.0))
    threshold = best_mean - k * stderr if higher else best_mean + k * stderr
    within = int((means >= threshold).sum() if higher else (means <= threshold).sum())
    return (
        f"Why: the rule `cheapest-within-se` (--within-se {k:g}) accepts every confirmed configuration whose mean "
        f"{words(metric)} is within {k:g} standard error(s) of the best mean ({best_mean:.3f}, "
        f"standard error {stderr:.3f}: {'down' if higher else 'up'} to {threshold:.3f}) and takes the one with the "
        f"fewest trainable parameters, then the lowest peak memory. {within} of {len(table)} confirmed "
        "configurations were accepted."
    )


def _confirmed_table(s: StudyRuns) -> pd.DataFrame:
    table = confirmed_configs(s)
    varied = [p for p in CONFIG_PARAMS if p in table and table[p].nunique() > 1]
    columns = [COLUMN_CONFIG_TRIAL, *varied, COLUMN_SEEDS, *rule_columns(rule_metric(s)), COLUMN_TEST_PERPLEXITY_MEAN]
    columns += [COLUMN_TEST_PERPLEXITY_STD, COLUMN_STDERR, METRIC_TRAINABLE_PARAMS, METRIC_PEAK_MEMORY_MB]
    columns += [COLUMN_VERSION, COLUMN_RECOMMENDED]
    metric = rule_metric(s)
    order = TAG_MEAN.format(metric=metric)
    return table[[c for c in columns if c in table]].sort_values(order, ascending=metric not in HIGHER_IS_BETTER)


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
            parts.append(f"{name} {cell_text(value)}")
    return ", ".join(parts)


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


def configurations(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials that are each a configuration: a replicate (another seed of one) measures noise,
    and is no candidate nor another level."""
    return trials[trials[TAG_REPLICATE_OF].isna()] if TAG_REPLICATE_OF in trials else trials


def with_alpha_per_rank(frame: pd.DataFrame) -> pd.DataFrame:
    if PARAM_ALPHA in frame and PARAM_RANK in frame:
        return frame.assign(**{ALPHA_PER_RANK: pd.to_numeric(frame[PARAM_ALPHA]) / pd.to_numeric(frame[PARAM_RANK])})
    return frame
