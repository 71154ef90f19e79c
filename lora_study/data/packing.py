"""Packing tokenized documents into rows of at most `seq_len` tokens, without padding waste.

Two ways, one per kind of data:
- plain text: concatenate every document (each ends with EOS) and cut the stream into full
  `seq_len` blocks; a block may span documents, as in GPT pre-training.
- instruction and chat records: a record must see only itself, so whole records are packed
  into rows (best-fit decreasing) and each row keeps the lengths of its records, from which
  training builds a block-diagonal causal mask.

A row is a dict with `input_ids`, `labels` (-100 where no loss is taken) and `doc_lengths`.
"""

import bisect

IGNORE_INDEX = -100  # labels with this value carry no loss (torch's cross_entropy default)


def pack_stream(documents: list[tuple[list[int], list[int]]], seq_len: int) -> list[dict]:
    """Concatenate (input_ids, labels) documents and cut full blocks; the tail is dropped."""
    ids = [token for doc_ids, _ in documents for token in doc_ids]
    labels = [label for _, doc_labels in documents for label in doc_labels]
    return [
        {
            "input_ids": ids[start : start + seq_len],
            "labels": labels[start : start + seq_len],
            "doc_lengths": [seq_len],
        }
        for start in range(0, len(ids) - seq_len + 1, seq_len)
    ]


def pack_records(records: list[tuple[list[int], list[int]]], seq_len: int) -> list[dict]:
    """Pack whole records (each at most `seq_len` tokens) into as few rows as fit them.

    Best-fit decreasing: longest record first, into the fullest row that still has room.
    Ties keep input order, so the packing is deterministic.
    """
    order = sorted(range(len(records)), key=lambda i: -len(records[i][0]))
    rows: list[list[int]] = []  # record indices per row
    free: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for index in order:
        length = len(records[index][0])
        if length > seq_len:
            raise ValueError(f"record {index} has {length} tokens, more than seq_len {seq_len}")
        slot = bisect.bisect_left(free, (length, -1))
        if slot == len(free):
            rows.append([index])
            bisect.insort(free, (seq_len - length, len(rows) - 1))
            continue
        room, row = free.pop(slot)
        rows[row].append(index)
        bisect.insort(free, (room - length, row))
    return [_join([records[i] for i in row]) for row in rows]


def _join(records: list[tuple[list[int], list[int]]]) -> dict:
    return {
        "input_ids": [token for ids, _ in records for token in ids],
        "labels": [label for _, labels in records for label in labels],
        "doc_lengths": [len(ids) for ids, _ in records],
    }


def records(row: dict):
    """The (input_ids, labels) of each record a packed row holds, in order."""
    start = 0
    for length in row["doc_lengths"]:
        yield row["input_ids"][start : start + length], row["labels"][start : start + length]
        start += length


def collate(rows: list[dict], pad_id: int) -> dict:
    """Model inputs for a batch of packed rows, with next-token `targets`.

    Position ids restart at each record. A row holding several records gets a block-diagonal
    causal mask: with SDPA, position ids alone do not stop one record attending to another.
    Padding at a row's end forms a block of its own (a query that may attend to nothing would
    give NaN). A record's last token predicts nothing: the next token belongs to another record.
    """
    import torch

    length = max(len(row["input_ids"]) for row in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), length), dtype=torch.long)
    blocks = torch.zeros((len(rows), length), dtype=torch.long)
    for b, row in enumerate(rows):
        size = len(row["input_ids"])
        input_ids[b, :size] = torch.tensor(row["input_ids"])
        targets[b, : size - 1] = torch.tensor(row["labels"][1:])
        start = 0
        for block, doc_length in enumerate([*row["doc_lengths"], length - size]):
            positions[b, start : start + doc_length] = torch.arange(doc_length)
            blocks[b, start : start + doc_length] = block
            start += doc_length
            targets[b, start - 1] = IGNORE_INDEX
    packed = any(len(row["doc_lengths"]) > 1 or len(row["input_ids"]) < length for row in rows)
    mask = None
    if packed:
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        mask = ((blocks[:, :, None] == blocks[:, None, :]) & causal)[:, None]
    return {
        "input_ids": input_ids,
        "position_ids": positions,
        "attention_mask": mask,
        "targets": targets,
        "tokens": sum(len(row["input_ids"]) for row in rows),
    }
