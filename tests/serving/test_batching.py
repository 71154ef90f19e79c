"""The served model's queue: requests that arrive together answered in one batch, each its own rows."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lora_study.serving.batching import Batcher

GREEDY, SAMPLED = {"temperature": 0.0}, {"temperature": 0.7}


class Recorder:
    """A `run` that answers each text with its adapter's name, and notes the batches it was given."""

    def __init__(self, seconds: float = 0.05, fail_on: str = ""):
        self.batches, self.seconds, self.fail_on = [], seconds, fail_on

    def __call__(self, texts, keys, params):
        self.batches.append((list(texts), dict(params)))
        time.sleep(self.seconds)  # generation takes time: requests pile up meanwhile
        if self.fail_on in texts:
            raise RuntimeError("out of memory")
        return [f"{key}:{text}" for text, key in zip(texts, keys)]


def submit_together(batcher, requests):
    """Submit every request at once, from threads of their own, as the scoring server does."""
    with ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(batcher.submit, *request) for request in requests]
        return [future.exception() or future.result() for future in futures]


def test_requests_that_arrive_together_share_a_batch_and_get_their_own_answers():
    run = Recorder()
    batcher = Batcher(run, max_rows=8, wait_s=0.2)
    requests = [([f"p{i}", f"q{i}"], [f"adapter-{i}", None], GREEDY) for i in range(3)]
    answers = submit_together(batcher, requests)
    assert answers == [[f"adapter-{i}:p{i}", f"None:q{i}"] for i in range(3)]
    assert len(run.batches) == 1 and sorted(run.batches[0][0]) == sorted(t for r in requests for t in r[0])


def test_a_batch_holds_at_most_max_rows_and_one_sampling_setting():
    run = Recorder()
    batcher = Batcher(run, max_rows=3, wait_s=0.2)
    requests = [(["a", "b"], ["x", "x"], GREEDY), (["c"], ["y"], SAMPLED), (["d", "e"], ["z", "z"], GREEDY)]
    answers = submit_together(batcher, requests)
    assert answers == [["x:a", "x:b"], ["y:c"], ["z:d", "z:e"]]
    params_of = {text: params for texts, _, params in requests for text in texts}
    for texts, params in run.batches:
        assert len(texts) <= 3 and all(params_of[text] == params for text in texts)
    assert sorted(t for texts, _ in run.batches for t in texts) == ["a", "b", "c", "d", "e"]


def test_max_rows_one_answers_one_prompt_at_a_time():
    run = Recorder(seconds=0.01)
    batcher = Batcher(run, max_rows=1, wait_s=0.05)
    answers = submit_together(
        batcher, [([f"p{i}"], ["x"], GREEDY) for i in range(4)] + [(["a", "b"], ["y", "y"], GREEDY)]
    )
    assert answers[-1] == ["y:a", "y:b"] and all(len(texts) == 1 for texts, _ in run.batches)
    assert len(run.batches) == 6


def test_a_failed_batch_fails_its_requests_and_the_next_batch_is_answered():
    run = Recorder(fail_on="boom")
    batcher = Batcher(run, max_rows=8, wait_s=0.2)
    failed = submit_together(batcher, [(["boom"], ["x"], GREEDY), (["ok"], ["x"], GREEDY)])
    assert all(isinstance(outcome, RuntimeError) for outcome in failed)
    assert batcher.submit(["later"], ["x"], GREEDY) == ["x:later"]


@pytest.mark.parametrize("wait_s", [0.0, 0.2])
def test_a_lone_request_waits_at_most_the_wait_for_company(wait_s):
    batcher = Batcher(Recorder(seconds=0), max_rows=8, wait_s=wait_s)
    started = time.monotonic()
    assert batcher.submit(["p"], ["x"], GREEDY) == ["x:p"]
    assert wait_s <= time.monotonic() - started < wait_s + 0.5
