r"""What :meth:`PDT.step() <torch_pdt.PDT.step>` returns: one :class:`PDTStatistics` per epoch.

Every epoch has the same keys, whatever happened (warm-up, an interval epoch, a prediction, a
rollback, a decomposition that failed, ``predict=False``). A key that only a prediction fills
holds its *nothing happened* value otherwise: 0 for counts and ratios, an empty list, a dict of
zeros, or ``None`` for a value that does not exist (see each key).

Every value is plain JSON: ``bool``, ``int``, ``float``, ``str``, ``None``, and lists and
dicts of them. No tensor, no numpy scalar, no complex number: the DMD eigenvalues
:math:`\lambda = a + ib` are ``[a, b]`` pairs. No float is NaN or infinite, because
``json.dumps`` writes those as tokens that JSON does not have. A value that would be non-finite
is ``None`` (JSON ``null``): a NaN loss, an overflowed eigenvalue. So a JSONL, W&B or MLflow
logger takes a step's statistics as they are; :func:`scalars` flattens them into named numbers
for a TensorBoard ``SummaryWriter.add_scalar``.

Example:
    >>> import json, torch
    >>> from torch_pdt import PDT
    >>> model = torch.nn.Linear(2, 1)
    >>> pdt = PDT(torch.optim.SGD(model.parameters(), lr=0.1), model=model)
    >>> stats = pdt.step()  # epoch 0: warm-up
    >>> stats["reason"], stats["accepted"], stats["eigenvalues"], stats["rejected"]["consistency"]
    ('warm-up', 0, [], 0)
    >>> sorted(stats) == sorted(PDTStatistics.__annotations__)
    True
    >>> len(json.dumps(stats, allow_nan=False)) > 0
    True
    >>> scalars(stats)["accepted_ratio_per_param/weight"]
    0.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

from torch import Tensor

from .pacing import Decision

__all__ = [
    "LayerStatistics",
    "PDTStatistics",
    "RejectionCounts",
    "PacingStatistics",
    "complex_pairs",
    "finite",
    "nothing_predicted",
    "scalars",
]


class RejectionCounts(TypedDict):
    """Elements that failed each check of one prediction (0 for a check the criterion does not make).

    An element can fail several checks, so the counts can sum to more than the rejected elements.
    """

    consistency: int
    """Failed dynamic consistency (Eq. 7; the sign test of ``"authors"``)."""
    lower_bound: int
    """Predicted displacement not beyond the optimizer's step (Eq. 6, left)."""
    upper_bound: int
    """Predicted displacement beyond ``tau`` (``"authors"``: ``tau + 1``) times the optimizer's step (Eq. 6, right)."""
    nonfinite: int
    """Predicted value not finite in the parameter's dtype (never written)."""
    unfitted: int
    """``scope="layer"``: elements of parameters whose own DMD could not be fitted (kept as the
    optimizer left them); else 0."""


class LayerStatistics(TypedDict):
    """``scope="layer"``: the DMD of one parameter tensor."""

    rank: int
    """Modes its DMD kept; 0 when it could not be fitted."""
    eigenvalues: list[list[float | None]]
    """Its DMD eigenvalues as ``[a, b]`` pairs; ``[]`` when it could not be fitted."""
    reason: str | None
    """Why it could not be fitted (then it is not predicted); ``None`` when it was."""


class PacingStatistics(TypedDict):
    """The pacing rule's :class:`~torch_pdt.pacing.Decision` of this epoch (``pacing=``)."""

    loss: float | None
    """The loss passed to ``step(loss=...)``; ``None`` when none was passed or it was not finite."""
    verdict: str | None
    """``"good"`` or ``"bad"`` for a judged prediction (``"adaptive"``), ``"rise"`` for a shrink
    by the ``"authors"`` rule, else ``None``."""
    reference_loss: float | None
    """The loss the judged prediction is compared to (``"adaptive"``), else ``None``."""
    rollback: bool
    """Whether this epoch rolled the last prediction back (the same as ``rolled_back``)."""
    horizon: int
    """``tau`` for predictions from this epoch on, in epochs (after the decision)."""
    interval: int
    """``Ti`` from this epoch on, in plain epochs between two predictions (after the decision)."""


