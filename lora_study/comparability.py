"""When two test perplexities compare: both were measured on the same tokens by the same base.

A test perplexity is measured on the test split of prepared data, by the base model under the
adapter. Two of them compare only when they share all of it:
- the base weights: its name and sha256 (or hub revision), and the quantization it was loaded
  with for the measurement;
- the test split: the dataset and its digest, the split settings (seed, fractions, sequence
  length, decontamination, how many documents were read) and, for `--group-by` data, the group.

The prepared data's digest covers the data side whole (it is `prepare`'s cache key, tokenizer
included); the named fields say which part differs. The sweep (`challenger`), `promote` and the
report all ask `differences`; a version keeps its basis as a tag, as JSON, beside the perplexity.
"""

import hashlib
import json
from dataclasses import asdict, dataclass, fields

# Field -> how a difference in it reads, in the order a person checks them.
WORDS = {
    "base_model": "base model",
    "base_weights": "base weights",
    "quantization": "quantization of the evaluation base",
    "dataset": "dataset",
    "dataset_digest": "dataset digest",
    "group": "group",
    "seq_len": "seq_len",
    "seed": "split seed",
    "val_fraction": "val_fraction",
    "test_fraction": "test_fraction",
    "decontaminate_ngram": "decontaminate_ngram",
    "max_samples": "max_samples",
}


@dataclass(frozen=True)
class Basis:
    """What a test perplexity was measured on."""

    base_model: str
    base_weights: str  # sha256 of the source weights, or `revision <hub commit>`; "" if neither is known
    quantization: str  # none | 8bit | 4bit
    dataset: str
    dataset_digest: str  # of the source documents
    group: str  # the group's key, of `--group-by` data; "" for the whole data set
    seq_len: int | None
    seed: int | None
    val_fraction: float | None  # None: prepared before the prepared data recorded it
    test_fraction: float | None
    decontaminate_ngram: int | None
    max_samples: int | None
    prepared_digest: str  # every data setting above, and the tokenizer

    @classmethod
    def of(cls, meta: dict, ref, quantization: str) -> "Basis":
        """The basis of a measurement on prepared data `meta` (`PreparedData.meta`) by the base
        `ref` (a `BaseModelRef` or `AdapterReference`: name, sha256, revision) loaded `quantization`."""
        weights = ref.sha256 or (f"revision {ref.revision}" if ref.revision else "")
        return cls(
            base_model=ref.name,
            base_weights=weights,
            quantization=quantization,
            dataset=meta["dataset"],
            dataset_digest=meta.get("source_digest", ""),
            group=meta.get("group_key", ""),
            seq_len=meta.get("seq_len"),
            seed=meta.get("seed"),
            val_fraction=meta.get("val_fraction"),
            test_fraction=meta.get("test_fraction"),
            decontaminate_ngram=meta.get("decontaminate_ngram"),
            max_samples=meta.get("max_samples"),
            prepared_digest=meta["digest"],
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "Basis | None":
        """The basis a version's tag holds; None for a version without one (or a garbled one)."""
        try:
            values = json.loads(text or "")
            return cls(**{f.name: values.get(f.name) for f in fields(cls)})
        except (ValueError, TypeError, AttributeError):
            return None

    @property
    def key(self) -> str:
        """A short name for this basis: versions with the same key were measured on the same data."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:8]

    def describe(self) -> str:
        """`python-docs (sha256 5f3e1a2b), seq_len 256, seed 0, val/test 0.1/0.1, decontaminate_ngram 50;
        base smollm2-135m (sha256 9a8b7c6d), quantization none`."""
        data = f"{self.dataset} ({_short(self.dataset_digest)})"
        if self.group:
            data += f", group {self.group}"
        data += f", seq_len {self.seq_len}, seed {self.seed}"
        if self.test_fraction is not None:
            data += (
                f", val/test {self.val_fraction}/{self.test_fraction}, decontaminate_ngram {self.decontaminate_ngram}"
            )
        if self.max_samples:
            data += f", max_samples {self.max_samples}"
        base = f"{self.base_model} ({_short(self.base_weights)}), quantization {self.quantization}"
        return f"{data}; base {base}"


def differences(mine: Basis, theirs: Basis) -> list[str]:
    """What keeps two measurements apart, one phrase per field (`seq_len 32 vs 64`); empty when
    they compare. A field one side did not record is not held against it: the prepared data's
    digest still tells the data apart."""
    found = []
    for name, words in WORDS.items():
        a, b = getattr(mine, name), getattr(theirs, name)
        if a is not None and b is not None and a != b:
            found.append(f"{words} {_shown(name, a)} vs {_shown(name, b)}")
    if not found and mine.prepared_digest != theirs.prepared_digest:
        found.append(f"prepared data {_short(mine.prepared_digest)} vs {_short(theirs.prepared_digest)}")
    return found


def _shown(name: str, value) -> str:
    if name in ("dataset_digest", "base_weights"):
        return _short(value)
    return repr(value) if value == "" else str(value)


def _short(digest: str) -> str:
    """A digest as a person compares it by eye: its first 8 characters."""
    if not digest:
        return "unknown"
    if digest.startswith("revision "):
        return digest[: len("revision ") + 8]
    return f"sha256 {digest[:8]}"
