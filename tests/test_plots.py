"""The trials frame, the Pareto front and the study's figures, checked on the data they draw."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from lora_study import plots

# (trial number, state, rank, target modules, eval perplexity, peak memory MB), as tags/params/metrics hold them
TRIALS = [
    ("3", "COMPLETE", "16", "qv", 9.0, 150.0),
    ("0", "COMPLETE", "4", "qv", 12.0, 100.0),
    ("10", None, "8", "qv", None, None),  # still running: no state tag, no final metrics
    ("1", "COMPLETE", "8", "all-linear", 8.0, 200.0),
    ("2", "PRUNED", "32", "qkvo", 30.0, 120.0),
    ("4", "COMPLETE", "32", "all-linear", 11.0, 260.0),  # beaten by trial 1 on both
    ("5", "COMPLETE", "4", "qkvo", 7.5, 400.0),
]


def search_runs(trials=TRIALS) -> pd.DataFrame:
    """What mlflow.search_runs answers for these trial runs (with columns the frame ignores)."""
    return pd.DataFrame(
        {
            "run_id": [f"run-{number}" for number, *_ in trials],
            "status": ["FINISHED"] * len(trials),
            "tags.trial_number": [number for number, *_ in trials],
            "tags.trial_state": [state for _, state, *_ in trials],
            "tags.mlflow.runName": [f"trial-{number}" for number, *_ in trials],
            "params.rank": [rank for _, _, rank, *_ in trials],
            "params.alpha": ["16.0"] * len(trials),
            "params.target_modules": [modules for _, _, _, modules, *_ in trials],
            "params.seq_len": ["256"] * len(trials),
            "metrics.eval_perplexity": [ppl for *_, ppl, _ in trials],
            "metrics.peak_memory_mb": [memory for *_, memory in trials],
        }
    )


@pytest.fixture
def frame():
    return plots.trials_frame(search_runs())


def test_pareto_front_keeps_the_rows_nothing_beats():
    points = pd.DataFrame(
        {
            "mem": [100, 100, 200, 200, 300, 300, 150, 400, 50, 250, np.nan],
            "ppl": [10, 12, 8, 8, 9, 9, 9, 7, 20, 8, 1],
        },
        index=list("ABCDEFGHJKN"),
    )
    front = plots.pareto_front(points, "mem", "ppl")
    # B: same memory as A, worse; E, F (a duplicate): beaten by C; K: as good as C, more memory; N: no memory
    assert set(front.index) == set("JAGCDH")  # C and D tie: neither beats the other
    assert front["mem"].tolist() == [50, 100, 150, 200, 200, 400]
    assert front["ppl"].tolist() == [20, 10, 9, 8, 8, 7]


def test_trials_frame_has_one_typed_row_per_trial_by_number(frame):
    assert frame["trial_number"].tolist() == [0, 1, 2, 3, 4, 5, 10]
    assert frame["trial_number"].dtype.kind == "i"
    assert frame["rank"].tolist() == [4, 8, 32, 16, 32, 4, 8] and frame["rank"].dtype.kind in "if"
    assert frame["run_id"].tolist() == [f"run-{n}" for n in (0, 1, 2, 3, 4, 5, 10)]
    assert frame["trial_state"].tolist()[-1] == "RUNNING"
    assert frame["target_modules"].tolist()[:2] == ["qv", "all-linear"]
    assert frame["peak_memory_mb"].tolist()[:2] == [100.0, 200.0]
    assert frame["train_tokens_per_s"].isna().all()  # a metric no run logged
    assert "seq_len" not in frame.columns and "learning_rate" not in frame.columns


def test_has_complete(frame):
    assert plots.has_complete(frame)
    assert not plots.has_complete(frame[frame.trial_state != "COMPLETE"])


def test_study_figures_draw_each_factor_that_varied(frame):
    figures = plots.study_figures(frame)
    assert list(figures) == [
        "perplexity_by_rank",
        "perplexity_by_target_modules",
        "perplexity_vs_memory",
        "optimization_history",
    ]
    assert all(isinstance(figure, Figure) for figure in figures.values())


# (trial, state, rank, learning rate, eval perplexity): rank 8 is worse on average, better at its best
LR_TRIALS = [
    ("0", "COMPLETE", "4", "0.0001", 12.0),
    ("1", "COMPLETE", "4", "0.001", 10.0),
    ("2", "COMPLETE", "4", "0.003", 10.5),
    ("3", "COMPLETE", "8", "0.0001", 30.0),
    ("4", "COMPLETE", "8", "0.001", 20.0),
    ("5", "COMPLETE", "8", "0.003", 9.0),
    ("6", "PRUNED", "8", "0.01", 8.0),  # pruned: not a result
]


def lr_frame():
    runs = pd.DataFrame(
        {
            "run_id": [f"run-{t[0]}" for t in LR_TRIALS],
            "tags.trial_number": [t[0] for t in LR_TRIALS],
            "tags.trial_state": [t[1] for t in LR_TRIALS],
            "params.rank": [t[2] for t in LR_TRIALS],
            "params.target_modules": ["qv"] * len(LR_TRIALS),
            "params.learning_rate": [t[3] for t in LR_TRIALS],
            "metrics.eval_perplexity": [t[4] for t in LR_TRIALS],
        }
    )
    return plots.trials_frame(runs)


def test_best_per_level_takes_each_levels_best_learning_rate_never_a_mean():
    best = plots.best_per_level(lr_frame(), "rank")
    assert best["rank"].tolist() == [4, 8]
    assert best["eval_perplexity"].tolist() == [10.0, 9.0]  # means would say 10.83 against 19.67
    assert best["learning_rate"].tolist() == [0.001, 0.003]
    assert best["trials_at_level"].tolist() == [3, 3]


def test_rank_is_read_per_target_module_preset(frame):
    best = plots.best_per_level(frame, "rank")
    assert list(zip(best["rank"], best["target_modules"], best["eval_perplexity"])) == [
        (4, "qkvo", 7.5),
        (4, "qv", 12.0),
        (8, "all-linear", 8.0),
        (16, "qv", 9.0),
        (32, "all-linear", 11.0),
    ]


def test_numeric_levels_are_drawn_in_order_of_value(frame):
    [ax] = plots.perplexity_by_factor(frame, "rank").axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4", "8", "16", "32"]


def test_the_factor_plot_draws_the_best_per_level_and_the_confirmed_spread():
    confirmed = pd.DataFrame({"rank": [8], "test_perplexity_mean": [9.5], "test_perplexity_std": [0.4]})
    [ax] = plots.perplexity_by_factor(lr_frame(), "rank", confirmed).axes
    [line] = [line for line in ax.get_lines() if line.get_label() == "validation, best trial per level"]
    assert np.asarray(line.get_ydata(), float).tolist() == [10.0, 9.0]
    assert [t.get_text() for t in ax.texts] == ["lr 1e-03", "lr 3e-03"]
    [bars] = ax.containers
    low, high = bars.lines[1][0].get_ydata(), bars.lines[1][1].get_ydata()
    assert (float(low[0]), float(high[0])) == pytest.approx((9.1, 9.9))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4", "8"]


def test_perplexity_vs_memory_draws_the_pareto_front_of_complete_trials(frame):
    [ax] = plots.perplexity_vs_memory(frame).axes
    [line] = [line for line in ax.get_lines() if line.get_label() == "Pareto front"]
    # trial 2 (pruned) would beat trial 0 on memory: only complete trials count
    assert np.asarray(line.get_xdata(), float).tolist() == [100.0, 150.0, 200.0, 400.0]
    assert np.asarray(line.get_ydata(), float).tolist() == [12.0, 9.0, 8.0, 7.5]


def test_optimization_history_draws_the_best_so_far(frame):
    [ax] = plots.optimization_history(frame).axes
    [line] = [line for line in ax.get_lines() if line.get_label() == "best so far"]
    assert np.asarray(line.get_xdata(), float).tolist() == [0, 1, 3, 4, 5]
    assert np.asarray(line.get_ydata(), float).tolist() == [12.0, 8.0, 8.0, 8.0, 7.5]


def test_parameter_importances_draws_one_bar_per_parameter():
    importances = {"rank": 0.6, "learning_rate": 0.3, "target_modules": 0.1}
    [ax] = plots.parameter_importances(importances).axes
    names = [label.get_text() for label in ax.get_yticklabels()]
    widths = {names[round(bar.get_y() + bar.get_height() / 2)]: bar.get_width() for bar in ax.patches}
    assert widths == pytest.approx(importances)
    assert len(ax.patches) == 3


def test_forgetting_gets_its_pareto_plot_when_trials_measured_it():
    runs = search_runs().assign(**{"metrics.forgetting_kl": [0.3, 0.1, None, 0.05, 0.2, 0.4, 0.2]})
    frame = plots.trials_frame(runs)
    assert "perplexity_vs_forgetting" in plots.study_figures(frame)
    [ax] = plots.perplexity_vs_forgetting(frame).axes
    [line] = [line for line in ax.get_lines() if line.get_label() == "Pareto front"]
    # complete trials (kl, ppl): 0:(0.1, 12), 1:(0.05, 8), 3:(0.3, 9), 4:(0.4, 11), 5:(0.2, 7.5)
    assert np.asarray(line.get_xdata(), float).tolist() == [0.05, 0.2]
    assert np.asarray(line.get_ydata(), float).tolist() == [8.0, 7.5]
    assert "perplexity_vs_forgetting" not in plots.study_figures(plots.trials_frame(search_runs()))
