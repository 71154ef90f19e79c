"""A study's generation objectives: a fixed sample of records, scored answers beside the base's."""

import pytest
import torch
from conftest import alpaca_records, write_jsonl

from lora_study import data, lora, models
from lora_study.config import AdapterConfig, DataConfig
from lora_study.errors import UserInputError
from lora_study.generation import greedy_answers, rouge_l
from lora_study.sweep.answer_scores import AnswerScores, sample


@pytest.fixture(scope="module")
def prepared(tiny, tokenizer, tmp_path_factory):
    dataset = write_jsonl(tmp_path_factory.mktemp("answers") / "alpaca.jsonl", alpaca_records(60))
    return data.prepare(DataConfig(dataset=str(dataset), seq_len=128), tiny, tokenizer)[0]


def test_the_sample_is_fixed_by_its_seed_and_holds_reference_answers(prepared, tokenizer):
    rows = prepared.rows("validation")
    first, again = sample(rows, "instruction", tokenizer, 3, seed=0), sample(rows, "instruction", tokenizer, 3, seed=0)
    assert first == again and len(first) == 3 and all(p.reference for p in first)
    assert sample(rows, "instruction", tokenizer, 3, seed=1) != first
    every = sample(rows, "instruction", tokenizer, 1000, seed=0)  # fewer records than asked: all of them
    assert len(every) == prepared.meta.counts["validation_documents"]


def test_scores_are_the_mean_over_the_sample_and_the_base_is_measured_once(prepared, tiny, tokenizer):
    scores = AnswerScores(["rougeL", "exact_match"], prepared, tokenizer, count=4, seed=0, max_new_tokens=6)
    base, _ = models.load_base(tiny, "none", torch.float32, torch.device("cpu"))
    model = lora.attach(base, AdapterConfig(rank=4, alpha=64), seed=0)
    torch.manual_seed(0)
    for name, weight in model.named_parameters():
        if "lora_B" in name:  # a trained adapter is not the base: it answers otherwise
            torch.nn.init.normal_(weight, std=0.5)
    measured = scores.measure(model, "test", ("none", "fp32"), None)
    prompts = scores.samples["test"]
    answers = greedy_answers(model, tokenizer, prompts, 6, None)
    with model.disable_adapter():
        base_answers = greedy_answers(model, tokenizer, prompts, 6, None)
    assert answers != base_answers
    for key, said in (("test_rougeL", answers), ("base_test_rougeL", base_answers)):
        assert measured[key] == pytest.approx(sum(rouge_l(a, p.reference) for a, p in zip(said, prompts)) / 4)
    assert set(measured) == {"test_rougeL", "test_exact_match", "base_test_rougeL", "base_test_exact_match"}
    scores.base_scores[("test", ("none", "fp32"))] = {"test_rougeL": -1.0, "test_exact_match": -1.0}
    assert scores.measure(model, "test", ("none", "fp32"), None)["base_test_rougeL"] == -1.0  # not measured again


def test_plain_text_has_no_answers_to_score(tiny, tokenizer):
    text = data.prepare(DataConfig(max_samples=15, seq_len=32), tiny, tokenizer)[0]
    with pytest.raises(UserInputError, match="the data is plain text, with no reference answers to score"):
        AnswerScores(["rougeL"], text, tokenizer, count=4, seed=0, max_new_tokens=6)
