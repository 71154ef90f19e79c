"""Patches to MLflow's scoring server, made once per process when a lora-study model loads in one:
deep JSON answered 400 (not 500), an oversized body 413 before it is parsed, enough request
threads to fill a batch, and `{"inputs": {"prompt": [...]}}` accepted for a one-column model."""

import functools
import json
import os

from mlflow.exceptions import MlflowException

from lora_study.serving import contract


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


def refuse_deep_json() -> None:
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


def refuse_large_bodies(max_bytes: int) -> None:
    """Answer a request body over `max_bytes` with 413 before MLflow's scoring server parses it:
    parsing 50 MB of JSON into a frame takes seconds and hundreds of MB, for prompts the model
    would refuse anyway (`contract.MAX_PROMPTS` of at most `contract.CHARS_PER_POSITION` characters
    per position each)."""
    from mlflow.pyfunc.scoring_server import InvocationsResponse

    def wrap(invocations):
        def bounded_invocations(data, content_type, model, input_schema):
            if len(data) > max_bytes:
                message = (
                    f"the request body has {len(data) / 2**20:.1f} MB; at most {max_bytes / 2**20:.0f} MB "
                    f"(send fewer or shorter prompts; {contract.MAX_BODY_MB_ENV} raises the bound)"
                )
                body = json.dumps({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": message})
                return InvocationsResponse(body, 413, "application/json")
            return invocations(data, content_type, model, input_schema)

        return bounded_invocations

    _wrap_scoring_server("invocations", wrap)


def widen_request_threads(max_rows: int) -> None:
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


def accept_prompt_dict() -> None:
    """Keep `{"inputs": {"prompt": [...]}}` working for a model whose input is one unnamed string
    column (`SIGNATURE`): MLflow's scoring server refuses a dict for such a schema, so give it the
    prompts as a list, as `{"inputs": [...]}` sends them. Models with named columns (many adapters,
    or logged before) parse as they did."""

    def wrap(parse):
        def infer_and_parse_data(data, schema=None):
            inputs = data.get("inputs") if isinstance(data, dict) else None
            unnamed = schema is not None and not schema.has_input_names()
            if unnamed and isinstance(inputs, dict) and list(inputs) == [contract.PROMPT_FIELD]:
                data = {**data, "inputs": inputs[contract.PROMPT_FIELD]}
            return parse(data, schema)

        return infer_and_parse_data

    _wrap_scoring_server("infer_and_parse_data", wrap)
