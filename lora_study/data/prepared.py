"""Prepared data: documents in, packed token rows out, split by document, cached.

The steps, in order: read the documents (`documents`: python-docs, a local file or a hub dataset)
-> detect their format -> split them by document with a seed -> render and tokenize each, with labels only
where the loss belongs -> take out of the training side every span of `decontaminate_ngram`
tokens that also occurs in validation or test (`contamination`) -> pack them into `seq_len`
rows -> cache. `prepare` is the whole of it;
`load_prepared` reads a result back, from a folder or a `prepare` run.
"""

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lora_study import models, tracking
from lora_study.cache import build_once, cache_root
from lora_study.config import DataConfig
from lora_study.data import groups
from lora_study.data.contamination import OFF, decontaminate
from lora_study.data.documents import Documents, check_records, detect_format, read_documents
from lora_study.data.packing import IGNORE_INDEX
from lora_study.data.splits import held_out_records, pack_splits, split_indices, summed, tokenize_splits
from lora_study.data.templates import present
from lora_study.errors import UserInputError
from lora_study.names import (
    ARTIFACT_DATA,
    METRIC_DROPPED_DOCUMENTS,
    METRIC_GROUPS,
    METRIC_SKIPPED_GROUPS,
    SPLITS,
)

PREPARE_VERSION = 2  # part of the cache key: bump it when the same inputs give other rows
META_FILE = "meta.json"
GROUPS_FOLDER = "groups"  # of data prepared with --group-by: a prepared folder per group, by its key


@dataclass(frozen=True)
class PreparedMeta:
    """What a prepared folder holds (its `meta.json`): the inputs it was made from, and its counts."""

    version: int  # PREPARE_VERSION when it was written
    digest: str  # of everything that made the rows: the cache key, logged as `dataset_digest`
    dataset: str  # --dataset as given
    source_digest: str  # of the documents read
    format: str  # text, instruction or chat
    seq_len: int
    seed: int
    base_model: str  # whose tokenizer made the token ids
    tokenizer_digest: str
    # the split settings besides seq_len and seed: `comparability` names them when two differ
    # (None in data prepared before they were recorded)
    val_fraction: float | None = None
    test_fraction: float | None = None
    decontaminate_ngram: int | None = None
    max_samples: int | None = None
    decontamination: str = ""  # how shared spans left the training side (`contamination`)
    counts: dict[str, int] = field(default_factory=dict)  # prepare's metrics: documents, tokens, rows per split
    documents: dict[str, list[int]] = field(default_factory=dict)  # split -> the documents (indices) it holds
    group_by: str = ""  # with --group-by: the column
    group: str = ""  # of one group's folder: its value ...
    group_key: str = ""  # ... and its key (`groups`)
    # of the pooled folder: key -> {value, documents, and `skipped` (why) or `digest`, `counts`}
    groups: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> "PreparedMeta":
        recorded = json.loads(path.read_text())
        fields = dataclasses.fields(cls)
        required = [
            f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [name for name in required if name not in recorded]
        if missing:
            raise UserInputError(f"--data: {path} lacks {', '.join(missing)}; prepare the data again")
        return cls(**{f.name: recorded[f.name] for f in fields if f.name in recorded})

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1))


@dataclass(frozen=True)
class PreparedData:
    """A folder of packed splits (`<split>.parquet`) and the `meta.json` that describes them."""

    path: Path
    meta: PreparedMeta

    def rows(self, split: str) -> list[dict]:
        import pyarrow.parquet as pq

        return pq.read_table(self.path / f"{split}.parquet").to_pylist()

    @property
    def groups(self) -> dict[str, dict]:
        """Of data prepared with --group-by: key -> {value, documents, and `skipped` (why) or `digest`, `counts`}."""
        return self.meta.groups

    def group(self, key: str) -> "PreparedData":
        """One group's own splits, prepared data like any other."""
        return load_prepared(str(self.path / GROUPS_FOLDER / key))


# --- prepare, cached -----------------------------------------------------------------------


