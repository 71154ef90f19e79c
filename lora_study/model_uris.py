"""Model URIs, parsed once: what a `--model-uri` (or an `--adapters` entry) names.

- `runs:/<run id>/adapter`, or any MLflow model URI: a logged model;
- `models:/<name>/<version>` and `models:/<name>@<alias>`: a registered version;
- `base:<base model>`: a base model with no adapter, measured by the same code as adapters;
- shorthand, in `--adapters` only: `name@alias` and `name@version`.
"""

from dataclasses import dataclass

from lora_study.errors import UserInputError

BASE_SCHEME = "base:"
MODELS_SCHEME = "models:/"
LOGGED_MODEL_PREFIX = "m-"  # models:/m-<id> names a LoggedModel, not a registered model


@dataclass(frozen=True)
class ModelUri:
    uri: str
    base_model: str | None = None  # for `base:`
    registered_model: str | None = None
    version: str | None = None  # as written; an alias leaves it None
    alias: str | None = None

    @property
    def is_base(self) -> bool:
        return self.base_model is not None


def parse(uri: str) -> ModelUri:
    if uri.startswith(BASE_SCHEME):
        return ModelUri(uri, base_model=uri.removeprefix(BASE_SCHEME))
    if not uri.startswith(MODELS_SCHEME) or uri.startswith(MODELS_SCHEME + LOGGED_MODEL_PREFIX):
        return ModelUri(uri)
    name_and_version = uri.removeprefix(MODELS_SCHEME).rstrip("/")
    if "@" in name_and_version:
        name, alias = name_and_version.split("@", 1)
        return ModelUri(uri, registered_model=name, alias=alias)
    name, _, version = name_and_version.partition("/")
    return ModelUri(uri, registered_model=name, version=version)


def from_shorthand(entry: str) -> ModelUri:
    """`name@champion` -> models:/name@champion; `name@3` -> models:/name/3; a URI as it is."""
    if ":" in entry:
        return parse(entry)
    name, at, pointer = entry.rpartition("@")
    if not at or not name or not pointer:
        raise UserInputError(f"--adapters: {entry!r} is not name@alias, name@version or a model URI")
    return parse(f"{MODELS_SCHEME}{name}/{pointer}" if pointer.isdigit() else f"{MODELS_SCHEME}{name}@{pointer}")
