"""The recommendation rule on constructed results."""

import math

from lora_study.sweep.recommendation import BEST, CHEAPEST_WITHIN_SE, Confirmed, horizon, pooled_std, recommend


def config(number: int, perplexities, trainable: float, memory: float = 1000.0) -> Confirmed:
    return Confirmed(number, {"rank": trainable}, tuple(perplexities), trainable, memory)


def test_mean_std_and_standard_error_of_the_seeds():
    c = config(0, [10.0, 12.0, 14.0], 100)
    assert (c.n, c.mean, c.std) == (3, 12.0, 2.0)
    assert math.isclose(c.stderr, 2.0 / math.sqrt(3))
    assert config(1, [10.0], 100).std == 0.0


def test_the_cheapest_within_one_standard_error_is_recommended():
    best = config(0, [10.0, 10.4], trainable=800)  # mean 10.2, stderr 0.2
    close_and_cheap = config(1, [10.3, 10.3], trainable=100)  # 10.3 <= 10.4
    far_and_cheaper = config(2, [10.5, 10.5], trainable=50)  # 10.5 > 10.4
    result = recommend([best, close_and_cheap, far_and_cheaper], CHEAPEST_WITHIN_SE)
    assert result.chosen is close_and_cheap and result.best is best
    assert math.isclose(result.threshold, 10.4)
    assert "cheapest within 1 standard error" in result.statement() and "trial 0" in result.statement()


def test_a_tie_goes_to_the_cheaper_adapter_then_to_less_memory():
    large = config(0, [10.0, 10.0], trainable=800, memory=900)
    small = config(1, [10.0, 10.0], trainable=100, memory=900)
    small_less_memory = config(2, [10.0, 10.0], trainable=100, memory=800)
    assert recommend([large, small], CHEAPEST_WITHIN_SE).chosen is small
    assert recommend([large, small, small_less_memory], CHEAPEST_WITHIN_SE).chosen is small_less_memory
    assert recommend([large, small], rule=BEST).chosen is small  # a tie on the mean: the cheaper one


def test_the_best_rule_and_a_zero_threshold_take_the_best_mean():
    best = config(0, [10.0, 10.4], trainable=800)
    cheap = config(1, [10.3, 10.3], trainable=100)
    assert recommend([best, cheap], rule=BEST).chosen is best
    assert recommend([best, cheap], CHEAPEST_WITHIN_SE, within_se=0).chosen is best
    assert recommend([best, cheap], rule=BEST).statement().endswith("the best mean")


def test_the_pooled_seed_noise():
    configs = [config(0, [10.0, 12.0], 1), config(1, [10.0, 10.0], 1), config(2, [9.0], 1)]
    assert math.isclose(pooled_std(configs), math.sqrt((2.0 + 0.0) / 2))


def test_a_single_seed_says_the_rule_had_no_standard_error_to_allow():
    result = recommend([config(0, [10.0], trainable=800), config(1, [10.1], trainable=100)], CHEAPEST_WITHIN_SE)
    assert result.chosen.config == 0 and "one seed: no standard error" in result.statement()


def test_the_horizon_says_the_budget_in_steps_tokens_and_share_of_an_epoch():
    text = horizon(12, 3_060, 96_000)
    assert text == (
        "This answer holds for a training of 12 steps (3,060 tokens, 3.2% of an epoch of the training split); a "
        "longer training may prefer another configuration, another learning rate first."
    )


def scored(number: int, rouge, trainable: float) -> Confirmed:
    """A configuration of a study whose first objective is rougeL: its test ROUGE-L per seed."""
    return Confirmed(number, {"rank": trainable}, (20.0,) * len(rouge), trainable, 1000.0, tuple(rouge), "test_rougeL")


def test_a_generation_objective_is_maximized_and_named_in_the_statement():
    low, high = scored(0, [0.30, 0.32], 100), scored(1, [0.40, 0.42], 800)
    result = recommend([low, high], BEST)
    assert result.chosen is high
    assert "(test ROUGE-L 0.410 +- 0.014, n=2), the best mean" in result.statement()
    # within one standard error below the best, the cheaper configuration is taken; of two as cheap, the higher
    close_and_cheap, closer_as_cheap = scored(2, [0.405, 0.405], 50), scored(3, [0.408, 0.408], 50)
    result = recommend([low, high, close_and_cheap, closer_as_cheap], CHEAPEST_WITHIN_SE)
    assert result.chosen is closer_as_cheap and math.isclose(result.threshold, 0.40)
    assert "accepted down to 0.400)" in result.statement()
    other_perplexities = Confirmed(4, {}, (20.0, 22.0), 1, 1.0, (0.3, 0.3), "test_rougeL")
    assert pooled_std([other_perplexities]) == 0.0
    assert math.isclose(pooled_std([other_perplexities], perplexity=True), math.sqrt(2))