def prepare(data: DataConfig, ref: models.BaseModelRef, tokenizer) -> tuple[PreparedData, Documents]:
    """Prepared splits for these inputs: from the cache when the same inputs ran before."""
    documents = read_documents(data)
    fmt = detect_format(data, list(documents.frame.columns))
    tokenizer_digest = models.tokenizer_digest(tokenizer)
    key = _cache_key(data, fmt, documents.digest, tokenizer_digest)
    target = cache_root() / "prepared" / key[:16]
    meta = PreparedMeta(
        version=PREPARE_VERSION,
        digest=key,
        dataset=data.dataset,
        source_digest=documents.digest,
        format=fmt,
        seq_len=data.seq_len,
        seed=data.split_seed,
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
    inputs["seed"] = inputs.pop("split_seed")  # its name before the training seed had one: the same digest
    inputs.update(version=PREPARE_VERSION, format=fmt, source=source_digest, tokenizer=tokenizer_digest)
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _write_prepared(folder: Path, meta: PreparedMeta, data: DataConfig, documents: Documents, tokenizer):
    if data.group_by:
        _write_groups(folder, meta, data, documents, tokenizer)
        return
    fmt = meta.format
    usable = check_records(documents, fmt, data)
    splits = split_indices(usable, data)
    tokenized = tokenize_splits(documents, splits, fmt, data, tokenizer)
    clean = decontaminate(
        tokenized["train"], held_out_records(tokenized), data.decontaminate_ngram, whole_records=fmt != "text"
    )
    rows, counts = pack_splits(
        splits, {**tokenized, "train": clean.records}, clean, fmt, data, f"--dataset {data.dataset}"
    )
    counts[METRIC_DROPPED_DOCUMENTS] += len(documents.frame) - len(usable)
    _write_rows(folder, rows, dataclasses.replace(meta, decontamination=clean.method, counts=counts, documents=splits))


def _write_rows(folder: Path, rows: dict[str, list[dict]], meta: PreparedMeta) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        pq.write_table(pa.Table.from_pylist(split_rows), folder / f"{split}.parquet")
    meta.write(folder / META_FILE)


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


def _write_groups(folder: Path, meta: PreparedMeta, data: DataConfig, documents: Documents, tokenizer) -> None:
    """Each group split by document on its own and written under `groups/<key>`; every group's
    training side decontaminated against every group's validation and test documents; the
    groups' rows together at the top, as one data set (the sweep's, with `--group-by`)."""
    fmt = meta.format
    usable = check_records(documents, fmt, data)
    members = group_members(documents, usable, data.group_by)
    described, splits = {}, {}
    for key, (value, indices) in members.items():
        described[key] = {"value": value, "documents": len(indices)}
        try:
            splits[key] = split_indices(indices, data)
        except UserInputError:
            described[key]["skipped"] = f"{len(indices)} document(s): too few to split into train, validation and test"
    tokenized = {key: tokenize_splits(documents, chosen, fmt, data, tokenizer) for key, chosen in splits.items()}
    held_out = [record for parts in tokenized.values() for record in held_out_records(parts)]
    pooled = {split: [] for split in SPLITS}
    method = OFF
    for key, chosen in splits.items():
        value = members[key][0]
        clean = decontaminate(tokenized[key]["train"], held_out, data.decontaminate_ngram, whole_records=fmt != "text")
        method = clean.method
        try:
            rows, counts = pack_splits(chosen, {**tokenized[key], "train": clean.records}, clean, fmt, data)
        except UserInputError as error:
            described[key]["skipped"] = error.problems[0]
            continue
        digest = hashlib.sha256(f"{meta.digest}:{key}".encode()).hexdigest()
        own = dataclasses.replace(
            meta,
            digest=digest,
            group_by=data.group_by,
            group=value,
            group_key=key,
            decontamination=clean.method,
            counts=counts,
            documents=chosen,
        )
        _write_rows(folder / GROUPS_FOLDER / key, rows, own)
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
    counts = summed([described[key]["counts"] for key in trained])
    counts[METRIC_DROPPED_DOCUMENTS] += len(documents.frame) - len(usable)
    counts.update({METRIC_GROUPS: len(trained), METRIC_SKIPPED_GROUPS: len(described) - len(trained)})
    documents_of = {split: sorted(i for key in trained for i in splits[key][split]) for split in SPLITS}
    top = dataclasses.replace(
        meta,
        decontamination=method,
        counts=counts,
        documents=documents_of,
        group_by=data.group_by,
        groups=described,
    )
    _write_rows(folder, pooled, top)


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
    return PreparedData(path, PreparedMeta.read(path / META_FILE))


def check_tokenizer(prepared: PreparedData, tokenizer_digest: str, base_model: str) -> None:
    """Token ids mean nothing under another tokenizer: refuse data prepared with one."""
    if prepared.meta.tokenizer_digest != tokenizer_digest:
        raise UserInputError(
            f"--data: prepared with the tokenizer of `{prepared.meta.base_model}`, not that of "
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
