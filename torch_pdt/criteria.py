r"""Element-wise masking criteria: which predicted weights PDT accepts.

:func:`evaluate` judges, for a chunk of ``c`` scalar parameters,

* ``increments``: ``(tau, c)`` predicted steps :math:`\hat w_{i+k} - \hat w_{i+k-1}`,
  ``k = 1..tau``, with :math:`\hat w_i := w_i` (so they sum to the total displacement);
* ``displacement``: ``(c,)`` their sum, the predicted displacement :math:`D`;
* ``delta``: ``(c,)`` the optimizer's own last displacement :math:`\Delta` (one epoch);

and returns a :class:`Verdict`. The criteria themselves (:data:`CRITERIA`) need of the steps
only their smallest and largest value per element, which is what PDT's fused prediction pass
gives them. The paper's criteria (Sec. 3.2) are

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

__all__ = ["CHECKS", "CRITERIA", "NEEDS_STEPS", "Verdict", "evaluate", "extremes"]


@dataclass
class Verdict:
    """Accepted elements and, for each check the criterion applies, the elements it rejects."""

    accept: Tensor
    consistency: Tensor | None = None
    lower_bound: Tensor | None = None
    upper_bound: Tensor | None = None


def _consistent(low: Tensor, high: Tensor, delta: Tensor) -> Tensor:
    """Elements whose every predicted step has the sign of ``delta`` (Eq. 7 holds).

    That is the case exactly when the smallest and the largest step do, so two comparisons
    replace ``tau`` (NaN steps give NaN extremes, which fail).
    """
    direction = torch.sign(delta)
    return (torch.sign(low) == direction) & (torch.sign(high) == direction)


def _bounds(displacement: Tensor, delta: Tensor, tau: int) -> dict[str, Tensor]:
    """Elements within the strict lower and the upper bound of Eq. 6."""
    jump = displacement.abs()
    step = delta.abs()
    return {"lower_bound": jump > step, "upper_bound": jump <= tau * step}


def _pdt(low: Tensor, high: Tensor, displacement: Tensor, delta: Tensor, tau: int) -> dict[str, Tensor]:
    return {"consistency": _consistent(low, high, delta), **_bounds(displacement, delta, tau)}


def _accel_only(low: Tensor, high: Tensor, displacement: Tensor, delta: Tensor, tau: int) -> dict[str, Tensor]:
    return _bounds(displacement, delta, tau)


def _consistency_only(low: Tensor, high: Tensor, displacement: Tensor, delta: Tensor, tau: int) -> dict[str, Tensor]:
    return {"consistency": _consistent(low, high, delta)}


def _reference(low: Tensor, high: Tensor, displacement: Tensor, delta: Tensor, tau: int) -> dict[str, Tensor]:
    size, step = displacement.abs(), delta.abs()
    return {
        "consistency": torch.sign(displacement) == torch.sign(delta),
        "lower_bound": size >= step,
        "upper_bound": size <= (tau + 1) * step,
    }


def _none(low: Tensor, high: Tensor, displacement: Tensor, delta: Tensor, tau: int) -> dict[str, Tensor]:
    return {}


CHECKS = ("consistency", "lower_bound", "upper_bound")

NEEDS_STEPS = {"pdt", "consistency_only"}
"""Criteria that look at every intermediate step (through its extremes), not just the displacement."""

CRITERIA: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor, int], dict[str, Tensor]]] = {
    "pdt": _pdt,
    "reference": _reference,
    "accel_only": _accel_only,
    "consistency_only": _consistency_only,
    "none": _none,
}
"""Deterministic criteria by name, called as ``criterion(low, high, displacement, delta, tau)``
with ``low`` and ``high`` the smallest and largest predicted step of each element (unused,
and may be ``None``, for criteria outside :data:`NEEDS_STEPS`). Each returns, for every check
of :data:`CHECKS` it applies, the elements that *pass* it; an element is accepted when it
passes them all. (Passing masks, not failing ones: on CPU a negation costs as much as a
comparison, and the prediction pass needs only the counts of the failures.)
``"random"`` is handled by :class:`torch_pdt.PDT` itself."""


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
    passed = CRITERIA[name](*extremes(increments), displacement, delta, tau)
    accept = torch.ones_like(delta, dtype=torch.bool)
    for mask in passed.values():
        accept &= mask
    return Verdict(accept, **{check: ~mask for check, mask in passed.items()})


def extremes(increments: Tensor) -> tuple[Tensor, Tensor]:
    """Smallest and largest of the ``(tau, c)`` steps of each element (NaN if any is NaN)."""
    # Two reductions: on CPU torch.aminmax over the leading dimension is 20x slower than both.
    return torch.amin(increments, dim=0), torch.amax(increments, dim=0)
