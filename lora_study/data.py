"""Data: documents in, packed token rows out, split by document, cached.

The steps, in order: read the documents (python-docs, a local file or a hub dataset) -> detect
their format -> split them by document with a seed -> render and tokenize each, with labels only
where the loss belongs -> take out of the training side every span of `decontaminate_ngram`
tokens that also occurs in validation or test (`contamination`) -> pack them into `seq_len`
rows -> cache. `prepare` is the whole of it;
`load_prepared` reads a result back, from a folder or a `prepare` run.
"""

import hashlib
import io
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lora_study import groups, models, packing, tracking
from lora_study.cache import build_once, cache_root, file_sha256
from lora_study.config import DataConfig
from lora_study.contamination import OFF, decontaminate
from lora_study.errors import UserInputError
from lora_study.packing import IGNORE_INDEX
from lora_study.templates import present, render
from lora_study.text_files import read_utf8
from lora_study.tracking import (
    ARTIFACT_DATA,
    METRIC_CONTAMINATED_DOCUMENTS,
    METRIC_DOCUMENTS,
    METRIC_DROPPED_DOCUMENTS,
    METRIC_GROUPS,
    METRIC_LOSS_TOKENS,
    METRIC_REMOVED_TRAIN_TOKENS,
    METRIC_ROWS,
    METRIC_SKIPPED_GROUPS,
    METRIC_TOKENS,
    METRIC_TRUNCATED_DOCUMENTS,
    SPLITS,
)

PYTHON_DOCS = "python-docs"
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
PREPARE_VERSION = 2  # part of the cache key: bump it when the same inputs give other rows
META_FILE = "meta.json"
GROUPS_FOLDER = "groups"  # of data prepared with --group-by: a prepared folder per group, by its key


@dataclass(frozen=True)
class Documents:
    """The raw documents read, one row each, and where they came from."""

    frame: pd.DataFrame
    name: str
    digest: str  # of the content read
    source: dict  # where they were read: `tracking.dataset_source(**source)`
    lines: tuple[int, ...] = ()  # of a .jsonl file: the line each record was read from

    def where(self, index: int) -> str:
        """Record `index` as a person finds it in the file: its line, or its position."""
        return f"{self.name}, line {self.lines[index]}" if self.lines else f"{self.name}, record {index + 1}"


@dataclass(frozen=True)
class PreparedData:
    """A folder of packed splits (`<split>.parquet`) and the `meta.json` that describes them."""

    path: Path
    meta: dict

    def rows(self, split: str) -> list[dict]:
        import pyarrow.parquet as pq

        return pq.read_table(self.path / f"{split}.parquet").to_pylist()

    @property
    def groups(self) -> dict[str, dict]:
        """Of data prepared with --group-by: key -> {value, documents, and `skipped` (why) or `digest`, `counts`}."""
        return self.meta.get("groups", {})

    def group(self, key: str) -> "PreparedData":
        """One group's own splits, prepared data like any other."""
        return load_prepared(str(self.path / GROUPS_FOLDER / key))


# --- reading documents ---------------------------------------------------------------------


def read_documents(cfg: DataConfig) -> Documents:
    if cfg.dataset == PYTHON_DOCS:
        documents = _read_python_docs()
    else:
        path = Path(cfg.dataset).expanduser()
        if path.is_dir():
            raise UserInputError(
                f"--dataset: {cfg.dataset} is a directory; pass one file in it ({', '.join(FILE_SUFFIXES)})"
            )
        if path.is_file():
            documents = _read_file(path)
        elif path.suffix in FILE_SUFFIXES or cfg.dataset.startswith((".", "/", "~")):
            raise UserInputError(f"--dataset: file {cfg.dataset} does not exist")
        else:
            documents = _read_hub(cfg)
    if cfg.max_samples:
        frame = documents.frame.head(cfg.max_samples)
        documents = Documents(frame, documents.name, documents.digest, documents.source, documents.lines[: len(frame)])
    if documents.frame.empty:
        raise UserInputError(f"--dataset: {cfg.dataset} holds no documents")
    return documents


