"""Preparing data from files the tests write: every source kind, every format, the split, the cache."""

import json
import random

import pandas as pd
import pytest
from conftest import GROUPED_TOPICS, WORDS, alpaca_records, chat_records, text_docs, write_grouped_topics, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_study import data
from lora_study.config import DataConfig
from lora_study.data import contamination, packing
from lora_study.data import prepared as prepared_module
from lora_study.data.documents import check_records, detect_format
from lora_study.data.packing import IGNORE_INDEX
from lora_study.errors import UserInputError


def prepare(tiny, tokenizer, **values):
    return data.prepare(DataConfig(**values), tiny, tokenizer)[0]


def all_rows(prepared):
    return {split: prepared.rows(split) for split in ("train", "validation", "test")}


# --- sources -------------------------------------------------------------------------------


def test_every_local_file_kind_gives_the_same_rows(tmp_path, tiny, tokenizer):
    docs = text_docs()
    files = {
        "jsonl": write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in docs]),
        "json": tmp_path / "d.json",
        "csv": tmp_path / "d.csv",
        "parquet": tmp_path / "d.parquet",
        "txt": tmp_path / "d.txt",
    }
    files["json"].write_text(json.dumps([{"text": d} for d in docs]))
    pd.DataFrame({"text": docs}).to_csv(files["csv"], index=False)
    pd.DataFrame({"text": docs}).to_parquet(files["parquet"])
    files["txt"].write_text("\n\n".join(docs) + "\n")
    prepared = {kind: prepare(tiny, tokenizer, dataset=str(path), seq_len=16) for kind, path in files.items()}
    reference = all_rows(prepared["jsonl"])
    assert reference["train"] and reference["validation"] and reference["test"]
    for kind, result in prepared.items():
        assert result.meta.format == "text", kind
        assert all_rows(result) == reference, kind
    assert len({result.meta.source_digest for result in prepared.values()}) == 5


def test_python_docs_gives_one_document_per_topic(tiny, tokenizer):
    import pydoc_data.topics

    prepared = prepare(tiny, tokenizer)
    documents = prepared.meta.documents
    assert sum(map(len, documents.values())) == len(pydoc_data.topics.topics)
    counts = prepared.meta.counts
    assert counts["train_tokens"] == 256 * counts["train_rows"] > 90_000
    assert counts["validation_rows"] > 0 and counts["test_rows"] > 0


def test_max_samples_reads_the_first_documents(tmp_path, tiny, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in text_docs(20)])
    prepared = prepare(tiny, tokenizer, dataset=str(path), seq_len=16, max_samples=10)
    assert sorted(i for split in prepared.meta.documents.values() for i in split) == list(range(10))


def test_a_hub_dataset_is_read_pinned_to_its_revision(tmp_path, tiny, tokenizer, monkeypatch):
    import datasets

    local = write_jsonl(tmp_path / "train.jsonl", alpaca_records(20))
    real_load = datasets.load_dataset
    calls = []

    class Info:
        sha = "feedbeef"

    def load_from_disk(name, split, revision):
        calls.append((name, split, revision))
        return real_load("json", data_files=str(local), split=split)

    monkeypatch.setattr("huggingface_hub.HfApi.dataset_info", lambda self, name: Info())
    monkeypatch.setattr(datasets, "load_dataset", load_from_disk)
    config = DataConfig(dataset="someone/alpaca-like", max_samples=15, seq_len=64)
    prepared, documents = data.prepare(config, tiny, tokenizer)
    assert calls == [("someone/alpaca-like", "train[:15]", "feedbeef")]
    assert prepared.meta.format == "instruction" and len(documents.frame) == 15
    assert documents.source == {
        "kind": "hub",
        "path": "someone/alpaca-like",
        "split": "train[:15]",
        "revision": "feedbeef",
    }


# --- formats and the loss mask ---------------------------------------------------------------


