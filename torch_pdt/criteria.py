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

The authors' public code (``"authors"``; ``"reference"`` is accepted for it) checks only the
final displacement and has inclusive bounds with a ``tau + 1`` upper bound:
:math:`\operatorname{sign}(D_j) = \operatorname{sign}(\Delta_j)`,
:math:`|\Delta_j| \le |D_j| \le (\tau + 1)|\Delta_j|`.

``"random"`` (a baseline of the paper) accepts each element with a probability, drawn from
generators of its own (:class:`RandomDraws`); it is a criterion like the others
(:func:`make`), whose one check is not a rejection reason.

Each criterion *declares* the checks it makes (:data:`DECLARED`): the statistics report a
rejection count for exactly those, whichever implementation of the prediction pass ran
(:mod:`torch_pdt.passes`). A new criterion is a rule here, its declaration, its branch in the
compiled pass (:mod:`torch_pdt.kernel`) and in the float64 twin (:mod:`torch_pdt.reference`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .config import ALIASES

__all__ = [
    "CHECKS",
    "CRITERIA",
    "DECLARED",
    "NEEDS_STEPS",
    "Criterion",
    "RandomDraws",
    "Verdict",
    "canonical",
    "evaluate",
    "extremes",
    "make",
]


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


def _authors(low: Tensor, high: Tensor, displacement: Tensor, delta: Tensor, tau: int) -> dict[str, Tensor]:
    size, step = displacement.abs(), delta.abs()
    return {
        "consistency": torch.sign(displacement) == torch.sign(delta),
        "lower_bound": size >= step,
        "upper_bound": size <= (tau + 1) * step,
    }


def _none(low: Tensor, high: Tensor, displacement: Tensor, delta: Tensor, tau: int) -> dict[str, Tensor]:
    return {}


CHECKS = ("consistency", "lower_bound", "upper_bound")
"""The checks whose failures PDT reports (``rejected`` in its statistics)."""

DECLARED: dict[str, tuple[str, ...]] = {
    "pdt": CHECKS,
    "authors": CHECKS,
    "accel_only": ("lower_bound", "upper_bound"),
    "consistency_only": ("consistency",),
    "none": (),
    "random": (),
}
"""The checks of :data:`CHECKS` each criterion makes (``"random"``'s draw is no rejection reason)."""

NEEDS_STEPS = {"pdt", "consistency_only"}
"""Criteria that look at every intermediate step (through its extremes), not just the displacement."""

Rule = Callable[[Tensor | None, Tensor | None, Tensor, Tensor, int], dict[str, Tensor]]

CRITERIA: dict[str, Rule] = {
    "pdt": _pdt,
    "authors": _authors,
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
``"random"`` needs its generators: see :func:`make`."""


def canonical(name: str) -> str:
    """The criterion's name, its earlier name replaced (:data:`torch_pdt.config.ALIASES`)."""
    return ALIASES["criterion"].get(name, name)


@dataclass(frozen=True)
class Criterion:
    """A criterion as the prediction pass calls it: ``criterion(low, high, displacement, delta, tau)``."""

    name: str
    rule: Rule
    needs_steps: bool = False
    """Whether it reads ``low`` and ``high`` (else they may be ``None``)."""

    @property
    def checks(self) -> tuple[str, ...]:
        """The checks of :data:`CHECKS` it makes (:data:`DECLARED`)."""
        return DECLARED[self.name]

    def __call__(self, low: Tensor | None, high: Tensor | None, displacement: Tensor, delta: Tensor, tau: int):
        return self.rule(low, high, displacement, delta, tau)


@dataclass
class RandomDraws:
    """The random criterion's generators, one per device, each seeded with ``seed`` when first used.

    Global RNGs are never touched. :meth:`state_dict` maps device names to generator states.
    """

    seed: int = 0
    generators: dict[torch.device, torch.Generator] = field(default_factory=dict)

    def generator(self, device: torch.device) -> torch.Generator:
        if device not in self.generators:
            self.generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self.generators[device]

    def mask(self, like: Tensor, ratio: float) -> Tensor:
        """Each element of ``like``'s shape ``True`` with probability ``ratio`` (float32 uniforms)."""
        return torch.rand(like.shape, generator=self.generator(like.device), device=like.device) < ratio

    def state_dict(self) -> dict[str, Tensor]:
        return {str(d): g.get_state() for d, g in self.generators.items()}

    def restored(self, saved: Any, devices: set[torch.device]) -> RandomDraws:
        """A copy holding the ``saved`` generator states, built aside; ``ValueError`` naming what is wrong.

        ``devices``: where generators may live (the parameters' devices).
        """
        if not isinstance(saved, dict):
            raise ValueError(f"saved random generator states must be a dict, got {type(saved).__name__}")
        generators = {}
        for name, rng_state in saved.items():
            try:
                device = torch.device(name)
            except (RuntimeError, TypeError) as e:
                raise ValueError(f"saved random generator state for {name!r}: not a device ({e})") from e
            if device not in devices:
                raise ValueError(
                    f"saved random generator state for {name}: no parameter lives there ({sorted(map(str, devices))})"
                )
            try:
                generators[device] = torch.Generator(device=device)
                generators[device].set_state(rng_state)
            except (RuntimeError, TypeError) as e:
                raise ValueError(f"saved random generator state for {name} is invalid: {e}") from e
        return RandomDraws(self.seed, generators)


def make(name: str, *, ratio: float = 0.0, draws: RandomDraws | None = None) -> Criterion:
    """The criterion ``name`` (:data:`CRITERIA`, an alias, or ``"random"``) as the prediction pass calls it.

    ``"random"`` accepts each element with probability ``ratio``, drawn from ``draws``; its one
    check, ``"random"``, is not in :data:`CHECKS` (a random rejection is no reason).
    """
    name = canonical(name)
    if name == "random":
        if draws is None:
            raise ValueError("criterion 'random' needs its generators (draws)")
        return Criterion("random", lambda low, high, displacement, delta, tau: {"random": draws.mask(delta, ratio)})
    if name not in CRITERIA:
        raise ValueError(f"criterion must be one of {(*CRITERIA, 'random')}, got {name!r}")
    return Criterion(name, CRITERIA[name], name in NEEDS_STEPS)


def evaluate(name: str, increments: Tensor, delta: Tensor, tau: int, displacement: Tensor | None = None) -> Verdict:
    """Apply the criterion ``name`` to one chunk.

    ``displacement`` is ``increments.sum(0)``; pass it when it is already at hand.
    """
    name = canonical(name)
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
