"""Methods a benchmark compares, and the optimizers and schedules they train with.

A method name is one of :data:`METHODS`, optionally followed by changes, each after an ``@``:
``baseline@lrx2`` (or ``@lr×2``) scales the run's learning rate, ``pdt@lr=0.1`` sets it,
``baseline@epochs=30`` trains 30 epochs with the whole learning-rate schedule compressed into
them (the budget-matched control), ``ema@decay=0.999`` sets the EMA's decay, ``lawa@k=3`` the number
of checkpoints LAWA averages, ``pdt-schedule-free@point=train`` the schedule-free sequence PDT
snapshots (:data:`SCHEDULE_FREE_POINTS`), and on a PDT method
any other ``@KEY=VALUE`` sets a :class:`torch_pdt.PDT` option (``pdt@pacing=adaptive``). They
combine: ``schedule-free@lr=0.5@epochs=30``, ``pdt@pacing=adaptive@on_jump=reset``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from torch_pdt import PDTConfig

__all__ = [
    "METHODS",
    "OPTIMIZERS",
    "SCHEDULES",
    "SCHEDULE_FREE_POINTS",
    "STEP_SCHEDULES",
    "Method",
    "literal",
    "make_optimizer",
    "make_schedule",
    "parse_method",
    "with_lr",
]

EMA_DECAY = 0.99
"""Default decay of the ``ema`` method, per optimizer step: an average over about 100 steps (2-3 epochs
of the CPU tasks); ``ema@decay=...`` sweeps it."""
LAWA_K = 5
"""Default number of epoch checkpoints the ``lawa`` methods average: PDT's default history, so that both
look at the same window of the trajectory; ``lawa@k=...`` sweeps it."""
SCHEDULE_FREE_POINTS = ("eval", "train")
r"""Which of schedule-free's sequences PDT snapshots and moves: ``eval``, the averaged point :math:`x`
(the weights ``optimizer.eval()`` installs, the ones evaluated), or ``train``, the gradient point
:math:`y = \beta x + (1 - \beta) z` (the weights in ``optimizer.train()`` mode). See
:mod:`pdt_bench.peers`."""


@dataclass(frozen=True)
class Method:
    """How a run differs from the plain baseline."""

    name: str
    pdt: dict[str, Any] | None = None
    """Keyword arguments of :class:`torch_pdt.PDT` beyond h, tau, T0, Ti (None: no PDT)."""
    lookahead: bool = False
    """Wrap the optimizer in ``pytorch_optimizer.Lookahead(k=5, alpha=0.5)``."""
    switch_by_val_loss: bool = False
    """Predict only while the validation loss falls (the paper's Fig. 6 scheme)."""
    lr_scale: float = 1.0
    lr: float | None = None
    """Fixed learning rate (overrides the run's and ``lr_scale``)."""
    epochs: int | None = None
    """Train this many epochs, the learning-rate schedule compressed to them (None: the run's)."""
    ema_decay: float | None = None
    """Evaluate an EMA of the weights (``torch.optim.swa_utils.AveragedModel``) with this decay."""
    schedule_free: bool = False
    """Replace the optimizer by its schedule-free twin (``schedulefree``), without an LR schedule."""
    lawa: int | None = None
    """Evaluate the mean of the last ``lawa`` epoch checkpoints (:class:`~pdt_bench.peers.LAWA`)."""
    point: str | None = None
    """With PDT and ``schedule_free``: the sequence PDT snapshots (one of :data:`SCHEDULE_FREE_POINTS`)."""
    fresh_batch_norm: bool = False
    """Recompute BatchNorm statistics after every accepted prediction (on the clock)."""
    description: str = field(default="", compare=False)

    def learning_rate(self, lr: float) -> float:
        return self.lr if self.lr is not None else lr * self.lr_scale


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("baseline", description="the optimizer alone"),
        Method("pdt", {"criterion": "pdt"}, description="PDT, the paper's criteria (Eq. 6 and 7)"),
        Method("pdt-reference", {"criterion": "reference"}, description="PDT as the authors' code computes it"),
        Method("nonselective", {"criterion": "none"}, description="every prediction accepted (Tano et al. 2020)"),
        Method(
            "random-mask",
            {"criterion": "random", "random_ratio": "measured"},
            description="a random mask at the ratio PDT's criteria accept at the same step",
        ),
        Method(
            "pdt-layer",
            {"criterion": "pdt", "scope": "layer"},
            description="PDT with one DMD per parameter tensor (scope='layer')",
        ),
        Method(
            "pdt-graded",
            {"criterion": "pdt", "graded": True},
            description="PDT, each element to the largest horizon k <= tau whose checks pass (graded=True)",
        ),
        Method(
            "pdt-layer-graded",
            {"criterion": "pdt", "scope": "layer", "graded": True},
            description="PDT with one DMD per parameter tensor and graded horizons",
        ),
        Method(
            "pdt-fresh-bn",
            {"criterion": "pdt"},
            fresh_batch_norm=True,
            description="PDT, BatchNorm statistics recomputed after every accepted prediction",
        ),
        Method("accel-only", {"criterion": "accel_only"}, description="acceleration bounds only (Eq. 6)"),
        Method("consistency-only", {"criterion": "consistency_only"}, description="sign consistency only (Eq. 7)"),
        Method(
            "switch-by-val-loss",
            {"criterion": "none"},
            switch_by_val_loss=True,
            description="non-selective prediction while the validation loss falls (paper Fig. 6)",
        ),
        Method("lookahead", lookahead=True, description="Lookahead (k=5, alpha=0.5) around the optimizer"),
        Method(
            "pdt-linear",
            {"criterion": "pdt", "jump": "linear"},
            description="PDT's mask, accepted elements extrapolated linearly (w + tau * delta) instead of by DMD "
            "(jump='linear')",
        ),
        Method(
            "pdt-lr-horizon",
            {"criterion": "pdt", "horizon_by": "lr"},
            description="PDT forecasting tau_eff <= tau epochs ahead, tau weighted by the learning rates ahead "
            "(horizon_by='lr')",
        ),
        Method(
            "ema",
            ema_decay=EMA_DECAY,
            description=f"the baseline, evaluated on an EMA of its weights (decay {EMA_DECAY})",
        ),
        Method(
            "lawa",
            lawa=LAWA_K,
            description=f"the baseline, evaluated on the mean of its last {LAWA_K} epoch checkpoints "
            "(LAWA, Ajroldi et al. 2025)",
        ),
        Method(
            "pdt-ema",
            {"criterion": "pdt"},
            ema_decay=EMA_DECAY,
            description=f"PDT, evaluated on an EMA of its weights (decay {EMA_DECAY})",
        ),
        Method(
            "pdt-lawa",
            {"criterion": "pdt"},
            lawa=LAWA_K,
            description=f"PDT, evaluated on the mean of its last {LAWA_K} epoch checkpoints (LAWA)",
        ),
        Method(
            "pdt-schedule-free",
            {"criterion": "pdt"},
            schedule_free=True,
            point="eval",
            description="PDT on schedule-free SGD or AdamW, snapshotting its evaluation point x (@point=train: "
            "its gradient point y)",
        ),
        Method(
            "schedule-free",
            schedule_free=True,
            description="schedule-free SGD or AdamW (schedulefree package), no LR schedule, BN statistics recomputed; "
            "its default lr is 10x the task's for SGD, 1x for Adam(W), and @lrx scales that default",
        ),
    ]
}

