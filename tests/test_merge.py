"""fold's merge of a pair back into one layer: the original layer where the pair still equals it
(seen through random probes, never by forming the product), the product where something was cut."""

import pytest
import torch
from torch import nn

import fxprune
from fxprune.core.lowrank import ORIGINAL, find_pairs, merge_pair


def layer_with_last_singular_value(last: float) -> nn.Linear:
    """Linear(64, 32) with singular values 1 (31 of them) and `last`."""
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(32, 32, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(64, 32, generator=gen))
    layer = nn.Linear(64, 32)
    with torch.no_grad():
        layer.weight.copy_((u * torch.tensor([1.0] * 31 + [last])) @ v.T)
    return layer


def cut_last_basis(last: float):
    """(pair with its smallest basis's coefficients zeroed, the layer it was made from)."""
    layer = layer_with_last_singular_value(last)
    gm = fxprune.prune(nn.Sequential(layer), torch.randn(2, 64), "decompose-conv")
    pair = find_pairs(gm)[0]
    with torch.no_grad():
        pair.coef.weight[:, -1] = 0
    return pair, gm.get_submodule(pair.path).__dict__[ORIGINAL], layer


def test_an_untouched_pair_merges_back_into_the_layer_it_was_made_from():
    layer = layer_with_last_singular_value(0.5)
    gm = fxprune.prune(nn.Sequential(layer), torch.randn(2, 64), "decompose-conv")
    pair = find_pairs(gm)[0]
    original = gm.get_submodule(pair.path).__dict__[ORIGINAL]
    assert merge_pair(pair, original) is original


@pytest.mark.parametrize("last, same", [(1e-3, False),  # cut: relative L2 1.8e-4 of the weight, over 1e-5
                                        (1e-7, True)])  # 1.8e-8: within the float32 factors' own rounding
def test_a_cut_pair_merges_into_its_product_unless_the_cut_is_below_the_limit(last, same):
    pair, original, layer = cut_last_basis(last)
    merged = merge_pair(pair, original)
    assert (merged is original) == same
    if not same:
        want = pair.coef.weight.double() @ pair.basis.weight.double()
        torch.testing.assert_close(merged.weight.double(), want, rtol=0, atol=1e-7)
        assert torch.equal(merged.bias, layer.bias)
        error = (merged.weight - layer.weight).norm() / layer.weight.norm()
        assert error.item() == pytest.approx(1e-3 / 31 ** 0.5, rel=1e-3)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_the_layer_merged_back_follows_the_model_where_it_moved(device):
    # the layer a pair was made from is kept beside it, not as a submodule, so .to() leaves it behind
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, device=device)
    gm = fxprune.prune(model, x.float().cpu(), "decompose-conv").to(device=device, dtype=torch.float64)
    folded = fxprune.prune(gm, x, "fold")
    weights = {(p.device.type, p.dtype) for p in folded.parameters()}
    assert weights == {(torch.device(device).type, torch.float64)}
    torch.testing.assert_close(folded(x), model.to(device=device, dtype=torch.float64)(x), rtol=0, atol=1e-12)
