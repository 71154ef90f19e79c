"""The served model: one MLflow pyfunc class for the three kinds of lora-study model, told apart by
their artifacts (one adapter, many adapters on one base, a merged model). Loaded in a scoring
server, it patches the server (`server`), answers by the request contract (`contract`), and
generates the requests that arrive together in one batch (`batching`)."""

import functools
import json
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from lora_study.models import AdapterReference, load_merged, load_with_adapters
from lora_study.names import (
    MODEL_KEY_ADAPTER,
    MODEL_KEY_ADAPTERS,
    MODEL_KEY_BASE,
    MODEL_KEY_MERGED,
)
from lora_study.serving import batching, contract
from lora_study.serving.server import accept_prompt_dict, refuse_deep_json, refuse_large_bodies, widen_request_threads


class AdapterModel(mlflow.pyfunc.PythonModel):
    """Generates text with the base model plus an adapter (or a merged model); temperature 0 is greedy."""

    def load_context(self, context):
        # loaded in a scoring server: its requests too are checked, and parsed as promised
        refuse_deep_json()
        refuse_large_bodies(int(contract.MAX_BODY_MB * 2**20))
        accept_prompt_dict()
        max_rows, wait_s = contract.batching_settings()
        widen_request_threads(max_rows)
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
        generate = functools.partial(contract.generate_mixed, self.model, self.tokenizer)
        self.batcher = batching.Batcher(generate, max_rows, wait_s)

    # A DataFrame is what MLflow passes for a column schema. The hint stops MLflow's "Add type
    # hints" warning at class definition; MLflow neither validates nor infers a schema from it
    # (`mlflow.types.type_hints.type_hints_no_signature_inference`), the signature stays in charge.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        """Answers, one per prompt. A bad request raises an MLflow INVALID_PARAMETER_VALUE error,
        which `mlflow models serve` answers with HTTP 400 and keeps serving."""
        try:
            return contract.answer(
                self.model,
                self.tokenizer,
                self.adapters,
                self.reference.prompt_format,
                model_input,
                params,
                run=self.batcher.submit,
            )
        except contract.BadRequest as error:
            raise MlflowException.invalid_parameter_value(str(error)) from None


def _served_adapters(artifacts: dict, reference: AdapterReference) -> dict[str, contract.ServedAdapter]:
    """Request name -> adapter, in the order served; the first is the default."""
    if MODEL_KEY_ADAPTER in artifacts:  # one adapter, as `train` logs it
        return {MODEL_KEY_ADAPTER: contract.ServedAdapter(MODEL_KEY_ADAPTER, reference.prompt_format)}
    manifest = json.loads(Path(artifacts[MODEL_KEY_ADAPTERS]).read_text())
    return {entry["name"]: contract.ServedAdapter(entry["artifact"], entry["prompt_format"]) for entry in manifest}
