"""An adapter as an MLflow model, and any model URI turned into a loaded model.

`mlflow.transformers.log_model` on a PEFT model over a local base copies the whole base
(~500 MB for SmolLM2) and reloads it with the LoRA keys unmatched, so its answers are noise.
Here the model holds the adapter (a few MB) and `base_model.json`, an `AdapterReference`: the
base's name, sha256 or hub revision, quantization and dtype. Loading resolves the base the way
`--base-model` does (cache, bundled GGUF or hub), checks it is the same weights, and applies the
adapter.

The same model class (`AdapterModel`) serves three folders, told apart by their artifacts:
- `adapter` + `base_model`: one adapter, as `train` and `sweep` log it;
- `adapters` (a manifest) + `adapter-<i>` + `base_model`: many adapters on one base, as
  `lora-study serve --adapters` saves it; a request picks one with `adapter`;
- `merged` + `base_model`: the base with an adapter merged in, as `lora-study merge` logs it.
"""

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from lora_study import batching, model_uris, models, registry, serving
from lora_study.cache import build_once, cache_root
from lora_study.errors import UserInputError
from lora_study.tracking import (
    ARTIFACT_ADAPTER,
    ARTIFACT_MERGED,
    METRIC_ADAPTER_SIZE_MB,
    MODEL_BASE_REFERENCE,
    MODEL_KEY_ADAPTER,
    MODEL_KEY_ADAPTERS,
    MODEL_KEY_BASE,
    MODEL_KEY_MERGED,
)

BASE_REFERENCE = MODEL_BASE_REFERENCE
ADAPTERS_MANIFEST = "adapters.json"
# "Models from code" (https://mlflow.org/docs/latest/ml/model/models-from-code/): MLflow keeps
# this file with each model and runs it to rebuild the model, instead of unpickling an object.
MODEL_CODE = "import mlflow\nfrom lora_study.adapters import AdapterModel\n\nmlflow.models.set_model(AdapterModel())\n"
GENERATION_PARAMS = [
    ParamSpec(name, "long" if name == "max_new_tokens" else "double", value)
    for name, value in serving.DEFAULT_PARAMS.items()
]
# One unnamed string column, as MLflow's transformers text-generation flavour has: only then does
# `predict(["..."])` pass MLflow's schema check (a named column refuses a list). MLflow then keeps
# only a frame's first column, and its scoring server refuses `{"inputs": {"prompt": [...]}}`;
# `_accept_prompt_dict` keeps that request working.
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
# What must be the same for adapters to share one loaded base model.
SHARED_BASE_FIELDS = ("name", "sha256", "revision", "trust_remote_code", "quantization", "dtype")


# --- the reference to the base -----------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterReference:
    """What an adapter was trained on, as `base_model.json` holds it."""

    name: str  # the `--base-model` value
    sha256: str | None  # of the source weights (bundled and local models)
    revision: str | None  # hub commit (hub models)
    trust_remote_code: bool
    quantization: str  # none | 8bit | 4bit
    dtype: str  # of the frozen base weights that are not quantized: float32, bfloat16, float16
    prompt_format: str  # text | instruction | chat: how a user's prompt is wrapped
    merged_from: str | None = None  # for a merged model: the adapter URI it was made from
    tokenizer_digest: str | None = None  # of the tokenizer it was trained with; None in models logged before

    @classmethod
    def of(
        cls,
        ref: models.BaseModelRef,
        quantization: str,
        dtype: torch.dtype,
        prompt_format: str,
        tokenizer_digest: str | None = None,
    ):
        dtype_name = str(dtype).removeprefix("torch.")
        return cls(
            ref.name,
            ref.sha256,
            ref.revision,
            ref.trust_remote_code,
            quantization,
            dtype_name,
            prompt_format,
            tokenizer_digest=tokenizer_digest,
        )

    @classmethod
    def read(cls, path) -> "AdapterReference":
        """The reference in `path`; keys a later lora-study added are left out."""
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in json.loads(Path(path).read_text()).items() if key in known})

    def write(self, path) -> None:
        Path(path).write_text(json.dumps(self.as_dict(), indent=1))

    def as_dict(self) -> dict:
        fields = dataclasses.asdict(self)
        optional = ("merged_from", "tokenizer_digest")  # left out when unknown, as before they existed
        return {key: value for key, value in fields.items() if key not in optional or value is not None}

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def weights(self) -> str:
        """`quantized`, or the weights' dtype: what sets a merge's tolerance."""
        return "quantized" if self.quantization != "none" else self.dtype

    def base(self) -> models.BaseModelRef:
        """The base this names, resolved and checked to be the same weights."""
        ref = models.resolve(self.name, self.trust_remote_code)
        if self.sha256 and ref.sha256 != self.sha256:
            raise ValueError(
                f"base model `{self.name}` resolves to weights with sha256 {ref.sha256}, but "
                f"the adapter was trained on {self.sha256}"
            )
        return dataclasses.replace(ref, revision=self.revision) if self.revision else ref

    def differences(self, other: "AdapterReference") -> list[str]:
        """The fields that keep two adapters from sharing one loaded base."""
        return [field for field in SHARED_BASE_FIELDS if getattr(self, field) != getattr(other, field)]


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
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
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


