"""Data: documents in (`documents`), packed token rows out (`prepared`), split by document,
decontaminated (`contamination`), packed (`packing`), rendered by prompt templates (`templates`),
and grouped with `--group-by` (`groups`).

What the rest of lora-study uses is offered here: `prepare` and `load_prepared` with the
`PreparedData` and `PreparedMeta` they give, and `read_documents` with its `Documents`.
"""

from lora_study.data.documents import Documents, read_documents
from lora_study.data.prepared import PreparedData, PreparedMeta, check_tokenizer, load_prepared, prepare, preview

__all__ = [
    "Documents",
    "PreparedData",
    "PreparedMeta",
    "check_tokenizer",
    "load_prepared",
    "prepare",
    "preview",
    "read_documents",
]
