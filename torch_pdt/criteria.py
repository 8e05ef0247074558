r"""Element-wise masking criteria: which predicted weights PDT accepts.

Every criterion sees, for a chunk of ``c`` scalar parameters,

* ``increments``: ``(tau, c)`` predicted steps :math:`\hat w_{i+k} - \hat w_{i+k-1}`,
  ``k = 1..tau``, with :math:`\hat w_i := w_i` (so they sum to the total displacement);
* ``displacement``: ``(c,)`` their sum, the predicted displacement :math:`D`;
* ``delta``: ``(c,)`` the optimizer's own last displacement :math:`\Delta` (one epoch);

and returns a :class:`Verdict`. The paper's criteria (Sec. 3.2) are

.. math::
    \text{Eq. 6:}\ |\Delta_j| < |D_j| \le \tau|\Delta_j|, \qquad
    \text{Eq. 7:}\ \operatorname{sign}(\hat w_{i+k,j} - \hat w_{i+k-1,j})
    = \operatorname{sign}(\Delta_j)\ \ \forall k = 1..\tau .

``sign(0) = 0``, so an element whose optimizer step is exactly zero never passes Eq. 6 and
passes Eq. 7 only if every predicted step is exactly zero too.

The authors' code (``"reference"``) checks only the final displacement and has inclusive
bounds with a ``tau + 1`` upper bound: :math:`\operatorname{sign}(D_j) = \operatorname{sign}(\Delta_j)`,
:math:`|\Delta_j| \le |D_j| \le (\tau + 1)|\Delta_j|`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CRITERIA", "NEEDS_STEPS", "Verdict", "evaluate"]


@dataclass
class Verdict:
    """Accepted elements and, for each check the criterion applies, the elements it rejects."""

    accept: Tensor
    consistency: Tensor | None = None
    lower_bound: Tensor | None = None
    upper_bound: Tensor | None = None


def _consistency(low: Tensor, high: Tensor, delta: Tensor) -> Tensor:
    """Elements with a predicted step against the optimizer's direction (Eq. 7 fails).

    Every step has the sign of ``delta`` exactly when the smallest and the largest do, so two
    comparisons replace ``tau`` (NaN steps give NaN extremes, which fail).
    """
    direction = torch.sign(delta)
    return (torch.sign(low) != direction) | (torch.sign(high) != direction)


def _bounds(displacement: Tensor, delta: Tensor, tau: int) -> tuple[Tensor, Tensor]:
    """Elements failing the strict lower and the upper bound of Eq. 6."""
    jump = displacement.abs()
    step = delta.abs()
    return ~(jump > step), ~(jump <= tau * step)


def _pdt(low: Tensor, high: Tensor, displacement: Tensor, delta: Tensor, tau: int) -> Verdict:
    consistency = _consistency(low, high, delta)
    lower, upper = _bounds(displacement, delta, tau)
    return Verdict(~(consistency | lower | upper), consistency, lower, upper)


def _accel_only(low: Tensor, high: Tensor, displacement: Tensor, delta: Tensor, tau: int) -> Verdict:
    lower, upper = _bounds(displacement, delta, tau)
    return Verdict(~(lower | upper), None, lower, upper)


def _consistency_only(low: Tensor, high: Tensor, displacement: Tensor, delta: Tensor, tau: int) -> Verdict:
    consistency = _consistency(low, high, delta)
    return Verdict(~consistency, consistency)


def _reference(low: Tensor, high: Tensor, displacement: Tensor, delta: Tensor, tau: int) -> Verdict:
    size, step = displacement.abs(), delta.abs()
    consistency = torch.sign(displacement) != torch.sign(delta)
    lower, upper = ~(size >= step), ~(size <= (tau + 1) * step)
    return Verdict(~(consistency | lower | upper), consistency, lower, upper)


def _none(low: Tensor, high: Tensor, displacement: Tensor, delta: Tensor, tau: int) -> Verdict:
    return Verdict(torch.ones_like(delta, dtype=torch.bool))


NEEDS_STEPS = {"pdt", "consistency_only"}
"""Criteria that look at every intermediate step (through its extremes), not just the displacement."""

CRITERIA: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor, int], Verdict]] = {
    "pdt": _pdt,
    "reference": _reference,
    "accel_only": _accel_only,
    "consistency_only": _consistency_only,
    "none": _none,
}
"""Deterministic criteria by name, called as ``criterion(low, high, displacement, delta, tau)``
with ``low`` and ``high`` the smallest and largest predicted step of each element (unused,
and may be ``None``, for criteria outside :data:`NEEDS_STEPS`). ``"random"`` is handled by
:class:`torch_pdt.PDT` itself."""


def evaluate(name: str, increments: Tensor, delta: Tensor, tau: int, displacement: Tensor | None = None) -> Verdict:
    """Apply the criterion ``name`` to one chunk.

    ``displacement`` is ``increments.sum(0)``; pass it when it is already at hand.
    """
    if name not in CRITERIA:
        raise ValueError(f"criterion must be one of {tuple(CRITERIA)}, got {name!r}")
    if increments.dim() != 2 or increments.shape[1:] != delta.shape:
        raise ValueError(
            f"increments must be (tau, c) and delta (c,), got {tuple(increments.shape)} and {tuple(delta.shape)}"
        )
    if displacement is None:
        displacement = increments.sum(dim=0)
    low, high = torch.aminmax(increments, dim=0)
    return CRITERIA[name](low, high, displacement, delta, tau)