def test_instruction_loss_covers_the_response_and_eos_only(tmp_path, tiny, tokenizer):
    records = alpaca_records()
    path = write_jsonl(tmp_path / "alpaca.jsonl", records)
    prepared = prepare(tiny, tokenizer, dataset=str(path), seq_len=128)
    assert prepared.meta.format == "instruction"
    outputs = {r["output"] + tokenizer.eos_token for r in records}
    seen = 0
    for rows in all_rows(prepared).values():
        for row in rows:
            for ids, labels in packing.records(row):
                answer = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
                prompt = [t for t, label in zip(ids, labels) if label == IGNORE_INDEX]
                assert [label for label in labels if label != IGNORE_INDEX] == answer
                assert tokenizer.decode(answer) in outputs
                assert tokenizer.decode(prompt).startswith("Below is an instruction")
                assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)  # prompt, then answer
                seen += 1
    assert seen == len(records)
    assert any(len(row["doc_lengths"]) > 1 for row in prepared.rows("train"))  # packed


def test_chat_loss_covers_each_assistant_turn_only(tmp_path, tiny, tokenizer):
    records = chat_records()
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    prepared = prepare(tiny, tokenizer, dataset=str(path), seq_len=256)
    assert prepared.meta.format == "chat"
    for rows in all_rows(prepared).values():
        for row in rows:
            for ids, labels in packing.records(row):
                trained = tokenizer.decode([label for label in labels if label != IGNORE_INDEX])
                assert trained.startswith("It is ") and "<|im_end|>\nThat gives " in trained
                assert "user" not in trained and "plus" not in trained
                assert tokenizer.decode(ids).startswith("<|im_start|>system")


def test_format_is_detected_from_columns_and_can_be_overridden(tmp_path, tiny, tokenizer):
    records = [{**r, "text": d} for r, d in zip(alpaca_records(), text_docs())]
    path = write_jsonl(tmp_path / "both.jsonl", records)
    assert prepare(tiny, tokenizer, dataset=str(path), seq_len=128).meta.format == "instruction"
    forced = prepare(tiny, tokenizer, dataset=str(path), seq_len=16, format="text")
    assert forced.meta.format == "text"
    custom = write_jsonl(tmp_path / "body.jsonl", [{"body": d} for d in text_docs()])
    assert prepare(tiny, tokenizer, dataset=str(custom), seq_len=16, text_column="body").meta.format == "text"


def test_long_records_are_truncated_and_prompt_only_ones_dropped(tmp_path, tiny, tokenizer):
    records = alpaca_records()
    records[0]["output"] = " ".join(WORDS * 20)  # longer than seq_len: cut, kept
    records[1]["instruction"] = " ".join(WORDS * 20)  # the prompt alone fills seq_len: dropped
    records[2]["output"] = None  # no answer: dropped
    path = write_jsonl(tmp_path / "long.jsonl", records)
    prepared = prepare(tiny, tokenizer, dataset=str(path), seq_len=96)
    counts = prepared.meta.counts
    assert counts["truncated_documents"] == 2 and counts["dropped_documents"] == 2
    assert all(len(row["input_ids"]) <= 96 for rows in all_rows(prepared).values() for row in rows)
    kept = sum(len(row["doc_lengths"]) for rows in all_rows(prepared).values() for row in rows)
    assert kept == len(records) - 2


# --- the split -----------------------------------------------------------------------------


def test_the_split_is_by_document_deterministic_and_disjoint(tmp_path, tiny, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in text_docs(40)])
    first = prepare(tiny, tokenizer, dataset=str(path), seq_len=16, split_seed=1).meta.documents
    again = prepare(tiny, tokenizer, dataset=str(path), seq_len=16, split_seed=1).meta.documents
    other = prepare(tiny, tokenizer, dataset=str(path), seq_len=16, split_seed=2).meta.documents
    assert first == again and first != other
    for split in (first, other):
        assert sorted(split["train"] + split["validation"] + split["test"]) == list(range(40))
        assert (len(split["validation"]), len(split["test"])) == (4, 4)


