"""Thin SVD of a batch of weight matrices (g, m, n) in float64, through the Gram matrix, with LAPACK
only on the part of the spectrum the Gram matrix cannot resolve.

Gram: for m <= n, G = A A^T (one GEMM) and eigh(G) = Q diag(S^2) Q^T, so U = Q and V^T = S^-1 Q^T A
(for m > n the same on A^T). It squares the condition number: row i of V^T is orthonormal to about
eps * (s_max / s_i)^2. The rule: directions whose eigenvalue is at least GUARD = 1e-6 of the largest
(s_i >= 1e-3 s_max: rows orthonormal to ~2e-10 in float64, far below float32's 6e-8 that the weights
are stored in) take the Gram path. The rest ("tail": small, zero or negative eigenvalues; rarely more
than a few rows, e.g. random square layers) are projected off the Gram rows and given to LAPACK
(torch.linalg.svd of a (tail, n) matrix, not of A); their product with the Gram rows moves into the
Gram rows' coefficients, so U S V^T = A holds exactly, V^T is orthonormal and U to ~eps * 1e6.
"""

from __future__ import annotations

import torch

GUARD = 1e-6  # smallest eigenvalue of the Gram matrix over its largest taken on the Gram path
ORTHO = 1e-10  # largest overlap of a tail row of V^T with a Gram row before the group goes to LAPACK whole


CHUNK = 1 << 18  # elements of the weight widened to float64 at once (2 MiB): one float64 copy, not three
COLUMNS = 256  # but at least this many columns a block: narrower blocks slow the GEMMs


def thin_svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, V^T) of `a` (g, m, n), singular values descending, like torch.linalg.svd(full_matrices=False).
    In float64 whatever `a`'s dtype; `a` is widened a block of columns at a time, so the only full-size
    float64 tensor is the result's V^T (or U)."""
    wide = a.shape[1] <= a.shape[2]
    b = a if wide else a.transpose(1, 2)
    blocks = _blocks(b)
    gram = torch.zeros(b.shape[0], b.shape[1], b.shape[1], dtype=torch.float64, device=b.device)
    for j in blocks:
        c = b[:, :, j].double()
        gram.baddbmm_(c, c.transpose(1, 2))
    lam, q = torch.linalg.eigh(gram)  # ascending
    lam, q = lam.flip(-1), q.flip(-1)
    vh = torch.empty(b.shape, dtype=torch.float64, device=b.device)
    for j in blocks:
        vh[:, :, j] = q.transpose(1, 2) @ b[:, :, j].double()  # rows s_i v_i^T
    good = (lam >= GUARD * lam[:, :1]) & (lam > 0)
    s = lam.clamp_min(0).sqrt()
    u = q.clone()
    vh /= torch.where(good, s, 1.0)[:, :, None]  # Gram rows v_i^T; the tail's rows stay s_i v_i^T
    for i in (~good.all(1)).nonzero().flatten().tolist():
        u[i], s[i], vh[i] = _with_tail(b[i], q[i], vh[i], s[i], int(good[i].sum()))
    return (u, s, vh) if wide else (vh.transpose(1, 2), s, u.transpose(1, 2))


def _blocks(b: torch.Tensor) -> list[slice]:
    cols = max(COLUMNS, CHUNK // max(1, b.shape[0] * b.shape[1]))
    return [slice(j, j + cols) for j in range(0, b.shape[2], cols)]


def _with_tail(b: torch.Tensor, q: torch.Tensor, vh: torch.Tensor, s: torch.Tensor, k: int):
    """One group's (U, S, V^T) of B from Q, S and Q^T B whose first k rows (the directions on the Gram
    path) are already divided by their singular values.

    The tail T (Q^T B's other rows, less what they share with the Gram rows) goes to LAPACK; its rows
    of V^T are projected off the Gram rows once more and re-orthonormalised (LAPACK is free to tilt
    the singular vectors of values near rounding level), and T is written on them. All of B goes to
    LAPACK where they still overlap the Gram rows (T of lower rank than its rows, so they cannot all
    be independent of the Gram rows)."""
    vg = vh[:k]
    p = vh[k:] @ vg.T  # what the tail rows share with the Gram rows (~0 in exact arithmetic)
    t = vh[k:] - p @ vg
    vht = torch.linalg.svd(t, full_matrices=False).Vh
    vht = torch.linalg.qr((vht - (vht @ vg.T) @ vg).T).Q.T
    if k and (vht @ vg.T).abs().max() > ORTHO:
        return torch.linalg.svd(b.double(), full_matrices=False)
    w, st, z = torch.linalg.svd(t @ vht.T)
    u = torch.cat([q[:, :k] + q[:, k:] @ p / s[:k], q[:, k:] @ w], 1)
    s, order = torch.cat([s[:k], st]).sort(descending=True)
    return u[:, order], s, torch.cat([vg, z @ vht])[order]


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
