from lora_study.data.packing import IGNORE_INDEX, pack_records, pack_stream


def _doc(start: int, length: int, masked: int = 0):
    ids = list(range(start, start + length))
    masked = min(masked, length)
    return ids, [IGNORE_INDEX] * masked + ids[masked:]


def test_stream_cuts_full_blocks_across_documents_and_drops_the_tail():
    docs = [_doc(0, 5), _doc(100, 7), _doc(200, 3)]  # 15 tokens
    rows = pack_stream(docs, seq_len=4)
    assert len(rows) == 3  # 12 tokens kept, 3 dropped
    assert rows[0]["input_ids"] == [0, 1, 2, 3]
    assert rows[1]["input_ids"] == [4, 100, 101, 102]  # a block spans two documents
    assert rows[2]["input_ids"] == [103, 104, 105, 106]
    assert all(row["labels"] == row["input_ids"] and row["doc_lengths"] == [4] for row in rows)


def test_stream_shorter_than_a_block_gives_no_rows():
    assert pack_stream([_doc(0, 3)], seq_len=4) == []


def test_records_are_packed_whole_and_every_token_is_kept():
    records = [_doc(i * 100, length, masked=2) for i, length in enumerate([7, 3, 5, 2, 8, 1, 4])]
    rows = pack_records(records, seq_len=8)
    assert all(len(row["input_ids"]) <= 8 for row in rows)
    assert sum(len(row["input_ids"]) for row in rows) == 30
    assert len(rows) == 4  # 30 tokens need at least ceil(30/8) = 4 rows: best fit reaches it
    seen = []
    for row in rows:
        assert sum(row["doc_lengths"]) == len(row["input_ids"]) == len(row["labels"])
        start = 0
        for length in row["doc_lengths"]:
            piece = row["input_ids"][start : start + length]
            assert piece == list(range(piece[0], piece[0] + length))  # one whole record
            assert row["labels"][start : start + 2] == [IGNORE_INDEX] * min(2, length)
            seen.append(piece[0] // 100)
            start += length
    assert sorted(seen) == list(range(7))


def test_record_packing_is_deterministic():
    records = [_doc(i * 10, 1 + (i * 7) % 5) for i in range(40)]
    assert pack_records(records, seq_len=9) == pack_records(records, seq_len=9)
