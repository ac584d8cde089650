"""decompose-conv{basis=data}: bases from the layer's responses on data (whitened SVD)."""

import pytest
import torch
from torch import nn

import fxprune
from fxprune.core.errors import PipelineError
from fxprune.core.lowrank import find_pairs
from fxprune.core.svd import response_basis

from .conftest import randomize_bn

X = torch.randn(4, 3, 16, 16)


def test_data_basis_is_lossless_at_full_rank(tiny):
    model = randomize_bn(tiny).eval()
    data = [(torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long))] * 2
    gm = fxprune.prune(model, X, "decompose-conv{basis=data}", data=data, verify=True)
    assert fxprune.history(gm)[-1].stats["convs-decomposed"] == 3  # stem, grouped (4 groups), pw
    with torch.no_grad():
        torch.testing.assert_close(gm(X), model(X), rtol=1e-5, atol=1e-6)


def test_data_basis_is_lossless_where_the_data_never_reaches():
    a = torch.randn(1, 6, 10, dtype=torch.float64)
    inputs = torch.zeros(10, 100, dtype=torch.float64)
    inputs[:2] = torch.randn(2, 100)  # the data excites 2 of 10 input directions
    y = a[0] @ inputs
    coef, basis = response_basis(a, (y @ y.T / 100)[None])
    torch.testing.assert_close(coef @ basis, a, rtol=0, atol=1e-12)
    coef0, basis0 = response_basis(a, torch.zeros(1, 6, 6, dtype=torch.float64))  # no response: a's SVD
    torch.testing.assert_close(coef0.norm(dim=1)[0], torch.linalg.svdvals(a[0]), rtol=1e-12, atol=0)


def test_first_data_basis_captures_the_dominant_input_direction():
    torch.manual_seed(1)
    w = torch.randn(5, 8, dtype=torch.float64)
    d = torch.linalg.svd(w).Vh[4]  # the direction w amplifies least: last for a plain SVD
    inputs = 3.0 * torch.randn(400, 1, dtype=torch.float64) * d + 0.01 * torch.randn(400, 8, dtype=torch.float64)
    layer = nn.Linear(8, 5, bias=False).double()
    layer.weight.data = w
    gm = fxprune.prune(nn.Sequential(layer), inputs[:1], "decompose-conv{basis=data}", data=[(inputs, torch.zeros(400))])
    pair = find_pairs(gm)[0]
    first = pair.coef_matrix()[0, :, :1] @ pair.basis_matrix()[0, :1]  # the rank-1 layer
    assert ((first @ d - w @ d).norm() / (w @ d).norm()).item() < 1e-3  # keeps what the data uses
    u, s, vh = torch.linalg.svd(w)
    plain = s[0] * u[:, :1] @ vh[:1]
    assert ((plain @ d).norm() / (w @ d).norm()).item() < 1e-6  # the plain SVD's first basis loses it all
    importance = pair.importance()[0]  # RMS response along each basis: the first carries nearly all
    assert (importance[0] ** 2 / (importance ** 2).sum()).item() > 0.999


def test_data_basis_needs_data(tiny):
    with pytest.raises(PipelineError) as err:
        fxprune.prune(tiny, X, "decompose-conv{basis=data}")
    assert str(err.value) == ("decompose-conv: basis=data needs data: pass batches of (inputs, targets), e.g. "
                              "fxprune.prune(model, x, pipeline, data=train_loader)")
