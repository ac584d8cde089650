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


def lapack_shapes(monkeypatch):
    """The shapes of the matrices torch.linalg.svd is called on from now on."""
    calls, lapack = [], torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda a, *args, **kw: calls.append(tuple(a.shape)) or lapack(a, *args, **kw))
    return calls


def test_singular_values_down_to_1e_12_go_to_lapack_as_a_tail_only(monkeypatch):
    # sigma_i = 10^(-12 i / 31): the 8 above 1e-3 take the Gram path (their squares are >= 1e-6 of the
    # largest); the other 24, down to 1e-12, would lose all accuracy squared
    a = with_spectrum(1, 32, 64, torch.logspace(0, -12, 32, dtype=torch.float64))
    calls = lapack_shapes(monkeypatch)
    u, s, vh = svd.thin_svd(a)
    assert calls == [(24, 64), (24, 24)]  # the tail's rows, then the tail written on its re-orthonormalised rows
    check(a, u, s, vh, tol=1e-12, ortho=1e-10)
    assert s[0, -1].item() == pytest.approx(1e-12, rel=1e-3)


def test_a_random_square_matrix_sends_only_its_smallest_directions_to_lapack(monkeypatch):
    a = torch.randn(1, 512, 512, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    calls = lapack_shapes(monkeypatch)
    check(a, *svd.thin_svd(a), tol=1e-12, ortho=1e-10)
    assert len(calls) == 2 and calls[0][0] == calls[1][0] < 8  # a few of 512 (sigma < 1e-3 sigma_max)


def test_a_rank_deficient_matrix_keeps_an_orthonormal_basis(monkeypatch):
    # the zero singular values leave LAPACK free to pick the tail's rows; they are made orthogonal to the
    # Gram rows, or all of the matrix goes to LAPACK
    a = with_spectrum(1, 8, 20, torch.tensor([3.0, 2.0, 1.0, 0, 0, 0, 0, 0], dtype=torch.float64))
    check(a, *svd.thin_svd(a), tol=1e-14)


def test_tail_rows_that_stay_tilted_send_the_whole_matrix_to_lapack(monkeypatch):
    a = with_spectrum(1, 8, 20, torch.tensor([3.0, 2.0, 1.0, 0, 0, 0, 0, 0], dtype=torch.float64))
    monkeypatch.setattr(svd, "ORTHO", -1.0)  # no overlap is small enough
    calls = lapack_shapes(monkeypatch)
    check(a, *svd.thin_svd(a), tol=1e-14)
    assert calls == [(5, 20), (8, 20)]


def test_a_zero_matrix():
    u, s, vh = svd.thin_svd(torch.zeros(2, 4, 6, dtype=torch.float64))
    assert not s.any() and ((u * s[:, None, :]) @ vh).abs().max() == 0
    torch.testing.assert_close(vh @ vh.transpose(1, 2), torch.eye(4, dtype=torch.float64).expand(2, 4, 4))
