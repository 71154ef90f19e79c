"""Keeping the best adapter and stopping early: the rule on scripted losses, and the training loop
on the tiny model, whose validation loss at a high constant learning rate falls, rises, then falls."""

import mlflow
import pytest
import torch

from lora_study import names, training
from lora_study.config import AdapterConfig, BaseModelConfig, DataConfig, TrainConfig
from lora_study.early_stopping import BestAdapter, kept_words

TINY = BaseModelConfig(base_model="tiny")
DATA = DataConfig(max_samples=15, seq_len=32)
# one evaluation per step, a learning rate that overshoots, and a schedule that does not depend on
# the planned steps: the first k steps of any run are the same k steps
BUMPY = {"batch_size": 4, "eval_every": 1, "learning_rate": 5e-2, "lr_scheduler": "constant", "warmup_ratio": 0.0}
BUMPY["precision"] = "fp32"


def scripted(best: BestAdapter, losses: list[float]) -> list[bool]:
    """Feed `losses` (steps 1, 2, ...) to `best` with a one-weight model holding the step; whether
    it would stop after each."""
    model = torch.nn.Linear(1, 1, bias=False)
    stops = []
    for step, loss in enumerate(losses, start=1):
        model.weight.data.fill_(step)
        best.saw(model, step, loss)
        stops.append(best.should_stop)
    return stops


def test_the_best_is_the_lowest_loss_after_training_began_and_its_weights_come_back():
    best = BestAdapter()
    model = torch.nn.Linear(1, 1, bias=False)
    best.saw(model, 0, 1.0)  # the base, lower than any trained step: not a candidate
    assert scripted(best, [3.0, 2.0, 2.5, 2.2]) == [False] * 4
    assert (best.best_step, best.best_loss) == (2, 2.0)
    assert best.put_back(model, last_step=4) == 2 and model.weight.item() == 2.0
    assert BestAdapter(keep=False).put_back(model, last_step=4) == 4  # nothing kept: the last step's


def test_patience_counts_evaluations_without_an_improvement_of_more_than_min_delta():
    # 2.95 is the lowest (kept), but not lower than 3.0 by more than 0.1: it does not reset the count
    best = BestAdapter(patience=2, min_delta=0.1)
    assert scripted(best, [3.0, 2.95, 2.99]) == [False, False, True]
    assert best.best_step == 2
    assert scripted(BestAdapter(patience=2), [3.0, 2.95, 2.99, 2.9]) == [False, False, False, False]
    assert scripted(BestAdapter(patience=0), [3.0, 4.0, 5.0, 6.0]) == [False] * 4  # 0: never stops


def test_without_keep_best_no_weights_are_held():
    best = BestAdapter(keep=False)
    scripted(best, [3.0, 2.0])
    assert best.weights == {} and best.best_step == 2


def test_what_a_run_kept_and_why_it_ended_in_words():
    assert kept_words(8, 12, 40) == (
        "stopped early at step 12 of 40; kept the adapter of step 8 (its lowest validation loss)"
    )
    assert kept_words(30, 0, 40) == "kept the adapter of step 30 (its lowest validation loss)"
    assert kept_words(40, 0, 40) == ""


def trained(**train_values):
    train = TrainConfig(**{**BUMPY, **train_values})
    s = training.setup(DATA, TINY, AdapterConfig(), train)
    with mlflow.start_run() as run:
        result = training.fine_tune(s, AdapterConfig(), train)
        info = training.log_trained_adapter(s, result, AdapterConfig(), train)
    mlflow.flush_async_logging()
    lora = {name: p.detach().clone() for name, p in result.model.named_parameters() if "lora_" in name}
    return result, lora, mlflow.get_run(run.info.run_id), info


def test_a_run_whose_validation_loss_rises_logs_the_adapter_of_its_best_step():
    result, kept, run, info = trained(max_steps=5)
    losses = {step: loss for step, loss in result.eval_losses.items() if step > 0}
    best_step = min(losses, key=losses.get)
    assert best_step < 5, f"the loss did not rise after its best step: {losses}"  # what this test is about
    assert run.data.metrics[names.METRIC_BEST_STEP] == best_step == result.adapter_step
    assert run.data.metrics[names.METRIC_STOPPED_EARLY] == 0
    assert info.name.endswith(f"-{best_step}of5steps")
    assert result.final_eval_loss == losses[best_step]
    _, at_best, _, _ = trained(max_steps=best_step)  # the same first steps, stopped there
    assert kept.keys() == at_best.keys()
    for name in kept:
        torch.testing.assert_close(kept[name], at_best[name], rtol=0, atol=0)
    _, last, _, _ = trained(max_steps=5, keep_best=False)
    assert any(not torch.equal(kept[name], last[name]) for name in kept)


def test_patience_stops_the_run_and_it_trains_fewer_tokens():
    full, _, full_run, _ = trained(max_steps=10)
    stopped, _, run, _ = trained(max_steps=10, early_stopping_patience=2)
    at = run.data.metrics[names.METRIC_STOPPED_EARLY]
    assert 0 < at < 10
    assert at == run.data.metrics[names.METRIC_BEST_STEP] + 2  # two evaluations without improvement
    assert max(stopped.eval_losses) == at
    assert run.data.metrics[names.METRIC_TRAINED_TOKENS] < full_run.data.metrics[names.METRIC_TRAINED_TOKENS]
    assert [stopped.eval_losses[s] for s in range(int(at) + 1)] == pytest.approx(
        [full.eval_losses[s] for s in range(int(at) + 1)]
    )
