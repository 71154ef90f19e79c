"""Documents in: python-docs, a local file (.jsonl, .json, .csv, .parquet, .txt) or a hub dataset,
read as one row per document, their format detected and every record checked."""

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lora_study.cache import file_sha256
from lora_study.config import DataConfig
from lora_study.data.templates import present
from lora_study.data.text_files import read_utf8
from lora_study.errors import UserInputError

PYTHON_DOCS = "python-docs"
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


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