_SUFFIXES = {
    "lr": re.compile(r"^lr(?:(?P<op>[x×*])(?P<scale>[0-9.]+)|=(?P<value>[0-9.eE+-]+))$"),
    "epochs": re.compile(r"^epochs=(?P<value>[0-9]+)$"),
    "decay": re.compile(r"^decay=(?P<value>[0-9.eE+-]+)$"),
    "k": re.compile(r"^k=(?P<value>[0-9]+)$"),
    "point": re.compile(r"^point=(?P<value>[a-z]+)$"),
    "pdt": re.compile(r"^(?P<key>[a-z_]+)=(?P<value>.+)$"),
}
_PDT_OPTIONS = {f.name for f in fields(PDTConfig)}
_SUFFIX_HELP = (
    "@lrx<scale>, @lr=<value>, @epochs=<int>, @decay=<value> (ema), @k=<int> (lawa), "
    "@point=eval|train (pdt-schedule-free) or @<PDT option>=<value> (PDT methods)"
)


def literal(text: str) -> Any:
    """A Python literal (``3``, ``0.1``, ``None``), a boolean in any case (``true``, as a shell user
    types it), else the text itself (``adaptive``).

    >>> literal("3"), literal("0.1"), literal("true"), literal("FALSE"), literal("adaptive")
    (3, 0.1, True, False, 'adaptive')
    """
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _apply(method: Method, suffix: str, name: str) -> Method:
    for key, pattern in _SUFFIXES.items():
        match = pattern.match(suffix)
        if match is None:
            continue
        try:
            if key == "epochs":
                epochs = int(match["value"])
                if epochs < 1:
                    raise ValueError
                return replace(method, epochs=epochs)
            if key == "pdt":
                if match["key"] not in _PDT_OPTIONS:
                    continue
                if method.pdt is None:
                    raise ValueError
                return replace(method, pdt=method.pdt | {match["key"]: literal(match["value"])})
            if key == "decay":
                decay = float(match["value"])
                if method.ema_decay is None or not 0.0 < decay < 1.0:
                    raise ValueError
                return replace(method, ema_decay=decay)
            if key == "k":
                if method.lawa is None or int(match["value"]) < 1:
                    raise ValueError
                return replace(method, lawa=int(match["value"]))
            if key == "point":
                if method.point is None or match["value"] not in SCHEDULE_FREE_POINTS:
                    raise ValueError
                return replace(method, point=match["value"])
            if match["value"] is not None:
                return replace(method, lr=float(match["value"]))
            return replace(method, lr_scale=float(match["scale"]))
        except ValueError:
            raise ValueError(f"bad value in {name!r} ({suffix!r}); use {_SUFFIX_HELP}") from None
    raise ValueError(f"bad suffix {suffix!r} in {name!r}: use {_SUFFIX_HELP}")


