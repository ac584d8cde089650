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
