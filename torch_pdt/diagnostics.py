r"""Why PDT accepts what it accepts: a probe that watches a run and changes nothing.

:class:`ForecastProbe` keeps the last ``h`` epochs of a model's weights in float64 and, every
epoch once it has them, asks what a PDT jump would do there, tensor by tensor, without making it.
With snapshots :math:`s_0 \dots s_{h-1}` of one element (oldest first), epoch increments
:math:`d_j = s_{j+1} - s_j` and the optimizer's last step :math:`\Delta = d_{h-2}`:

* **signal-to-noise** of the increments, :math:`|\bar d| / \operatorname{sd}(d)` over the
  ``h - 1`` increments (the median over a tensor's elements). A weight that drifts steadily has a
  large one; a weight pushed about by minibatch or augmentation noise has one near or below 1,
  and the consistency check, which asks every predicted step to share :math:`\Delta`'s sign, then
  rejects it;
* **accepted share** and the share each check of the criterion rejects
  (:func:`torch_pdt.reference.judge`, the readable float64 twin);
* **forecast error**, once the run has reached the epoch forecast:
  :math:`\lVert \hat w_\tau - w_{t+\tau}\rVert / \lVert w_{t+\tau} - w_t\rVert` on the accepted
  elements and on all, beside the same ratio for the linear step :math:`w_t + \tau\Delta`. Below 1
  the forecast is closer to where training went than standing still was.

The forecast is one DMD of all parameters, as ``PDT(scope="model")``, from the readable twin
(:func:`torch_pdt.reference.forecasts`: a thin SVD of the ``N x (h-1)`` snapshot matrix), so the
probe costs ``O(N h)`` float64 memory and time per epoch: a tool for understanding a run, not for
every run. Feed it the run PDT would see, a baseline without jumps, to measure the trajectory
itself; beside a PDT run it measures the jumping trajectory.

Example:
    >>> model = torch.nn.Linear(3, 2)
    >>> probe = ForecastProbe(model, history=3, horizon=2)
    >>> for epoch in range(6):
    ...     with torch.no_grad():
    ...         for p in model.parameters():
    ...             _ = p.mul_(0.9)  # every weight decays: a clean mode
    ...     report = probe.step()
    >>> [t["kind"] for t in report["tensors"]], report["tensors"][0]["accepted"] > 0
    (['linear', 'linear'], True)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import TypedDict

import torch
from torch import Tensor, nn

from . import params, reference

__all__ = [
    "ForecastProbe",
    "JumpDiagnosis",
    "TensorDiagnosis",
    "by_kind",
    "check_options",
    "increment_snr",
    "parameter_kinds",
]

KINDS = ("conv", "linear", "norm", "embedding", "other")

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


class TensorDiagnosis(TypedDict):
    """One parameter tensor at one (unmade) jump."""

    name: str
    kind: str
    """One of ``conv``, ``linear``, ``norm``, ``embedding``, ``other`` (the owning module's type)."""
    numel: int
    snr: float
    """Median over the elements of :math:`|\\bar d| / \\operatorname{sd}(d)` (NaN for a tensor without elements)."""
    accepted: float
    """Share of the elements the criterion accepts."""
    rejected: dict[str, float]
    """Share of the elements each check rejects (an element can fail several)."""
    forecast_error: float | None
    """Filled in ``horizon`` epochs later: the forecast's distance to the reached weights, over the
    distance the weights travelled (all elements)."""
    accepted_forecast_error: float | None
    """The same on the accepted elements only (``None`` if none was accepted)."""
    linear_error: float | None
    """The same for the linear step :math:`w + \\tau\\Delta`, all elements."""


class JumpDiagnosis(TypedDict):
    """What :meth:`ForecastProbe.step` returns at an epoch where it could judge a jump."""

    epoch: int
    """The 0-based epoch of the newest snapshot (the epoch after which PDT would jump)."""
    horizon: int
    tensors: list[TensorDiagnosis]


def parameter_kinds(model: nn.Module) -> dict[str, str]:
    """The kind of each named parameter, by the type of the module that owns it."""
    kinds = {}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            kind = "conv"
        elif isinstance(module, (nn.Linear, nn.Bilinear)):
            kind = "linear"
        elif isinstance(module, _NORMS):
            kind = "norm"
        elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            kind = "embedding"
        else:
            kind = "other"
        for name, _ in module.named_parameters(recurse=False):
            kinds[f"{module_name}.{name}" if module_name else name] = kind
    return kinds


def increment_snr(snapshots: Tensor) -> Tensor:
    """Per element (row) of an ``N x h`` snapshot matrix: :math:`|\\bar d| / \\operatorname{sd}(d)`.

    ``sd`` is the sample standard deviation of the ``h - 1`` increments (``h >= 3``). A steady
    drift (``sd = 0``) gives ``inf``, a still element (no motion at all) ``0``.
    """
    if snapshots.dim() != 2 or snapshots.shape[1] < 3:
        raise ValueError(f"snapshots must be N x h with h >= 3, got {tuple(snapshots.shape)}")
    d = torch.diff(snapshots.to(torch.float64), dim=1)
    mean, sd = d.mean(dim=1).abs(), d.std(dim=1)
    return torch.where(mean == 0, torch.zeros_like(mean), mean / sd)


def _median(x: Tensor) -> float:
    """The median of a 1-D tensor; of an even count, the mean of the two middle values
    (``Tensor.median`` gives the lower one: a 2-element bias reported its smaller snr)."""
    n = x.numel()
    return float((x.kthvalue((n + 1) // 2).values + x.kthvalue(n // 2 + 1).values) / 2)


def check_options(history: int, horizon: int, criterion: str) -> None:
    """Refuse options :class:`ForecastProbe` cannot use, with a ``ValueError`` naming the argument."""
    if isinstance(history, bool) or not isinstance(history, int) or history < 3:
        raise ValueError(f"history must be an int >= 3, got {history!r}")
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
    if criterion not in reference.CRITERIA or criterion == "random":
        raise ValueError(f"criterion must be one of {reference.CRITERIA[:-1]}, got {criterion!r}")


class ForecastProbe:
    r"""Watch a model's weights epoch by epoch; report what a PDT jump would do, without making it.

    Args:
        model: the model whose parameters (those with ``requires_grad``) are watched.
        history: ``h``, epochs of weights the DMD is fitted to (``>= 3``, for a spread of increments).
        horizon: ``tau``, epochs forecast ahead.
        criterion: the criterion judged (:data:`torch_pdt.reference.CRITERIA` but ``"random"``).

    Call :meth:`step` once after each epoch, where ``pdt.step()`` would go. It returns ``None``
    until ``history`` snapshots are held, then a :class:`JumpDiagnosis`, or ``None`` where no DMD
    can be fitted (every watched weight zero, or a NaN or Inf among the snapshots: PDT skips such a
    prediction too). Weights PDT refuses (complex, not in memory) are refused here, and a watched
    parameter replaced, removed or reshaped since construction is a ``ValueError`` from
    :meth:`step`, before anything changes. Forecast errors of a report are filled in place when
    the run reaches the epoch forecast, so keep the reports (all of them are also in
    :attr:`reports`).
    """

    def __init__(self, model: nn.Module, history: int = 5, horizon: int = 5, criterion: str = "pdt") -> None:
        check_options(history, horizon, criterion)
        if not isinstance(model, nn.Module):  # model.parameters() failed on named_modules, an AttributeError
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        kinds = parameter_kinds(model)
        self.named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not self.named:
            raise ValueError("the model has no parameter that requires grad")
        if not sum(p.numel() for _, p in self.named):
            raise ValueError("the model's parameters that require grad have no elements")
        # Complex weights lost their imaginary part in the float64 snapshots; meta ones failed in the first step.
        params.check_supported([name for name, _ in self.named], [p for _, p in self.named])
        self._model = model
        self._shapes = [p.shape for _, p in self.named]
        self.kinds = [kinds[name] for name, _ in self.named]
        self.history, self.horizon, self.criterion = history, horizon, criterion
        self.epoch = -1
        self.reports: list[JumpDiagnosis] = []
        self._snapshots: deque[Tensor] = deque(maxlen=history)
        # epoch reached -> (report, forecast, linear step, origin, accepted mask)
        self._pending: dict[int, tuple[JumpDiagnosis, Tensor, Tensor, Tensor, Tensor]] = {}

    def _flat(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1).to("cpu", torch.float64) for _, p in self.named])

    def _bounds(self) -> Iterable[tuple[int, int]]:
        start = 0
        for _, p in self.named:
            yield start, start + p.numel()
            start += p.numel()

    def _check(self) -> None:
        """``ValueError`` where a watched parameter is no longer the model's or has another shape: a
        replaced one was watched as a still tensor, a reshaped one failed in ``torch.stack``."""
        current = dict(self._model.named_parameters())
        for (name, p), shape in zip(self.named, self._shapes):
            if current.get(name) is not p:
                raise ValueError(f"parameter {name} was replaced or removed since the probe was built")
            if p.shape != shape:
                raise ValueError(f"parameter {name} changed shape from {tuple(shape)} to {tuple(p.shape)}")

    def step(self) -> JumpDiagnosis | None:
        """Take this epoch's snapshot; settle forecasts made for it; judge a jump from here."""
        self._check()
        self.epoch += 1
        w = self._flat()
        self._snapshots.append(w)
        settled = self._pending.pop(self.epoch, None)
        if settled is not None:
            self._settle(w, *settled)
        if len(self._snapshots) < self.history:
            return None
        S = torch.stack(list(self._snapshots), dim=1)  # N x h
        tau = self.horizon
        if not torch.isfinite(S).all():  # torch.linalg.eig raised; PDT skips "non-finite snapshot values"
            return None
        try:
            predicted, _ = reference.forecasts(S, tau)
        except ValueError:  # rank 0: every weight is zero
            return None
        origin, delta = S[:, -1], S[:, -1] - S[:, -2]
        increments = torch.diff(torch.cat([origin[None], predicted]), dim=0)
        displacement = predicted[-1] - origin
        checks = reference.judge(increments, displacement, delta, tau, self.criterion)
        accept = torch.isfinite(predicted[-1])
        for mask in checks.values():
            accept &= mask
        snr = increment_snr(S)
        tensors: list[TensorDiagnosis] = []
        for (name, p), kind, (a, b) in zip(self.named, self.kinds, self._bounds()):
            n = b - a
            tensors.append(
                TensorDiagnosis(
                    name=name,
                    kind=kind,
                    numel=n,
                    snr=_median(snr[a:b]) if n else float("nan"),
                    accepted=float(accept[a:b].sum()) / max(n, 1),
                    rejected={c: float((~m[a:b]).sum()) / max(n, 1) for c, m in checks.items()},
                    forecast_error=None,
                    accepted_forecast_error=None,
                    linear_error=None,
                )
            )
        report = JumpDiagnosis(epoch=self.epoch, horizon=tau, tensors=tensors)
        self.reports.append(report)
        # A forecast that overflowed (Inf - Inf among the modes: NaN) is infinitely far from any weight.
        forecast = torch.where(predicted[-1].isnan(), math.inf, predicted[-1])
        self._pending[self.epoch + tau] = (report, forecast, origin + tau * delta, origin, accept)
        return report

    def _settle(
        self, reached: Tensor, report: JumpDiagnosis, forecast: Tensor, linear: Tensor, origin: Tensor, accept: Tensor
    ) -> None:
        for entry, (a, b) in zip(report["tensors"], self._bounds()):
            travelled = torch.linalg.vector_norm(reached[a:b] - origin[a:b])
            if not 0 < travelled < math.inf:  # still, or reached NaN or Inf: no ratio to report
                continue
            miss = forecast[a:b] - reached[a:b]
            entry["forecast_error"] = float(torch.linalg.vector_norm(miss) / travelled)
            entry["linear_error"] = float(torch.linalg.vector_norm(linear[a:b] - reached[a:b]) / travelled)
            kept = accept[a:b]
            if kept.any():
                moved = torch.linalg.vector_norm((reached[a:b] - origin[a:b])[kept])
                if moved > 0:
                    entry["accepted_forecast_error"] = float(torch.linalg.vector_norm(miss[kept]) / moved)


def by_kind(report: JumpDiagnosis) -> dict[str, dict[str, float | None]]:
    """A report's tensors pooled by kind: each figure the element-weighted mean of the tensors' own.

    The figures: ``numel`` (the kind's elements), ``accepted``, ``rejected:<check>`` for each
    check of the criterion, ``snr``, ``forecast_error``, ``accepted_forecast_error`` and
    ``linear_error`` (``None`` where no tensor of the kind has one yet).
    """
    pooled: dict[str, dict[str, float | None]] = {}
    for kind in KINDS:
        rows = [t for t in report["tensors"] if t["kind"] == kind]
        n = sum(t["numel"] for t in rows)
        if not n:
            continue

        def mean(key: str, rows=rows, n=n) -> float | None:
            # A tensor without elements weighs nothing (its NaN snr times 0 was NaN).
            values = [(t[key], t["numel"]) for t in rows if t[key] is not None and t["numel"]]
            if not values:
                return None
            return sum(v * k for v, k in values) / sum(k for _, k in values)

        def rejected(check: str, rows=rows, n=n) -> float:
            return sum(t["rejected"][check] * t["numel"] for t in rows) / n

        pooled[kind] = {
            "numel": float(n),
            "accepted": mean("accepted"),
            **{f"rejected:{check}": rejected(check) for check in rows[0]["rejected"]},
            "snr": mean("snr"),
            "forecast_error": mean("forecast_error"),
            "accepted_forecast_error": mean("accepted_forecast_error"),
            "linear_error": mean("linear_error"),
        }
    return pooled
