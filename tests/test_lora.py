"""LoRA targets, attaching and detaching adapters, and their parameter counts on the tiny Llama."""

import pytest
import torch

from lora_study import lora, models
from lora_study.config import AdapterConfig
from lora_study.errors import UserInputError

ATTENTION = ["k_proj", "o_proj", "q_proj", "v_proj"]
MLP = ["down_proj", "gate_proj", "up_proj"]
QV_RANK_8_PARAMS = 3584  # 2 layers x (q_proj + v_proj) x rank 8 x (in + out features)


@pytest.fixture(scope="module")
def base(tiny):
    """A base nobody attaches to: for reading module names only."""
    return models.load_model(tiny)


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


@pytest.mark.parametrize(
    "preset, expected",
    [
        ("q", ["q_proj"]),
        ("v", ["v_proj"]),
        ("qv", ["q_proj", "v_proj"]),
        ("qkvo", ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("attention", ATTENTION),
        ("mlp", MLP),
    ],
)
def test_presets_name_the_modules_of_the_tiny_llama(base, preset, expected):
    assert lora.resolve_targets(base, preset) == expected


@pytest.mark.parametrize(
    "preset, wrapped",
    [
        ("qkvo", set(ATTENTION)),
        ("mlp", set(MLP)),
        ("all-linear", set(ATTENTION + MLP)),
        ("k_proj,down_proj", {"k_proj", "down_proj"}),
    ],
)
def test_attach_wraps_exactly_the_modules_a_preset_names(tiny, preset, wrapped):
    model = lora.attach(models.load_model(tiny), AdapterConfig(target_modules=preset), seed=0)
    adapted = {name.rsplit(".", 1)[1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == wrapped


def test_all_linear_is_left_to_peft(base):
    assert lora.resolve_targets(base, "all-linear") == "all-linear"


def test_comma_separated_names_are_taken_as_given(base):
    assert lora.resolve_targets(base, " q_proj, up_proj ,") == ["q_proj", "up_proj"]


def test_an_unknown_name_lists_the_names_the_model_has(base):
    with pytest.raises(UserInputError) as raised:
        lora.resolve_targets(base, "q_proj,query")
    message = str(raised.value)
    assert "no linear module named query;" in message
    listed = message.split("names from: ", 1)[1]
    assert listed.split(", ") == sorted(ATTENTION + MLP)  # every linear layer but the head


def test_the_seed_fixes_the_initial_adapter_weights(tiny):
    first = lora_weights(lora.attach(models.load_model(tiny), AdapterConfig(), seed=7))
    again = lora_weights(lora.attach(models.load_model(tiny), AdapterConfig(), seed=7))
    other = lora_weights(lora.attach(models.load_model(tiny), AdapterConfig(), seed=8))
    assert len(first) == 8 and first.keys() == again.keys() == other.keys()  # A and B of q, v in 2 layers
    assert all(torch.equal(first[name], again[name]) for name in first)
    lora_a = [name for name in first if "lora_A" in name]
    assert not any(torch.equal(first[name], other[name]) for name in lora_a)


def test_detach_gives_back_the_base_bit_for_bit(tiny):
    untouched = models.load_model(tiny).state_dict()
    model = models.load_model(tiny)
    peft_model = lora.attach(model, AdapterConfig(target_modules="all-linear"), seed=0)
    with torch.no_grad():  # a trained adapter: detaching must drop it, not merge it
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(1.0)
    assert lora.detach(model) is model
    state = model.state_dict()
    assert state.keys() == untouched.keys()
    assert all(torch.equal(state[key], untouched[key]) for key in untouched)
    assert not hasattr(model, "peft_config")
    assert lora.parameter_counts(lora.attach(model, AdapterConfig(), seed=0))[0] == QV_RANK_8_PARAMS  # reusable


def test_parameter_counts_of_a_rank_8_qv_adapter(tiny):
    model = models.load_model(tiny)
    base_params = sum(p.numel() for p in model.parameters())
    peft_model = lora.attach(model, AdapterConfig(rank=8, target_modules="qv"), seed=0)
    assert lora.parameter_counts(peft_model) == (QV_RANK_8_PARAMS, base_params + QV_RANK_8_PARAMS)


def test_lora_dropout_drops_the_share_p_and_scales_the_rest_as_nn_dropout_does(tiny):
    model = lora.attach(models.load_model(tiny), AdapterConfig(dropout=0.2), seed=0)
    dropouts = [m for m in model.modules() if isinstance(m, lora.Dropout)]
    assert len(dropouts) == 4 and all(d.p == 0.2 for d in dropouts)  # 2 layers x q_proj, v_proj
    dropout = dropouts[0].train()
    x = torch.full((64, 1000), 2.0, dtype=torch.bfloat16, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x)
    assert set(y.unique().tolist()) == {0.0, 2.5}  # 2 / (1 - 0.2)
    assert abs((y == 0).float().mean().item() - 0.2) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)  # the gradient flows through the kept elements only
    torch.manual_seed(3)
    assert torch.equal(dropout(x), y)  # the seed fixes the mask
    assert dropout.eval()(x) is x


def test_lora_inputs_stay_in_the_autocast_dtype_only_where_autocast_casts_them(tiny):
    model = lora.attach(models.load_model(tiny).to(torch.bfloat16), AdapterConfig(), seed=0)
    layers = [m for m in model.modules() if hasattr(m, "lora_A")]
    assert layers[0].lora_A["default"].weight.dtype == torch.float32  # bf16 inputs, fp32 adapter weights
    with lora.inputs_uncast(model, AdapterConfig(), torch.bfloat16):
        assert not any(layer.cast_input_dtype_enabled for layer in layers)
        ids = torch.tensor([[1, 2, 3, 4]])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(input_ids=ids).logits.isfinite().all()
    assert all(layer.cast_input_dtype_enabled for layer in layers)
    for unsafe in (AdapterConfig(use_dora=True), AdapterConfig(quantization="8bit")):
        with lora.inputs_uncast(model, unsafe, torch.bfloat16):
            assert all(layer.cast_input_dtype_enabled for layer in layers)
    with lora.inputs_uncast(model, AdapterConfig(), None):  # fp32: no autocast to cast
        assert all(layer.cast_input_dtype_enabled for layer in layers)
