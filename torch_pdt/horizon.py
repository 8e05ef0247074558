r"""The horizon of one prediction: ``tau`` epochs, or ``tau`` epochs at the learning rate the history moved at.

``PDT(horizon_by="epochs")`` (the default, the paper) forecasts :math:`\tau` epochs ahead.
Under an annealed learning rate (cosine, one-cycle, warmup-cosine) the DMD continues the motion
of the last ``h`` epochs, which ran at a higher learning rate than the epochs ahead will; a
forecast :math:`\tau` epochs ahead then overshoots where the run is going.
``horizon_by="lr"`` shortens the horizon by the learning rates ahead.

PDT records the optimizer's learning rate at every snapshot (:func:`learning_rate`: the mean
over the parameter groups it manages), read when :meth:`PDT.step() <torch_pdt.PDT.step>` is
called, after the scheduler's step: :math:`r_j`, recorded with snapshot :math:`j`, is the rate
of the epoch that moves snapshot :math:`j` to :math:`j + 1`. With :math:`r_0 \dots r_{m-1}`
recorded at the ``m`` snapshots of the history (oldest first):

.. math::
    \bar r = \frac{1}{m - 1}\sum_{j=0}^{m-2} r_j \quad\text{(the history's } m - 1
    \text{ increments)},\qquad
    \hat r_k = \max\bigl(0,\ r_{m-1} + k\,(r_{m-1} - r_{m-2})\bigr),\ k = 0..\tau - 1,

    \tau_{eff} = \min\Bigl(\tau,\ \max\bigl(1,\ \bigl\lfloor \textstyle\sum_k \hat r_k / \bar r
    + \tfrac12 \bigr\rfloor\bigr)\Bigr).

The next epoch's rate :math:`\hat r_0 = r_{m-1}` is known; the later ones are extrapolated
linearly from the last two and clipped at 0. The ratio counts the epochs ahead in epochs of the
history's mean motion, rounded half up. Choices:

* never longer than the user's :math:`\tau` (a warm-up, whose rates grow, keeps :math:`\tau`);
* at least 1: a prediction that is due still runs, one epoch ahead, however low the rates
  ahead, so the prediction schedule (``interval``, the pacing rule) is the same as with
  ``"epochs"``. With ``criterion="pdt"`` a horizon of 1 accepts nothing (Eq. 6 asks
  :math:`|\Delta| < |D| \le \tau|\Delta|`), so there :math:`\tau_{eff} = 1` is no jump in
  effect; the authors' bound :math:`(\tau + 1)|\delta|` still admits one;
* :math:`\tau` where :math:`\bar r = 0` (the history says nothing about the rate's effect).

Under a constant learning rate :math:`\tau_{eff} = \tau` exactly (the ratio is :math:`\tau`
up to rounding of the sum), so the option changes nothing there.

Each :math:`\tau_{eff}` is a horizon of its own for the passes (:class:`torch_pdt.passes.Plan`):
the compiled passes (``kernel="compiled"`` or ``"auto"``) compile one graph per distinct value,
at most :math:`\tau` of them in a run.

Example:
    >>> effective_horizon([0.1, 0.1, 0.1, 0.1, 0.1], 5)  # a constant rate: tau
    5
    >>> effective_horizon([0.10, 0.09, 0.08, 0.07, 0.06], 5)  # linear decay: 0.06+0.05+...+0.02 = 0.2 over 0.085
    2
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

from .config import is_bool

__all__ = ["checked_rates", "effective_horizon", "learning_rate"]


def _is_rate(r: Any) -> bool:
    """A learning rate PDT can record: a real number (not a bool), finite, >= 0."""
    return not is_bool(r) and isinstance(r, numbers.Real) and 0 <= r < math.inf


def effective_horizon(rates: Sequence[float], tau: int) -> int:
    """:math:`\\tau_{eff}` (module docstring) from the ``rates`` recorded at the history's
    snapshots, oldest first (at least 2), for the pacing rule's ``tau``."""
    if len(rates) < 2:
        raise ValueError(f"the effective horizon needs the rates of at least 2 snapshots, got {len(rates)}")
    top = max(rates)
    if not top > 0:
        return tau
    # Scaled by a power of two (exact): rates near the float limit summed to Inf (1e308: NaN, and
    # an exception after the snapshot was taken). The ratio can still overflow where the history's
    # rates are tiny against the newest (a warm-up from 1e-320): that is tau.
    shift = math.frexp(top)[1]
    rates = [math.ldexp(r, -shift) for r in rates]
    past = sum(rates[:-1]) / (len(rates) - 1)
    if not past > 0:
        return tau
    newest, slope = rates[-1], rates[-1] - rates[-2]
    ratio = sum(max(0.0, newest + k * slope) for k in range(tau)) / past
    return tau if not ratio < tau else max(1, math.floor(ratio + 0.5))


def learning_rate(optimizer: Any) -> float:
    """The learning rate PDT records with a snapshot: the mean of ``"lr"`` over the parameter
    groups it manages (not ``"pdt": False``), a finite float >= 0, else a ``ValueError``."""
    groups = [g for g in optimizer.param_groups if g.get("pdt", True)]
    if not groups or any("lr" not in g for g in groups):
        raise ValueError('horizon_by="lr" needs an "lr" in every parameter group PDT manages')
    values = [g["lr"] for g in groups]
    rates = [float(v) if isinstance(v, torch.Tensor) and v.numel() == 1 else v for v in values]
    if not all(map(_is_rate, rates)):
        raise ValueError(f'horizon_by="lr" needs finite learning rates >= 0, got {values!r}')
    return sum(float(r) for r in rates) / len(rates)


def checked_rates(saved: Any, count: int, needed: bool) -> list[float]:
    """Saved learning rates (a :meth:`PDT.state_dict <torch_pdt.PDT.state_dict>`'s
    ``"learning_rates"``) as floats, validated against a history of ``count`` snapshots: one
    rate per snapshot where ``needed`` (``horizon_by="lr"``), else none."""
    if not isinstance(saved, (list, tuple)) or not all(map(_is_rate, saved)):
        raise ValueError(f"saved learning_rates must be a list of finite floats >= 0, got {saved!r}")
    expected = count if needed else 0
    if len(saved) != expected:
        raise ValueError(f"saved learning_rates must hold {expected} rates (one per snapshot), got {len(saved)}")
    return [float(r) for r in saved]
