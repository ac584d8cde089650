"""Thin SVD of a batch of weight matrices (g, m, n) in float64, through the Gram matrix where it is
accurate and LAPACK elsewhere.

Gram: for m <= n, G = A A^T (one GEMM) and eigh(G) = Q diag(S^2) Q^T, so U = Q and V^T = S^-1 Q^T A
(for m > n the same on A^T). It squares the condition number: the rows of V^T are orthonormal to about
eps * (s_max / s_i)^2. The rule: the Gram path is taken for a batch only if every group's smallest
eigenvalue is at least GUARD = 1e-6 of its largest (condition number <= 1e3: rows orthonormal to
~2e-10 in float64, far below float32's 6e-8 that the weights are stored in); otherwise, or where an
eigenvalue is zero or negative, torch.linalg.svd.
"""

from __future__ import annotations

import torch

GUARD = 1e-6  # smallest eigenvalue of the Gram matrix over its largest, per group


def thin_svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, V^T) of `a` (g, m, n), singular values descending, like torch.linalg.svd(full_matrices=False)."""
    a = a.double()
    wide = a.shape[1] <= a.shape[2]
    b = a if wide else a.transpose(1, 2)
    lam, q = torch.linalg.eigh(b @ b.transpose(1, 2))  # ascending
    if not (lam[:, :1] >= GUARD * lam[:, -1:]).all() or not (lam[:, -1] > 0).all():
        return torch.linalg.svd(a, full_matrices=False)
    lam, q = lam.flip(-1), q.flip(-1)
    s = lam.sqrt()
    vh = (q.transpose(1, 2) @ b) / s[:, :, None]
    return (q, s, vh) if wide else (vh.transpose(1, 2), s, q.transpose(1, 2))


RIDGE = 1e-6  # share of W W^T added to the response moment: every direction W can produce stays in the basis


def response_basis(a: torch.Tensor, moment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(coef (g, m, r), basis (g, r, n)) with coef @ basis = a (g, m, n), r = min(m, n), from the
    responses y = a x on data (`moment`: E[y y^T], (g, m, m)) rather than from a alone.

    The coef columns are the principal directions u_i of M = E[y y^T] + RIDGE * (tr E[y y^T] /
    tr a a^T) * a a^T, scaled by sigma_i = sqrt(lambda_i): the RMS response along u_i; the basis rows
    are u_i^T a / sigma_i. This is the SVD of a C^(1/2) (C the input covariance, "whitened SVD")
    without inverting C: dropping bases i costs sum lambda_i of mean squared output on that data,
    where dropping singular vectors of a costs what they would on white noise. The ridge keeps M's
    range equal to a's, so the pair equals a (lossless) even in directions the data never excites;
    with no response at all (moment 0) M = a a^T and the basis is a's own SVD.
    """
    a, moment = a.double(), moment.double()
    ww = a @ a.transpose(1, 2)
    data = moment.diagonal(dim1=1, dim2=2).sum(-1)
    plain = ww.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-300)
    m = torch.where((data > 0)[:, None, None], moment + RIDGE * (data / plain)[:, None, None] * ww, ww)
    lam, u = torch.linalg.eigh(m)  # ascending
    r = min(a.shape[1], a.shape[2])
    lam, u = lam.flip(-1)[:, :r], u.flip(-1)[:, :, :r]
    sigma = lam.clamp_min(0).sqrt()
    sigma = torch.maximum(sigma, 1e-12 * sigma[:, :1].clamp_min(1e-300))  # no division by zero
    return u * sigma[:, None, :], (u.transpose(1, 2) @ a) / sigma[:, :, None]
