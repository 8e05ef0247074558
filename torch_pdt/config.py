"""PDT's options: one frozen, typed object that validates them all, once.

:class:`PDTConfig` checks every option's type and range when it is made (a ``ValueError``
naming the option), turns numbers of any numeric type (numpy's included) into Python ints and
floats, replaces earlier names of choices by the current ones, and resolves defaults that
depend on other options. Everything else in :mod:`torch_pdt` trusts it.

Example:
    >>> c = PDTConfig(history=4, criterion="reference")
    >>> c.criterion, c.forecast, c.history, c.start_of_epoch
    ('authors', 'increment', 4, True)
    >>> PDTConfig(horizon=0)
    Traceback (most recent call last):
        ...
    ValueError: horizon must be an int >= 1, got 0
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

import torch

from .dmd import CHUNK_SIZE
from .dmd import Forecast as ForecastForm

__all__ = ["ALIASES", "SEED_RANGE", "PDTConfig", "as_int", "as_loss", "as_real", "check_names", "is_bool"]

CriterionName = Literal["pdt", "authors", "accel_only", "consistency_only", "none", "random"]
Modes = Literal["projected", "exact"]
HistoryAfterJump = Literal["optimizer", "assembled"]
Storage = Literal["same", "cpu", "bf16"]
Pacing = Literal["fixed", "authors", "adaptive"]
OnJump = Literal["keep", "reset", "rescale"]
Kernel = Literal["auto", "compiled", "eager"]
Scope = Literal["model", "layer"]
Jump = Literal["forecast", "linear"]
HorizonBy = Literal["epochs", "lr"]

ALIASES = {"criterion": {"reference": "authors"}, "pacing": {"reference": "authors"}}
"""Earlier names of choices, still accepted: ``"reference"`` was the authors' criterion and pacing rule."""

SEED_RANGE = (0, 2**64 - 1)
"""Seeds a ``torch.Generator`` takes."""


