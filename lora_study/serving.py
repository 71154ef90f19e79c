"""The adapter as an MLflow model: adapter weights and config only, plus a base-model reference.

`mlflow.transformers.log_model` on a PEFT model over a local base copies the whole base
(~500 MB for SmolLM2) and reloads it with the LoRA keys unmatched, so its answers are noise.
Here the model holds the adapter (a few MB) and `base_model.json`: the base's name, sha256 or
hub revision, quantization and dtype. Loading resolves the base the way `--base-model` does
(cache, bundled GGUF or hub), checks it is the same weights, and applies the adapter.
"""

import json
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
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "prompt")]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema([ParamSpec("max_new_tokens", "long", 64), ParamSpec("temperature", "double", 0.0)]),
)


class AdapterModel(mlflow.pyfunc.PythonModel):
    """Generates text with the base model plus this adapter; temperature 0 is greedy."""

    def load_context(self, context):
        reference = json.loads(Path(context.artifacts["base_model"]).read_text())
        self.reference = reference
        self.model, self.tokenizer = load_adapter(context.artifacts["adapter"], reference)

    def predict(self, context, model_input, params=None):
        params = {"max_new_tokens": 64, "temperature": 0.0, **(params or {})}
        prompt_format = self.reference["prompt_format"]
        return [
            generate(self.model, self.tokenizer, format_prompt(prompt, prompt_format, self.tokenizer), **params)
            for prompt in _prompts(model_input)
        ]


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
def generate(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float) -> str:
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    output = model.generate(
        **inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
    )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def _prompts(model_input) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        return [str(prompt) for prompt in model_input["prompt"]]
    if isinstance(model_input, str):
        return [model_input]
    return [str(prompt) for prompt in model_input]


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
