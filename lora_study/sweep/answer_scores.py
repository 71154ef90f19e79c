"""A sweep's generation objectives (`--objectives rougeL`, `exact_match`): greedy answers to a
fixed sample of a split's records, scored against the records' reference answers, beside the
base model's score on the same sample.

The sample is drawn once per study (`--objective-samples` records, seeded by `--split-seed`):
every trial answers the same prompts. Explore trials are scored on the validation split, as
they are judged; confirmations also on the test split, which the recommendation rule reads.
"""

import random

from lora_study import data
from lora_study.errors import UserInputError
from lora_study.generation import Prompt, exact_match, greedy_answers, prompts_from_rows, rouge_l
from lora_study.names import BASE_PREFIX, GENERATION_OBJECTIVES, OBJECTIVE_METRICS

SCORERS = {"rougeL": rouge_l, "exact_match": exact_match}
# a score's metric per split: validation as the objective names it (eval_rougeL), test as confirmations log it
METRICS = {
    **{("validation", name): OBJECTIVE_METRICS[name] for name in GENERATION_OBJECTIVES},
    **{("test", name): metric for name, metric in GENERATION_OBJECTIVES.items()},
}


def sample(rows: list[dict], fmt: str, tokenizer, count: int, seed: int) -> list[Prompt]:
    """`count` prompts, with their reference answers, drawn from the records in `rows` that hold
    one (all of them if there are fewer), in the order the records come."""
    every = [p for p in prompts_from_rows(rows, fmt, tokenizer, limit=0, max_new_tokens=0) if p.reference]
    chosen = sorted(random.Random(seed).sample(range(len(every)), min(count, len(every))))
    return [every[i] for i in chosen]


class AnswerScores:
    """The generation objectives of a study, measured on its samples; the base's scores once per base."""

    def __init__(
        self, objectives: list[str], prepared: data.PreparedData, tokenizer, count: int, seed: int, max_new_tokens: int
    ):
        fmt = prepared.meta.format
        if fmt == "text":
            raise UserInputError(
                f"--objectives {','.join(objectives)}: the data is plain text, with no reference answers to score; "
                "use instruction or chat records (--format), or --objectives perplexity"
            )
        self.objectives, self.tokenizer, self.max_new_tokens = objectives, tokenizer, max_new_tokens
        self.samples = {
            split: sample(prepared.rows(split), fmt, tokenizer, count, seed) for split in ("validation", "test")
        }
        empty = [split for split, prompts in self.samples.items() if not prompts]
        if empty:
            raise UserInputError(
                f"--objectives {','.join(objectives)}: no record of the {' and '.join(empty)} split keeps its answer "
                "within --seq-len; raise --seq-len, or hold out more records (--val-fraction, --test-fraction)"
            )
        self.base_scores: dict[tuple, dict[str, float]] = {}

    def measure(self, model, split: str, base_key: tuple, dtype) -> dict[str, float]:
        """The adapter in `model`'s scores on `split`'s sample, and the base's, by metric name
        (`eval_rougeL`, `base_eval_rougeL`)."""
        if (split, base_key) not in self.base_scores:
            with model.disable_adapter():
                self.base_scores[split, base_key] = self._scores(model, split, dtype)
        base = {BASE_PREFIX + name: value for name, value in self.base_scores[split, base_key].items()}
        return {**self._scores(model, split, dtype), **base}

    def _scores(self, model, split: str, dtype) -> dict[str, float]:
        prompts = self.samples[split]
        answers = greedy_answers(model, self.tokenizer, prompts, self.max_new_tokens, dtype)
        return {
            METRICS[split, name]: sum(SCORERS[name](a, p.reference) for a, p in zip(answers, prompts)) / len(prompts)
            for name in self.objectives
        }