def test_rows_of_a_split_come_from_its_own_documents(tmp_path, tiny, tokenizer):
    records = alpaca_records(30)
    prepared = prepare(tiny, tokenizer, dataset=str(write_jsonl(tmp_path / "a.jsonl", records)), seq_len=128)
    for split, indices in prepared.meta.documents.items():
        expected = sorted(records[i]["output"] + tokenizer.eos_token for i in indices)
        answers = [
            tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])
            for row in prepared.rows(split)
            for ids, labels in packing.records(row)
        ]
        assert sorted(answers) == expected


# --- groups (--group-by) ----------------------------------------------------------------------


def test_each_group_is_split_by_document_on_its_own(tmp_path, tiny, tokenizer):
    path = write_grouped_topics(tmp_path / "topics.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    prepared = prepare(tiny, tokenizer, dataset=str(path), group_by="topic", seq_len=32)
    assert list(prepared.groups) == [*GROUPED_TOPICS, "try"]
    assert prepared.groups["try"]["skipped"] == "2 document(s): too few to split into train, validation and test"
    pooled_rows = 0
    for key in GROUPED_TOPICS:
        group = prepared.group(key)
        splits = group.meta.documents
        members = [i for i, record in enumerate(records) if record["topic"] == key]
        assert sorted(splits["train"] + splits["validation"] + splits["test"]) == members  # disjoint, complete
        assert (len(splits["validation"]), len(splits["test"])) == (1, 1)  # 10% of 12, at least one
        assert group.meta.group == key and group.meta.digest == prepared.groups[key]["digest"]
        assert group.meta.digest != prepared.meta.digest
        pooled_rows += len(group.rows("train"))
    assert len(prepared.rows("train")) == pooled_rows  # the groups' rows together: the sweep's data
    assert prepared.meta.counts["groups"] == 4 and prepared.meta.counts["skipped_groups"] == 1
    assert sorted(prepared.meta.documents["test"]) == sorted(
        i for key in GROUPED_TOPICS for i in prepared.group(key).meta.documents["test"]
    )


def test_no_group_trains_on_a_span_of_any_groups_held_out_documents(tmp_path, tiny, tokenizer):
    docs = nested_docs(24)  # each quotes the one before: groups alternate, so they quote each other
    path = write_jsonl(tmp_path / "d.jsonl", [{"team": "ab"[i % 2], "text": d} for i, d in enumerate(docs)])

    def overlap_across(prepared) -> int:
        held_out = [
            (row["input_ids"], row["labels"])
            for key in prepared.groups
            for split in ("validation", "test")
            for row in prepared.group(key).rows(split)
        ]
        train = [row["input_ids"] for key in prepared.groups for row in prepared.group(key).rows("train")]
        return contamination.overlap(train, held_out, 50)

    dirty = prepare(tiny, tokenizer, dataset=str(path), group_by="team", seq_len=64, decontaminate_ngram=0)
    clean = prepare(tiny, tokenizer, dataset=str(path), group_by="team", seq_len=64)
    assert overlap_across(dirty) > 50 and overlap_across(clean) == 0
    assert clean.meta.counts["contaminated_documents"] > 0


@pytest.mark.parametrize(
    "records, expected",
    [
        ([{"text": "x"}], "--group-by: no column `team` in d.jsonl (columns: text)"),
        (
            [{"team": "a", "text": "x y z"}, {"team": None, "text": "x y"}],
            "--group-by team: 1 record(s) have no value (first: d.jsonl, line 2); give every record a group",
        ),
        (
            [{"team": t, "text": "x y z"} for t in "aabbc"],
            "--group-by team: none of the 3 group(s) has data enough for train, validation and test splits "
            "(the largest has 2 document(s))",
        ),
    ],
)
def test_bad_groups_are_one_line_naming_the_problem(tmp_path, tiny, tokenizer, records, expected):
    path = write_jsonl(tmp_path / "d.jsonl", records)
    with pytest.raises(UserInputError) as error:
        prepare(tiny, tokenizer, dataset=str(path), group_by="team", seq_len=8)
    assert len(error.value.problems) == 1 and expected in error.value.problems[0]


# --- decontamination -----------------------------------------------------------------------


def random_words(count: int, rng: random.Random) -> str:
    return " ".join(f"{rng.choice('bcdfgklmnprst')}{rng.choice('aeiou')}{rng.choice('nrstx')}" for _ in range(count))


def nested_docs(count: int) -> list[str]:
    """Documents that contain each other: each one quotes the one before it whole."""
    rng = random.Random(0)
    docs = [random_words(40, rng)]
    for _ in range(count - 1):
        docs.append(f"{random_words(15, rng)} {docs[-1]} {random_words(15, rng)}")
    return docs


def split_overlap(prepared, n: int) -> int:
    train = [row["input_ids"] for row in prepared.rows("train")]
    held_out = [(row["input_ids"], row["labels"]) for split in ("validation", "test") for row in prepared.rows(split)]
    return contamination.overlap(train, held_out, n)


def test_no_held_out_span_of_n_tokens_is_left_in_training(tmp_path, tiny, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in nested_docs(12)])
    dirty = prepare(tiny, tokenizer, dataset=str(path), seq_len=64, decontaminate_ngram=0)
    clean = prepare(tiny, tokenizer, dataset=str(path), seq_len=64)
    assert split_overlap(dirty, 50) > 50 and split_overlap(clean, 50) == 0
    counts = clean.meta.counts
    assert counts["contaminated_documents"] > 0 and clean.meta.decontamination == contamination.CUT_SPANS
    assert counts["removed_train_tokens"] > 0
    assert counts["train_tokens"] < dirty.meta.counts["train_tokens"]
    assert clean.meta.documents == dirty.meta.documents  # the split itself does not move


