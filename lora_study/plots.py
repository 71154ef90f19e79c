"""The comparisons a LoRA study is read by, drawn with seaborn from its trial runs.

`trials_frame` turns the trial runs MLflow finds (`search_runs`) into one row per trial; every plot takes that
frame, so the sweep's PNG artifacts and `notebooks/compare_runs.ipynb` draw the same pictures.
"""

import io
import numbers

import matplotlib
import numpy
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure  # figures as objects: no pyplot state, no GUI backend

from lora_study.data.groups import BASE_ROW
from lora_study.names import (
    COLUMN_KIND,
    COLUMN_LAYER,
    COLUMN_TEST_PERPLEXITY_MEAN,
    COLUMN_TEST_PERPLEXITY_STD,
    METRIC_ADAPTER_SIZE_MB,
    METRIC_BEST_EVAL_PERPLEXITY,
    METRIC_EVAL_PERPLEXITY,
    METRIC_FORGETTING_KL,
    METRIC_PEAK_MEMORY_MB,
    METRIC_TRAIN_TOKENS_PER_S,
    METRIC_TRAINABLE_PARAMS,
    METRIC_UPDATE_EFFECTIVE_RANK,
    METRIC_UPDATE_ENERGY_RANK,
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
    METRIC_FORGETTING_KL,
    METRIC_PEAK_MEMORY_MB,
    METRIC_TRAINABLE_PARAMS,
    METRIC_TRAIN_TOKENS_PER_S,
    METRIC_ADAPTER_SIZE_MB,
    METRIC_UPDATE_ENERGY_RANK,
    METRIC_UPDATE_EFFECTIVE_RANK,
)
TRIAL_COLUMNS = (
    TAG_TRIAL_NUMBER,
    TAG_TRIAL_STATE,
    "run_id",
    *NUMERIC_PARAMS,
    *CATEGORICAL_PARAMS,
    *METRICS,
)  # of trials_frame
COMPLETE, PRUNED, FAIL = "COMPLETE", "PRUNED", "FAIL"  # trial states, as `trial_state` tags hold them
FACTORS = (PARAM_RANK, PARAM_TARGET_MODULES, PARAM_QUANTIZATION)  # what ablations vary
COLUMN_TRIALS_AT_LEVEL = "trials_at_level"


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
    kept = runs.get(f"metrics.{METRIC_BEST_EVAL_PERPLEXITY}")
    if kept is not None:  # a trial's value is its logged adapter's (--keep-best), not its last evaluation's
        frame[METRIC_EVAL_PERPLEXITY] = kept.fillna(frame[METRIC_EVAL_PERPLEXITY])
    return frame.sort_values(TAG_TRIAL_NUMBER).reset_index(drop=True)


def has_complete(frame: pd.DataFrame) -> bool:
    return bool((frame.trial_state == COMPLETE).any())


def study_figures(frame: pd.DataFrame, confirmed: pd.DataFrame | None = None) -> dict:
    """Every figure of a study, by name: one per factor that varied (its best learning rate per
    level, with the confirmed seeds' spread), then perplexity against memory and the history."""
    figures = {
        factor_figure(factor): perplexity_by_factor(frame, factor, confirmed)
        for factor in FACTORS
        if factor in frame and frame.loc[frame.trial_state == COMPLETE, factor].nunique() > 1
    }
    figures["perplexity_vs_memory"] = perplexity_vs_memory(frame)
    if frame.loc[frame.trial_state == COMPLETE, METRIC_FORGETTING_KL].notna().any():
        figures["perplexity_vs_forgetting"] = perplexity_vs_forgetting(frame)
    figures["optimization_history"] = optimization_history(frame)
    return figures


def factor_figure(factor: str) -> str:
    return f"perplexity_by_{factor}"


def best_per_level(frame: pd.DataFrame, factor: str) -> pd.DataFrame:
    """For each level of `factor` (and of the target modules, for rank): the complete trial with
    the best validation perplexity, and how many trials (learning rates) it was the best of.

    Never a mean over learning rates: at a fixed budget a trial's perplexity is mostly its
    learning rate, so a mean would compare learning rates, not levels.
    """
    complete = frame[frame.trial_state == COMPLETE].dropna(subset=[factor, METRIC_EVAL_PERPLEXITY])
    keys = _level_keys(complete, factor)
    best = complete.loc[complete.groupby(keys)[METRIC_EVAL_PERPLEXITY].idxmin()].copy()
    best[COLUMN_TRIALS_AT_LEVEL] = complete.groupby(keys)[METRIC_EVAL_PERPLEXITY].transform("size").loc[best.index]
    return best.sort_values(keys).reset_index(drop=True)


