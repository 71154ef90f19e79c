"""The prompt suite and ROUGE-L: prompts cut from test rows or read from a file, scored answers."""

import re

import pytest
import torch
from conftest import alpaca_records, write_jsonl

from lora_study import data, generation, models, serving
from lora_study.config import DataConfig
from lora_study.errors import UserInputError


def test_prompts_from_instruction_rows_are_the_prompt_and_its_answer(tmp_path, tiny, tokenizer):
    dataset = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_records(40))
    prepared = data.prepare(DataConfig(dataset=str(dataset), seq_len=128), tiny, tokenizer)[0]
    prompts = generation.prompts_from_rows(prepared.rows("test"), "instruction", tokenizer, 100, 16)
    assert len(prompts) == prepared.meta.counts["test_documents"]
    for prompt in prompts:
        assert prompt.text.startswith("Below is an instruction") and prompt.text.endswith("### Response:\n")
        assert re.fullmatch(r"Animal \d+ is a \w+\.", prompt.reference)
        assert tokenizer.decode(prompt.ids) == prompt.text


def test_prompts_from_text_rows_are_the_first_tokens_and_what_follows(tiny, tokenizer):
    prepared = data.prepare(DataConfig(max_samples=15, seq_len=64), tiny, tokenizer)[0]
    rows = prepared.rows("test")
    prompts = generation.prompts_from_rows(rows, "text", tokenizer, 2, 8)
    assert len(prompts) == 2
    assert prompts[0].ids == rows[0]["input_ids"][: generation.TEXT_PROMPT_TOKENS]
    assert prompts[0].reference == tokenizer.decode(rows[0]["input_ids"][32:40], skip_special_tokens=True).strip()


def test_a_prompt_file_is_read_and_wrapped_like_the_training_data(tmp_path, tokenizer):
    (tmp_path / "p.txt").write_text("Name a fruit.\n\nName a colour.\n")
    prompts = generation.read_prompts(str(tmp_path / "p.txt"), tokenizer, "instruction", 10)
    assert [p.reference for p in prompts] == [None, None]
    assert prompts[1].text.endswith("### Instruction:\nName a colour.\n\n### Response:\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "2+2?", "reference": "4"}\n{"prompt": 3}\n')
    with pytest.raises(UserInputError, match=r"p.jsonl, line 2: needs a string field `prompt`"):
        generation.read_prompts(str(tmp_path / "p.jsonl"), tokenizer, "text", 10)
    (tmp_path / "p.jsonl").write_text('{"prompt": "2+2?", "reference": "4"}\n')
    (prompt,) = generation.read_prompts(str(tmp_path / "p.jsonl"), tokenizer, "text", 10)
    assert (prompt.text, prompt.reference) == ("2+2?", "4")


def test_rouge_l_is_rouge_scores_lcs_f1_over_words():
    assert generation.rouge_l("The cat sat.", "the cat sat") == 1.0
    assert generation.rouge_l("the cat ate", "the cat sat") == pytest.approx(2 / 3)
    # LCS "a c" of "a b c d" and "a c e": precision 2/4, recall 2/3
    assert generation.rouge_l("a b c d", "a c e") == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert generation.rouge_l("", "x") == 0.0 and generation.rouge_l("y", "x") == 0.0


def test_exact_match_compares_answers_normalized_as_squad_does():
    assert generation.exact_match("The  Answer is: 4.", "answer is 4") == 1.0
    assert generation.exact_match("an apple", "Apple!") == 1.0
    assert generation.exact_match("4", "5") == 0.0 and generation.exact_match("4 apples", "4") == 0.0


def test_greedy_answers_in_left_padded_batches_are_each_prompts_answer_alone(tmp_path, tiny, tokenizer):
    """Prompts of different lengths in one batch: each answers as it does alone, one at a time."""
    dataset = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_records(40))
    prepared = data.prepare(DataConfig(dataset=str(dataset), seq_len=128), tiny, tokenizer)[0]
    prompts = generation.prompts_from_rows(prepared.rows("test"), "instruction", tokenizer, 5, 8)
    assert len({len(p.ids) for p in prompts}) > 1  # padding is at stake
    model, _ = models.load_base(tiny, "none", torch.float32, torch.device("cpu"))
    batched = generation.greedy_answers(model, tokenizer, prompts, 6, None, batch_size=5)
    assert batched == generation.generate_timed(model, tokenizer, prompts, 6, None).texts


# --- answers in one batch, each row with its own adapter ---------------------------------------------

MIXED_PROMPTS = ["The list type", "def f(x):\n    return", "A dict maps keys to values, and", "Sorting"]


@pytest.fixture(scope="module")
def three_adapters(tiny):
    """The tiny base with LoRA adapters `one` and `two` and a DoRA adapter `dor`, initialised at random
    (not to zero) so that each answers differently."""
    from peft import LoraConfig, get_peft_model

    base, _ = models.load_base(tiny, "none", torch.float32, torch.device("cpu"))
    config = {"r": 4, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False}
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(**config), adapter_name="one")
    model.add_adapter("two", LoraConfig(**config))
    model.add_adapter("dor", LoraConfig(**config, use_dora=True))
    return model.eval()


def alone(model, tokenizer, prompt: str, adapter: str | None) -> str:
    if adapter is None:
        with model.disable_adapter():
            return generation.generate(model, tokenizer, [prompt], 8, 0.0)[0]
    model.set_adapter(adapter)
    return generation.generate(model, tokenizer, [prompt], 8, 0.0)[0]


def test_a_mixed_batch_answers_each_row_as_its_adapter_alone_does(three_adapters, tokenizer):
    model, names = three_adapters, ["one", "two", generation.BASE_ROW, "one"]
    batched = generation.generate(model, tokenizer, MIXED_PROMPTS, 8, 0.0, adapter_names=names)
    expected = [
        alone(model, tokenizer, p, None if n == generation.BASE_ROW else n) for p, n in zip(MIXED_PROMPTS, names)
    ]
    assert batched == expected
    assert len(set(alone(model, tokenizer, MIXED_PROMPTS[0], n) for n in ("one", "two", None))) == 3  # they differ


def test_dora_rows_are_batched_apart_and_answer_as_alone(three_adapters, tokenizer):
    keys = ["dor", "one", "dor", "two"]
    answers = serving.generate_mixed(
        three_adapters, tokenizer, MIXED_PROMPTS, keys, {"max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0}
    )
    assert answers == [alone(three_adapters, tokenizer, p, k) for p, k in zip(MIXED_PROMPTS, keys)]
