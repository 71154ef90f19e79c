"""Forgetting: zero for a fresh adapter, larger for a larger step, KL as a direct sum says."""

import mlflow
import pytest
import torch
from conftest import TINY_BASE, TINY_DATA, text_docs, write_jsonl

from lora_study import forgetting, lora, training
from lora_study.config import AdapterConfig, TrainConfig
from lora_study.data.packing import collate
from lora_study.errors import UserInputError
from lora_study.names import METRIC_FORGETTING_KL, METRIC_FORGETTING_LOSS_DELTA

TRAIN = TrainConfig(max_steps=4, batch_size=4, eval_every=0)


def setup():
    return training.setup(TINY_DATA, TINY_BASE, AdapterConfig(), TRAIN)


def general_text(s):
    return forgetting.load(forgetting.SELF, s.ref, s.tokenizer, s.model, TINY_DATA.seq_len, TINY_DATA.dataset)


def forgetting_after(s, learning_rate: float) -> dict[str, float]:
    train = TRAIN.model_copy(update={"learning_rate": learning_rate})
    with mlflow.start_run():
        model = training.fine_tune(s, AdapterConfig(), train).model
    try:
        return forgetting.evaluate(model, general_text(s), s.tokenizer.pad_token_id, None)
    finally:
        s.model = lora.detach(model)


def test_a_fresh_adapter_forgets_nothing(mlflow_experiment):
    s = setup()
    model = lora.attach(s.model, AdapterConfig(), seed=0)  # B = 0: the update is exactly zero
    assert forgetting.evaluate(model, general_text(s), s.tokenizer.pad_token_id, None) == {
        METRIC_FORGETTING_LOSS_DELTA: 0.0,
        METRIC_FORGETTING_KL: 0.0,
    }


@pytest.mark.slow  # trains several adapters to compare them
def test_forgetting_grows_with_the_learning_rate(mlflow_experiment):
    s = setup()
    small, large = forgetting_after(s, 1e-4), forgetting_after(s, 3e-2)
    assert 0 < small[METRIC_FORGETTING_KL] < large[METRIC_FORGETTING_KL]
    assert small[METRIC_FORGETTING_LOSS_DELTA] < large[METRIC_FORGETTING_LOSS_DELTA]


def test_kl_and_loss_delta_match_a_direct_computation(mlflow_experiment):
    s = setup()
    with mlflow.start_run():
        model = training.fine_tune(s, AdapterConfig(), TRAIN.model_copy(update={"learning_rate": 1e-2})).model
    text = general_text(s)
    measured = forgetting.evaluate(model, text, s.tokenizer.pad_token_id, None)
    kl, delta, count = 0.0, 0.0, 0
    batch = collate(text.rows, s.tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad():
        adapted = torch.log_softmax(model(input_ids=batch["input_ids"]).logits.double(), -1)
        with model.disable_adapter():
            base = torch.log_softmax(model(input_ids=batch["input_ids"]).logits.double(), -1)
    for row in range(len(text.rows)):
        for position in range(len(text.rows[row]["input_ids"]) - 1):
            p_base = base[row, position].exp()
            kl += float((p_base * (base[row, position] - adapted[row, position])).sum())
            target = text.rows[row]["input_ids"][position + 1]
            delta += float(base[row, position, target] - adapted[row, position, target])
            count += 1
    assert abs(measured[METRIC_FORGETTING_KL] - kl / count) < 1e-5 * max(1.0, kl / count)
    assert abs(measured[METRIC_FORGETTING_LOSS_DELTA] - delta / count) < 1e-4


def test_the_self_sampled_text_is_seeded_and_cached(mlflow_experiment, cache_root):
    s = setup()
    first = general_text(s)
    assert list((cache_root / "forgetting").iterdir())
    assert general_text(s).rows == first.rows
    assert len(first.rows) * len(first.rows[0]["input_ids"]) == forgetting.TOKENS
    assert "sampled from tiny" in first.description


def test_any_dataset_can_be_the_general_text(tmp_path, mlflow_experiment):
    s = setup()
    path = write_jsonl(tmp_path / "general.jsonl", [{"text": d} for d in text_docs(30)])
    text = forgetting.load(str(path), s.ref, s.tokenizer, s.model, TINY_DATA.seq_len, TINY_DATA.dataset)
    assert text.rows and "general.jsonl" in text.description
    assert forgetting.load(forgetting.NONE, s.ref, s.tokenizer, s.model, TINY_DATA.seq_len, "") is None
    with pytest.raises(UserInputError, match="is the training data"):
        forgetting.load(str(path), s.ref, s.tokenizer, s.model, TINY_DATA.seq_len, str(path))
