"""From documents to packed rows, split by split: which documents each split holds (by seed), each
record tokenized with labels only where the loss belongs, packed into `seq_len` rows, with the
counts `prepare` logs; a split left without a row is one clear error."""

import random

from lora_study.config import DataConfig
from lora_study.data import packing
from lora_study.data.documents import Documents
from lora_study.data.packing import IGNORE_INDEX
from lora_study.data.templates import render
from lora_study.errors import UserInputError
from lora_study.names import (
    METRIC_CONTAMINATED_DOCUMENTS,
    METRIC_DOCUMENTS,
    METRIC_DROPPED_DOCUMENTS,
    METRIC_LOSS_TOKENS,
    METRIC_REMOVED_TRAIN_TOKENS,
    METRIC_ROWS,
    METRIC_TOKENS,
    METRIC_TRUNCATED_DOCUMENTS,
)


def tokenize(segments: list[tuple[str, bool]], fmt: str, tokenizer) -> tuple[list[int], list[int]]:
    """Token ids and labels of one record; text and instruction records end with EOS."""
    ids, labels = [], []
    for text, trained in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    if fmt != "chat":  # a chat template writes its own end-of-turn tokens
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    return ids, labels


def split_documents(count: int, cfg: DataConfig) -> dict[str, list[int]]:
    """Assign document indices to splits, by seed; a document lands in exactly one split."""
    held_out = {"validation": cfg.val_fraction, "test": cfg.test_fraction}
    sizes = {split: max(1, round(count * share)) for split, share in held_out.items()}
    if count - sum(sizes.values()) < 1:
        raise UserInputError(
            f"--dataset {cfg.dataset}: {count} usable document(s) cannot make train, validation "
            "and test splits; give at least 3 documents (raise --max-samples or use more data)"
        )
    order = list(range(count))
    random.Random(cfg.split_seed).shuffle(order)
    test = order[: sizes["test"]]
    validation = order[sizes["test"] : sizes["test"] + sizes["validation"]]
    train = order[sizes["test"] + sizes["validation"] :]
    return {"train": sorted(train), "validation": sorted(validation), "test": sorted(test)}


def pack_split(records: list[tuple[list[int], list[int]]], fmt: str, seq_len: int):
    """Rows of one split, and how many records were cut to fit `seq_len` or dropped."""
    if fmt == "text":
        return packing.pack_stream(records, seq_len), 0, 0
    fitted = [(ids[:seq_len], labels[:seq_len]) for ids, labels in records]
    kept = [record for record in fitted if any(label != IGNORE_INDEX for label in record[1])]
    truncated = sum(len(ids) > seq_len for ids, _ in records)
    return packing.pack_records(kept, seq_len), truncated, len(fitted) - len(kept)


def split_indices(indices: list[int], data: DataConfig) -> dict[str, list[int]]:
    """`indices` (of documents) split by document with the seed: split -> the documents it holds."""
    return {split: [indices[i] for i in chosen] for split, chosen in split_documents(len(indices), data).items()}


def tokenize_splits(documents: Documents, splits: dict, fmt: str, data: DataConfig, tokenizer) -> dict[str, list]:
    records = documents.frame.to_dict("records")
    return {
        split: [tokenize(render(records[i], fmt, data.text_column, tokenizer), fmt, tokenizer) for i in indices]
        for split, indices in splits.items()
    }


def held_out_records(tokenized: dict[str, list]) -> list:
    return tokenized["validation"] + tokenized["test"]


def pack_splits(splits: dict, tokenized: dict, clean, fmt: str, data: DataConfig, what: str = ""):
    """The packed rows of each split, and their counts; UserInputError (naming `what`, if given)
    when a split is left without a row."""
    prefix = f"{what}: " if what else ""
    counts = {
        METRIC_TRUNCATED_DOCUMENTS: 0,
        METRIC_DROPPED_DOCUMENTS: 0,
        METRIC_CONTAMINATED_DOCUMENTS: clean.contaminated_documents,
        METRIC_REMOVED_TRAIN_TOKENS: clean.removed_train_tokens,
    }
    packed = {}
    for split, indices in splits.items():
        rows, truncated, dropped = pack_split(tokenized[split], fmt, data.seq_len)
        if not rows:
            if split == "train" and clean.removed_train_tokens:
                raise UserInputError(
                    f"{prefix}every training record shares a span of {data.decontaminate_ngram} tokens with "
                    "validation or test data; deduplicate the data, or raise --decontaminate-ngram (0 turns "
                    "the check off)"
                )
            raise UserInputError(prefix + _empty_split_problem(data, fmt, split, tokenized[split]))
        packed[split] = rows
        counts.update(_split_counts(split, len(indices), rows))
        counts[METRIC_TRUNCATED_DOCUMENTS] += truncated
        counts[METRIC_DROPPED_DOCUMENTS] += dropped
    return packed, counts


def summed(counts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for one in counts:
        for name, value in one.items():
            total[name] = total.get(name, 0) + value
    return total


def _empty_split_problem(data: DataConfig, fmt: str, split: str, tokenized) -> str:
    if fmt != "text":
        return (
            f"no {split} record has an answer within --seq-len {data.seq_len} ({len(tokenized)} record(s), all "
            "prompt at that length); raise --seq-len"
        )
    return (
        f"the {split} split holds {sum(len(ids) for ids, _ in tokenized)} tokens, fewer than one --seq-len block "
        f"of {data.seq_len}; lower --seq-len, raise --val-fraction/--test-fraction or add data"
    )


def _split_counts(split: str, documents: int, rows: list[dict]) -> dict[str, int]:
    return {
        METRIC_DOCUMENTS.format(split=split): documents,
        METRIC_TOKENS.format(split=split): sum(len(row["input_ids"]) for row in rows),
        METRIC_LOSS_TOKENS.format(split=split): sum(
            sum(label != IGNORE_INDEX for label in row["labels"]) for row in rows
        ),
        METRIC_ROWS.format(split=split): len(rows),
    }
