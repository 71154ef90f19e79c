"""The finding rules, driven with constructed results: ties, wins, equal costs, trends, edges,
and the cases where the study lacks the data to decide."""

import re

import numpy as np
import pandas as pd
import pytest

from lora_study.report.findings import (
    BEATS,
    TIES,
    Claim,
    Level,
    compare_levels,
    confounders,
    level_name,
    spearman,
    trend,
    undecided_by_confounders,
)

RANK_16 = Level(16, perplexity=10.00, cost=1_000, memory_mb=500)
RANK_64 = Level(64, perplexity=9.96, cost=4_000, memory_mb=520)


def test_a_cheaper_level_within_one_seed_std_suffices():
    finding = compare_levels("rank", [RANK_16, RANK_64], seed_std=0.07)
    assert finding.decided
    assert finding.text == "rank 64 is within noise of rank 16 (0.040 ppl apart; seed std 0.070): rank 16 suffices"
    assert finding.claims == (Claim(TIES, RANK_16, RANK_64),)  # what a ground truth can check


def test_a_win_beyond_the_noise_is_called_with_its_cost():
    qv = Level("qv", perplexity=11.0, cost=100, memory_mb=500)
    all_linear = Level("all-linear", perplexity=10.0, cost=900, memory_mb=900)
    finding = compare_levels("target_modules", [qv, all_linear], seed_std=0.07)
    assert finding.decided
    assert finding.text == "all-linear beats qv by 9.1% perplexity (1.000 ppl; seed std 0.070) at 1.80x peak memory"
    assert finding.claims == (Claim(BEATS, all_linear, qv),)


def test_the_best_level_suffices_when_the_ties_cost_more():
    cheap_best = Level(8, perplexity=10.0, cost=500, memory_mb=400)
    finding = compare_levels("rank", [cheap_best, Level(32, 10.05, 2_000, 450)], seed_std=0.1)
    assert finding.decided and finding.text.endswith("cost as much or more: rank 8 suffices")
    assert [(c.relation, c.a.level, c.b.level) for c in finding.claims] == [(TIES, 32, 8)]


def test_ties_at_the_same_cost_make_no_difference():
    off, on = Level(False, 10.0, 1_000, 400), Level(True, 10.02, 1_000, 400)
    finding = compare_levels("use_rslora", [on, off], seed_std=0.05)
    assert finding.decided
    assert finding.text.startswith("rsLoRA off, rsLoRA on are within noise of each other (0.020 ppl apart")
    assert finding.text.endswith("the choice makes no measurable difference here")


def test_quantization_is_costed_by_memory_by_the_caller_and_a_cheaper_tie_wins():
    none = Level("none", 10.0, cost=900, memory_mb=900)  # cost = peak memory for quantization
    four = Level("4bit", 10.03, cost=300, memory_mb=300)
    finding = compare_levels("quantization", [none, four], seed_std=0.05)
    assert finding.text.endswith("quantization 4bit suffices")


def test_without_a_seed_spread_the_rule_says_it_cannot_decide():
    finding = compare_levels("rank", [RANK_16, RANK_64], seed_std=None)
    assert not finding.decided
    assert "rank 64 has the best perplexity (9.960), 0.040 ahead of rank 16" in finding.text
    assert "cannot tell whether that is more than noise" in finding.text
    assert not compare_levels("rank", [RANK_16, RANK_64], seed_std=0.0).decided  # one seed: std 0


def test_one_level_is_nothing_to_compare():
    finding = compare_levels("rank", [RANK_16], seed_std=0.1)
    assert not finding.decided and finding.text == "rank: only rank 16 has a complete trial; nothing to compare"


def test_a_lead_between_half_and_two_noise_widths_is_not_decided():
    # seed std 0.1: two runs differ by about 0.141 from noise; a tie is within 0.071, a win beyond 0.283
    for behind in (0.1, 0.2):  # 0.1 was a tie under the rule of one noise width
        finding = compare_levels("rank", [Level(8, 10.0 + behind, 100, 400), Level(32, 10.0, 400, 450)], seed_std=0.1)
        assert not finding.decided and not finding.claims
        assert finding.text.startswith(f"rank 32 beats rank 8 by {100 * behind / (10 + behind):.1f}% perplexity")
        assert finding.text.endswith(
            "more than half and at most twice the noise of a difference of two runs (0.141): not decided either way; "
            "more seeds would decide it"
        )
    tie = compare_levels("rank", [Level(8, 10.07, 100, 400), Level(32, 10.0, 400, 450)], seed_std=0.1)
    assert tie.decided and tie.text.endswith("rank 8 suffices")


def test_a_win_is_said_without_a_memory_ratio_when_none_was_measured():
    finding = compare_levels("rank", [Level(8, 11.0, 100, 0.0), Level(32, 10.0, 400, 0.0)], seed_std=0.1)
    assert finding.decided and finding.text == "rank 32 beats rank 8 by 9.1% perplexity (1.000 ppl; seed std 0.100)"


LR = pd.Series([1e-4, 2e-4, 3e-4, 6e-4, 1e-3, 2e-3])


