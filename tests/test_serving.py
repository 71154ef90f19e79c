"""The adapter as an MLflow model: adapter-only artifacts, a base reference, exact round trip."""

import json
from pathlib import Path

import mlflow
import pandas as pd
import torch

from lora_study import serving, training
from lora_study.config import AdapterConfig, BaseModelConfig, DataConfig, TrainConfig


def trained_adapter(adapter=AdapterConfig()):
    data, base = DataConfig(max_samples=15, seq_len=32), BaseModelConfig(base_model="tiny")
    train = TrainConfig(max_steps=3, batch_size=4, learning_rate=1e-2)
    s = training.setup(data, base, adapter, train)
    with mlflow.start_run() as run:
        model = training.fine_tune(s, adapter, train, seed=0)
        reference = serving.base_reference(s.ref, adapter.quantization, s.weights_dtype, "text")
        info = serving.log_adapter(model, reference)
    return model, s, run.info.run_id, info


def test_the_logged_adapter_reproduces_the_in_process_logits():
    model, s, run_id, _ = trained_adapter()
    loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/adapter")
    served = loaded.unwrap_python_model().model
    ids = s.tokenizer("def sort(items):\n    return", return_tensors="pt").input_ids
    model.eval()
    with torch.no_grad():
        expected, got = model(ids).logits, served(ids).logits
    torch.testing.assert_close(got, expected)
    with torch.no_grad(), model.disable_adapter():
        base_logits = model(ids).logits
    assert not torch.allclose(base_logits, expected)  # the adapter changed something


def test_the_model_holds_the_adapter_and_a_base_reference_only(tiny):
    _, s, run_id, info = trained_adapter()
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/adapter"))
    files = {p.name: p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    assert sum(files.values()) < 200_000  # the tiny base alone is 12 MB
    reference = json.loads(next(folder.rglob(serving.BASE_REFERENCE)).read_text())
    assert reference == {"name": "tiny", "sha256": tiny.sha256, "revision": None, "trust_remote_code": False,
                         "quantization": "none", "dtype": str(s.weights_dtype).removeprefix("torch."),
                         "prompt_format": "text"}  # fmt: skip
    assert info.metadata["base_model"]["sha256"] == tiny.sha256
    signature = info.signature
    assert signature.inputs.input_names() == ["prompt"]
    assert {p.name for p in signature.params.params} == {"max_new_tokens", "temperature", "top_p"}


def test_predict_generates_text_for_each_prompt():
    _, _, run_id, _ = trained_adapter()
    loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/adapter")
    frame = pd.DataFrame({"prompt": ["The list type", "A dict maps"]})
    answers = loaded.predict(frame, params={"max_new_tokens": 4})
    assert len(answers) == 2 and all(isinstance(a, str) and a for a in answers)
    again = loaded.predict(frame, params={"max_new_tokens": 4})
    assert answers == again  # temperature 0 is greedy


def test_a_base_with_other_weights_is_refused(tmp_path):
    _, _, run_id, _ = trained_adapter()
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/adapter", dst_path=str(tmp_path)))
    reference_file = next(folder.rglob(serving.BASE_REFERENCE))
    reference = json.loads(reference_file.read_text())
    reference_file.write_text(json.dumps({**reference, "sha256": "0" * 64}))
    try:
        mlflow.pyfunc.load_model(str(folder))
    except Exception as error:  # MLflow may wrap it
        assert "the adapter was trained on 0000" in str(error)
    else:
        raise AssertionError("loaded an adapter onto other base weights")
