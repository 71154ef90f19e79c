"""The comparisons a LoRA study is read by, drawn with seaborn from its trial runs.

`trials_frame` turns `mlflow.search_runs` output into one row per trial; every plot takes that
frame, so the sweep's PNG artifacts and `notebooks/compare_runs.ipynb` draw the same pictures.
"""

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure  # figures as objects: no pyplot state, no GUI backend
from matplotlib.ticker import NullLocator

from lora_study.tracking import TAG_TRIAL_NUMBER, TAG_TRIAL_STATE

NUMERIC_PARAMS = ("rank", "alpha", "learning_rate", "dropout")
CATEGORICAL_PARAMS = ("target_modules", "quantization", "use_rslora", "use_dora")
METRICS = ("eval_perplexity", "peak_memory_mb", "trainable_params", "train_tokens_per_s", "adapter_size_mb")


def trials_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per trial run: number, state, searched params and final metrics, by trial number."""
    frame = pd.DataFrame({
        "trial_number": pd.to_numeric(runs[f"tags.{TAG_TRIAL_NUMBER}"]).astype(int),
        "trial_state": runs[f"tags.{TAG_TRIAL_STATE}"].fillna("RUNNING"),
        "run_id": runs["run_id"],
    })  # fmt: skip
    for name in NUMERIC_PARAMS + CATEGORICAL_PARAMS:
        column = runs.get(f"params.{name}")
        if column is not None:
            frame[name] = pd.to_numeric(column) if name in NUMERIC_PARAMS else column
    for name in METRICS:
        frame[name] = runs.get(f"metrics.{name}")
    return frame.sort_values("trial_number").reset_index(drop=True)


def pareto_front(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows no other row beats on both `x` and `y` (lower is better), sorted by `x`."""
    points = frame.dropna(subset=[x, y])
    keep = [
        not ((points[x] <= row[x]) & (points[y] <= row[y]) & ((points[x] < row[x]) | (points[y] < row[y]))).any()
        for _, row in points.iterrows()
    ]
    return points[keep].sort_values(x)


def perplexity_by_rank(frame: pd.DataFrame):
    complete = frame[frame.trial_state == "COMPLETE"]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    sns.lineplot(data=complete, x="rank", y="eval_perplexity", hue="target_modules", marker="o", ax=ax,
                 errorbar=None)  # fmt: skip
    ax.set_xscale("log", base=2)
    ranks = sorted(complete["rank"].unique())
    ax.set_xticks(ranks, labels=[str(int(r)) for r in ranks], minor=False)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set(xlabel="LoRA rank (mean of trials)", ylabel="validation perplexity",
           title="Perplexity by rank and target modules")  # fmt: skip
    fig.tight_layout()
    return fig


def perplexity_vs_memory(frame: pd.DataFrame):
    complete = frame[frame.trial_state == "COMPLETE"]
    front = pareto_front(complete, "peak_memory_mb", "eval_perplexity")
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    sns.scatterplot(data=complete, x="peak_memory_mb", y="eval_perplexity", hue="target_modules", size="rank", ax=ax)
    ax.plot(front.peak_memory_mb, front.eval_perplexity, "k--", drawstyle="steps-post", label="Pareto front")
    ax.scatter(front.peak_memory_mb, front.eval_perplexity, s=160, facecolors="none", edgecolors="black")
    ax.set(xlabel="peak memory (MB)", ylabel="validation perplexity", title="Perplexity against peak memory")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def optimization_history(frame: pd.DataFrame, objective: str = "eval_perplexity"):
    finished = frame[frame.trial_state.isin(["COMPLETE", "PRUNED"])]
    complete = finished[finished.trial_state == "COMPLETE"]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    sns.scatterplot(data=finished, x="trial_number", y=objective, hue="trial_state", ax=ax)
    ax.plot(complete.trial_number, complete[objective].cummin(), "k-", drawstyle="steps-post", label="best so far")
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
