"""The study-accuracy benchmark (benchmarks/study_accuracy.py, study_replay.py): the grid is
recorded once per (point, seed) and resumes; studies replayed against a planted truth are scored
by it, the recommendation's regret and the findings' contradictions."""

import json
import sys
from pathlib import Path

import pytest
import results
import study_accuracy
import study_replay

from lora_study.report.findings import BEATS, CONFIRMED, TIES, Claim, Finding, Level
from lora_study.sweep import search_space

GRID = """
sampler: grid
space:
  rank: [4, 8]
  alpha: {per_rank: 2}
  target_modules: qv
  learning_rate: 0.01
  batch_size: 4
"""


def test_the_grid_is_recorded_once_per_point_and_seed_and_a_second_run_trains_nothing(tmp_path, capsys):
    (tmp_path / "grid.yaml").write_text(GRID)
    table = tmp_path / "grid.jsonl"
    argv = ["record", "--grid", str(tmp_path / "grid.yaml"), "--table", str(table), "--seeds", "0", "1"]
    argv += ["--max-steps", "2", "--eval-every", "1", "--work", str(tmp_path), "--base-model", "tiny"]
    argv += ["--max-samples", "15", "--seq-len", "32"]
    study_accuracy.main(argv)
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    assert [(row["params"]["rank"], row["seed"]) for row in rows] == [(4, 0), (4, 1), (8, 0), (8, 1)]
    for row in rows:
        assert list(row["explore_eval_perplexity"]) == ["1", "2"] and row["confirm_steps"] == 6
        assert 1 < row["test_perplexity"] < 1e6 and row["confirm_trained_tokens"] == 3 * row["explore_trained_tokens"]
    assert rows[0]["trainable_params"] * 2 == rows[2]["trainable_params"]  # rank 8 holds twice rank 4's
    assert rows[0]["test_perplexity"] != rows[1]["test_perplexity"]  # the seed changes the adapter
    study_accuracy.main(argv)
    assert len(table.read_text().splitlines()) == 4
    assert "grid grid.yaml: 4 of 4 (point, seed) pairs recorded" in capsys.readouterr().err


# A planted truth over the accuracy grid's points: all-linear far better than qkvo, qkvo than qv;
# rank 16 and 32 alike, both better than 4 and 8; 2e-3 the best learning rate; seeds 0.05 apart.
MODULES = {"qv": 0.0, "qkvo": 1.0, "all-linear": 2.0}
RANKS = {4: 0.0, 8: 0.5, 16: 1.0, 32: 1.0}
RATES = {1e-3: 1.0, 2e-3: 1.5, 3e-3: 1.2}
PER_PRESET = {"qv": 2, "qkvo": 4, "all-linear": 10}


def planted(path: Path) -> Path:
    space = search_space.load(str(study_accuracy.GRID_CONFIG))
    with path.open("w") as table:
        for params in study_replay.grid_points(space):
            truth = 20 - MODULES[params["target_modules"]] - RANKS[params["rank"]] - RATES[params["learning_rate"]]
            for seed in (0, 1, 2):
                test = truth + 0.05 * (seed - 1)  # the same spread at every point: a seed std of 0.05
                row = {
                    "params": params,
                    "seed": seed,
                    "explore_steps": 4,
                    "explore_eval_perplexity": {"2": test + 3, "4": test + 1},
                    "confirm_steps": 12,
                    "confirm_eval_perplexity": test - 1,
                    "test_perplexity": test,
                    "explore_trained_tokens": 1024,
                    "confirm_trained_tokens": 3072,
                    "trainable_params": 1000 * params["rank"] * PER_PRESET[params["target_modules"]],
                    "peak_memory_mb": 500 + params["rank"],
                }
                table.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def grid(tmp_path):
    return study_replay.Grid.load(planted(tmp_path / "grid.jsonl"), study_accuracy.GRID_CONFIG)


def test_the_truth_is_the_mean_over_seeds_and_its_noise_the_pooled_spread(grid):
    best = {"rank": 16, "target_modules": "all-linear", "learning_rate": 2e-3}
    assert len(grid.points()) == 36 and grid.seeds == (0, 1, 2)
    assert grid.truth(best) == pytest.approx(20 - 2 - 1 - 1.5, abs=0.1)
    assert grid.seed_std() == pytest.approx(0.05)
    assert grid.difference_noise() == pytest.approx(grid.seed_std() * (2 / 3) ** 0.5)
    assert grid.tokens() == 36 * 3 * 3072


def claimed(relation: str, a: dict, b: dict) -> tuple:
    """A decided finding claiming `relation` between configurations a and b (trials 0 and 1)."""
    levels = Level("a", 0.0, 0.0, 0.0, trial=0), Level("b", 0.0, 0.0, 0.0, trial=1)
    return Finding("target_modules", "", True, (Claim(relation, *levels),), figures=CONFIRMED), {0: a, 1: b}


def test_a_finding_is_contradicted_when_the_grid_decides_the_other_way(grid):
    qv = {"rank": 8, "target_modules": "qv", "learning_rate": 1e-3}
    all_linear, rank_16, rank_32 = ({**qv, "target_modules": "all-linear", "rank": r} for r in (8, 16, 32))
    assert study_replay.verdict(grid, *claimed(BEATS, qv, all_linear)) == "contradicted"  # all-linear wins
    assert study_replay.verdict(grid, *claimed(BEATS, all_linear, qv)) == "supported"
    assert study_replay.verdict(grid, *claimed(TIES, qv, all_linear)) == "contradicted"  # 2 ppl apart: no tie
    assert study_replay.verdict(grid, *claimed(TIES, rank_16, rank_32)) == "supported"  # alike in truth
    # over one held-out seed, the noise of a difference is that of single runs: still 2 ppl apart
    assert study_replay.verdict(grid, *claimed(TIES, qv, all_linear), seeds=[2]) == "contradicted"


def test_replayed_studies_are_scored_against_the_planted_truth(grid):
    by_name = {strategy.name: strategy for strategy in study_replay.STRATEGIES}
    whole = study_replay.measure(grid, next(s for n, s in by_name.items() if n.startswith("the grid")), 5)
    assert whole["within noise of the true best"] == "100%" and whole["median regret (seed stds)"] == "0.00"
    assert whole["compute (share of the grid)"] == "33.3%"  # one seed of three
    default = study_replay.measure(grid, study_replay.default_strategy(), 10)
    # effects 20x the noise: the default's matched findings are decided, and none is wrong
    assert float(default["decided findings per study"]) >= 1
    assert default["contradicted"].startswith("0 of ") and default["(held-out seeds) "].startswith("0 of ")
    assert float(default["compute (share of the grid)"].rstrip("%")) < 25


def test_replay_writes_its_figures_to_the_results(grid, tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(study_replay, "STRATEGIES", study_replay.STRATEGIES[-1:])
    monkeypatch.setattr(sys, "argv", ["study_accuracy.py", "replay"])
    study_accuracy.main(["replay", "--table", str(tmp_path / "grid.jsonl"), "--studies", "2"])
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Study accuracy: studies replayed against a ground-truth grid" in text
    assert "Grid: 36 configurations x 3 seeds. Seed std, pooled: test perplexity at the confirm budget 0.050" in text
    assert "| the grid, one seed | 2 | 100% | 100% | 0.00 |" in text
