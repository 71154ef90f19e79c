"""The comparisons a LoRA study is read by, drawn with seaborn from its trial runs.

`trials_frame` turns the trial runs MLflow finds (`search_runs`) into one row per trial; every plot takes that
frame, so the sweep's PNG artifacts and `notebooks/compare_runs.ipynb` draw the same pictures.
"""

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure  # figures as objects: no pyplot state, no GUI backend
from matplotlib.ticker import NullLocator

from lora_study.tracking import (
    METRIC_ADAPTER_SIZE_MB,
    METRIC_EVAL_PERPLEXITY,
    METRIC_PEAK_MEMORY_MB,
    METRIC_TRAIN_TOKENS_PER_S,
    METRIC_TRAINABLE_PARAMS,
    PARAM_ALPHA,
    PARAM_DROPOUT,
    PARAM_LEARNING_RATE,
    PARAM_QUANTIZATION,
    PARAM_RANK,
    PARAM_TARGET_MODULES,
    PARAM_USE_DORA,
    PARAM_USE_RSLORA,
    TAG_TRIAL_NUMBER,
    TAG_TRIAL_STATE,
)

NUMERIC_PARAMS = (PARAM_RANK, PARAM_ALPHA, PARAM_LEARNING_RATE, PARAM_DROPOUT)
CATEGORICAL_PARAMS = (PARAM_TARGET_MODULES, PARAM_QUANTIZATION, PARAM_USE_RSLORA, PARAM_USE_DORA)
METRICS = (
    METRIC_EVAL_PERPLEXITY,
    METRIC_PEAK_MEMORY_MB,
    METRIC_TRAINABLE_PARAMS,
    METRIC_TRAIN_TOKENS_PER_S,
    METRIC_ADAPTER_SIZE_MB,
)
COMPLETE, PRUNED = "COMPLETE", "PRUNED"  # trial states, as `trial_state` tags hold them


def trials_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per trial run: number, state, searched params and final metrics, by trial number."""
    frame = pd.DataFrame(
        {
            TAG_TRIAL_NUMBER: pd.to_numeric(runs[f"tags.{TAG_TRIAL_NUMBER}"]).astype(int),
            TAG_TRIAL_STATE: runs[f"tags.{TAG_TRIAL_STATE}"].fillna("RUNNING"),
            "run_id": runs["run_id"],
        }
    )
    for name in NUMERIC_PARAMS + CATEGORICAL_PARAMS:
        column = runs.get(f"params.{name}")
        if column is not None:
            frame[name] = pd.to_numeric(column) if name in NUMERIC_PARAMS else column
    for name in METRICS:
        frame[name] = runs.get(f"metrics.{name}")
    return frame.sort_values(TAG_TRIAL_NUMBER).reset_index(drop=True)


def has_complete(frame: pd.DataFrame) -> bool:
    return bool((frame.trial_state == COMPLETE).any())


def study_figures(frame: pd.DataFrame) -> dict:
    """Every figure drawn from the trials alone, by name."""
    return {
        "perplexity_by_rank": perplexity_by_rank(frame),
        "perplexity_vs_memory": perplexity_vs_memory(frame),
        "optimization_history": optimization_history(frame),
    }


def pareto_front(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows no other row beats on both `x` and `y` (lower is better), sorted by `x`."""
    points = frame.dropna(subset=[x, y])
    keep = [
        not ((points[x] <= row[x]) & (points[y] <= row[y]) & ((points[x] < row[x]) | (points[y] < row[y]))).any()
        for _, row in points.iterrows()
    ]
    return points[keep].sort_values(x)


def perplexity_by_rank(frame: pd.DataFrame):
    complete = frame[frame.trial_state == COMPLETE]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    sns.lineplot(
        data=complete,
        x=PARAM_RANK,
        y=METRIC_EVAL_PERPLEXITY,
        hue=PARAM_TARGET_MODULES,
        marker="o",
        ax=ax,
        errorbar=None,
    )
    ax.set_xscale("log", base=2)
    ranks = sorted(complete[PARAM_RANK].unique())
    ax.set_xticks(ranks, labels=[str(int(r)) for r in ranks], minor=False)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set(
        xlabel="LoRA rank (mean of trials)",
        ylabel="validation perplexity",
        title="Perplexity by rank and target modules",
    )
    fig.tight_layout()
    return fig


def perplexity_vs_memory(frame: pd.DataFrame):
    complete = frame[frame.trial_state == COMPLETE]
    front = pareto_front(complete, METRIC_PEAK_MEMORY_MB, METRIC_EVAL_PERPLEXITY)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    sns.scatterplot(
        data=complete,
        x=METRIC_PEAK_MEMORY_MB,
        y=METRIC_EVAL_PERPLEXITY,
        hue=PARAM_TARGET_MODULES,
        size=PARAM_RANK,
        ax=ax,
    )
    ax.plot(
        front[METRIC_PEAK_MEMORY_MB], front[METRIC_EVAL_PERPLEXITY], "k--", drawstyle="steps-post", label="Pareto front"
    )
    ax.scatter(
        front[METRIC_PEAK_MEMORY_MB], front[METRIC_EVAL_PERPLEXITY], s=160, facecolors="none", edgecolors="black"
    )
    ax.set(xlabel="peak memory (MB)", ylabel="validation perplexity", title="Perplexity against peak memory")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def optimization_history(frame: pd.DataFrame, objective: str = METRIC_EVAL_PERPLEXITY):
    finished = frame[frame.trial_state.isin([COMPLETE, PRUNED])]
    complete = finished[finished.trial_state == COMPLETE]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    sns.scatterplot(data=finished, x=TAG_TRIAL_NUMBER, y=objective, hue=TAG_TRIAL_STATE, ax=ax)
    ax.plot(complete[TAG_TRIAL_NUMBER], complete[objective].cummin(), "k-", drawstyle="steps-post", label="best so far")
    ax.set(xlabel="trial", ylabel=objective.replace("_", " "), title="Optimization history")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def parameter_importances(importances: dict[str, float]):
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    names = list(importances)
    sns.barplot(x=[importances[n] for n in names], y=names, ax=ax, color="tab:blue")
    ax.set(xlabel="importance (fANOVA, share of the objective's variance)", title="Parameter importances")
    fig.tight_layout()
    return fig
