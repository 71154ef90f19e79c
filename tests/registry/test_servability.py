"""Servability: the manifest a version carries from its registration, and what each serving
target refuses, with the reason (vLLM's and LoRAX's limits, as their source has them)."""

import dataclasses
import json

import mlflow
from conftest import register_echo, trained_adapter

from lora_study import cli, registry
from lora_study.config import AdapterConfig
from lora_study.registry import servability

PLAIN = servability.Manifest(
    kind=servability.ADAPTER,
    base_model="tiny",
    base_sha256="0" * 64,
    base_revision=None,
    quantization="none",
    dtype="float32",
    prompt_format="text",
    tokenizer_digest="1" * 16,
    peft_version="0.21.2",
    peft_type="LORA",
    rank=8,
    alpha=16.0,
    target_modules=("q_proj", "v_proj"),
)


def registered(name: str, adapter: AdapterConfig):
    _, s, run_id, _ = trained_adapter(adapter)
    return registry.register(f"runs:/{run_id}/adapter", name, {}), s


def test_a_registered_adapter_carries_its_manifest_and_the_servers_that_load_it(tokenizer):
    version, s = registered("manifest-plain", AdapterConfig(rank=4, alpha=8, target_modules="qkvo"))
    manifest = servability.Manifest.from_tags(version.tags)
    assert manifest == dataclasses.replace(
        PLAIN,
        base_sha256=s.ref.sha256,
        dtype=str(s.weights_dtype).removeprefix("torch."),
        tokenizer_digest=s.prepared.meta.tokenizer_digest,
        peft_version=manifest.peft_version,
        rank=4,
        alpha=8,
        target_modules=("k_proj", "o_proj", "q_proj", "v_proj"),
    )
    assert manifest.peft_version and version.tags["serves_on"] == "mlflow, vllm, lorax"
    assert servability.requirements(manifest, "vllm") == ["--enable-lora"]
    assert "Serves on: mlflow, vllm, lorax." in registry.get_version("manifest-plain", 1).description


def test_a_dora_adapter_is_refused_by_vllm_and_lorax_and_promote_says_why(capsys):
    version, _ = registered("manifest-dora", AdapterConfig(use_dora=True))
    assert version.tags["serves_on"] == "mlflow"
    manifest = servability.Manifest.from_tags(version.tags)
    assert manifest.use_dora and json.loads(version.tags["lora_study.manifest"])["use_dora"] is True
    assert servability.refusals(manifest, "vllm") == [
        'DoRA: vLLM refuses it: "vLLM does not yet support DoRA." (vllm/lora/peft_helper.py)'
    ]
    assert servability.refusals(manifest, "lorax")[0].startswith("DoRA: LoRAX never reads use_dora")
    capsys.readouterr()
    for target in ("vllm", "lorax"):  # --force overrides a comparison, not what a server loads
        argv = ["promote", "manifest-dora", "--version", "1", "--target", target, "--force"]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"lora-study: error: manifest-dora version 1 cannot be served by {target}: DoRA: ")
        assert len(err.splitlines()) == 1
    assert registry.alias_version("manifest-dora", "champion") is None
    # a version registered before versions carried a manifest: read from its model
    mlflow.MlflowClient().delete_model_version_tag("manifest-dora", "1", "lora_study.manifest")
    assert cli.main(["promote", "manifest-dora", "--version", "1", "--target", "vllm"]) == 2
    assert "cannot be served by vllm: DoRA: " in capsys.readouterr().err
    assert cli.main(["promote", "manifest-dora", "--version", "1", "--force"]) == 0  # mlflow, the default
    assert str(registry.alias_version("manifest-dora", "champion").version) == "1"


def test_each_option_a_target_cannot_load_is_refused_with_its_reason():
    cases = {
        "vllm": {
            "modules_to_save ['lm_head']: vLLM refuses": dict(modules_to_save=("lm_head",)),
            "bias 'lora_only': vLLM refuses": dict(bias="lora_only"),
            "bias 'none', lora_bias: vLLM refuses": dict(lora_bias=True),
            "init_lora_weights 'pissa_niter_4' changes the base weights: vLLM refuses": dict(
                init_lora_weights="pissa_niter_4"
            ),
            "rank 1024: vLLM's --max-lora-rank goes up to 512": dict(rank=1024),
        },
        "lorax": {
            "rsLoRA: LoRAX's image pins peft 0.4.0": dict(use_rslora=True),
            "modules_to_save ['lm_head']: LoRAX drops it": dict(modules_to_save=("lm_head",)),
            "init_lora_weights 'olora' changes the base weights: LoRAX drops it": dict(init_lora_weights="olora"),
            "rank_pattern/alpha_pattern: LoRAX does not read them": dict(per_module_ranks=True),
            "LoRA on embed_tokens: LoRAX does not load it": dict(target_modules=("embed_tokens", "q_proj")),
        },
    }
    for target, refused in cases.items():
        assert servability.refusals(PLAIN, target) == []
        for start, options in refused.items():
            (reason,) = servability.refusals(dataclasses.replace(PLAIN, **options), target)
            assert reason.startswith(start), (target, reason)
    # what vLLM serves, given the flags or version it needs
    assert servability.refusals(dataclasses.replace(PLAIN, use_rslora=True, rank=32), "vllm") == []
    assert servability.requirements(dataclasses.replace(PLAIN, rank=24), "vllm") == ["--enable-lora --max-lora-rank 32"]
    assert servability.requirements(dataclasses.replace(PLAIN, quantization="4bit"), "lorax") == [
        "--quantize bitsandbytes-nf4 (the base it was measured on; launcher/src/main.rs)"
    ]


def test_a_merged_model_or_another_model_is_no_adapter_for_vllm_or_lorax():
    merged = dataclasses.replace(PLAIN, kind=servability.MERGED)
    assert servability.refusals(merged, "vllm") == [
        "a merged model is a whole model, not a LoRA adapter: vllm serves it as a plain model, which this check "
        "does not cover"
    ]
    version = register_echo("manifest-echo")
    assert registry.get_version("manifest-echo", int(version)).tags["serves_on"] == "mlflow"
    assert servability.refusals(None, "mlflow") == []
