r"""The straightforward PDT step, as the paper's reference code computes it: the baseline for
``pdt-bench overhead --naive``.

Thin SVD of the ``N x (h-1)`` snapshot matrix :math:`X`, the reduced operator, ``N``-sized
complex modes :math:`\Phi = U\Psi`, amplitudes through the pseudo-inverse :math:`\Phi^+`, and
``tau`` ``N``-sized forecasts for the masks (Eq. 5-7), in float32/complex64 as in that code.
Nothing here is used by :mod:`torch_pdt`; it exists to measure the difference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["step"]


def step(snapshots: Sequence[Tensor], weights: Tensor, tau: int) -> int:
    """Predict ``tau`` epochs ahead from ``snapshots`` (oldest first, the newest being the
    optimizer's ``weights``), mask with Eq. 6 and 7, write the accepted elements into
    ``weights`` and return how many were accepted."""
    S = torch.stack(list(snapshots), dim=1)
    X, Y = S[:, :-1], S[:, 1:]
    U, s, Vh = torch.linalg.svd(X, full_matrices=False)
    keep = s > s[0] * max(X.shape) * torch.finfo(s.dtype).eps
    U, s, V = U[:, keep], s[keep], Vh[keep].T
    A = U.T @ Y @ V / s
    lam, Psi = torch.linalg.eig(A)
    Phi = U.to(Psi.dtype) @ Psi
    b = torch.linalg.pinv(Phi) @ weights.to(Phi.dtype)
    previous = weights.clone()
    delta = weights - S[:, -2]
    consistent = torch.ones_like(weights, dtype=torch.bool)
    for k in range(1, tau + 1):
        forecast = (Phi @ (lam**k * b)).real
        consistent &= torch.sign(forecast - previous) == torch.sign(delta)
        previous = forecast
    jump = (previous - weights).abs()
    accept = consistent & (jump > delta.abs()) & (jump <= tau * delta.abs()) & torch.isfinite(previous)
    weights.copy_(torch.where(accept, previous, weights))
    return int(accept.sum())
