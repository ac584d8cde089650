"""The thin SVD behind decompose-conv: the Gram-matrix path where the spectrum allows it, LAPACK where not."""

import pytest
import torch

from fxprune.core import svd


def with_spectrum(g, m, n, values, seed=0):
    gen = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(g, m, k, dtype=torch.float64, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(g, n, k, dtype=torch.float64, generator=gen))
    return (u * values) @ v.transpose(1, 2)


def check(a, u, s, vh, tol, ortho=1e-12):
    k = s.shape[1]
    eye = torch.eye(k, dtype=torch.float64)
    assert torch.all(s[:, :-1] >= s[:, 1:])  # descending
    assert ((u * s[:, None, :]) @ vh - a).abs().max() <= tol * a.abs().max()
    assert (vh @ vh.transpose(1, 2) - eye).abs().max() <= ortho and (u.transpose(1, 2) @ u - eye).abs().max() <= ortho
    torch.testing.assert_close(s, torch.linalg.svdvals(a), rtol=0, atol=tol * s.max().item())


@pytest.mark.parametrize("shape", [(1, 16, 144), (4, 8, 72), (2, 96, 24)])  # wide, grouped, tall
def test_a_well_conditioned_batch_takes_the_gram_path_and_is_exact(monkeypatch, shape):
    a = with_spectrum(*shape, torch.linspace(10, 0.1, min(shape[1:]), dtype=torch.float64))
    monkeypatch.setattr(torch.linalg, "svd", lambda *args, **kw: pytest.fail("LAPACK SVD was called"))
    # condition number 100: the Gram path keeps orthonormality to eps * 100^2 ~ 2e-12
    check(a, *svd.thin_svd(a), tol=1e-12, ortho=1e-11)


def test_singular_values_down_to_1e_12_fall_back_to_lapack(monkeypatch):
    a = with_spectrum(1, 32, 64, torch.logspace(0, -12, 32, dtype=torch.float64))
    calls = []
    lapack = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda *args, **kw: calls.append(1) or lapack(*args, **kw))
    u, s, vh = svd.thin_svd(a)
    assert calls == [1]  # the Gram matrix would square a 1e12 condition number
    check(a, u, s, vh, tol=1e-12)
    assert s[0, -1].item() == pytest.approx(1e-12, rel=1e-3)


def test_a_rank_deficient_matrix_falls_back(monkeypatch):
    a = with_spectrum(1, 8, 20, torch.tensor([3.0, 2.0, 1.0, 0, 0, 0, 0, 0], dtype=torch.float64))
    u, s, vh = svd.thin_svd(a)
    assert ((u * s[:, None, :]) @ vh - a).abs().max() < 1e-14
