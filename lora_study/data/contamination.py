"""Decontamination: no held-out span of n tokens may also occur in the training data.

A document-level split is not enough when documents quote each other (the Python docs' `if`
topic is contained in `compound`): perplexity on such a test split partly measures recall. So
every n-gram of the scored (labelled) tokens of the validation and test records is hashed, and
training records lose what they share with them. Plain text is cut around the shared spans (the
rest of the document still trains); an instruction or chat record is one example, so it is
dropped whole. Lee et al. 2021 ("Deduplicating Training Data Makes Language Models Better")
use 50 tokens, the default here.
"""

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from lora_study.data.packing import IGNORE_INDEX

Record = tuple[list[int], list[int]]  # token ids and labels

CUT_SPANS = "cut shared spans out of training documents"
DROP_RECORDS = "drop training records that share a span"
OFF = "off"
_MULTIPLIER = np.uint64(1099511628211)  # odd, so the hash mod 2**64 mixes every position


@dataclass(frozen=True)
class Decontaminated:
    records: list[Record]
    method: str
    contaminated_documents: int  # training records that shared a span with held-out data
    removed_train_tokens: int


def ngram_hashes(ids: list[int], n: int) -> np.ndarray:
    """A 64-bit hash of every window of `n` tokens (none when the record is shorter)."""
    if len(ids) < n:
        return np.empty(0, dtype=np.uint64)
    powers = np.cumprod(np.full(n, _MULTIPLIER, dtype=np.uint64))[::-1]  # overflow wraps: mod 2**64
    windows = sliding_window_view(np.asarray(ids, dtype=np.uint64) + np.uint64(1), n)
    return windows @ powers


def held_out_ngrams(records: list[Record], n: int) -> np.ndarray:
    """The sorted distinct n-gram hashes of the held-out tokens that are scored (labelled).

    Only scored tokens: a prompt template shared by every record is not a leak of its answers.
    """
    hashes = [ngram_hashes(span, n) for ids, labels in records for span in _scored_spans(ids, labels)]
    return np.unique(np.concatenate(hashes)) if hashes else np.empty(0, dtype=np.uint64)


def _scored_spans(ids: list[int], labels: list[int]) -> list[list[int]]:
    scored = np.asarray(labels) != IGNORE_INDEX
    return [ids[start:end] for start, end in _runs(scored)]


def shared_positions(ids: list[int], held_out: np.ndarray, n: int) -> np.ndarray:
    """A mask of the tokens of `ids` inside some n-gram that also occurs in the held-out set."""
    starts = np.flatnonzero(np.isin(ngram_hashes(ids, n), held_out))
    coverage = np.zeros(len(ids) + 1, dtype=np.int64)
    np.add.at(coverage, starts, 1)
    np.add.at(coverage, starts + n, -1)
    return np.cumsum(coverage)[:-1] > 0


def decontaminate(train: list[Record], held_out: list[Record], n: int, whole_records: bool) -> Decontaminated:
    """Training records without any n-gram of the held-out ones: cut apart, or dropped whole."""
    if n <= 0:
        return Decontaminated(train, OFF, 0, 0)
    method = DROP_RECORDS if whole_records else CUT_SPANS
    hashes = held_out_ngrams(held_out, n)
    kept, contaminated, removed = [], 0, 0
    for ids, labels in train:
        shared = shared_positions(ids, hashes, n)
        if not shared.any():
            kept.append((ids, labels))
            continue
        contaminated += 1
        if whole_records:
            removed += len(ids)
            continue
        removed += int(shared.sum())
        kept += _pieces(ids, labels, shared)
    return Decontaminated(kept, method, contaminated, removed)


def _pieces(ids: list[int], labels: list[int], shared: np.ndarray) -> list[Record]:
    """The runs of tokens outside the shared spans, each a record of its own."""
    return [(ids[start:end], labels[start:end]) for start, end in _runs(~shared)]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True in `mask`."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def overlap(train: list[list[int]], held_out: list[Record], n: int) -> int:
    """How many n-grams of the training token lists occur scored in held-out records (0 after `decontaminate`)."""
    hashes = held_out_ngrams(held_out, n)
    return int(sum(np.isin(ngram_hashes(ids, n), hashes).sum() for ids in train))