def load_with_adapters(reference: AdapterReference, folders: dict[str, str], onto=None):
    """The base `reference` names, resolved once and loaded (or `onto`, already loaded), with every
    adapter (PEFT name -> folder) beside it, the first active; its tokenizer; the resolved base."""
    from peft import PeftModel

    ref = reference.base()
    base = onto if onto is not None else models.load_model(ref, reference.quantization, reference.torch_dtype)
    (first, folder), *others = folders.items()
    model = PeftModel.from_pretrained(base, folder, adapter_name=first)
    for name, other in others:
        model.load_adapter(other, adapter_name=name)
    model.set_adapter(first)
    return model.eval(), models.load_tokenizer(ref), ref


def load_merged(folder: str, reference: AdapterReference):
    """A merged model, a plain transformers folder, loaded as a base model is; and its tokenizer."""
    ref = models.BaseModelRef(reference.name, folder, trust_remote_code=reference.trust_remote_code)
    return models.load_model(ref, "none", reference.torch_dtype).eval(), models.load_tokenizer(ref)


# --- logging and saving models ---------------------------------------------------------------------


def log_adapter(peft_model, reference: AdapterReference):
    """Log the adapter under the active run as the MLflow model `adapter`, and its size."""
    with tempfile.TemporaryDirectory() as folder:
        adapter_dir = Path(folder) / MODEL_KEY_ADAPTER
        peft_model.save_pretrained(adapter_dir)
        mlflow.log_metric(
            METRIC_ADAPTER_SIZE_MB, sum(f.stat().st_size for f in adapter_dir.glob("*.safetensors")) / 2**20
        )
        return _log(ARTIFACT_ADAPTER, folder, {MODEL_KEY_ADAPTER: str(adapter_dir)}, reference, SIGNATURE)


def log_merged(model, tokenizer, reference: AdapterReference, output: Path | None):
    """Log a merged model under the active run as the MLflow model `merged`; copy it to `output`."""
    with tempfile.TemporaryDirectory() as folder:
        merged_dir = Path(folder) / MODEL_KEY_MERGED
        model.save_pretrained(merged_dir)
        tokenizer.save_pretrained(merged_dir)
        if output is not None:
            shutil.copytree(merged_dir, output, dirs_exist_ok=True)
        return _log(ARTIFACT_MERGED, folder, {MODEL_KEY_MERGED: str(merged_dir)}, reference, SIGNATURE)


def _log(name: str, folder: str, artifacts: dict, reference: AdapterReference, signature):
    reference.write(Path(folder) / BASE_REFERENCE)
    with _without_input_example_warning():
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=_model_code(folder),
            artifacts={**artifacts, MODEL_KEY_BASE: str(Path(folder) / BASE_REFERENCE)},
            signature=signature,
            pip_requirements=requirements(reference.quantization),
            metadata={"base_model": reference.as_dict()},
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


def requirements(quantization: str) -> list[str]:
    """What a served model needs installed, pinned to what made it."""
    import peft
    import transformers

    pinned = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"transformers=={transformers.__version__}",
        f"peft=={peft.__version__}",
        f"mlflow=={mlflow.__version__}",
    ]
    if quantization != "none":
        import bitsandbytes

        pinned.append(f"bitsandbytes=={bitsandbytes.__version__}")
    return pinned


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
                pip_requirements=requirements(first.quantization),
                metadata={"base_model": first.as_dict(), "adapters": manifest},
            )

    return build_once(cache_root() / "served" / key, save) / "model"


# --- the served model --------------------------------------------------------------------------------