def test_the_default_data_is_decontaminated(tiny, tokenizer):
    dirty, clean = prepare(tiny, tokenizer, decontaminate_ngram=0), prepare(tiny, tokenizer)
    assert split_overlap(dirty, 50) > 1000 and split_overlap(clean, 50) == 0
    assert clean.meta.counts["contaminated_documents"] >= 1


def test_an_instruction_record_sharing_a_span_is_dropped(tmp_path, tiny, tokenizer):
    rng = random.Random(1)
    shared = random_words(30, rng)
    outputs = [shared] * 3 + [random_words(30, rng) for _ in range(9)]
    records = [{"instruction": f"Quote passage {i}.", "output": output} for i, output in enumerate(outputs)]
    path = write_jsonl(tmp_path / "a.jsonl", records)
    prepared = prepare(tiny, tokenizer, dataset=str(path), seq_len=128, decontaminate_ngram=20, split_seed=3)
    quoting = [i for i in prepared.meta.documents["train"] if i < 3]
    held_out = [i for split in ("validation", "test") for i in prepared.meta.documents[split] if i < 3]
    assert quoting and held_out, "the seed puts the quoted passage on both sides"
    assert prepared.meta.decontamination == contamination.DROP_RECORDS
    assert prepared.meta.counts["contaminated_documents"] >= len(quoting)
    assert split_overlap(prepared, 20) == 0


# --- the cache -----------------------------------------------------------------------------


def test_the_same_inputs_reuse_the_cached_result(tmp_path, tiny, tokenizer, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in text_docs()])
    first = prepare(tiny, tokenizer, dataset=str(path), seq_len=16)
    monkeypatch.setattr(prepared_module, "_write_prepared", lambda *a: pytest.fail("rebuilt a cached result"))
    assert prepare(tiny, tokenizer, dataset=str(path), seq_len=16).path == first.path
    monkeypatch.undo()
    assert prepare(tiny, tokenizer, dataset=str(path), seq_len=17).path != first.path