def parse_method(name: str) -> Method:
    """``"pdt"``, ``"baseline@lrx2"``, ``"pdt@lr=0.1"``, ``"baseline@epochs=30"`` -> :class:`Method`.

    ``ValueError`` names the problem: an unknown method or a malformed suffix.
    """
    base, *suffixes = name.split("@")
    if base not in METHODS:
        raise ValueError(f"unknown method {base!r}; choose from {', '.join(METHODS)} (optionally {_SUFFIX_HELP})")
    method = replace(METHODS[base], name=name)
    given: set[str] = set()
    for suffix in suffixes:
        # A setting given twice would be decided silently by the last (@lrx2@lr=0.1: by @lr=).
        setting = "lr" if suffix.startswith("lr") else suffix.split("=")[0]
        if setting in given:
            raise ValueError(f"{name!r} sets {setting} twice: give each setting once")
        given.add(setting)
        method = _apply(method, suffix, name)
    return method


def with_lr(name: str, lr: float) -> str:
    """The method ``name`` at learning rate ``lr``: ``name@lr=<lr>``, written with ``:g`` (the names of
    the committed studies) where that reads back as ``lr``, else exactly: ``:g`` keeps 6 digits, and
    ``--lr-sweep 0.1234567,0.1234568`` ran one method at 0.123457, neither rate asked for.

    >>> with_lr("baseline", 0.1), with_lr("baseline", 1.0), with_lr("baseline", 0.1234567)
    ('baseline@lr=0.1', 'baseline@lr=1', 'baseline@lr=0.1234567')
    """
    short = f"{lr:g}"
    return f"{name}@lr={short if float(short) == lr else repr(lr)}"


def _sgd(params: Iterable, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def _sgd_momentum(params: Iterable, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def _sgd_nesterov(params: Iterable, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def _adam(params: Iterable, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _adamw(params: Iterable, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _rmsprop(params: Iterable, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)


def _lamb(params: Iterable, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    from pytorch_optimizer import Lamb

    return Lamb(params, lr=lr, weight_decay=weight_decay)


def _shampoo(params: Iterable, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    from pytorch_optimizer import Shampoo

    return Shampoo(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


OPTIMIZERS = {
    "sgd": _sgd,
    "sgd-momentum": _sgd_momentum,
    "sgd-nesterov": _sgd_nesterov,
    "adam": _adam,
    "adamw": _adamw,
    "rmsprop": _rmsprop,
    "lamb": _lamb,
    "shampoo": _shampoo,
}
"""Optimizer name -> factory ``(params, lr, weight_decay)``; momentum 0.9 where it applies."""

SCHEDULES = ("constant", "cosine")
"""Schedules stepped once per epoch."""
STEP_SCHEDULES = ("warmup-cosine", "onecycle")
"""Schedules stepped after every optimizer step: the modern recipes' (:func:`make_schedule`)."""
WARMUP_FRACTION = 0.05
"""Share of the run's optimizer steps that ``warmup-cosine`` warms up over (1.5 epochs of 30)."""


def make_optimizer(
    name: str, model: nn.Module, lr: float, weight_decay: float = 0.0, lookahead: bool = False
) -> torch.optim.Optimizer:
    """The named optimizer over ``model``'s parameters (named, so PDT's statistics use layer names)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    opt = OPTIMIZERS[name](model.parameters(), lr, weight_decay)
    if lookahead:
        from pytorch_optimizer import Lookahead

        opt = Lookahead(opt, k=5, alpha=0.5)
    return opt


def make_schedule(
    name: str, optimizer: torch.optim.Optimizer, epochs: int, eta_min: float, steps_per_epoch: int = 1
) -> torch.optim.lr_scheduler.LRScheduler | None:
    r"""The learning-rate schedule ``name`` over ``epochs`` epochs of ``steps_per_epoch`` optimizer steps.

    Per epoch (:data:`SCHEDULES`): ``constant`` (None) or ``cosine`` annealing to ``eta_min``. Per step
    (:data:`STEP_SCHEDULES`), over :math:`T` = ``epochs * steps_per_epoch`` steps: ``warmup-cosine``
    rises linearly over the first :math:`W = \max(1, \lfloor 0.05\,T \rfloor)` steps, then anneals
    by a cosine to ``eta_min`` at step :math:`T`; ``onecycle`` is :class:`torch.optim.lr_scheduler.OneCycleLR`
    with the optimizer's rate as its peak (and, for SGD with momentum, momentum cycled 0.95 to 0.85).
    """
    if name not in SCHEDULES + STEP_SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES + STEP_SCHEDULES)}")
    if name == "constant":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=eta_min)
    total = epochs * steps_per_epoch
    if name == "onecycle":
        peak = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak, total_steps=total)
    warmup = max(1, int(WARMUP_FRACTION * total))
    lrs = torch.optim.lr_scheduler
    return lrs.SequentialLR(
        optimizer,
        [
            lrs.LinearLR(optimizer, start_factor=1 / warmup, total_iters=warmup - 1),
            lrs.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup), eta_min=eta_min),
        ],
        milestones=[warmup],
    )
