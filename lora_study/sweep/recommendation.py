"""The answer of a study: which confirmed configuration to use, by a rule stated in advance.

A confirmed configuration was trained again with several seeds at a larger budget and measured
on the test split. The default rule, `best`, takes the best mean (the cheaper of equal means). A
generation objective first in `--objectives` (ROUGE-L, exact match) makes its test-split score
the rule's metric, the higher the better. `cheapest-within-se` is the one-standard-error rule
(Breiman et al. 1984; Hastie et al., "The Elements of Statistical Learning", 7.10): among the
configurations whose mean test perplexity (or score) is within `within_se` standard errors of
the best mean, take the cheapest, fewest trainable parameters first, then lowest peak memory; a
difference smaller than the seeds' own spread is not a reason to pay for a larger adapter. It
was the default until the ground truth of benchmarks/study_accuracy.py showed that, with 2
seeds, its standard error is too rough: it took a configuration the grid puts beyond noise of
the best in 45 of 100 replayed default studies, `best` in 32.
"""

import math
import statistics
from dataclasses import dataclass

from lora_study.names import COLUMN_STDERR_OF, HIGHER_IS_BETTER, METRIC_TEST_PERPLEXITY, TAG_MEAN, TAG_STD

CHEAPEST_WITHIN_SE = "cheapest-within-se"
BEST = "best"
RULES = (CHEAPEST_WITHIN_SE, BEST)


@dataclass(frozen=True)
class Confirmed:
    """One configuration, trained with each seed: its test perplexities and its costs, and the
    rule's metric per seed where it is not test perplexity (a generation objective's, maximized)."""

    config: int  # the explore trial it was taken from
    params: dict
    test_perplexities: tuple[float, ...]  # one per seed
    trainable_params: float
    peak_memory_mb: float
    rule_values: tuple[float, ...] = ()  # one per seed, of `rule_metric`; empty: the test perplexities
    rule_metric: str = METRIC_TEST_PERPLEXITY

    @property
    def values(self) -> tuple[float, ...]:
        """What the rule reads: `rule_metric` per seed."""
        return self.rule_values or self.test_perplexities

    @property
    def maximize(self) -> bool:
        return self.rule_metric in HIGHER_IS_BETTER

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation across seeds (0 for one seed)."""
        return seed_std(self.values)

    @property
    def stderr(self) -> float:
        return self.std / math.sqrt(self.n)


def seed_std(values) -> float:
    """Sample standard deviation across seeds (0 for one seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def words(metric: str) -> str:
    """A metric as a sentence names it: `test perplexity`, `test ROUGE-L`, `test exact match`."""
    split, _, name = metric.partition("_")
    return f"{split} {METRIC_WORDS.get(name, name)}"


def rule_columns(metric: str) -> tuple[str, ...]:
    """The confirmed table's columns of the rule's metric (`test_rougeL_mean`, `_std`, `_stderr`),
    beside test perplexity's own; none when the rule read test perplexity."""
    if metric == METRIC_TEST_PERPLEXITY:
        return ()
    return TAG_MEAN.format(metric=metric), TAG_STD.format(metric=metric), COLUMN_STDERR_OF.format(metric=metric)


METRIC_WORDS = {"perplexity": "perplexity", "rougeL": "ROUGE-L", "exact_match": "exact match"}


@dataclass(frozen=True)
class Recommendation:
    chosen: Confirmed
    best: Confirmed  # the best mean; the same as `chosen` unless the rule picked a cheaper one
    rule: str
    within_se: float
    threshold: float  # the worst mean the rule accepted

    def statement(self) -> str:
        """The recommendation in one sentence, saying why when it is not the best mean."""
        chosen, best = self.chosen, self.best
        said = f"the configuration of trial {chosen.config} ({words(chosen.rule_metric)} {chosen.mean:.3f} +- "
        said += f"{chosen.std:.3f}, n={chosen.n})"
        if chosen is best and self.rule != BEST and best.n < 2:
            return f"recommended: {said}, the best mean (one seed: no standard error to allow)"
        if chosen is best:
            return f"recommended: {said}, the best mean"
        return (
            f"recommended: {said}, the cheapest within {self.within_se:g} standard error(s) of the best "
            f"mean ({best.mean:.3f} +- {best.std:.3f}, trial {best.config}; accepted "
            f"{'down' if best.maximize else 'up'} to {self.threshold:.3f})"
        )


def recommend(confirmed: list[Confirmed], rule: str, within_se: float = 1.0) -> Recommendation:
    """Apply `rule` to the confirmed configurations (at least one)."""
    best = min(confirmed, key=lambda c: (-c.mean if c.maximize else c.mean, _cost(c)))
    if rule == BEST:
        return Recommendation(best, best, BEST, 0.0, best.mean)
    threshold = best.mean + (-1 if best.maximize else 1) * within_se * best.stderr
    candidates = [c for c in confirmed if (c.mean >= threshold if c.maximize else c.mean <= threshold)]
    chosen = min(candidates, key=lambda c: (_cost(c), -c.mean if c.maximize else c.mean))
    return Recommendation(chosen, best, CHEAPEST_WITHIN_SE, within_se, threshold)


def pooled_std(confirmed: list[Confirmed], perplexity: bool = False) -> float:
    """The seed noise of the study: the root mean of the configurations' variances, of the rule's
    metric (or of test perplexity)."""
    spread = [seed_std(c.test_perplexities if perplexity else c.values) ** 2 for c in confirmed if c.n > 1]
    return math.sqrt(statistics.fmean(spread)) if spread else 0.0


def _cost(c: Confirmed) -> tuple[float, float]:
    return (c.trainable_params, c.peak_memory_mb)


def horizon(steps: int, trained_tokens: float, train_split_tokens: float) -> str:
    """The training budget an answer holds for, in one sentence: a configuration that wins at a few
    thousand tokens need not win at an epoch (the best learning rate moves with the budget)."""
    share = trained_tokens / train_split_tokens if train_split_tokens else float("nan")
    return (
        f"This answer holds for a training of {steps} steps ({trained_tokens:,.0f} tokens, {share:.1%} of an epoch "
        "of the training split); a longer training may prefer another configuration, another learning rate first."
    )
