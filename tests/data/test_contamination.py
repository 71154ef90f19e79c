"""Decontamination: held-out n-grams found exactly, cut out of text, whole records dropped."""

import random

import numpy as np

from lora_study.data import contamination
from lora_study.data.contamination import CUT_SPANS, DROP_RECORDS, OFF, decontaminate, overlap


def tokens(count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000) for _ in range(count)]


def record(ids: list[int]) -> tuple[list[int], list[int]]:
    return ids, list(ids)


def test_shared_positions_match_a_direct_search():
    held_out = tokens(300, 1)
    train = tokens(80, 2) + held_out[40:100] + tokens(30, 3) + held_out[200:207] + tokens(50, 4)
    n = 8
    windows = {tuple(held_out[i : i + n]) for i in range(len(held_out) - n + 1)}
    expected = np.zeros(len(train), dtype=bool)
    for start in range(len(train) - n + 1):
        if tuple(train[start : start + n]) in windows:
            expected[start : start + n] = True
    hashes = contamination.held_out_ngrams([record(held_out)], n)
    found = contamination.shared_positions(train, hashes, n)
    assert (found == expected).all() and found.sum() == 60  # the 7-token quote is shorter than n


def test_a_quoted_held_out_document_is_cut_out_and_the_rest_kept():
    held_out = tokens(100, 1)
    before, after = tokens(70, 2), tokens(90, 3)
    clean = decontaminate([record(before + held_out + after)], [record(held_out)], n=50, whole_records=False)
    assert clean.method == CUT_SPANS
    assert clean.records == [record(before), record(after)]
    assert (clean.contaminated_documents, clean.removed_train_tokens) == (1, 100)
    assert overlap([ids for ids, _ in clean.records], [record(held_out)], 50) == 0


def test_labels_are_cut_with_their_tokens():
    held_out = tokens(60, 1)
    ids = tokens(20, 2) + held_out + tokens(20, 3)
    labels = [-100] * 10 + ids[10:]
    clean = decontaminate([(ids, labels)], [record(held_out)], n=50, whole_records=False)
    assert clean.records == [(ids[:20], labels[:20]), (ids[80:], labels[80:])]


def test_an_example_sharing_a_span_is_dropped_whole():
    held_out = tokens(60, 1)
    kept = record(tokens(120, 2))
    quoting = record(tokens(10, 3) + held_out[:55])
    clean = decontaminate([kept, quoting], [record(held_out)], n=50, whole_records=True)
    assert clean.method == DROP_RECORDS and clean.records == [kept]
    assert (clean.contaminated_documents, clean.removed_train_tokens) == (1, 65)


def test_spans_shorter_than_n_stay_and_zero_turns_it_off():
    held_out = tokens(100, 1)
    train = [record(tokens(30, 2) + held_out[:49] + tokens(30, 3))]
    assert decontaminate(train, [record(held_out)], n=50, whole_records=False).records == train
    off = decontaminate([record(held_out)], [record(held_out)], n=0, whole_records=False)
    assert off.method == OFF and off.records == [record(held_out)] and off.removed_train_tokens == 0