def test_load_prepared_refuses_a_folder_without_prepared_data(tmp_path):
    with pytest.raises(UserInputError, match="holds no prepared data"):
        data.load_prepared(str(tmp_path))


# --- bad input -------------------------------------------------------------------------------


def one_line_error(tiny, tokenizer, **values) -> str:
    with pytest.raises(UserInputError) as caught:
        prepare(tiny, tokenizer, **values)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_missing_file_is_named(tmp_path, tiny, tokenizer):
    message = one_line_error(tiny, tokenizer, dataset=str(tmp_path / "nope.jsonl"))
    assert "nope.jsonl does not exist" in message


def test_malformed_jsonl_names_the_line(tmp_path, tiny, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "fine too"}\n{"text": oops}\n')
    assert f"{path}, line 3: not valid JSON" in one_line_error(tiny, tokenizer, dataset=str(path))


def test_a_missing_column_lists_the_columns_there_are(tmp_path, tiny, tokenizer):
    path = write_jsonl(tmp_path / "cols.jsonl", [{"body": d, "id": i} for i, d in enumerate(text_docs())])
    message = one_line_error(tiny, tokenizer, dataset=str(path))
    assert "no `text` column" in message and "columns: body, id" in message
    assert "--text-column" in message
    message = one_line_error(tiny, tokenizer, dataset=str(path), format="chat")
    assert "--format chat needs column(s) messages" in message


def test_an_empty_dataset_is_refused(tmp_path, tiny, tokenizer):
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "empty.csv").write_text("text\n")
    for name in ("empty.jsonl", "empty.csv"):
        assert "holds no documents" in one_line_error(tiny, tokenizer, dataset=str(tmp_path / name))


def test_fewer_tokens_than_one_block_is_refused(tmp_path, tiny, tokenizer):
    path = write_jsonl(tmp_path / "short.jsonl", [{"text": d} for d in text_docs()])
    message = one_line_error(tiny, tokenizer, dataset=str(path), seq_len=4096)
    assert "fewer than one --seq-len block of 4096" in message and "split holds" in message


def test_records_whose_prompt_fills_the_block_are_refused(tmp_path, tiny, tokenizer):
    path = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_records())
    message = one_line_error(tiny, tokenizer, dataset=str(path), seq_len=16)
    assert "answer within --seq-len 16" in message and "raise --seq-len" in message


def test_too_few_documents_to_split_is_refused(tmp_path, tiny, tokenizer):
    path = write_jsonl(tmp_path / "two.jsonl", [{"text": d} for d in text_docs(2)])
    assert "at least 3 documents" in one_line_error(tiny, tokenizer, dataset=str(path), seq_len=8)


def test_a_malformed_chat_record_is_named(tmp_path, tiny, tokenizer):
    records = chat_records()
    records[4] = {"messages": [{"role": "user", "content": "no answer"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    message = one_line_error(tiny, tokenizer, dataset=str(path))
    assert "chat.jsonl, line 5" in message and "assistant" in message


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".txt"])
def test_undecodable_bytes_are_one_line_naming_the_file_and_the_offset(tmp_path, tiny, tokenizer, suffix):
    path = tmp_path / f"binary{suffix}"
    path.write_bytes(b'{"text": "fine"}\n' + bytes([0xFF, 0xFE, 0x00, 0x81]) * 8)
    message = one_line_error(tiny, tokenizer, dataset=str(path))
    assert message == f"{path}: not UTF-8 text (byte 0xff at offset 17); save it as UTF-8"


def test_a_byte_order_mark_is_read_as_windows_tools_write_it(tmp_path, tiny, tokenizer):
    path = tmp_path / "bom.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in text_docs()), encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    prepared = prepare(tiny, tokenizer, dataset=str(path), seq_len=16)
    assert prepared.meta.format == "text"


def test_a_directory_is_said_to_be_one(tmp_path, tiny, tokenizer):
    (tmp_path / "adir").mkdir()
    message = one_line_error(tiny, tokenizer, dataset=str(tmp_path / "adir"))
    assert (
        message
        == f"--dataset: {tmp_path / 'adir'} is a directory; pass one file in it (.jsonl, .json, .csv, .parquet, .txt)"
    )


@pytest.mark.parametrize(
    ("value", "shown"), [(42, "int 42"), (["a", "b"], "list ['a', 'b']"), ({"k": 1}, "dict {'k': 1}")]
)
def test_a_non_string_text_is_refused_with_its_line(tmp_path, tiny, tokenizer, value, shown):
    lines = [json.dumps({"text": d}) for d in text_docs()]
    lines[6] = json.dumps({"text": value})
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines[:3] + [""] + lines[3:]))  # a blank line: record 7 is on line 8
    message = one_line_error(tiny, tokenizer, dataset=str(path))
    assert message == f"mixed.jsonl, line 8: `text` is {shown}, not text; make it a string or leave the record out"