class AdapterModel(mlflow.pyfunc.PythonModel):
    """Generates text with the base model plus an adapter (or a merged model); temperature 0 is greedy."""

    def load_context(self, context):
        # loaded in a scoring server: its requests too are checked, and parsed as promised
        _refuse_deep_json()
        _accept_prompt_dict()
        max_rows, wait_s = serving.batching_settings()
        _widen_request_threads(max_rows)
        artifacts = context.artifacts
        self.reference = AdapterReference.read(artifacts[MODEL_KEY_BASE])
        if MODEL_KEY_MERGED in artifacts:
            self.adapters = {}
            self.model, self.tokenizer = load_merged(artifacts[MODEL_KEY_MERGED], self.reference)
        else:
            self.adapters = _served_adapters(artifacts, self.reference)
            folders = {adapter.key: artifacts[adapter.key] for adapter in self.adapters.values()}
            self.model, self.tokenizer, _ = load_with_adapters(self.reference, folders)
        # The server runs requests in threads; one thread generates, for the requests that came together.
        generate = functools.partial(serving.generate_mixed, self.model, self.tokenizer)
        self.batcher = batching.Batcher(generate, max_rows, wait_s)

    # A DataFrame is what MLflow passes for a column schema. The hint stops MLflow's "Add type
    # hints" warning at class definition; MLflow neither validates nor infers a schema from it
    # (`mlflow.types.type_hints.type_hints_no_signature_inference`), the signature stays in charge.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        """Answers, one per prompt. A bad request raises an MLflow INVALID_PARAMETER_VALUE error,
        which `mlflow models serve` answers with HTTP 400 and keeps serving."""
        try:
            return serving.answer(
                self.model,
                self.tokenizer,
                self.adapters,
                self.reference.prompt_format,
                model_input,
                params,
                run=self.batcher.submit,
            )
        except serving.BadRequest as error:
            raise MlflowException.invalid_parameter_value(str(error)) from None


def _wrap_scoring_server(name: str, wrap) -> None:
    """Replace MLflow's scoring-server function `name` with `wrap(it)`, once per process; a server
    of another MLflow version without that function is left as it is."""
    from mlflow.pyfunc import scoring_server

    original = getattr(scoring_server, name, None)
    if original is None or getattr(original, "wrapped_by_lora_study", False):
        return
    wrapped = wrap(original)
    wrapped.wrapped_by_lora_study = True
    setattr(scoring_server, name, wrapped)


def _refuse_deep_json() -> None:
    """Make MLflow's scoring server answer 400, not 500, to JSON nested deeper than Python's
    recursion limit: it turns a request's JSONDecodeError into a 400 but lets the RecursionError
    of `[[[[...` through (mlflow#4897 is that class of bug)."""

    def wrap(decode):
        def decode_json_input(json_input):
            try:
                return decode(json_input)
            except RecursionError:
                raise MlflowException.invalid_parameter_value("the request's JSON is nested too deeply") from None

        return decode_json_input

    _wrap_scoring_server("_decode_json_input", wrap)


def _widen_request_threads(max_rows: int) -> None:
    """Let enough requests in at once to fill a batch. MLflow's scoring server runs each request
    with `asyncio.to_thread`, in the event loop's default pool: min(32, cores + 4) threads, 6 on 2
    cores, so no batch could gather more than 6. Give it a pool of twice the batch (a batch
    generating, the next one gathering), never fewer threads than the default."""
    import asyncio
    import concurrent.futures
    import contextvars
    import types

    from mlflow.pyfunc import scoring_server

    if getattr(scoring_server.asyncio, "widened_by_lora_study", False):
        return
    pool = concurrent.futures.ThreadPoolExecutor(
        max(2 * max_rows, min(32, (os.cpu_count() or 1) + 4)), thread_name_prefix="lora-study-request"
    )

    async def to_thread(func, /, *args, **kwargs):  # asyncio.to_thread, on `pool`
        call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    widened = types.SimpleNamespace(**vars(asyncio))
    widened.to_thread, widened.widened_by_lora_study = to_thread, True
    scoring_server.asyncio = widened


def _accept_prompt_dict() -> None:
    """Keep `{"inputs": {"prompt": [...]}}` working for a model whose input is one unnamed string
    column (`SIGNATURE`): MLflow's scoring server refuses a dict for such a schema, so give it the
    prompts as a list, as `{"inputs": [...]}` sends them. Models with named columns (many adapters,
    or logged before) parse as they did."""

    def wrap(parse):
        def infer_and_parse_data(data, schema=None):
            inputs = data.get("inputs") if isinstance(data, dict) else None
            unnamed = schema is not None and not schema.has_input_names()
            if unnamed and isinstance(inputs, dict) and list(inputs) == [serving.PROMPT_FIELD]:
                data = {**data, "inputs": inputs[serving.PROMPT_FIELD]}
            return parse(data, schema)

        return infer_and_parse_data

    _wrap_scoring_server("infer_and_parse_data", wrap)


def _served_adapters(artifacts: dict, reference: AdapterReference) -> dict[str, serving.ServedAdapter]:
    """Request name -> adapter, in the order served; the first is the default."""
    if MODEL_KEY_ADAPTER in artifacts:  # one adapter, as `train` logs it
        return {MODEL_KEY_ADAPTER: serving.ServedAdapter(MODEL_KEY_ADAPTER, reference.prompt_format)}
    manifest = json.loads(Path(artifacts[MODEL_KEY_ADAPTERS]).read_text())
    return {entry["name"]: serving.ServedAdapter(entry["artifact"], entry["prompt_format"]) for entry in manifest}
