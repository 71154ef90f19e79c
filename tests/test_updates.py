"""An adapter's update read from its factors: every figure against a dense computation of dW."""

import math

import pytest
import torch

from lora_study import updates


def orthonormal(rows: int, columns: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(rows, columns, generator=generator, dtype=torch.float64)).Q


def known_factors(singular: list[float], d_out: int = 24, d_in: int = 16, seed: int = 0):
    """B (d_out x r) and A (r x d_in) whose product has exactly these singular values, mixed by an
    invertible r x r matrix so that neither factor is itself orthogonal."""
    r = len(singular)
    u, v = orthonormal(d_out, r, seed), orthonormal(d_in, r, seed + 1)
    mix = torch.randn(r, r, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64) + 3 * torch.eye(r)
    return u @ torch.diag(torch.tensor(singular, dtype=torch.float64)) @ mix, torch.linalg.inv(mix) @ v.T


def test_singular_values_and_norm_equal_those_of_the_dense_update():
    b, a = known_factors([4.0, 2.0, 1.0, 0.5])
    update = updates.factor(b.float(), a.float(), scale=2.0)
    dense = 2.0 * b @ a
    assert torch.allclose(update.singular, torch.tensor([8.0, 4.0, 2.0, 1.0], dtype=torch.float64), atol=1e-4)
    assert torch.allclose(update.singular, torch.linalg.svdvals(dense)[:4], atol=1e-4)
    assert updates.frobenius(update) == pytest.approx(float(torch.linalg.norm(dense)), rel=1e-5)
    assert torch.allclose(update.dense(), dense, atol=1e-4)
    assert torch.allclose(update.left.T @ update.left, torch.eye(4, dtype=torch.float64), atol=1e-10)


def test_effective_rank_is_the_exponential_of_the_singular_value_entropy():
    assert updates.effective_rank(torch.tensor([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    assert updates.effective_rank(torch.tensor([5.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert updates.effective_rank(torch.zeros(3)) == 0.0
    b, a = known_factors([4.0, 2.0, 1.0, 0.5])
    s = torch.linalg.svdvals(b @ a)[:4]
    p = s / s.sum()
    assert updates.effective_rank(updates.factor(b, a, 1.0).singular) == pytest.approx(
        math.exp(float(-(p * p.log()).sum()))
    )


def test_energy_rank_counts_the_directions_holding_90_percent_of_the_squared_norm():
    assert updates.energy_rank(torch.tensor([3.0, 1.0])) == 1  # 9 of 10
    assert updates.energy_rank(torch.tensor([3.0, 1.0, 1.0])) == 2  # 9, then 10 of 11
    assert updates.energy_rank(torch.tensor([2.0, 1.0, 1.0])) == 3  # 4, 5, then 6 of 6
    assert updates.energy_rank(torch.tensor([1.0, 1.0, 1.0, 1.0])) == 4
    assert updates.energy_rank(torch.zeros(2)) == 0


def test_subspace_similarity_is_one_with_itself_zero_when_orthogonal_and_as_dense_between():
    b, a = known_factors([3.0, 2.0, 1.0])
    first = updates.factor(b, a, 1.0)
    assert updates.subspace_similarity(first, first) == pytest.approx(1.0)
    basis = torch.eye(24, dtype=torch.float64)
    own = updates.Update("m", torch.ones(3), basis[:, :3], basis[:16, :3])
    other = updates.Update("m", torch.ones(3), basis[:, 3:6], basis[:16, :3])
    assert updates.subspace_similarity(own, other) == pytest.approx(0.0)
    b2, a2 = known_factors([1.0, 1.0], seed=7)
    second = updates.factor(b2, a2, 1.0)
    u1 = torch.linalg.svd(b @ a).U[:, :2]
    u2 = torch.linalg.svd(b2 @ a2).U[:, :2]
    dense = float(torch.linalg.norm(u1.T @ u2) ** 2 / 2)
    assert updates.subspace_similarity(first, second) == pytest.approx(dense, abs=1e-9)


def test_an_update_along_a_direction_the_base_lacks_is_an_intruder():
    weight = torch.diag(torch.arange(16, 0, -1, dtype=torch.float64))  # singular vectors: the axes
    spread = torch.ones(16, 1, dtype=torch.float64) / 4  # |cosine| 0.25 with every axis
    big = updates.factor(100 * spread, spread.T, 1.0)
    small = updates.factor(1e-3 * spread, spread.T, 1.0)
    assert updates.intruders(weight, big, top_k=1, threshold=0.5) == 1
    assert updates.intruders(weight, small, top_k=4, threshold=0.5) == 0


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.ModuleDict({"q_proj": torch.nn.Linear(16, 24)}) for _ in range(2)])


@pytest.mark.parametrize("use_rslora", [False, True])
def test_a_peft_models_updates_are_the_delta_weights_peft_applies(use_rslora):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_rslora=use_rslora)
    model = get_peft_model(TwoLayers(), config)
    layers = updates.lora_layers(model)
    assert list(layers) == ["layers.0.q_proj", "layers.1.q_proj"]  # as the base model names them
    for number, (name, layer) in enumerate(layers.items()):
        b, a = known_factors([4.0, 2.0, 1.0, 0.5], seed=number)
        layer.lora_B["default"].weight.data, layer.lora_A["default"].weight.data = b.float(), a.float()
        update = updates.of_layer(name, layer)
        dense = layer.get_delta_weight("default").double()  # what PEFT adds to the weight
        assert (update.layer, update.kind) == (number, "q_proj")
        assert torch.allclose(update.dense(), dense, atol=1e-4)
        scale = 8 / math.sqrt(4) if use_rslora else 8 / 4
        assert torch.allclose(
            update.singular, scale * torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=torch.float64), atol=1e-4
        )
        assert torch.equal(updates.base_weight(layer), layer.get_base_layer().weight)
        assert updates.weight_norm(layer) == pytest.approx(float(torch.linalg.norm(layer.get_base_layer().weight)))
