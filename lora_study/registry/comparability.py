"""When two test perplexities compare: both were measured on the same tokens by the same base.

A test perplexity is measured on the test split of prepared data, by the base model under the
adapter. Two of them compare only when they share all of it:
- the base weights: their sha256 (or hub revision; the name, if neither is known), and the
  quantization the base was loaded with for the measurement;
- the test split: the prepared data's digest, which is `prepare`'s cache key and so covers the
  documents (their digest, not the path they were read from), the split settings (seed, fractions,
  sequence length, decontamination, how many documents were read), the group of `--group-by`
  data, and the tokenizer.

That is `Basis.key`: the same key, the same test data. `differences` names what differs, field by
field, for a person to read. The sweep (`challenger`), `promote`, `versions` and the report all
ask it; a version keeps its basis as a tag, as JSON, beside the perplexity.
"""

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lora_study.data import PreparedMeta
from lora_study.names import (
    PARAM_BASE_MODEL,
    PARAM_BASE_MODEL_REVISION,
    PARAM_BASE_MODEL_SHA256,
    PARAM_DATASET,
    PARAM_DATASET_DIGEST,
    PARAM_QUANTIZATION,
    PARAM_SPLIT_SEED,
    PARAM_SPLIT_SEED_BEFORE,
)

# Field -> how a difference in it reads, in the order a person checks them. The dataset's name is
# not among them: the same documents read from another path are the same test data.
WORDS = {
    "base_model": "base model",
    "base_weights": "base weights",
    "quantization": "quantization of the evaluation base",
    "dataset_digest": "dataset",
    "group": "group",
    "seq_len": "seq_len",
    "seed": "split seed",
    "val_fraction": "val_fraction",
    "test_fraction": "test_fraction",
    "decontaminate_ngram": "decontaminate_ngram",
    "max_samples": "max_samples",
}
# The data settings a run logs under their own names (`DataConfig`), read back for `from_params`.
SETTINGS = {
    "seq_len": int,
    "seed": int,
    "val_fraction": float,
    "test_fraction": float,
    "decontaminate_ngram": int,
    "max_samples": int,
}
NOT_RECORDED = "the test data of one of them is not recorded"


@dataclass(frozen=True)
class Basis:
    """What a test perplexity was measured on. A field None is not known (a version registered
    before versions recorded it); the digests still tell such data apart."""

    base_model: str
    base_weights: str  # sha256 of the source weights, or `revision <hub commit>`; "" if neither is known
    quantization: str  # none | 8bit | 4bit
    dataset: str  # where the documents were read from, as given (shown, not compared)
    dataset_digest: str | None  # of the documents
    group: str | None  # the group's key, of `--group-by` data; "" for the whole data set
    seq_len: int | None
    seed: int | None
    val_fraction: float | None
    test_fraction: float | None
    decontaminate_ngram: int | None
    max_samples: int | None
    prepared_digest: str  # all of the data side

    @classmethod
    def of(cls, meta: "PreparedMeta", ref, quantization: str) -> "Basis":
        """The basis of a measurement on prepared data `meta` (`PreparedData.meta`) by the base
        `ref` (a `BaseModelRef` or `AdapterReference`: name, sha256, revision) loaded `quantization`."""
        return cls(
            base_model=ref.name,
            base_weights=_weights(ref.sha256, ref.revision),
            quantization=quantization,
            dataset=meta.dataset,
            dataset_digest=meta.source_digest,
            group=meta.group_key,
            **{name: getattr(meta, name) for name in SETTINGS},
            prepared_digest=meta.digest,
        )

    @classmethod
    def from_params(cls, params: dict[str, str], group: str | None) -> "Basis | None":
        """The basis of a measurement on the data a `train` (or trial) run logged: for a version
        registered before versions recorded it, whose test perplexity was measured on that run's
        test split. None if the run did not log its data's digest."""
        if PARAM_DATASET_DIGEST not in params:
            return None
        params = {PARAM_SPLIT_SEED_BEFORE: params.get(PARAM_SPLIT_SEED), **params}  # runs before the rename hold it
        return cls(
            base_model=params.get(PARAM_BASE_MODEL, ""),
            base_weights=_weights(params.get(PARAM_BASE_MODEL_SHA256), params.get(PARAM_BASE_MODEL_REVISION)),
            quantization=params.get(PARAM_QUANTIZATION, "none"),
            dataset=params.get(PARAM_DATASET, ""),
            dataset_digest=None,
            group=group,
            **{name: kind(params[name]) if params.get(name) else None for name, kind in SETTINGS.items()},
            prepared_digest=params[PARAM_DATASET_DIGEST],
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
        """A short name of the test data and base: the same key, the same test data."""
        identity = [self.prepared_digest, self.base_weights or self.base_model, self.quantization]
        return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:8]

    def describe(self) -> str:
        """`python-docs (sha256 5f3e1a2b), seq_len 256, seed 0, val/test 0.1/0.1, decontaminate_ngram 50;
        base smollm2-135m (sha256 9a8b7c6d), quantization none`."""
        data = f"{self.dataset} ({_short(self.dataset_digest or self.prepared_digest)})"
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


def differences(mine: Basis | None, theirs: Basis | None) -> list[str]:
    """What keeps two measurements apart, one phrase per field (`seq_len 32 vs 64`); empty when
    they compare (the same `key`). A field one side did not record is not named: the digest is."""
    if mine is None or theirs is None:
        return [NOT_RECORDED]
    if mine.key == theirs.key:
        return []
    found = []
    for name, words in WORDS.items():
        a, b = getattr(mine, name), getattr(theirs, name)
        if a is not None and b is not None and a != b:
            found.append(f"{words} {_shown(name, a, mine)} vs {_shown(name, b, theirs)}")
    if not found:
        found.append(f"prepared data {_short(mine.prepared_digest)} vs {_short(theirs.prepared_digest)}")
    return found


def _weights(sha256: str | None, revision: str | None) -> str:
    return sha256 or (f"revision {revision}" if revision else "")


def _shown(name: str, value, basis: Basis) -> str:
    if name == "dataset_digest":
        return f"{basis.dataset} ({_short(value)})"
    if name == "base_weights":
        return _short(value)
    return str(value)


def _short(digest: str | None) -> str:
    """A digest as a person compares it by eye: its first 8 characters."""
    if not digest:
        return "unknown"
    if digest.startswith("revision "):
        return digest[: len("revision ") + 8]
    return f"sha256 {digest[:8]}"
