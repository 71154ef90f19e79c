"""The adapter as an MLflow model, and the server that answers with it.

`mlflow.transformers.log_model` on a PEFT model over a local base copies the whole base
(~500 MB for SmolLM2) and reloads it with the LoRA keys unmatched, so its answers are noise.
Here the model holds the adapter (a few MB) and `base_model.json`: the base's name, sha256 or
hub revision, quantization and dtype. Loading resolves the base the way `--base-model` does
(cache, bundled GGUF or hub), checks it is the same weights, and applies the adapter.

The same model class serves three folders, told apart by their artifacts:
- `adapter` + `base_model`: one adapter, as `train` and `sweep` log it;
- `adapters` (a manifest) + `adapter-<i>` + `base_model`: many adapters on one base, as
  `lora-study serve --adapters` saves it; a request picks one with `adapter`;
- `merged` + `base_model`: the base with an adapter merged in, as `lora-study merge` logs it.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from lora_study import models, registry
from lora_study.cache import build_once, cache_root
from lora_study.config import ServeConfig
from lora_study.data import ALPACA_PROMPT_NO_INPUT
from lora_study.errors import UserInputError
from lora_study.tracking import ARTIFACT_ADAPTER, METRIC_ADAPTER_SIZE_MB

BASE_REFERENCE = "base_model.json"
ADAPTERS_MANIFEST = "adapters.json"
ADAPTER_FIELD = "adapter"  # the request field (a param, or a column per prompt) that picks the adapter
DEFAULT_PARAMS = {"max_new_tokens": 64, "temperature": 0.0, "top_p": 1.0}
# The most tokens one request may ask for: a server-side bound, so one request cannot hold the
# server for minutes. Set LORA_STUDY_MAX_NEW_TOKENS where the server starts to change it (at
# least the default of 64).
MAX_NEW_TOKENS = int(os.environ.get("LORA_STUDY_MAX_NEW_TOKENS", "512"))
GENERATION_PARAMS = [ParamSpec(name, "long" if name == "max_new_tokens" else "double", value)
                     for name, value in DEFAULT_PARAMS.items()]  # fmt: skip
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "prompt")]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema(GENERATION_PARAMS),
)
MULTI_ADAPTER_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "prompt"), ColSpec("string", ADAPTER_FIELD, required=False)]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema([*GENERATION_PARAMS, ParamSpec(ADAPTER_FIELD, "string", "")]),
)


@dataclass(frozen=True)
class ServedAdapter:
    """An adapter a model answers with: its PEFT adapter name and how its prompts are written."""

    key: str  # the artifact key, also the PEFT adapter name
    prompt_format: str


class AdapterModel(mlflow.pyfunc.PythonModel):
    """Generates text with the base model plus an adapter (or a merged model); temperature 0 is greedy."""

    def load_context(self, context):
        artifacts = context.artifacts
        self.reference = json.loads(Path(artifacts["base_model"]).read_text())
        if "merged" in artifacts:
            self.adapters = {}
            self.model, self.tokenizer = load_merged(artifacts["merged"], self.reference)
        else:
            self.adapters = served_adapters(artifacts, self.reference)
            folders = {adapter.key: artifacts[adapter.key] for adapter in self.adapters.values()}
            self.model, self.tokenizer, _ = load_adapters(folders, self.reference)
        # The server runs requests in threads; the active adapter is model state, so one at a time.
        self.lock = threading.Lock()

    def predict(self, context, model_input, params=None):
        """Answers, one per prompt. A bad request raises an MLflow INVALID_PARAMETER_VALUE error,
        which `mlflow models serve` answers with HTTP 400 and keeps serving."""
        params = check_params({**DEFAULT_PARAMS, **(params or {})})
        choice = params.pop(ADAPTER_FIELD, "")
        prompts = _prompts(model_input)
        adapters = [self._adapter(name or choice) for name in _adapter_column(model_input, len(prompts))]
        prompt_formats = [a.prompt_format if a else self.reference["prompt_format"] for a in adapters]
        texts = [format_prompt(p, f, self.tokenizer) for p, f in zip(prompts, prompt_formats)]
        check_lengths(texts, self.tokenizer, self.model.config, params["max_new_tokens"])
        with self.lock:
            answers = []
            for text, adapter in zip(texts, adapters):
                if adapter is not None:
                    self.model.set_adapter(adapter.key)
                answers.append(generate(self.model, self.tokenizer, text, **params))
        return answers

    def _adapter(self, name: str) -> ServedAdapter | None:
        """The adapter a request names; the first when it names none; None for a merged model."""
        if not name:
            return next(iter(self.adapters.values()), None)
        if name not in self.adapters:
            known = ", ".join(self.adapters) or "none: this model has its adapter merged in"
            raise _bad_request(f"unknown adapter {name!r} (this server has: {known})")
        return self.adapters[name]


def served_adapters(artifacts: dict, reference: dict) -> dict[str, ServedAdapter]:
    """Request name -> adapter, in the order served; the first is the default."""
    if ADAPTER_FIELD in artifacts:  # one adapter, as `train` logs it
        return {ADAPTER_FIELD: ServedAdapter(ADAPTER_FIELD, reference["prompt_format"])}
    manifest = json.loads(Path(artifacts["adapters"]).read_text())
    return {entry["name"]: ServedAdapter(entry["artifact"], entry["prompt_format"]) for entry in manifest}


def format_prompt(prompt: str, prompt_format: str, tokenizer) -> str:
    """Wrap a user's prompt the way the adapter's training data was rendered."""
    if prompt_format == "instruction":
        return ALPACA_PROMPT_NO_INPUT.format(instruction=prompt)
    if prompt_format == "chat":
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


def base_reference(ref: models.BaseModelRef, quantization: str, dtype: torch.dtype, prompt_format: str) -> dict:
    return {
        "name": ref.name,
        "sha256": ref.sha256,
        "revision": ref.revision,
        "trust_remote_code": ref.trust_remote_code,
        "quantization": quantization,
        "dtype": str(dtype).removeprefix("torch."),
        "prompt_format": prompt_format,
    }


def load_adapter(adapter_dir: str, reference: dict):
    """The base model the reference names, with the adapter from `adapter_dir` applied; its
    tokenizer; and the resolved base."""
    return load_adapters({ADAPTER_FIELD: adapter_dir}, reference)


def load_adapters(folders: dict[str, str], reference: dict):
    """The base model the reference names, loaded once, with every adapter (PEFT name -> folder)
    beside it, the first active; its tokenizer; and the resolved base."""
    from peft import PeftModel

    ref = _base_ref(reference)
    base = models.load_model(ref, reference["quantization"], getattr(torch, reference["dtype"]))
    (first, folder), *others = folders.items()
    model = PeftModel.from_pretrained(base, folder, adapter_name=first)
    for name, folder in others:
        model.load_adapter(folder, adapter_name=name)
    model.set_adapter(first)
    return model.eval(), models.load_tokenizer(ref), ref


def load_merged(folder: str, reference: dict):
    """A merged model: a plain transformers folder, loaded as a base model is."""
    ref = models.BaseModelRef(reference["name"], folder, trust_remote_code=reference["trust_remote_code"])
    return models.load_model(ref, "none", getattr(torch, reference["dtype"])).eval(), models.load_tokenizer(ref)


def _base_ref(reference: dict) -> models.BaseModelRef:
    """The base the reference names, checked to be the same weights."""
    ref = models.resolve(reference["name"], reference["trust_remote_code"])
    if reference["sha256"] and ref.sha256 != reference["sha256"]:
        raise ValueError(
            f"base model `{reference['name']}` resolves to weights with sha256 {ref.sha256}, but "
            f"the adapter was trained on {reference['sha256']}"
        )
    if reference["revision"]:
        ref = models.BaseModelRef(ref.name, ref.path, revision=reference["revision"],
                                  trust_remote_code=ref.trust_remote_code)  # fmt: skip
    return ref


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float, top_p: float = 1.0) -> str:
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    sampling = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
    output = model.generate(
        **inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
    )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def _prompts(model_input) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        if "prompt" not in model_input.columns:
            raise _bad_request(f"the input needs a `prompt` column (got columns: {', '.join(map(str, model_input.columns))})")
        prompts = list(model_input["prompt"])
    else:
        prompts = [model_input] if isinstance(model_input, str) else list(model_input)
    if not prompts or not all(isinstance(prompt, str) and prompt.strip() for prompt in prompts):
        raise _bad_request("every `prompt` must be a non-empty string")
    return prompts


def _adapter_column(model_input, count: int) -> list[str]:
    """Each prompt's `adapter` column value ("" where it has none)."""
    if not isinstance(model_input, pd.DataFrame) or ADAPTER_FIELD not in model_input.columns:
        return [""] * count
    names = model_input[ADAPTER_FIELD].tolist()
    if not all(name is None or isinstance(name, str) or pd.isna(name) for name in names):
        raise _bad_request(f"every `{ADAPTER_FIELD}` must be a string: an adapter's name")
    return [name if isinstance(name, str) else "" for name in names]