def is_bool(value: Any) -> bool:
    """Python's and numpy's bools (numpy's is neither a Python bool nor a registered number)."""
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def as_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as a Python int (any integral type but bool) within ``[low, high]``, else a
    ``ValueError`` naming ``name``."""
    if is_bool(value) or not isinstance(value, numbers.Integral) or not low <= value:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return int(value)


def as_real(name: str, value: Any) -> float:
    """``value`` as a Python float (any real type but bool), else a ``ValueError`` naming ``name``."""
    if is_bool(value) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    try:
        return float(value)
    except OverflowError as e:
        raise ValueError(f"{name} is too large for a float: {value!r}") from e


def as_loss(value: Any) -> float:
    """A loss as a Python float: any real number, numpy scalar or array, or tensor of one real element."""
    if isinstance(value, numbers.Real) and not is_bool(value):
        return as_real("loss", value)
    if hasattr(value, "__array__") or isinstance(value, torch.Tensor):  # a numpy scalar or array, a tensor
        try:
            t = torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value)
        except (TypeError, ValueError, RuntimeError):
            t = None
        if t is not None and t.numel() == 1 and not t.is_complex() and t.dtype != torch.bool:
            return float(t)
    raise ValueError(f"loss must be a real number or a one-element real tensor, got {value!r}")


RENAMED_OPTIONS = {"scheduler": "pacing"}
"""Earlier option names -> current ones: refused with the new name in the message, and translated
in a saved ``"config"`` (:func:`torch_pdt.compat.upgrade`)."""


def check_names(names: Iterable[str]) -> None:
    """``TypeError`` naming every name in ``names`` that is not an option, with the valid ones.

    >>> check_names(["scheduler"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    TypeError: unknown PDT option 'scheduler' (renamed 'pacing'); the options are: history, horizon, ...

    >>> check_names(["horizn"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    TypeError: unknown PDT option 'horizn' (did you mean 'horizon'?); the options are: history, horizon, ...
    """
    valid = [f.name for f in fields(PDTConfig)]
    unknown = [n for n in names if n not in valid]
    if unknown:

        def hint(name: str) -> str:
            if name in RENAMED_OPTIONS:
                return f" (renamed {RENAMED_OPTIONS[name]!r})"
            close = difflib.get_close_matches(name, valid, n=1)
            return f" (did you mean {close[0]!r}?)" if close else ""

        said = ", ".join(f"{n!r}{hint(n)}" for n in unknown)
        raise TypeError(f"unknown PDT option {said}; the options are: {', '.join(valid)}")


def _choice(name: str, value: Any, kind: Any) -> str:
    value = ALIASES.get(name, {}).get(value, value) if isinstance(value, str) else value
    choices = get_args(kind)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


@dataclass(frozen=True)
class PDTConfig:
    r"""Every option of :class:`~torch_pdt.PDT`, validated (see the README's table for more).

    Attributes:
        history: ``h``, snapshots the DMD is fitted to (>= 2).
        horizon: ``tau``, epochs predicted ahead (>= 1).
        start_epoch: ``T0``, the first (0-based) epoch after which to predict.
        interval: ``Ti``, plain epochs between two predictions (0 = every epoch).
        criterion: which predicted elements are accepted (:mod:`torch_pdt.criteria`): ``"pdt"``
            (Eq. 6 and 7), ``"authors"`` (the authors' code; earlier name ``"reference"``),
            ``"accel_only"``, ``"consistency_only"``, ``"none"`` or ``"random"``.
        forecast: ``"paper"`` (:math:`\operatorname{Re}\{\Phi\Lambda^\tau\Phi^+ w\}`) or
            ``"increment"`` (:math:`w + \operatorname{Re}\{\Phi(\Lambda^\tau - I)\Phi^+ w\}`);
            ``None`` means ``"increment"`` for ``"authors"``, else ``"paper"``.
        modes: ``"projected"`` (:math:`U\Psi`, the paper) or ``"exact"`` DMD modes.
        rank, rtol: SVD truncation (:func:`torch_pdt.dmd.fit_factor`): an int rank or an energy
            fraction in (0, 1]; a relative singular-value tolerance (finite, >= 0; from 1 on
            it keeps no singular value, so every decomposition fails).
        history_after_jump: the newest snapshot after an accepted prediction: the optimizer's
            weights (``"optimizer"``) or the assembled ones (``"assembled"``).
        random_ratio: ``"random"``: the fraction accepted, or ``"measured"`` (the fraction
            ``"pdt"`` accepts at the same step).
        seed: seed of the random criterion's own generators, in :data:`SEED_RANGE`.
        chunk_size: elements per chunk of the snapshot and prediction passes (>= 1).
        storage: snapshots beside the parameters (``"same"``), in pinned CPU memory (``"cpu"``)
            or in bfloat16 (``"bf16"``).
        every_n_steps: step mode: PDT steps itself after every ``K`` optimizer steps (``None``:
            you call ``step()`` once per epoch).
        pacing: the pacing rule, how ``horizon`` and ``interval`` evolve
            (:mod:`torch_pdt.pacing`): ``"fixed"``, ``"authors"`` (earlier name ``"reference"``)
            or ``"adaptive"``.
        tolerance: ``"adaptive"``: relative loss rise that makes a prediction bad (finite, >= 0).
        patience: ``"adaptive"``: good predictions in a row before growing back (>= 1).
        on_jump: the optimizer's velocities of accepted elements (:mod:`torch_pdt.jump`):
            ``"keep"``, ``"reset"`` or ``"rescale"``.
        kernel: how the passes over the snapshots run (:mod:`torch_pdt.kernel`):
            ``"compiled"``, ``"eager"`` or ``"auto"``. Not saved in checkpoints: both kernels
            make the same decisions (up to rounding, :data:`torch_pdt.kernel.DECISION_BOUND`).
        scope: one DMD operator for the whole model (``"model"``, the paper) or one per
            parameter tensor, fitted to that tensor's own snapshots (``"layer"``).
        graded: each element jumps to the largest ``k <= tau`` whose checks pass (the criterion
            with ``tau`` replaced by ``k``, on the forecast ``k`` epochs ahead) instead of to
            ``tau`` or not at all. Not with ``criterion="random"``.
        jump: where an accepted element goes: the DMD forecast (``"forecast"``, the paper) or
            :math:`w + \tau\Delta`, the optimizer's last step extrapolated linearly
            (``"linear"``; :math:`w + k\Delta` where ``graded`` lands at ``k``). The criterion
            judges the DMD forecast either way: with ``"linear"`` the DMD only chooses which
            elements jump.
        horizon_by: what the horizon counts: ``"epochs"`` (``tau`` epochs ahead, the paper) or
            ``"lr"``: ``tau`` epochs at the learning rate the history moved at. PDT records the
            optimizer's learning rate at every snapshot and forecasts
            :math:`\tau_{eff} \le \tau` epochs ahead, the epochs ahead weighted by their
            learning rates extrapolated from the last two (:func:`torch_pdt.pacing.effective_horizon`):
            under an annealed schedule the forecast then does not overshoot where the run is going;
            under a constant learning rate :math:`\tau_{eff} = \tau` exactly.
    """

    history: int = 5
    horizon: int = 5
    start_epoch: int = 5
    interval: int = 1
    criterion: CriterionName = "pdt"
    forecast: ForecastForm | None = None
    modes: Modes = "projected"
    rank: int | float | None = None
    rtol: float | None = None
    history_after_jump: HistoryAfterJump = "optimizer"
    random_ratio: float | Literal["measured"] = "measured"
    seed: int = 0
    chunk_size: int = CHUNK_SIZE
    storage: Storage = "same"
    every_n_steps: int | None = None
    pacing: Pacing = "fixed"
    tolerance: float = 0.05
    patience: int = 3
    on_jump: OnJump = "keep"
    kernel: Kernel = "auto"
    scope: Scope = "model"
    graded: bool = False
    jump: Jump = "forecast"
    horizon_by: HorizonBy = "epochs"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: the validated values replace the given ones once, here
        for name, low in [("history", 2), ("horizon", 1), ("start_epoch", 0), ("interval", 0), ("chunk_size", 1)]:
            set_(self, name, as_int(name, getattr(self, name), low))
        set_(self, "seed", as_int("seed", self.seed, *SEED_RANGE))
        set_(self, "patience", as_int("patience", self.patience, 1))
        if self.every_n_steps is not None:
            set_(self, "every_n_steps", as_int("every_n_steps", self.every_n_steps, 1))
        for name, kind in [
            ("criterion", CriterionName),
            ("modes", Modes),
            ("history_after_jump", HistoryAfterJump),
            ("storage", Storage),
            ("pacing", Pacing),
            ("on_jump", OnJump),
            ("kernel", Kernel),
            ("scope", Scope),
            ("jump", Jump),
            ("horizon_by", HorizonBy),
        ]:
            set_(self, name, _choice(name, getattr(self, name), kind))
        forecast = self.forecast
        if forecast is None:  # only None means the default: an empty string is a typo, refused below
            forecast = "increment" if self.criterion == "authors" else "paper"
        set_(self, "forecast", _choice("forecast", forecast, ForecastForm))
        if self.random_ratio != "measured":
            ratio = as_real("random_ratio", self.random_ratio)
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(f"random_ratio must be 'measured' or a float in [0, 1], got {self.random_ratio!r}")
            set_(self, "random_ratio", ratio)
        if not is_bool(self.graded):
            raise ValueError(f"graded must be True or False, got {self.graded!r}")
        set_(self, "graded", bool(self.graded))
        if self.graded and self.criterion == "random":
            raise ValueError("graded=True needs checks to grade by; criterion='random' has none")
        self._check_truncation()
        tolerance = as_real("tolerance", self.tolerance)
        if not 0 <= tolerance < math.inf:
            raise ValueError(f"tolerance must be a finite float >= 0, got {self.tolerance!r}")
        set_(self, "tolerance", tolerance)
        if self.pacing == "adaptive" and (self.start_of_epoch or self.history_after_jump != "optimizer"):
            raise ValueError(
                "pacing='adaptive' rolls back to the optimizer's weights held in the history: it needs "
                "history_after_jump='optimizer' and a criterion other than 'authors' (start-of-epoch snapshots), "
                f"got {self.history_after_jump!r}, {self.criterion!r}"
            )
        if self.pacing != "fixed" and self.every_n_steps is not None:
            raise ValueError(
                f"pacing={self.pacing!r} needs step(loss=...), which step mode (every_n_steps) calls without a "
                "loss; use pacing='fixed'"
            )

    def _check_truncation(self) -> None:
        rank, rtol = self.rank, self.rtol
        if rank is not None:
            if is_bool(rank) or not isinstance(rank, numbers.Real):
                raise ValueError(f"rank must be None, an int >= 1 or a float in (0, 1], got {rank!r}")
            if isinstance(rank, numbers.Integral):
                rank = as_int("rank", rank, 1)
            elif not 0.0 < float(rank) <= 1.0:
                raise ValueError(f"rank as an energy fraction must be in (0, 1], got {rank!r}")
            object.__setattr__(self, "rank", rank if isinstance(rank, int) else float(rank))
        if rtol is not None:
            rtol = as_real("rtol", rtol)
            if not 0.0 <= rtol < math.inf:
                raise ValueError(f"rtol must be a finite float >= 0, got {rtol}")
            object.__setattr__(self, "rtol", rtol)

    def ignored(self, given: Iterable[str]) -> list[str]:
        """Which of the options named in ``given`` this configuration ignores, each with why.

        ``seed`` is not reported, though only ``criterion="random"`` draws: a run's seed is
        commonly passed to everything, and ignoring it changes nothing a user expects.

        >>> PDTConfig(pacing="fixed").ignored(["tolerance", "horizon"])
        ["tolerance (it applies to pacing='adaptive' only; got pacing='fixed')"]
        """
        rules = {
            "tolerance": ("pacing='adaptive'", self.pacing == "adaptive", f"pacing={self.pacing!r}"),
            "patience": ("pacing='adaptive'", self.pacing == "adaptive", f"pacing={self.pacing!r}"),
            "random_ratio": ("criterion='random'", self.criterion == "random", f"criterion={self.criterion!r}"),
            # Start-of-epoch snapshots are taken after the jump: the assembled weights, whatever this says.
            "history_after_jump": ("criteria other than 'authors'", not self.start_of_epoch, "criterion='authors'"),
        }
        return [
            f"{name} (it applies to {where} only; got {got})"
            for name, (where, applies, got) in rules.items()
            if name in given and not applies
        ]

    @property
    def start_of_epoch(self) -> bool:
        """Whether snapshots are the weights each epoch *started* from (the authors' code), not ended with."""
        return self.criterion == "authors"

    def saved(self) -> dict[str, Any]:
        """The options a checkpoint records and must match on load (all but ``chunk_size`` and ``kernel``)."""
        return {k: v for k, v in asdict(self).items() if k not in ("chunk_size", "kernel")}

    def check_saved(self, saved: Any) -> None:
        """``ValueError`` unless ``saved`` (a checkpoint's :meth:`saved`, in the current names:
        :func:`torch_pdt.compat.upgrade`) matches."""
        if not isinstance(saved, Mapping):
            raise ValueError(f"saved config must be a dict, got {type(saved).__name__}")
        diff = []
        for key, value in self.saved().items():
            theirs = saved.get(key)
            if theirs != value:
                diff.append(f"{key}={theirs!r} (saved) vs {value!r} (now)")
        if diff:
            raise ValueError("PDT state was saved with another configuration: " + ", ".join(diff))