def test_a_trend_is_named_with_its_correlation_and_permutation_p():
    finding = trend("learning_rate", LR, pd.Series([14.0, 13.5, 13.0, 12.5, 12.0, 11.5]), searched=(1e-5, 1e-1))
    assert finding.decided
    assert re.fullmatch(
        r"learning rate: lower perplexity at higher values \(Spearman rho -1.00, permutation p 0.00\d, over 6 "
        r"trials\); best at 0.002",
        finding.text,
    )
    assert finding.direction == -1  # lower perplexity at higher values


def test_the_permutation_p_is_that_of_the_exact_distribution():
    # 6 values in order: 2 of the 720 orderings reach |rho| = 1
    rho, p = spearman(np.arange(6.0), np.arange(6.0))
    assert rho == pytest.approx(1.0) and p == pytest.approx(2 / 720, abs=0.001)
    rho, p = spearman(np.arange(6.0), np.array([3.0, 1.0, 5.0, 0.0, 4.0, 2.0]))
    assert abs(rho) < 0.3 and p > 0.5


def test_a_best_value_at_the_edge_of_the_range_says_to_widen_it():
    high = LR.replace(2e-3, 2.8e-3)
    finding = trend("learning_rate", high, pd.Series([14.0, 13.5, 13.0, 12.5, 12.0, 11.5]), searched=(1e-4, 3e-3))
    assert "the best value, 0.0028, lies at the upper edge of the searched range 0.0001 to 0.003" in finding.text
    assert finding.text.endswith("widen the range upward")
    low = trend("learning_rate", LR, pd.Series([11.0, 13.0, 12.5, 14.0, 13.2, 12.8]), searched=(1e-4, 3e-3))
    assert "lower edge" in low.text and low.text.endswith("downward")


def test_a_correlation_the_permutation_test_does_not_support_is_not_a_trend():
    finding = trend("dropout", pd.Series([0.0, 0.05, 0.1, 0.2, 0.3]), pd.Series([12.0, 11.0, 13.0, 11.5, 12.2]), None)
    assert not finding.decided
    assert finding.text.startswith("dropout: no trend shown (Spearman rho")
    assert "a trend needs p < 0.05" in finding.text
    assert finding.direction == 0


def test_too_few_trials_for_a_trend_says_so():
    finding = trend("learning_rate", pd.Series([1e-4, 1e-3]), pd.Series([12.0, 11.0]), (1e-5, 1e-2))
    assert not finding.decided
    assert finding.text == (
        "learning rate: 2 complete trials at 2 values; the trend rule needs 5 trials at 3 or more values"
    )


def test_levels_are_named_as_a_sentence_names_them():
    assert level_name("rank", 16) == "rank 16"
    assert level_name("target_modules", "qkvo") == "qkvo"
    assert level_name("use_dora", "True") == "DoRA on"
    assert level_name("alpha_per_rank", 2.0) == "alpha 2x rank"


def test_what_else_differs_between_levels_is_named_per_level():
    rows = pd.DataFrame(
        {"rank": [8, 32], "alpha": [16.0, 32.0], "alpha_per_rank": [2.0, 1.0], "learning_rate": [3.7e-4, 2.1e-3]}
    )
    differing = confounders(rows, "rank", ("rank", "alpha_per_rank", "alpha", "learning_rate"))
    # alpha moves with rank by definition; alpha / rank and the learning rate do not
    assert differing == ["alpha / rank (rank 8: 2; rank 32: 1)", "learning rate (rank 8: 0.00037; rank 32: 0.0021)"]
    assert confounders(rows.assign(learning_rate=1e-3, alpha_per_rank=2.0), "rank", ("alpha_per_rank",)) == []


def test_a_learning_rate_confounded_pair_is_undecided_with_its_numbers():
    all_linear = Level("all-linear", perplexity=14.80, cost=4_000, memory_mb=900)
    qkvo = Level("qkvo", perplexity=13.72, cost=1_500, memory_mb=700)
    differing = ["learning rate (all-linear: 0.00037; qkvo: 0.0021)"]
    finding = undecided_by_confounders("target_modules", [all_linear, qkvo], differing, "validation perplexity")
    assert not finding.decided
    assert finding.text == (
        "qkvo has the best validation perplexity (13.720), 1.080 ahead of all-linear; not decided: those figures "
        "also differ in learning rate (all-linear: 0.00037; qkvo: 0.0021), so they do not isolate target modules"
    )


def test_two_means_of_two_seeds_are_judged_by_the_noise_of_their_difference():
    """seed std 0.3: a difference of two 2-seed means has std 0.3; of two single runs, 0.42."""
    qv, qkvo = Level("qv", 16.40, 1_000, 700), Level("qkvo", 15.75, 2_000, 750)
    assert compare_levels("target_modules", [qv, qkvo], seed_std=0.3, difference_std=0.3).decided
    assert not compare_levels("target_modules", [qv, qkvo], seed_std=0.3).decided  # 0.65 < 2 x 0.42