def test_csv_text_that_looks_like_a_number_stays_text(tmp_path, tiny, tokenizer):
    path = tmp_path / "numbers.csv"
    path.write_text("text\n" + "\n".join(["007"] * 3 + [f'"{d}"' for d in text_docs()]))
    documents = data.read_documents(DataConfig(dataset=str(path)))
    assert documents.frame.text.iloc[0] == "007"


def test_an_unreadable_file_kind_lists_the_readable_ones(tmp_path, tiny, tokenizer):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"\x00")
    assert ".jsonl, .json, .csv, .parquet, .txt" in one_line_error(tiny, tokenizer, dataset=str(path))


def test_an_unreachable_hub_dataset_fails_fast_in_one_line(tiny, tokenizer):
    message = one_line_error(tiny, tokenizer, dataset="yahma/alpaca-cleaned")
    assert "cannot reach `yahma/alpaca-cleaned`" in message and "python-docs" in message


# --- fuzzing the readers: whatever a file holds, documents or one line per problem -----------------

LEAVES = st.none() | st.booleans() | st.integers(-(10**400), 10**400) | st.floats() | st.text(max_size=30)
JSON_VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
FIELDS = st.sampled_from(["text", "instruction", "input", "output", "messages", "role", "content"]) | st.text(
    max_size=6
)
RECORDS = st.lists(st.dictionaries(FIELDS, JSON_VALUES, max_size=4) | JSON_VALUES, max_size=6)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def reads_or_says_why(path) -> None:
    """The property: documents whose records check, or UserInputError with one line per problem."""
    cfg = DataConfig(dataset=str(path))
    try:
        documents = data.read_documents(cfg)
        check_records(documents, detect_format(cfg, list(documents.frame.columns)), cfg)
    except UserInputError as error:
        assert error.problems and all("\n" not in p and "\r" not in p for p in error.problems)


def json_text(value) -> str:
    return json.dumps(value, allow_nan=True)


@FUZZ
@given(records=RECORDS, suffix=st.sampled_from([".jsonl", ".json"]))
def test_any_json_records_read_or_are_refused_in_lines(tmp_path, records, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_text("\n".join(map(json_text, records)) if suffix == ".jsonl" else json_text(records))
    reads_or_says_why(path)


@FUZZ
@given(content=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".txt", ".parquet"]))
def test_any_bytes_read_or_are_refused_in_lines(tmp_path, content, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(content)
    reads_or_says_why(path)


@FUZZ
@given(text=st.text(max_size=300))
def test_any_csv_text_reads_or_is_refused_in_lines(tmp_path, text):
    path = tmp_path / "fuzz.csv"
    path.write_text(text)
    reads_or_says_why(path)


def test_deeply_nested_json_is_refused_in_a_line(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    reads_or_says_why(path)