def _read_python_docs() -> Documents:
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    frame = pd.DataFrame({"title": sorted(topics), "text": [topics[t] for t in sorted(topics)]})
    digest = hashlib.sha256(json.dumps(topics, sort_keys=True).encode()).hexdigest()
    return Documents(frame, PYTHON_DOCS, digest, source={"kind": "local", "uri": pydoc_data.topics.__file__})


def _read_file(path: Path) -> Documents:
    readers = {
        ".jsonl": _read_jsonl,
        ".json": _read_json,
        ".csv": _read_csv,
        ".parquet": _read_parquet,
        ".txt": _read_txt,
    }
    if path.suffix not in readers:
        raise UserInputError(
            f"--dataset: cannot read `{path.suffix}` files ({path}); use one of " + ", ".join(FILE_SUFFIXES)
        )
    frame = readers[path.suffix](path)
    lines = tuple(frame.attrs.pop(LINES, ()))
    return Documents(frame, path.name, file_sha256(path), {"kind": "local", "uri": str(path.resolve())}, lines)


LINES = "lines"  # the frame attribute a .jsonl reader leaves: each record's line number


def _read_jsonl(path: Path) -> pd.DataFrame:
    records, lines = [], []
    for number, line in enumerate(read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserInputError(
                f"{path}, line {number}: not valid JSON ({error.msg} at column {error.colno}); "
                "each line of a .jsonl file must be one JSON object"
            ) from None
        except RecursionError:
            raise UserInputError(f"{path}, line {number}: JSON nested too deeply to read") from None
        if not isinstance(record, dict):
            raise UserInputError(f"{path}, line {number}: expected a JSON object, got {line[:40]!r}")
        records.append(record)
        lines.append(number)
    frame = pd.DataFrame.from_records(records)
    frame.attrs[LINES] = lines
    return frame


def _read_json(path: Path) -> pd.DataFrame:
    try:
        content = json.loads(read_utf8(path))
    except json.JSONDecodeError as error:
        raise UserInputError(
            f"{path}, line {error.lineno}: not valid JSON ({error.msg} at column {error.colno})"
        ) from None
    except RecursionError:
        raise UserInputError(f"{path}: JSON nested too deeply to read") from None
    if isinstance(content, list) and all(isinstance(record, dict) for record in content):
        return pd.DataFrame.from_records(content)
    raise UserInputError(f"{path}: expected a JSON array of objects (or use a .jsonl file)")


def _read_csv(path: Path) -> pd.DataFrame:
    text = read_utf8(path)
    try:
        return pd.read_csv(io.StringIO(text), dtype=str)  # text stays text: "007" is not the number 7
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except pd.errors.ParserError as error:
        raise UserInputError(f"{path}: not a readable CSV file ({error})".replace("\n", " ")) from None


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise UserInputError(f"{path}: not a readable Parquet file ({error})") from None


def _read_txt(path: Path) -> pd.DataFrame:
    """A plain text file: each paragraph (blank-line separated) is one document."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", read_utf8(path))]
    return pd.DataFrame({"text": [p for p in paragraphs if p]})


def _read_hub(cfg: DataConfig) -> Documents:
    import datasets
    from huggingface_hub import HfApi

    try:  # fails in milliseconds offline, where load_dataset would retry for half a minute
        revision = HfApi().dataset_info(cfg.dataset).sha
    except Exception as error:
        raise UserInputError(
            f"--dataset: cannot reach `{cfg.dataset}` on the Hugging Face hub "
            f"({type(error).__name__}); offline, use `{PYTHON_DOCS}` or a local file "
            f"({', '.join(FILE_SUFFIXES)})"
        ) from None
    split = f"{cfg.split}[:{cfg.max_samples}]" if cfg.max_samples else cfg.split
    try:
        loaded = datasets.load_dataset(cfg.dataset, split=split, revision=revision)
    except ValueError as error:  # an unknown split names the ones there are
        raise UserInputError(f"--split: {error}".replace("\n", " ")) from None
    digest = hashlib.sha256(f"{cfg.dataset}@{revision}:{split}".encode()).hexdigest()
    source = {"kind": "hub", "path": cfg.dataset, "split": split, "revision": revision}
    return Documents(loaded.to_pandas(), cfg.dataset, digest, source)


# --- formats: what a record looks like, and where its loss goes ------------------------------


def detect_format(cfg: DataConfig, columns: list[str]) -> str:
    """Resolve `--format auto` from the columns, and check the columns an explicit one needs."""
    needs = {"chat": ["messages"], "instruction": ["instruction", "output"], "text": [cfg.text_column]}
    fmt = cfg.format
    if fmt == "auto":
        fmt = next((f for f, cols in needs.items() if set(cols) <= set(columns)), None)
        if fmt is None:
            raise UserInputError(
                f"--dataset {cfg.dataset}: no `{cfg.text_column}` column and no instruction or "
                f"chat columns (columns: {', '.join(map(str, columns))}); pass --text-column NAME, "
                "or give `instruction`/`output` or `messages` columns"
            )
    missing = [col for col in needs[fmt] if col not in columns]
    if missing:
        fix = "pass --text-column NAME" if fmt == "text" else "pass another --format"
        raise UserInputError(
            f"--dataset {cfg.dataset}: --format {fmt} needs column(s) {', '.join(missing)} "
            f"(columns: {', '.join(map(str, columns))}); {fix}"
        )
    return fmt


def check_records(documents: Documents, fmt: str, cfg: DataConfig) -> list[int]:
    """Indices of usable records; raise on a malformed record (a chat without an assistant turn,
    a number or a list where text belongs), naming it."""
    fields = {"chat": ["messages"], "instruction": ["instruction", "input", "output"], "text": [cfg.text_column]}[fmt]
    usable = []
    for index, record in enumerate(documents.frame.to_dict("records")):
        if fmt == "chat":
            _check_messages(record["messages"], documents.where(index))
            usable.append(index)
            continue
        for field in fields:
            value = record.get(field)
            if present(value) and not isinstance(value, str):
                raise UserInputError(
                    f"{documents.where(index)}: `{field}` is {type(value).__name__} {_shown(value)}, not text; "
                    "make it a string or leave the record out"
                )
        if fmt == "text" and present(record[cfg.text_column]) and record[cfg.text_column].strip():
            usable.append(index)
        elif fmt == "instruction" and present(record["instruction"]) and present(record["output"]):
            usable.append(index)
    return usable


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_messages(messages, where: str) -> None:
    problem = "`messages` must be a list of {role, content} objects with text content and an assistant turn"
    if not hasattr(messages, "__len__") or isinstance(messages, (str, dict)):
        raise UserInputError(f"{where}: {problem}")
    if not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages):
        raise UserInputError(f"{where}: {problem}")
    if not all(isinstance(m["content"], str) and isinstance(m["role"], str) for m in messages):
        raise UserInputError(f"{where}: {problem}")
    if not any(m["role"] == "assistant" for m in messages):
        raise UserInputError(f"{where}: {problem}")


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


# --- the split -----------------------------------------------------------------------------


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
    random.Random(cfg.seed).shuffle(order)
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


# --- prepare, cached -----------------------------------------------------------------------


def prepare(data: DataConfig, ref: models.BaseModelRef, tokenizer) -> tuple[PreparedData, Documents]:
    """Prepared splits for these inputs: from the cache when the same inputs ran before."""
    documents = read_documents(data)
    fmt = detect_format(data, list(documents.frame.columns))
    tokenizer_digest = models.tokenizer_digest(tokenizer)
    key = _cache_key(data, fmt, documents.digest, tokenizer_digest)
    target = cache_root() / "prepared" / key[:16]
    meta = dict(
        version=PREPARE_VERSION,
        digest=key,
        dataset=data.dataset,
        source_digest=documents.digest,
        format=fmt,
        seq_len=data.seq_len,
        seed=data.seed,
        # the split settings besides seq_len and seed: `comparability` names them when two differ
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        decontaminate_ngram=data.decontaminate_ngram,
        max_samples=data.max_samples,
        base_model=ref.name,
        tokenizer_digest=tokenizer_digest,
    )
    build_once(target, lambda folder: _write_prepared(folder, meta, data, documents, tokenizer))
    return load_prepared(str(target)), documents


def _cache_key(data: DataConfig, fmt: str, source_digest: str, tokenizer_digest: str) -> str:
    # without --group-by, the key (and the digest runs logged) is what it was before the option existed
    inputs = data.model_dump(exclude={"dataset", "format", "split", *([] if data.group_by else ["group_by"])})
    inputs.update(version=PREPARE_VERSION, format=fmt, source=source_digest, tokenizer=tokenizer_digest)
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _write_prepared(folder: Path, meta: dict, data: DataConfig, documents: Documents, tokenizer):
    if data.group_by:
        _write_groups(folder, meta, data, documents, tokenizer)
        return
    fmt = meta["format"]
    usable = check_records(documents, fmt, data)
    splits = _split(usable, data)
    tokenized = _tokenize_splits(documents, splits, fmt, data, tokenizer)
    clean = decontaminate(
        tokenized["train"], _held_out(tokenized), data.decontaminate_ngram, whole_records=fmt != "text"
    )
    rows, counts = _pack_splits(
        splits, {**tokenized, "train": clean.records}, clean, fmt, data, f"--dataset {data.dataset}"
    )
    counts[METRIC_DROPPED_DOCUMENTS] += len(documents.frame) - len(usable)
    _write_rows(folder, rows, {**meta, "decontamination": clean.method, "counts": counts, "documents": splits})


def _split(indices: list[int], data: DataConfig) -> dict[str, list[int]]:
    """`indices` (of documents) split by document with the seed: split -> the documents it holds."""
    return {split: [indices[i] for i in chosen] for split, chosen in split_documents(len(indices), data).items()}


def _tokenize_splits(documents: Documents, splits: dict, fmt: str, data: DataConfig, tokenizer) -> dict[str, list]:
    records = documents.frame.to_dict("records")
    return {
        split: [tokenize(render(records[i], fmt, data.text_column, tokenizer), fmt, tokenizer) for i in indices]
        for split, indices in splits.items()
    }


def _held_out(tokenized: dict[str, list]) -> list:
    return tokenized["validation"] + tokenized["test"]


def _pack_splits(splits: dict, tokenized: dict, clean, fmt: str, data: DataConfig, what: str = ""):
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


def _write_rows(folder: Path, rows: dict[str, list[dict]], meta: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        pq.write_table(pa.Table.from_pylist(split_rows), folder / f"{split}.parquet")
    (folder / META_FILE).write_text(json.dumps(meta, indent=1))


# --- groups (--group-by): a split per group, decontaminated across groups ----------------------


def group_members(documents: Documents, usable: list[int], group_by: str) -> dict[str, tuple[str, list[int]]]:
    """key -> (value, indices of its usable documents), in the order the values first occur."""
    frame = documents.frame
    if group_by not in frame.columns:
        raise UserInputError(
            f"--group-by: no column `{group_by}` in {documents.name} (columns: {', '.join(map(str, frame.columns))})"
        )
    values = frame[group_by].tolist()
    missing = [i for i in usable if not present(values[i]) or not str(values[i]).strip()]
    if missing:
        raise UserInputError(
            f"--group-by {group_by}: {len(missing)} record(s) have no value (first: {documents.where(missing[0])}); "
            "give every record a group, or leave those records out"
        )
    members: dict[str, list[int]] = {}
    for index in usable:
        members.setdefault(str(values[index]).strip(), []).append(index)
    keys = groups.keys_of(list(members))
    return {keys[value]: (value, indices) for value, indices in members.items()}


def _write_groups(folder: Path, meta: dict, data: DataConfig, documents: Documents, tokenizer) -> None:
    """Each group split by document on its own and written under `groups/<key>`; every group's
    training side decontaminated against every group's validation and test documents; the
    groups' rows together at the top, as one data set (the sweep's, with `--group-by`)."""
    fmt = meta["format"]
    usable = check_records(documents, fmt, data)
    members = group_members(documents, usable, data.group_by)
    described, splits = {}, {}
    for key, (value, indices) in members.items():
        described[key] = {"value": value, "documents": len(indices)}
        try:
            splits[key] = _split(indices, data)
        except UserInputError:
            described[key]["skipped"] = f"{len(indices)} document(s): too few to split into train, validation and test"
    tokenized = {key: _tokenize_splits(documents, chosen, fmt, data, tokenizer) for key, chosen in splits.items()}
    held_out = [record for parts in tokenized.values() for record in _held_out(parts)]
    pooled = {split: [] for split in SPLITS}
    method = OFF
    for key, chosen in splits.items():
        value = members[key][0]
        clean = decontaminate(tokenized[key]["train"], held_out, data.decontaminate_ngram, whole_records=fmt != "text")
        method = clean.method
        try:
            rows, counts = _pack_splits(chosen, {**tokenized[key], "train": clean.records}, clean, fmt, data)
        except UserInputError as error:
            described[key]["skipped"] = error.problems[0]
            continue
        digest = hashlib.sha256(f"{meta['digest']}:{key}".encode()).hexdigest()
        own = {**meta, "digest": digest, "group_by": data.group_by, "group": value, "group_key": key}
        _write_rows(
            folder / GROUPS_FOLDER / key,
            rows,
            {**own, "decontamination": clean.method, "counts": counts, "documents": chosen},
        )
        described[key].update(digest=digest, counts=counts)
        for split in SPLITS:
            pooled[split] += rows[split]
    trained = [key for key, group in described.items() if "skipped" not in group]
    if not trained:
        largest = max(len(indices) for _, indices in members.values())
        raise UserInputError(
            f"--group-by {data.group_by}: none of the {len(members)} group(s) has data enough for train, validation "
            f"and test splits (the largest has {largest} document(s)); group the records more coarsely or add data"
        )
    counts = _summed([described[key]["counts"] for key in trained])
    counts[METRIC_DROPPED_DOCUMENTS] += len(documents.frame) - len(usable)
    counts.update({METRIC_GROUPS: len(trained), METRIC_SKIPPED_GROUPS: len(described) - len(trained)})
    documents_of = {split: sorted(i for key in trained for i in splits[key][split]) for split in SPLITS}
    top = {**meta, "decontamination": method, "counts": counts, "documents": documents_of}
    _write_rows(folder, pooled, {**top, "group_by": data.group_by, "groups": described})


def _summed(counts: list[dict[str, int]]) -> dict[str, int]:
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


def load_prepared(uri: str) -> PreparedData:
    """Prepared data from a folder, or from a `prepare` run: `runs:/<run_id>` (or `.../data`)."""
    if uri.startswith("runs:/"):
        if uri.rstrip("/").count("/") == 1:
            uri = f"{uri.rstrip('/')}/{ARTIFACT_DATA}"
        try:
            uri = tracking.download(uri)
        except Exception as error:
            raise UserInputError(f"--data: cannot fetch {uri} ({type(error).__name__}: {error})") from None
    path = Path(uri).expanduser()
    if not (path / META_FILE).exists():
        raise UserInputError(
            f"--data: {uri} holds no prepared data ({META_FILE} missing); pass `runs:/<id>` of a "
            "`prepare` run or the folder it wrote"
        )
    return PreparedData(path, json.loads((path / META_FILE).read_text()))


def check_tokenizer(prepared: PreparedData, tokenizer_digest: str, base_model: str) -> None:
    """Token ids mean nothing under another tokenizer: refuse data prepared with one."""
    if prepared.meta["tokenizer_digest"] != tokenizer_digest:
        raise UserInputError(
            f"--data: prepared with the tokenizer of `{prepared.meta['base_model']}`, not that of "
            f"`{base_model}`; prepare it again with --base-model {base_model}"
        )


# --- a look at the rows ---------------------------------------------------------------------


def preview(prepared: PreparedData, tokenizer, rows_per_split: int = 5) -> pd.DataFrame:
    """A few decoded rows of each split: what the model will read."""
    previews = []
    for split in SPLITS:
        for number, row in enumerate(prepared.rows(split)[:rows_per_split]):
            previews.append(
                {
                    "split": split,
                    "row": number,
                    "tokens": len(row["input_ids"]),
                    "loss_tokens": sum(label != IGNORE_INDEX for label in row["labels"]),
                    "documents": len(row["doc_lengths"]),
                    "text": tokenizer.decode(row["input_ids"][:200]),
                }
            )
    return pd.DataFrame(previews)
