import json

import pytest
import torch

from lora_study import models
from lora_study.cache import file_sha256
from lora_study.errors import UserInputError


def test_tiny_is_a_small_llama_with_smollm2s_tokenizer(tiny, tokenizer):
    model = models.load_model(tiny)
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 2, 64)
    assert config.vocab_size == len(tokenizer) == 49152
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    assert tiny.sha256 == file_sha256(models.Path(tiny.path) / "model.safetensors")


def test_tiny_weights_are_the_same_every_time(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDY_CACHE", str(tmp_path))
    assert models.resolve(models.TINY).sha256 == tiny.sha256


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_tiny_loads_and_runs_on_cpu(tiny, tokenizer, quantization):
    model = models.load_model(tiny, quantization)
    layer = model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}[quantization]
    if quantization == "4bit":
        assert layer.weight.quant_type == "nf4"
        assert model.config.quantization_config.bnb_4bit_use_double_quant
    ids = tokenizer("def add(a, b):", return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    assert torch.isfinite(loss)


def test_a_local_checkpoint_directory_loads_with_its_sha(tiny, tmp_path):
    models.load_model(tiny).save_pretrained(tmp_path)
    models.load_tokenizer(tiny).save_pretrained(tmp_path)
    ref = models.resolve(str(tmp_path))
    assert ref.path == str(tmp_path.resolve()) and len(ref.sha256) == 64
    assert models.load_model(ref).config.hidden_size == 64


def test_a_directory_without_config_is_refused(tmp_path):
    with pytest.raises(UserInputError, match="no config.json"):
        models.resolve(str(tmp_path))


def test_an_unknown_name_is_refused_with_the_allowed_forms():
    with pytest.raises(UserInputError, match="smollm2-135m.*tiny.*hub id"):
        models.resolve("no-such-model")


def test_an_unreachable_hub_id_fails_fast_in_one_line():
    with pytest.raises(UserInputError) as caught:
        models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "cannot reach" in str(caught.value) and "\n" not in str(caught.value)


def test_a_hub_id_is_pinned_to_its_current_revision(monkeypatch):
    class Info:
        sha = "0123abc"

    monkeypatch.setattr("huggingface_hub.HfApi.model_info", lambda self, repo_id: Info())
    ref = models.resolve("someone/some-model", trust_remote_code=True)
    assert (ref.path, ref.revision, ref.sha256, ref.trust_remote_code) == ("someone/some-model", "0123abc", None, True)


def test_the_tokenizer_digest_tells_tokenizers_apart(tokenizer):
    digest = models.tokenizer_digest(tokenizer)
    assert digest == models.tokenizer_digest(tokenizer)
    tokenizer_copy = models.load_tokenizer(models.resolve(models.TINY))
    tokenizer_copy.chat_template = "{{ messages }}"
    assert models.tokenizer_digest(tokenizer_copy) != digest


@pytest.mark.smoke
def test_smollm2_is_rebuilt_from_the_bundled_gguf_and_cached(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("LORA_STUDY_CACHE", str(tmp_path))
    gguf = models.smollm2_gguf()
    ref = models.resolve(models.SMOLLM2)
    assert ref.sha256 == file_sha256(gguf)
    folder = models.Path(ref.path)
    assert folder.parent == tmp_path / "models" and (folder / "model.safetensors").exists()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    rebuilt = models.load_model(ref)
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ids = models.load_tokenizer(ref)("Python's list.sort() is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, original(ids).logits)
    mtime = (folder / "model.safetensors").stat().st_mtime
    assert models.resolve(models.SMOLLM2).path == ref.path  # built once, then reused
    assert (folder / "model.safetensors").stat().st_mtime == mtime
