r"""Pacing: how far PDT jumps (its horizon :math:`\tau`) and how often (its interval :math:`T_i`),
as the loss goes.

Not a learning-rate schedule: that one stays the user's and goes on untouched. The option
that picks a pacing rule is ``PDT(pacing=...)``. :class:`~torch_pdt.PDT` asks its pacing rule, at
every epoch end, what to do with the loss the user passes to ``PDT.step(loss=...)`` (the
epoch's mean training loss, or a held-out loss measured after the optimizer's epoch). Three
rules:

``"fixed"`` (:class:`FixedPacing`)
    :math:`\tau` and :math:`T_i` stay as given; the loss is ignored. The paper's single-GPU
    behaviour.

``"authors"`` (:class:`AuthorsPacing`; earlier name ``"reference"``)
    Our reading of the rule in the authors' distributed trainer (no rollback). With
    :math:`L_i` the loss after epoch :math:`i`, on a rise :math:`L_i > L_{i-1}`:

    .. math::
        \tau \leftarrow \max\bigl(1,\ \tau - (2 \text{ if } L_i > L_{i-2} \text{ else } 1)\bigr),

    and once :math:`\tau` is already 1 when a rise comes, :math:`T_i \leftarrow T_i + 1`.
    :math:`\tau` never grows back.

``"adaptive"`` (:class:`AdaptivePacing`, ours)
    Judges each prediction that changed weights by the loss of the epoch after it,
    :math:`L_{j+1}`, against the loss of the epoch it was made in, :math:`L_j` (the trend
    before it). With tolerance :math:`\epsilon` the prediction is *bad* when

    .. math::
        L_{j+1} \text{ is not finite} \quad\text{or}\quad L_{j+1} - L_j > \epsilon |L_j| .

    A bad prediction is rolled back (PDT restores the optimizer's weights of epoch :math:`j`,
    which its history holds, and zeroes the optimizer's velocities) and the rule backs off
    multiplicatively: :math:`\tau \leftarrow \max(1, \lfloor\tau/2\rfloor)`,
    :math:`T_i \leftarrow \min(2T_i + 1, \max(T_i^0, 15))`. After ``patience`` good
    predictions in a row it grows back additively, within the user's values:
    :math:`\tau \leftarrow \min(\tau^0, \tau + 1)`,
    :math:`T_i \leftarrow \max(T_i^0, \lfloor (T_i - 1)/2 \rfloor)`. Multiplicative decrease and
    additive increase (as in TCP congestion control) because a bad prediction costs an epoch
    while a good one gains a fraction of :math:`\tau`.

Every rule reports its decision of each epoch as a :class:`Decision`.

Example:
    >>> s = AdaptivePacing(horizon=8, interval=1, tolerance=0.05, patience=2)
    >>> s.observe(1.0).verdict is None  # nothing to judge yet
    True
    >>> s.predicted(1.0)  # PDT made a prediction in the epoch whose loss was 1.0
    >>> d = s.observe(3.0)  # the loss tripled: roll back, back off
    >>> d.verdict, d.rollback, s.horizon, s.interval
    ('bad', True, 4, 3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .config import ALIASES, as_int, as_real

__all__ = ["PACINGS", "AdaptivePacing", "AuthorsPacing", "Decision", "FixedPacing", "make"]

MAX_BACKED_OFF_INTERVAL = 15
"""The adaptive rule stops growing the interval here (unless the user's own is larger)."""


@dataclass
class Decision:
    """What a pacing rule decided at one epoch end (in the statistics as ``stats["pacing"]``,
    a :class:`~torch_pdt.statistics.PacingStatistics`)."""

    loss: float | None
    """The loss the user passed, if any."""
    verdict: str | None = None
    """``"good"`` or ``"bad"`` for a judged prediction, ``"rise"`` for a shrink by the authors' rule, else ``None``."""
    reference_loss: float | None = None
    """The loss the judged prediction is compared to."""
    rollback: bool = False
    """Whether PDT must restore the optimizer's weights from before the prediction."""
    horizon: int = 0
    """Horizon for predictions from this epoch on (after the decision)."""
    interval: int = 0
    """Interval from this epoch on (after the decision)."""


class FixedPacing:
    """:math:`\\tau` and :math:`T_i` as given; the base of the other rules."""

    name = "fixed"
    needs_loss = False

    def __init__(self, horizon: int, interval: int) -> None:
        self.initial_horizon = horizon
        self.initial_interval = interval
        self.horizon = horizon
        self.interval = interval
        self.rollbacks = 0
        """Predictions rolled back so far."""

    def observe(self, loss: float | None) -> Decision:
        """Take the loss of the epoch that just ended, before PDT snapshots or predicts."""
        return self._decision(loss)

    def predicted(self, loss: float | None) -> None:
        """PDT changed weights by a prediction in the epoch whose loss was ``loss``."""

    def _decision(self, loss: float | None, **kwargs: Any) -> Decision:
        return Decision(loss=loss, horizon=self.horizon, interval=self.interval, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return {"horizon": self.horizon, "interval": self.interval, "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; validates every field's type and range before changing anything."""
        expected = set(self.state_dict())
        if not isinstance(state, dict) or set(state) != expected:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"pacing state has keys {keys}, expected {sorted(expected)} ({self.name!r})")
        checked = {key: self._checked(key, value) for key, value in state.items()}
        for key, value in checked.items():
            setattr(self, key, value)

    def _checked(self, key: str, value: Any) -> Any:
        """A saved field, validated (``ValueError`` naming it) and as a plain Python value."""
        name = f"pacing state {key!r}"
        if key == "horizon":
            return as_int(name, value, 1, self.initial_horizon)
        return as_int(name, value, 0)  # interval, rollbacks


class AuthorsPacing(FixedPacing):
    """The authors' distributed-trainer rule: shrink :math:`\\tau` on a loss rise, never grow it."""

    name = "authors"
    needs_loss = True

    def __init__(self, horizon: int, interval: int) -> None:
        super().__init__(horizon, interval)
        self.losses: list[float] = []
        """The last two losses, oldest first."""

    def observe(self, loss: float | None) -> Decision:
        assert loss is not None
        verdict = None
        # A non-finite loss compares False: the rule only reacts to measured rises.
        if self.losses and loss > self.losses[-1]:
            verdict = "rise"
            if self.horizon == 1:
                self.interval += 1
            both = len(self.losses) == 2 and loss > self.losses[0]
            self.horizon = max(1, self.horizon - (2 if both else 1))
        self.losses = [*self.losses, loss][-2:]
        return self._decision(loss, verdict=verdict)

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"losses": list(self.losses)}

    def _checked(self, key: str, value: Any) -> Any:
        if key == "losses":
            if not isinstance(value, (list, tuple)) or len(value) > 2:
                raise ValueError(f"pacing state 'losses' must be a list of at most 2 losses, got {value!r}")
            return [as_real("pacing state 'losses'", v) for v in value]
        return super()._checked(key, value)


class AdaptivePacing(FixedPacing):
    """Judge each prediction by the next loss; roll back and back off, or grow back (see module doc)."""

    name = "adaptive"
    needs_loss = True

    def __init__(self, horizon: int, interval: int, tolerance: float = 0.05, patience: int = 3) -> None:
        super().__init__(horizon, interval)
        self.tolerance = tolerance
        self.patience = patience
        self.pending: float | None = None
        """Loss of the epoch in which the prediction awaiting judgement was made."""
        self.good_streak = 0
        self.judged = 0
        """Predictions judged so far."""

    def predicted(self, loss: float | None) -> None:
        self.pending = loss

    def observe(self, loss: float | None) -> Decision:
        assert loss is not None
        if self.pending is None:
            return self._decision(loss)
        before, self.pending = self.pending, None
        self.judged += 1
        bad = not math.isfinite(loss) or (math.isfinite(before) and loss - before > self.tolerance * abs(before))
        if bad:
            self.rollbacks += 1
            self.good_streak = 0
            self.horizon = max(1, self.horizon // 2)
            self.interval = min(2 * self.interval + 1, max(self.initial_interval, MAX_BACKED_OFF_INTERVAL))
        else:
            self.good_streak += 1
            if self.good_streak >= self.patience:
                self.good_streak = 0
                self.horizon = min(self.initial_horizon, self.horizon + 1)
                self.interval = max(self.initial_interval, (self.interval - 1) // 2)
        return self._decision(loss, verdict="bad" if bad else "good", reference_loss=before, rollback=bad)

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"pending": self.pending, "good_streak": self.good_streak, "judged": self.judged}

    def _checked(self, key: str, value: Any) -> Any:
        if key == "pending":
            return None if value is None else as_real("pacing state 'pending'", value)
        if key == "good_streak":
            return as_int("pacing state 'good_streak'", value, 0, self.patience - 1)
        return super()._checked(key, value)


PACINGS = {s.name: s for s in (FixedPacing, AuthorsPacing, AdaptivePacing)}
"""Pacing rule name (the ``pacing=`` option) -> class."""


def make(name: str, horizon: int, interval: int, tolerance: float, patience: int) -> FixedPacing:
    """The pacing rule called ``name`` (one of :data:`PACINGS`, or ``"reference"`` for ``"authors"``)
    starting from ``horizon`` and ``interval``."""
    name = ALIASES["pacing"].get(name, name)
    if name == "adaptive":
        return AdaptivePacing(horizon, interval, tolerance, patience)
    return PACINGS[name](horizon, interval)