class PDTStatistics(TypedDict):
    """The statistics of one :meth:`PDT.step() <torch_pdt.PDT.step>` (module docstring: JSON, ``None``).

    Counts are of scalar parameter elements, summed over every rank for sharded parameters
    (:class:`~torch_pdt.distributed.DistributedPDT` returns the same statistics on every rank).
    """

    epoch: int
    """0-based index of this ``step()`` call (step mode: of this ``every_n_steps`` block)."""
    predicted: bool
    """Whether a prediction ran (even one that accepted nothing)."""
    reason: str | None
    """Why no prediction ran: ``"warm-up"`` (before ``start_epoch``), ``"interval"``,
    ``"disabled by the caller"`` (``predict=False``), ``"rolled back"``,
    ``"insufficient history (...)"``, ``"decomposition failed: ..."``; ``None`` when one ran."""
    accepted_ratio: float
    """``accepted / numel``, in [0, 1]; 0.0 when nothing was predicted."""
    accepted: int
    """Elements overwritten by the prediction; 0 when nothing was predicted."""
    numel: int
    """Elements PDT manages (trainable, in groups not marked ``"pdt": False``), every epoch."""
    rejected: RejectionCounts
    """Failures per check of this prediction; all 0 when nothing was predicted."""
    accepted_ratio_per_param: dict[str, float]
    """Parameter name -> its accepted fraction in [0, 1], for every parameter, every epoch;
    0.0 when nothing was predicted and for a parameter with no elements."""
    eigenvalues: list[list[float | None]]
    """The DMD eigenvalues :math:`\\lambda = a + ib` as ``[a, b]`` pairs (a component that is not
    finite is ``None``); ``[]`` when no decomposition was fitted this epoch."""
    rank: int
    """Modes the DMD kept; 0 when no decomposition was fitted this epoch."""
    gram_passes: int
    """Passes over the snapshots that built a Gram matrix this epoch (1, or 2 when the first
    factor was not accurate enough); 0 when no decomposition was attempted."""
    horizon: int
    """``tau`` of this epoch's prediction, in epochs (``horizon_by="lr"``: the effective horizon it
    used, at most ``pacing["horizon"]``); 0 when nothing was predicted (the current value is
    ``pacing["horizon"]``)."""
    random_ratio: float | None
    """``criterion="random"``: the fraction it accepted at random; else, or with nothing
    predicted, ``None``."""
    accepted_per_horizon: list[int]
    """``graded=True``: elements accepted at each horizon ``k = 1..tau`` (``rejected`` counts the
    checks at ``tau``); else, or with nothing predicted, ``[]``."""
    layers: dict[str, LayerStatistics]
    """``scope="layer"``: parameter name -> its own DMD (then ``rank`` is the largest and
    ``eigenvalues`` is ``[]``); else, or with no decomposition attempted, ``{}``."""
    optimizer_state_untouched: list[str]
    """``on_jump="reset"``/``"rescale"``: optimizer state keys it left unchanged; else ``[]``."""
    pacing: PacingStatistics
    """The pacing rule's decision of this epoch."""
    rolled_back: bool
    """Whether this epoch restored the weights from before the last prediction (``"adaptive"``)."""
    rollbacks: int
    """Predictions rolled back so far in this run."""


def finite(value: float | None) -> float | None:
    """``value``, or ``None`` when it is missing or not finite (JSON has no NaN or infinity).

    >>> finite(1.5), finite(float("nan")), finite(None)
    (1.5, None, None)
    """
    return value if value is not None and math.isfinite(value) else None


def complex_pairs(values: Tensor) -> list[list[float | None]]:
    """Complex numbers as JSON: ``[real, imaginary]`` pairs of Python floats (``None`` where not finite).

    >>> import torch
    >>> complex_pairs(torch.tensor([1 + 2j, complex("inf")]))
    [[1.0, 2.0], [None, 0.0]]
    """
    return [[finite(z.real), finite(z.imag)] for z in values.tolist()]


def nothing_predicted(
    epoch: int, names: Sequence[str], numel: int, decision: Decision, rollbacks: int
) -> PDTStatistics:
    """The statistics of an epoch in which no prediction (yet) ran: every key at its *nothing happened* value."""
    return {
        "epoch": epoch,
        "predicted": False,
        "reason": None,
        "accepted_ratio": 0.0,
        "accepted": 0,
        "numel": numel,
        "rejected": {"consistency": 0, "lower_bound": 0, "upper_bound": 0, "nonfinite": 0, "unfitted": 0},
        "accepted_ratio_per_param": dict.fromkeys(names, 0.0),
        "eigenvalues": [],
        "rank": 0,
        "gram_passes": 0,
        "horizon": 0,
        "random_ratio": None,
        "accepted_per_horizon": [],
        "layers": {},
        "optimizer_state_untouched": [],
        "pacing": {
            "loss": finite(decision.loss),
            "verdict": decision.verdict,
            "reference_loss": finite(decision.reference_loss),
            "rollback": decision.rollback,
            "horizon": decision.horizon,
            "interval": decision.interval,
        },
        "rolled_back": decision.rollback,
        "rollbacks": rollbacks,
    }


def scalars(stats: PDTStatistics) -> dict[str, float]:
    """Every number in ``stats`` by a flat name (``"rejected/consistency"``,
    ``"accepted_ratio_per_param/<name>"``, ``"pacing/horizon"``), bools as 0.0 or 1.0, for
    loggers that take only scalars (TensorBoard's ``add_scalar``, Lightning's ``log_dict``).

    Strings, lists and ``None`` values are left out, so the set of names is the same every epoch
    except for ``pacing/loss`` and ``pacing/reference_loss``, which appear when known, and
    ``random_ratio`` (``criterion="random"``), which appears in epochs that predicted.
    """
    out: dict[str, float] = {}
    for key, value in stats.items():
        items = value.items() if isinstance(value, dict) else [("", value)]
        for sub, v in items:
            if isinstance(v, (bool, int, float)):
                out[f"{key}/{sub}" if sub else key] = float(v)
    return out