def _level_keys(frame: pd.DataFrame, factor: str) -> list[str]:
    """Rank is read per target-module preset when those vary too: their trade-off differs."""
    varied = PARAM_TARGET_MODULES in frame and frame[PARAM_TARGET_MODULES].nunique() > 1
    return [factor, PARAM_TARGET_MODULES] if factor == PARAM_RANK and varied else [factor]


def perplexity_by_factor(frame: pd.DataFrame, factor: str, confirmed: pd.DataFrame | None = None):
    """The best validation perplexity per level of `factor`, each point labelled with its learning
    rate; confirmed configurations drawn over it as their seeds' test perplexity, mean +- std."""
    best = best_per_level(frame, factor)
    keys = _level_keys(best, factor)
    levels = sorted(best[factor].unique(), key=_level_order)
    position = {level: i for i, level in enumerate(levels)}
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    series = best.groupby(keys[1]) if len(keys) > 1 else [("validation, best trial per level", best)]
    for label, rows in series:
        x = [position[level] for level in rows[factor]]
        ax.plot(x, rows[METRIC_EVAL_PERPLEXITY], "o-", label=str(label))
        for xi, (_, row) in zip(x, rows.iterrows()):
            text = f"lr {row[PARAM_LEARNING_RATE]:.0e}" if PARAM_LEARNING_RATE in row else ""
            ax.annotate(text, (xi, row[METRIC_EVAL_PERPLEXITY]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if confirmed is not None and factor in confirmed:
        shown = confirmed[confirmed[factor].isin(levels)]
        ax.errorbar(
            [position[level] for level in shown[factor]],
            shown[COLUMN_TEST_PERPLEXITY_MEAN],
            yerr=shown[COLUMN_TEST_PERPLEXITY_STD],
            fmt="s",
            color="black",
            capsize=4,
            label="confirmed: test perplexity, mean +- std over seeds",
        )
    ax.set_xticks(range(len(levels)), labels=[_level_text(level) for level in levels])
    ax.set(
        xlabel=f"{factor.replace('_', ' ')} (best learning rate per level)",
        ylabel="perplexity (explore: validation)",
        title=f"Best perplexity by {factor.replace('_', ' ')}",
    )
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _level_order(level):
    """Numbers by value (rank 8 before 32), then names as written."""
    return (0, float(level), "") if isinstance(level, numbers.Real) else (1, 0.0, str(level))


def _level_text(level) -> str:
    return f"{level:g}" if isinstance(level, numbers.Real) else str(level)


def pareto_front(frame: pd.DataFrame, x: str, y: str, x_higher_is_better: bool = False) -> pd.DataFrame:
    """Rows no other row beats on both `x` and `y` (lower is better, or higher for `x` when
    `x_higher_is_better`: tokens/s), sorted by `x`."""
    points = frame.dropna(subset=[x, y])
    cost = -points[x] if x_higher_is_better else points[x]
    keep = [
        not (
            (cost <= cost[i]) & (points[y] <= points.at[i, y]) & ((cost < cost[i]) | (points[y] < points.at[i, y]))
        ).any()
        for i in points.index
    ]
    return points[keep].sort_values(x)


# The costs a study's perplexity is traded against: metric, axis label, whether higher is better.
TRADEOFFS = (
    (METRIC_PEAK_MEMORY_MB, "peak memory (MB)", False),
    (METRIC_TRAIN_TOKENS_PER_S, "train tokens/s", True),
    (METRIC_ADAPTER_SIZE_MB, "adapter size (MB)", False),
    (METRIC_FORGETTING_KL, "forgetting, KL(base || adapter)", False),
)


def tradeoffs(frame: pd.DataFrame):
    """Validation perplexity of complete trials against each cost, one panel each, fronts circled."""
    complete = frame[frame.trial_state == COMPLETE]
    shown = [t for t in TRADEOFFS if t[0] in complete and complete[t[0]].notna().any()]
    fig = Figure(figsize=(10, 3.2 * ((len(shown) + 1) // 2)))
    axes = fig.subplots((len(shown) + 1) // 2, 2, squeeze=False).ravel()
    for ax, (cost, label, higher) in zip(axes, shown):
        front = pareto_front(complete, cost, METRIC_EVAL_PERPLEXITY, higher)
        ax.scatter(complete[cost], complete[METRIC_EVAL_PERPLEXITY], s=18, color="tab:blue", label="complete trial")
        ax.scatter(
            front[cost],
            front[METRIC_EVAL_PERPLEXITY],
            s=110,
            facecolors="none",
            edgecolors="black",
            label="Pareto front",
        )
        for _, row in front.iterrows():
            ax.annotate(
                f"{int(row[TAG_TRIAL_NUMBER])}",
                (row[cost], row[METRIC_EVAL_PERPLEXITY]),
                xytext=(5, 3),
                textcoords="offset points",
                fontsize=8,
            )
        ax.set(xlabel=label + (" (higher is better)" if higher else ""), ylabel="validation perplexity")
        ax.locator_params(axis="x", nbins=5)
        ax.legend(fontsize="x-small")
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    fig.suptitle("Perplexity against each cost (trial numbers on the front)")
    fig.tight_layout()
    return fig


def to_svg(figure: Figure) -> str:
    """A figure as SVG text, to inline in a page."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "lora-study"}):  # ids from the content: the same figure, the same text
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def perplexity_vs_memory(frame: pd.DataFrame):
    return perplexity_against(frame, METRIC_PEAK_MEMORY_MB, "peak memory (MB)", "peak memory")


def perplexity_vs_forgetting(frame: pd.DataFrame):
    return perplexity_against(frame, METRIC_FORGETTING_KL, "KL(base || adapter), nats per token", "forgetting")


def perplexity_against(frame: pd.DataFrame, cost: str, label: str, name: str):
    """Validation perplexity of complete trials against a cost, with the Pareto front circled."""
    complete = frame[frame.trial_state == COMPLETE]
    front = pareto_front(complete, cost, METRIC_EVAL_PERPLEXITY)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    sns.scatterplot(data=complete, x=cost, y=METRIC_EVAL_PERPLEXITY, hue=PARAM_TARGET_MODULES, size=PARAM_RANK, ax=ax)
    ax.plot(front[cost], front[METRIC_EVAL_PERPLEXITY], "k--", drawstyle="steps-post", label="Pareto front")
    ax.scatter(front[cost], front[METRIC_EVAL_PERPLEXITY], s=160, facecolors="none", edgecolors="black")
    ax.set(xlabel=label, ylabel="validation perplexity", title=f"Perplexity against {name}")
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


def cross_group_improvement(improvement: pd.DataFrame, group_by: str):
    """Each group's adapter (a row) on each group's test split (a column), as % better than the
    base there: a bright diagonal is an adapter that learned its own group."""
    trained = improvement.drop(index=BASE_ROW, errors="ignore")
    values = trained.to_numpy(dtype=float)
    limit = max(1.0, float(abs(values).max()))
    fig = Figure(figsize=(2.5 + 0.8 * len(trained.columns), 1.5 + 0.5 * len(trained)))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for (row, column), value in numpy.ndenumerate(values):
        dark = abs(value) > 0.6 * limit  # white on the deepest colours
        ax.text(column, row, f"{value:.1f}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(trained.columns)), trained.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(trained.index)), trained.index)
    ax.set(
        xlabel=f"test split of the group ({group_by})",
        ylabel="adapter trained on",
        title="Test perplexity, % better than the base",
    )
    fig.colorbar(image, ax=ax, label="% better than the base")
    fig.tight_layout()
    return fig


def by_layer(frame: pd.DataFrame, value: str, label: str):
    """A heatmap of one column of a module table (`lora_study.updates`): a row per module kind
    (q_proj, v_proj, ...), a column per layer; None for a model whose blocks are not numbered."""
    grid = frame.pivot_table(index=COLUMN_KIND, columns=COLUMN_LAYER, values=value, aggfunc="mean", sort=False)
    if grid.empty:
        return None
    fig = Figure(figsize=(2.5 + 0.25 * len(grid.columns), 1.2 + 0.4 * len(grid)))
    ax = fig.subplots()
    image = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(grid.columns)), [str(layer) for layer in grid.columns], fontsize=7)
    ax.set_yticks(range(len(grid.index)), grid.index)
    ax.set(xlabel="layer", ylabel="module", title=label)
    fig.colorbar(image, ax=ax, label=value)
    fig.tight_layout()
    return fig
