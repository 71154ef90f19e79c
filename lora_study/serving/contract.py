"""What a served model accepts and answers: the request contract, and which adapters it holds.

A request to a one-adapter or merged model is a list of prompts, as to MLflow's LLM flavours
(`{"inputs": ["..."]}`, or `predict(["..."])` in Python), or a `prompt` column: `{"inputs":
{"prompt": [...]}}`, `{"dataframe_records": [{"prompt": ...}]}`, `{"dataframe_split": ...}`
(MLflow passes on only a frame's first column to such a model, so `prompt` comes first). A
server of many adapters takes the `prompt` column, and an optional `adapter` column picks the
adapter per prompt. Each takes optional `params`: `max_new_tokens`, `temperature`, `top_p`, and
`adapter` on a server of many adapters. Anything out of bounds raises `BadRequest`, which the
MLflow model (`lora_study.serving.model.AdapterModel`) turns into HTTP 400.
"""

import fnmatch
import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lora_study import model_uris, registry
from lora_study.data.templates import user_prompt
from lora_study.errors import UserInputError
from lora_study.generation import generate

ADAPTER_FIELD = "adapter"  # the request field (a param, or a column per prompt) that picks the adapter
PROMPT_FIELD = "prompt"
UNNAMED_COLUMN = 0  # the name pandas gives the one column of `DataFrame(["a", "b"])`
DEFAULT_PARAMS = {"max_new_tokens": 64, "temperature": 0.0, "top_p": 1.0}
# The most tokens one request may ask for: a server-side bound, so one request cannot hold the
# server for minutes. Set LORA_STUDY_MAX_NEW_TOKENS where the server starts to change it (at
# least the default of 64).
MAX_NEW_TOKENS_ENV = "LORA_STUDY_MAX_NEW_TOKENS"
MAX_NEW_TOKENS = int(os.environ.get(MAX_NEW_TOKENS_ENV, "512"))
# The most prompts one request to a server may hold: a request of more is refused before any is
# tokenized (LORA_STUDY_MAX_PROMPTS where the server starts changes it). In-process, no bound.
MAX_PROMPTS_ENV = "LORA_STUDY_MAX_PROMPTS"
MAX_PROMPTS = int(os.environ.get(MAX_PROMPTS_ENV, "64"))
# The largest request body, in MB, that the scoring server parses (`server.refuse_large_bodies`):
# 64 prompts of the longest kind SmolLM2's 2048 positions hold are about 4 MB.
MAX_BODY_MB_ENV = "LORA_STUDY_MAX_BODY_MB"
MAX_BODY_MB = float(os.environ.get(MAX_BODY_MB_ENV, "8"))
# A prompt of more characters than this many per position of the model cannot fit its context
# (a token is rarely longer): refused without tokenizing it, which takes seconds for a million.
CHARS_PER_POSITION = 32
# Requests that arrive together are answered in one batch (`lora_study.serving.batching`): at most this
# many prompts, gathered for at most this long after the first. `lora-study serve
# --max-batch-size --batch-wait-ms` set them; a batch size of 1 answers one at a time.
MAX_BATCH_SIZE_ENV, BATCH_WAIT_MS_ENV = "LORA_STUDY_MAX_BATCH_SIZE", "LORA_STUDY_BATCH_WAIT_MS"


def server_argv(model_uri: str, host: str, port: int) -> list[str]:
    """The command of an MLflow scoring server on `model_uri`, in this Python environment."""
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"] + [
        "--host",
        host,
        "--port",
        str(port),
    ]


class BadRequest(ValueError):
    """A request the server refuses, with the reason; the server goes on serving."""


@dataclass(frozen=True)
class ServedAdapter:
    """An adapter a model answers with: its PEFT adapter name and how its prompts are written."""

    key: str  # the artifact key, also the PEFT adapter name
    prompt_format: str