def check_params(params: dict) -> dict:
    """The request's generation params, within bounds."""
    known = [*DEFAULT_PARAMS, ADAPTER_FIELD]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise _bad_request(f"unknown params {', '.join(unknown)} (known: {', '.join(known)})")
    if not 1 <= params["max_new_tokens"] <= MAX_NEW_TOKENS:
        raise _bad_request(f"max_new_tokens must be 1 to {MAX_NEW_TOKENS} (got {params['max_new_tokens']})")
    if not 0 <= params["temperature"] <= 10:
        raise _bad_request(f"temperature must be 0 (greedy) to 10 (got {params['temperature']})")
    if not 0 < params["top_p"] <= 1:
        raise _bad_request(f"top_p must be in (0, 1] (got {params['top_p']})")
    return params


def check_lengths(texts: list[str], tokenizer, config, max_new_tokens: int) -> None:
    """Refuse a prompt that leaves no room for the answer in the model's context."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return
    for number, text in enumerate(texts, start=1):
        length = len(tokenizer(text)["input_ids"])
        if length + max_new_tokens > limit:
            raise _bad_request(
                f"prompt {number} has {length} tokens; with max_new_tokens {max_new_tokens} that is over "
                f"the model's {limit} positions"
            )


def _bad_request(message: str):
    from mlflow.exceptions import MlflowException

    return MlflowException.invalid_parameter_value(message)


def log_adapter(peft_model, reference: dict) -> "mlflow.models.model.ModelInfo":
    """Log the adapter under the active run as the MLflow model `adapter`, and its size."""
    with tempfile.TemporaryDirectory() as folder:
        adapter_dir = Path(folder) / "adapter"
        peft_model.save_pretrained(adapter_dir)
        reference_file = Path(folder) / BASE_REFERENCE
        reference_file.write_text(json.dumps(reference, indent=1))
        size = sum(f.stat().st_size for f in adapter_dir.glob("*.safetensors")) / 2**20
        mlflow.log_metric(METRIC_ADAPTER_SIZE_MB, size)
        return mlflow.pyfunc.log_model(
            name=ARTIFACT_ADAPTER,
            python_model=MODEL_CODE,
            artifacts={"adapter": str(adapter_dir), "base_model": str(reference_file)},
            signature=SIGNATURE,
            pip_requirements=requirements(reference["quantization"]),
            metadata={"base_model": reference},
        )


MODEL_CODE = str(Path(__file__).with_name("adapter_model.py"))  # "models from code": see that file


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


# --- many adapters on one base -------------------------------------------------------------------

# What must be the same for adapters to share one loaded base model.
SHARED_BASE_KEYS = ("name", "sha256", "revision", "trust_remote_code", "quantization", "dtype")


def adapter_entries(spec: str) -> list[tuple[str, str]]:
    """(request name, model URI) for each adapter `--adapters` names: `name@alias`, `name@version`
    or a model URI, comma-separated; or a YAML file listing them (strings, or `name` + `model_uri`)."""
    if spec.endswith((".yaml", ".yml")):
        items = _yaml_entries(spec)
    else:
        items = [item.strip() for item in spec.split(",") if item.strip()]
    entries = [(item, _model_uri(item)) if isinstance(item, str) else item for item in items]
    names = [name for name, _ in entries]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if not entries or repeated:
        raise UserInputError(
            f"--adapters {spec}: "
            + (f"the name {', '.join(repeated)} is given twice; names pick adapters, so each is one"
               if repeated else "names no adapter; give name@alias,name@version,... or a YAML list")
        )  # fmt: skip
    return entries


def _model_uri(entry: str) -> str:
    """`name@champion` -> models:/name@champion; `name@3` -> models:/name/3; a URI as it is."""
    if ":" in entry:
        return entry
    name, at, pointer = entry.rpartition("@")
    if not at or not name or not pointer:
        raise UserInputError(f"--adapters: {entry!r} is not name@alias, name@version or a model URI")
    return f"models:/{name}/{pointer}" if pointer.isdigit() else f"models:/{name}@{pointer}"


def _yaml_entries(path: str) -> list:
    import yaml

    if not Path(path).is_file():
        raise UserInputError(f"--adapters {path}: no such file")
    items = yaml.safe_load(Path(path).read_text())
    if not isinstance(items, list):
        raise UserInputError(f"{path}: must be a YAML list of adapters (name@alias strings, or name + model_uri)")
    entries = []
    for number, item in enumerate(items, start=1):
        if isinstance(item, dict) and set(item) == {"name", "model_uri"} and all(isinstance(v, str) for v in item.values()):
            entries.append((item["name"], item["model_uri"]))
        elif isinstance(item, str):
            entries.append(item)
        else:
            raise UserInputError(f"{path}, entry {number}: give `name@alias`, or `name:` and `model_uri:` (got {item!r})")
    return entries


def save_multi_adapter_model(entries: list[tuple[str, str]]) -> Path:
    """One MLflow model holding every adapter `entries` names, over their one base, saved in the
    cache (a few MB per adapter) under what it holds: the same adapters reuse it."""
    sources = [registry.resolve_model_uri(uri, flag=f"--adapters {name}") for name, uri in entries]
    first_name, first = entries[0][0], sources[0]
    for (name, _), source in zip(entries, sources):
        differs = [key for key in SHARED_BASE_KEYS if source.reference[key] != first.reference[key]]
        if differs:
            raise UserInputError(
                f"--adapters {name}: its base differs from {first_name}'s in "
                + ", ".join(f"{key} ({source.reference[key]} vs {first.reference[key]})" for key in differs)
                + "; one server holds one base model, so serve these apart"
            )
    manifest = [{"name": name, "model_uri": uri, "artifact": f"adapter-{i}", "model_id": source.model_id,
                 "run_id": source.run_id, "prompt_format": source.reference["prompt_format"]}
                for i, ((name, uri), source) in enumerate(zip(entries, sources))]  # fmt: skip
    key = hashlib.sha256(json.dumps([manifest, first.reference], sort_keys=True).encode()).hexdigest()[:16]

    def save(folder: Path) -> None:
        manifest_file, reference_file = folder / ADAPTERS_MANIFEST, folder / BASE_REFERENCE
        manifest_file.write_text(json.dumps(manifest, indent=1))
        reference_file.write_text(json.dumps(first.reference, indent=1))
        mlflow.pyfunc.save_model(
            folder / "model",
            python_model=MODEL_CODE,
            artifacts={"adapters": str(manifest_file), "base_model": str(reference_file),
                       **{e["artifact"]: str(s.adapter_dir) for e, s in zip(manifest, sources)}},  # fmt: skip
            signature=MULTI_ADAPTER_SIGNATURE,
            pip_requirements=requirements(first.reference["quantization"]),
            metadata={"base_model": first.reference, "adapters": manifest},
        )

    return build_once(cache_root() / "served" / key, save) / "model"


# --- the server --------------------------------------------------------------------------------------


def run_serve(cfg: ServeConfig) -> None:
    """The `serve` command: becomes `mlflow models serve` on one model, or on many adapters saved as
    one; a small helper prints the URL and a curl example once the server answers."""
    _check_port(cfg.host, cfg.port)
    if cfg.adapters:
        entries = adapter_entries(cfg.adapters)
        model_uri, names = str(save_multi_adapter_model(entries)), [name for name, _ in entries]
    else:
        model_uri, names = cfg.model_uri, []
        _check_model(model_uri)
    url = f"http://{cfg.host}:{cfg.port}"
    subprocess.run([sys.executable, "-m", "lora_study.ready", url, str(os.getpid()),
                    usage(url, cfg.model_uri or cfg.adapters, names)], check=True)  # fmt: skip
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
            "--host", cfg.host, "--port", str(cfg.port)]  # fmt: skip
    # mlflow starts `uvicorn` by name: find it beside this Python even when its venv is not activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "LORA_STUDY_MAX_NEW_TOKENS": str(cfg.max_new_tokens_limit)}
    sys.stdout.flush()
    # Become the server, rather than wait beside it: this process has torch and transformers
    # imported, hundreds of MB that a waiting parent would hold for the server's whole life.
    os.execve(sys.executable, argv, env)


def _check_port(host: str, port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closed server's port is free
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserInputError(f"--port {port}: cannot listen on {host}:{port} ({error.strerror}); pass another --port") from None


def _check_model(model_uri: str) -> None:
    """One clear line for a model URI that names nothing, before a server starts on it."""
    from mlflow.exceptions import MlflowException

    try:
        mlflow.models.get_model_info(model_uri)
    except (MlflowException, OSError) as error:
        raise UserInputError(f"{model_uri}: {getattr(error, 'message', error)}") from None


def usage(url: str, what: str, names: list[str]) -> str:
    """What to tell the user once the server answers: where it is and a request that works."""
    params = {"max_new_tokens": 64}
    lines = [f"Serving {what} at {url}/invocations (Ctrl-C stops it)"]
    if names:
        lines.append(f"Adapters: {', '.join(names)}; a request picks one with `{ADAPTER_FIELD}` (default {names[0]})")
        params[ADAPTER_FIELD] = names[-1]
    payload = json.dumps({"inputs": {"prompt": ["What does str.split do?"]}, "params": params})
    lines.append(f"  curl -s {url}/invocations -H 'Content-Type: application/json' -d '{payload}'")
    return "\n".join(lines)
