"""Comparability: two test perplexities compare only on the same test data and base, and what
differs is named."""

import dataclasses

from conftest import TINY_DATA, text_docs, write_jsonl

from lora_study import data
from lora_study.registry import comparability


def basis_of(tiny, tokenizer, quantization="none", **settings):
    prepared, _ = data.prepare(TINY_DATA.model_copy(update=settings), tiny, tokenizer)
    return comparability.Basis.of(prepared.meta, tiny, quantization)


def test_the_same_prepared_data_and_base_compare(tiny, tokenizer):
    one, again = basis_of(tiny, tokenizer), basis_of(tiny, tokenizer)
    assert one == again and one.key == again.key and comparability.differences(one, again) == []
    assert one.base_weights == tiny.sha256 and one.seq_len == 32 and one.test_fraction == 0.1
    assert comparability.Basis.from_json(one.to_json()) == one


def test_each_setting_that_changes_the_test_data_is_named(tiny, tokenizer):
    one = basis_of(tiny, tokenizer)
    cases = {
        "seq_len 32 vs 48": dict(seq_len=48),
        "split seed 0 vs 1": dict(split_seed=1),
        "test_fraction 0.1 vs 0.2": dict(test_fraction=0.2),
        "val_fraction 0.1 vs 0.2": dict(val_fraction=0.2),
        "decontaminate_ngram 50 vs 0": dict(decontaminate_ngram=0),
        "max_samples 15 vs 12": dict(max_samples=12),
    }
    for named, settings in cases.items():
        assert comparability.differences(one, basis_of(tiny, tokenizer, **settings)) == [named]
    assert comparability.differences(one, basis_of(tiny, tokenizer, quantization="4bit")) == [
        "quantization of the evaluation base none vs 4bit"
    ]


def test_other_base_weights_or_documents_are_named_by_their_digests(tiny, tokenizer):
    one = basis_of(tiny, tokenizer)
    other = dataclasses.replace(
        one, base_weights="f" * 64, dataset="docs.jsonl", dataset_digest="e" * 64, prepared_digest="3" * 64
    )
    assert comparability.differences(one, other) == [
        f"base weights sha256 {tiny.sha256[:8]} vs sha256 ffffffff",
        f"dataset python-docs (sha256 {one.dataset_digest[:8]}) vs docs.jsonl (sha256 eeeeeeee)",
    ]


def test_the_same_documents_read_from_another_path_are_the_same_test_data(tmp_path, tiny, tokenizer):
    """What compares is the documents' digest, not the path a machine read them from."""
    docs = [{"text": text} for text in text_docs()]
    here = write_jsonl(tmp_path / "docs.jsonl", docs)
    (tmp_path / "elsewhere").mkdir()
    there = write_jsonl(tmp_path / "elsewhere" / "docs.jsonl", docs)
    one, other = (basis_of(tiny, tokenizer, dataset=str(path), max_samples=0) for path in (here, there))
    assert one.key == other.key and comparability.differences(one, other) == []


def test_a_setting_one_side_did_not_record_is_left_to_the_digest(tiny, tokenizer):
    """Data prepared before its meta held the fractions: the digest still tells the data apart."""
    one = basis_of(tiny, tokenizer)
    older = dataclasses.replace(one, val_fraction=None, test_fraction=None, decontaminate_ngram=None)
    assert comparability.differences(one, older) == []
    changed = dataclasses.replace(older, prepared_digest="a" * 64)
    named = f"prepared data sha256 {one.prepared_digest[:8]} vs sha256 aaaaaaaa"
    assert comparability.differences(one, changed) == [named]


def test_a_basis_not_recorded_compares_with_none():
    assert comparability.Basis.from_json("") is None and comparability.Basis.from_json("[1, 2]") is None
    assert comparability.differences(None, None) == [comparability.NOT_RECORDED]


def test_a_basis_is_rebuilt_from_the_params_a_training_run_logged(tiny, tokenizer):
    """A version registered before versions recorded their test data: its trial run logged the
    data settings, the prepared data's digest and the base."""
    one = basis_of(tiny, tokenizer)
    params = {
        "base_model": "tiny",
        "base_model_sha256": tiny.sha256,
        "quantization": "none",
        "dataset": "python-docs",
        "dataset_digest": one.prepared_digest,
        "seq_len": "32",
        "seed": "0",
        "val_fraction": "0.1",
        "test_fraction": "0.1",
        "decontaminate_ngram": "50",
        "max_samples": "15",
    }
    rebuilt = comparability.Basis.from_params(params, group="")
    assert rebuilt.key == one.key and comparability.differences(rebuilt, one) == []
    longer = comparability.Basis.from_params({**params, "seq_len": "64", "dataset_digest": "3" * 64}, group="")
    assert comparability.differences(longer, one) == ["seq_len 64 vs 32"]
    assert comparability.Basis.from_params({"base_model": "tiny"}, group="") is None