def answer(
    model, tokenizer, adapters: dict[str, ServedAdapter], prompt_format: str, model_input, params, run=None
) -> list:
    """One answer per prompt, each by the adapter it picks (or the first; a merged model has none).

    A bad request is refused here, in the request's thread; the generation itself is `run`'s
    (`batching.Batcher.submit`: with other requests'), or done here when there is none.
    """
    params = check_params({**DEFAULT_PARAMS, **(params or {})})
    choice = params.pop(ADAPTER_FIELD, "")
    prompts = _prompts(model_input)
    picked = [_pick(adapters, name or choice) for name in _adapter_column(model_input, len(prompts))]
    texts = [user_prompt(p, a.prompt_format if a else prompt_format, tokenizer) for p, a in zip(prompts, picked)]
    check_lengths(texts, tokenizer, model.config, params["max_new_tokens"])
    keys = [adapter.key if adapter else None for adapter in picked]
    return (run or functools.partial(generate_mixed, model, tokenizer))(texts, keys, params)


def batching_settings() -> tuple[int, float]:
    """(most rows in a batch, seconds to wait for more), as the server's environment sets them."""
    return int(os.environ.get(MAX_BATCH_SIZE_ENV, "8")), int(os.environ.get(BATCH_WAIT_MS_ENV, "10")) / 1000


def generate_mixed(model, tokenizer, texts: list[str], keys: list[str | None], params: dict) -> list[str]:
    """Answers with each row's adapter (`keys`; None on a merged model): the rows of LoRA
    adapters in one mixed batch, those of DoRA adapters (which PEFT cannot mix) a batch per adapter."""
    if all(key is None for key in keys):
        return generate(model, tokenizer, texts, **params)
    dora = sorted({key for key in keys if model.peft_config[key].use_dora})
    mixed = [i for i, key in enumerate(keys) if key not in dora]
    groups = ([mixed] if mixed else []) + [[i for i, key in enumerate(keys) if key == name] for name in dora]
    answers = [""] * len(texts)
    for rows in groups:
        names = [keys[i] for i in rows]
        if names[0] in dora:
            model.set_adapter(names[0])
            batch = generate(model, tokenizer, [texts[i] for i in rows], **params)
        else:
            batch = generate(model, tokenizer, [texts[i] for i in rows], adapter_names=names, **params)
        for i, text in zip(rows, batch):
            answers[i] = text
    return answers


def _pick(adapters: dict[str, ServedAdapter], name: str) -> ServedAdapter | None:
    """The adapter a request names; the first when it names none; None for a merged model."""
    if not name:
        return next(iter(adapters.values()), None)
    if name not in adapters:
        known = ", ".join(adapters) or "none: this model has its adapter merged in"
        raise BadRequest(f"unknown adapter {name!r} (this server has: {known})")
    return adapters[name]


def _prompts(model_input) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        prompts = list(model_input[_prompt_column(model_input)])
    else:
        prompts = [model_input] if isinstance(model_input, str) else list(model_input)
    if len(prompts) > MAX_PROMPTS and _in_a_server():
        raise BadRequest(
            f"{len(prompts)} prompts in one request; at most {MAX_PROMPTS} (send the rest in more requests)"
        )
    if not prompts or not all(isinstance(prompt, str) and prompt.strip() for prompt in prompts):
        raise BadRequest(f"every `{PROMPT_FIELD}` must be a non-empty string")
    return prompts


def _in_a_server() -> bool:
    """Whether this process is MLflow's scoring server (which says so in its environment): a
    model loaded in-process (`mlflow models predict`, batch scoring) takes any number of prompts."""
    from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT

    return bool(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.get())


def _prompt_column(frame: pd.DataFrame):
    """`prompt`, or the one unnamed column (0) MLflow makes of a list of prompts."""
    if PROMPT_FIELD in frame.columns:
        return PROMPT_FIELD
    if list(frame.columns) == [UNNAMED_COLUMN]:
        return UNNAMED_COLUMN
    columns = ", ".join(map(str, frame.columns))
    raise BadRequest(
        f"the input needs a `{PROMPT_FIELD}` column or a list of prompts (got columns: {columns}; a model of "
        f"one adapter reads a frame's first column only, so put `{PROMPT_FIELD}` first)"
    )


def _adapter_column(model_input, count: int) -> list[str]:
    """Each prompt's `adapter` column value ("" where it has none)."""
    if not isinstance(model_input, pd.DataFrame) or ADAPTER_FIELD not in model_input.columns:
        return [""] * count
    names = model_input[ADAPTER_FIELD].tolist()
    if not all(name is None or isinstance(name, str) or pd.isna(name) for name in names):
        raise BadRequest(f"every `{ADAPTER_FIELD}` must be a string: an adapter's name")
    return [name if isinstance(name, str) else "" for name in names]


