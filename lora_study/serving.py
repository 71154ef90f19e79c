"""The adapter as an MLflow model: adapter weights and config only, plus a base-model reference.

`mlflow.transformers.log_model` on a PEFT model over a local base copies the whole base
(~500 MB for SmolLM2) and reloads it with the LoRA keys unmatched, so its answers are noise.
Here the model holds the adapter (a few MB) and `base_model.json`: the base's name, sha256 or
hub revision, quantization and dtype. Loading resolves the base the way `--base-model` does
(cache, bundled GGUF or hub), checks it is the same weights, and applies the adapter.
"""

import json
import os
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from lora_study import models
from lora_study.data import ALPACA_PROMPT_NO_INPUT
from lora_study.tracking import ARTIFACT_ADAPTER, METRIC_ADAPTER_SIZE_MB

BASE_REFERENCE = "base_model.json"
DEFAULT_PARAMS = {"max_new_tokens": 64, "temperature": 0.0, "top_p": 1.0}
# The most tokens one request may ask for: a server-side bound, so one request cannot hold the
# server for minutes. Set LORA_STUDY_MAX_NEW_TOKENS where the server starts to change it (at
# least the default of 64).
MAX_NEW_TOKENS = int(os.environ.get("LORA_STUDY_MAX_NEW_TOKENS", "512"))
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "prompt")]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema([ParamSpec(name, "long" if name == "max_new_tokens" else "double", value)
                        for name, value in DEFAULT_PARAMS.items()]),  # fmt: skip
)


class AdapterModel(mlflow.pyfunc.PythonModel):
    """Generates text with the base model plus this adapter; temperature 0 is greedy."""

    def load_context(self, context):
        reference = json.loads(Path(context.artifacts["base_model"]).read_text())
        self.reference = reference
        self.model, self.tokenizer = load_adapter(context.artifacts["adapter"], reference)

    def predict(self, context, model_input, params=None):
        """Answers, one per prompt. A bad request raises an MLflow INVALID_PARAMETER_VALUE error,
        which `mlflow models serve` answers with HTTP 400 and keeps serving."""
        params = check_params({**DEFAULT_PARAMS, **(params or {})})
        prompt_format = self.reference["prompt_format"]
        texts = [format_prompt(prompt, prompt_format, self.tokenizer) for prompt in _prompts(model_input)]
        check_lengths(texts, self.tokenizer, self.model.config, params["max_new_tokens"])
        return [generate(self.model, self.tokenizer, text, **params) for text in texts]


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
    """The base model the reference names, with the adapter from `adapter_dir` applied."""
    from peft import PeftModel

    ref = models.resolve(reference["name"], reference["trust_remote_code"])
    if reference["sha256"] and ref.sha256 != reference["sha256"]:
        raise ValueError(
            f"base model `{reference['name']}` resolves to weights with sha256 {ref.sha256}, but "
            f"the adapter was trained on {reference['sha256']}"
        )
    if reference["revision"]:
        ref = models.BaseModelRef(ref.name, ref.path, revision=reference["revision"],
                                  trust_remote_code=ref.trust_remote_code)  # fmt: skip
    base = models.load_model(ref, reference["quantization"], getattr(torch, reference["dtype"]))
    model = PeftModel.from_pretrained(base, adapter_dir)
    return model.eval(), models.load_tokenizer(ref)


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


def check_params(params: dict) -> dict:
    """The request's generation params, within bounds."""
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise _bad_request(f"unknown params {', '.join(unknown)} (known: {', '.join(DEFAULT_PARAMS)})")
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
    import peft
    import transformers

    with tempfile.TemporaryDirectory() as folder:
        adapter_dir = Path(folder) / "adapter"
        peft_model.save_pretrained(adapter_dir)
        reference_file = Path(folder) / BASE_REFERENCE
        reference_file.write_text(json.dumps(reference, indent=1))
        requirements = [
            f"torch=={torch.__version__.split('+')[0]}",
            f"transformers=={transformers.__version__}",
            f"peft=={peft.__version__}",
            f"mlflow=={mlflow.__version__}",
        ]
        if reference["quantization"] != "none":
            import bitsandbytes

            requirements.append(f"bitsandbytes=={bitsandbytes.__version__}")
        size = sum(f.stat().st_size for f in adapter_dir.glob("*.safetensors")) / 2**20
        mlflow.log_metric(METRIC_ADAPTER_SIZE_MB, size)
        return mlflow.pyfunc.log_model(
            name=ARTIFACT_ADAPTER,
            python_model=str(Path(__file__).with_name("adapter_model.py")),
            artifacts={"adapter": str(adapter_dir), "base_model": str(reference_file)},
            signature=SIGNATURE,
            pip_requirements=requirements,
            metadata={"base_model": reference},
        )
