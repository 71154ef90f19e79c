"""Requests that arrive together, answered in one batch: a served model's queue.

MLflow's scoring server runs each request in a thread of its own. Each hands its rows (prompts,
and the adapter of each) to `Batcher.submit` and waits; one thread takes the oldest request,
gathers more for at most `wait_s` or until `max_rows` rows, and runs them as one batch, whatever
adapters they name. A request whose sampling params differ from the batch's waits for the next
one (a batch samples with one setting). With `max_rows` 1 requests are answered one at a time.
"""

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# run(texts, adapter keys, params) -> one answer per text
Run = Callable[[list[str], list, dict], list[str]]


@dataclass
class _Request:
    texts: list[str]
    keys: list
    params: dict
    done: threading.Event = field(default_factory=threading.Event)
    answers: list[str] = field(default_factory=list)
    error: BaseException | None = None


class Batcher:
    def __init__(self, run: Run, max_rows: int, wait_s: float):
        self.run, self.max_rows, self.wait_s = run, max_rows, wait_s
        self.waiting: queue.Queue[_Request] = queue.Queue()
        self.held: list[_Request] = []  # taken off the queue, left for a later batch (other params, or full)
        threading.Thread(target=self._serve, name="lora-study-batcher", daemon=True).start()

    def submit(self, texts: list[str], keys: list, params: dict) -> list[str]:
        """The answers to one request's rows, from whichever batch they joined."""
        request = _Request(texts, keys, params)
        self.waiting.put(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.answers

    def _serve(self) -> None:
        while True:
            self._answer(self._gather())

    def _gather(self) -> list[_Request]:
        """The oldest request, and those that can join it: held ones first (they came earlier),
        then new ones until the wait is over or the batch is full."""
        first = self.held.pop(0) if self.held else self.waiting.get()
        batch, deadline = [first], time.monotonic() + self.wait_s
        for request in list(self.held):
            if self._joins(batch, request):
                self.held.remove(request)
                batch.append(request)
        while sum(len(r.texts) for r in batch) < self.max_rows and (left := deadline - time.monotonic()) > 0:
            try:
                request = self.waiting.get(timeout=left)
            except queue.Empty:
                break
            (batch if self._joins(batch, request) else self.held).append(request)
        return batch

    def _joins(self, batch: list[_Request], request: _Request) -> bool:
        rows = sum(len(r.texts) for r in batch)
        return request.params == batch[0].params and rows + len(request.texts) <= self.max_rows

    def _answer(self, batch: list[_Request]) -> None:
        """Run the batch (a request larger than `max_rows` in pieces of it); every request is told."""
        texts = [text for request in batch for text in request.texts]
        keys = [key for request in batch for key in request.keys]
        try:
            answers = []
            for start in range(0, len(texts), self.max_rows):
                end = start + self.max_rows
                answers += self.run(texts[start:end], keys[start:end], batch[0].params)
        except Exception as error:  # the requests fail with it; the server goes on
            for request in batch:
                request.error = error
                request.done.set()
            return
        for request in batch:
            request.answers, answers = answers[: len(request.texts)], answers[len(request.texts) :]
            request.done.set()