def check_params(params: dict) -> dict:
    """The request's generation params, within bounds."""
    known = [*DEFAULT_PARAMS, ADAPTER_FIELD]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise BadRequest(f"unknown params {', '.join(unknown)} (known: {', '.join(known)})")
    if not 1 <= params["max_new_tokens"] <= MAX_NEW_TOKENS:
        raise BadRequest(f"max_new_tokens must be 1 to {MAX_NEW_TOKENS} (got {params['max_new_tokens']})")
    if not 0 <= params["temperature"] <= 10:
        raise BadRequest(f"temperature must be 0 (greedy) to 10 (got {params['temperature']})")
    if not 0 < params["top_p"] <= 1:
        raise BadRequest(f"top_p must be in (0, 1] (got {params['top_p']})")
    return params


def check_lengths(texts: list[str], tokenizer, config, max_new_tokens: int) -> None:
    """Refuse a prompt that leaves no room for the answer in the model's context."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return
    for number, text in enumerate(texts, start=1):
        if len(text) > CHARS_PER_POSITION * limit:
            raise BadRequest(
                f"prompt {number} has {len(text)} characters: far over what the model's {limit} positions hold"
            )
        length = len(tokenizer(text)["input_ids"])
        if length + max_new_tokens > limit:
            raise BadRequest(
                f"prompt {number} has {length} tokens; with max_new_tokens {max_new_tokens} that is over "
                f"the model's {limit} positions"
            )


# --- which adapters a server holds -------------------------------------------------------------


def adapter_entries(spec: str) -> list[tuple[str, str]]:
    """(request name, model URI) for each adapter `--adapters` names: `name@alias`, `name@version`
    or a model URI, comma-separated; or a YAML file listing them (strings, or `name` + `model_uri`).
    An alias with `*` (`name@group-*`, `models:/name@group-*`) names every alias it matches."""
    if spec.endswith((".yaml", ".yml")):
        items = _yaml_entries(spec)
    else:
        items = [item.strip() for item in spec.split(",") if item.strip()]
    items = [expanded for item in items for expanded in _matching_aliases(item)]
    entries = [(item, model_uris.from_shorthand(item).uri) if isinstance(item, str) else item for item in items]
    names = [name for name, _ in entries]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserInputError(
            f"--adapters {spec}: the name {', '.join(repeated)} is given twice; names pick adapters, so each is one"
        )
    if not entries:
        raise UserInputError(f"--adapters {spec}: names no adapter; give name@alias,name@version,... or a YAML list")
    return entries


def _matching_aliases(item):
    """`name@<pattern with *>` as one `name@alias` per matching alias of the registered model,
    in alias order; any other item as it is."""
    if not isinstance(item, str) or "*" not in item:
        return [item]
    name, _, pattern = item.removeprefix(model_uris.MODELS_SCHEME).rpartition("@")
    aliases = sorted(alias for alias in registry.aliases(name) if fnmatch.fnmatchcase(alias, pattern))
    if not aliases:
        raise UserInputError(f"--adapters {item}: no alias of the registered model `{name}` matches `{pattern}`")
    return [f"{name}@{alias}" for alias in aliases]


def _yaml_entries(path: str) -> list:
    import yaml

    if not Path(path).is_file():
        raise UserInputError(f"--adapters {path}: no such file")
    items = yaml.safe_load(Path(path).read_text())
    if not isinstance(items, list):
        raise UserInputError(f"{path}: must be a YAML list of adapters (name@alias strings, or name + model_uri)")
    entries = []
    for number, item in enumerate(items, start=1):
        if (
            isinstance(item, dict)
            and set(item) == {"name", "model_uri"}
            and all(isinstance(v, str) for v in item.values())
        ):
            entries.append((item["name"], item["model_uri"]))
        elif isinstance(item, str):
            entries.append(item)
        else:
            raise UserInputError(
                f"{path}, entry {number}: give `name@alias`, or `name:` and `model_uri:` (got {item!r})"
            )
    return entries
