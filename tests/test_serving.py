"""The adapter as an MLflow model: adapter-only artifacts, a base reference, exact round trip;
many adapters in one model, each answering as it does alone."""

import json
import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException

from lora_study import registry, serving, training
from lora_study.config import AdapterConfig, BaseModelConfig, DataConfig, TrainConfig
from lora_study.errors import UserInputError


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


# --- many adapters on one base -------------------------------------------------------------------

PROMPTS = ["The list type", "A dict maps", "def f(x):"]


def two_registered_adapters(name: str) -> tuple[str, str]:
    """Versions 1 (@champion) and 2 of `name`: two adapters, different enough to answer differently."""
    _, _, first, _ = trained_adapter()
    _, _, second, _ = trained_adapter(AdapterConfig(rank=16, alpha=64, target_modules="all-linear"))
    for run_id in (first, second):
        registry.register(f"runs:/{run_id}/adapter", name, {})
    registry.set_alias(name, "champion", "1")
    return first, second


def answers(model_uri: str, prompts=PROMPTS, **params):
    model = mlflow.pyfunc.load_model(model_uri)
    return model.predict(pd.DataFrame({"prompt": prompts}), params={"max_new_tokens": 8, **params})


def test_many_adapters_on_one_base_answer_as_each_adapter_alone():
    first, second = two_registered_adapters("multi-docs")
    alone = {"multi-docs@champion": answers(f"runs:/{first}/adapter"), "multi-docs@2": answers(f"runs:/{second}/adapter")}
    assert alone["multi-docs@champion"] != alone["multi-docs@2"]  # else selection could not be seen
    saved = serving.save_multi_adapter_model(serving.adapter_entries("multi-docs@champion,multi-docs@2"))
    assert serving.save_multi_adapter_model(serving.adapter_entries("multi-docs@champion,multi-docs@2")) == saved
    assert sum(f.stat().st_size for f in saved.rglob("*") if f.is_file()) < 500_000  # adapters, no base
    model = mlflow.pyfunc.load_model(str(saved))
    frame = pd.DataFrame({"prompt": PROMPTS})
    assert model.predict(frame, params={"max_new_tokens": 8}) == alone["multi-docs@champion"]  # the first
    assert model.predict(frame, params={"max_new_tokens": 8, "adapter": "multi-docs@2"}) == alone["multi-docs@2"]
    per_row = pd.DataFrame({"prompt": PROMPTS, "adapter": ["multi-docs@2", None, "multi-docs@champion"]})
    mixed = model.predict(per_row, params={"max_new_tokens": 8, "adapter": "multi-docs@champion"})
    assert mixed == [alone["multi-docs@2"][0], alone["multi-docs@champion"][1], alone["multi-docs@champion"][2]]
    peft_model = model.unwrap_python_model().model
    assert set(peft_model.peft_config) == {"adapter-0", "adapter-1"}  # one base, both adapters beside it
    with pytest.raises(MlflowException, match=r"unknown adapter 'nope' \(this server has: multi-docs@champion, multi-docs@2\)"):
        model.predict(frame, params={"adapter": "nope"})


def test_adapters_on_different_bases_are_refused():
    model, s, _, _ = trained_adapter()
    with mlflow.start_run() as run:
        reference = serving.base_reference(s.ref, "8bit", s.weights_dtype, "text")
        serving.log_adapter(model, reference)
    _, _, plain, _ = trained_adapter()
    entries = [("plain", f"runs:/{plain}/adapter"), ("eight", f"runs:/{run.info.run_id}/adapter")]
    with pytest.raises(UserInputError, match=r"--adapters eight: its base differs from plain's in quantization \(8bit vs none\)"):
        serving.save_multi_adapter_model(entries)


def test_adapter_entries_from_a_list_or_a_yaml_file(tmp_path):
    assert serving.adapter_entries("docs@champion, docs@3,runs:/abc/adapter") == [
        ("docs@champion", "models:/docs@champion"), ("docs@3", "models:/docs/3"),
        ("runs:/abc/adapter", "runs:/abc/adapter"),
    ]  # fmt: skip
    listing = tmp_path / "adapters.yaml"
    listing.write_text("- docs@champion\n- name: sql\n  model_uri: models:/sql/2\n")
    assert serving.adapter_entries(str(listing)) == [("docs@champion", "models:/docs@champion"), ("sql", "models:/sql/2")]


@pytest.mark.parametrize(
    "spec, content, expected",
    [
        ("docs@1,docs@1", None, "the name docs@1 is given twice"),
        (" , ", None, "names no adapter"),
        ("docs", None, "'docs' is not name@alias, name@version or a model URI"),
        ("missing.yaml", None, "--adapters missing.yaml: no such file"),
        ("LIST", "name: sql\n", "must be a YAML list of adapters"),
        ("LIST", "- docs@champion\n- {name: sql}\n", "entry 2: give `name@alias`, or `name:` and `model_uri:`"),
    ],
)
def test_bad_adapter_lists_are_one_clear_line(spec, content, expected, tmp_path):
    if content is not None:
        spec = str(tmp_path / "adapters.yaml")
        Path(spec).write_text(content)
    with pytest.raises(UserInputError, match=re.escape(expected)):
        serving.adapter_entries(spec)
