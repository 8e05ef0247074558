"""The controls a skeptic asks for first, beside PDT: what each changes in the training loop.

* **EMA of the weights** (``ema``): :class:`torch.optim.swa_utils.AveragedModel` with an exponential
  average :math:`\\bar w \\leftarrow d\\,\\bar w + (1 - d)\\,w` after every optimizer step (buffers
  averaged too, so BatchNorm statistics follow the averaged weights); the averaged model is the one
  evaluated, and its full-pass training loss is the one TTB reads.
* **Schedule-free** (``schedule-free``): ``schedulefree.SGDScheduleFree`` for the SGD tasks,
  ``AdamWScheduleFree`` for Adam/AdamW, with no learning-rate schedule (one epoch of warm-up) and the
  package's ``train()``/``eval()`` protocol. Its evaluation point :math:`x` is not the point the
  gradients were taken at, so BatchNorm statistics are recomputed at :math:`x` before evaluating
  (the package's documented recipe), on the clock.
* **LAWA** (``lawa``, ``lawa@k=...``; Ajroldi et al. 2025, "latest weight averaging"): after every epoch
  the weights :math:`w_e` join a window of the last :math:`k` epoch checkpoints, and the model evaluated
  is their mean :math:`\\bar w_e = \\frac{1}{m} \\sum_{i=e-m+1}^{e} w_i`, :math:`m = \\min(k, e)`
  (:class:`LAWA`); training continues on the live weights. BatchNorm statistics are averaged with the
  weights, as the EMA's. The copy and the mean are on the clock (they are the method's work).
* **PDT with averaged weights for evaluation** (``pdt-ema``, ``pdt-lawa``): PDT moves the live weights,
  the EMA or LAWA average of them is what is evaluated, so a jump enters the average as any epoch does.
* **PDT on schedule-free** (``pdt-schedule-free@point=eval|train``): schedule-free keeps two sequences,
  the base iterate :math:`z` (in the optimizer's state) and the average :math:`x`; the parameters hold the
  gradient point :math:`y = \\beta x + (1 - \\beta) z` after ``train()`` and :math:`x` after ``eval()``.
  ``point=eval`` steps PDT after ``eval()``: it snapshots and moves :math:`x`, and the next ``train()``
  carries a jump :math:`\\Delta x` into :math:`y` as :math:`\\beta \\Delta x`. ``point=train`` steps PDT
  before ``eval()``: it snapshots and moves :math:`y`, and ``eval()`` turns a jump :math:`\\Delta y` into
  :math:`\\Delta x = \\Delta y / \\beta`. Neither touches :math:`z`.
* **Fresh BatchNorm statistics** (``pdt-fresh-bn``): PDT, and after every accepted prediction the running
  statistics recomputed at the new weights from :data:`BN_BATCHES` of the epoch's training batches
  (:func:`torch_pdt.recompute_batch_norm`), on the clock as part of PDT's time.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .methods import Method

__all__ = ["LAWA", "check_method", "schedule_free_optimizer"]

BN_BATCHES = 20
"""Training batches that re-estimate BatchNorm statistics (:func:`torch_pdt.recompute_batch_norm`) for
schedule-free evaluation and after an accepted prediction (``pdt-fresh-bn``)."""
SCHEDULE_FREE_LR_SCALE = {"sgd": 10.0, "sgd-momentum": 10.0, "sgd-nesterov": 10.0, "adam": 1.0, "adamw": 1.0}
"""The schedule-free learning rate over the task's, unless the method sets its own: the low end of the
package's guidance (SGD 10-50x, AdamW 1-10x the scheduled rate)."""


def check_method(method: Method, optimizer: str | None, pdt_options: dict[str, Any]) -> None:
    """Refuse, before anything runs, a control that would not measure what it says."""
    if method.schedule_free and optimizer is not None and optimizer not in SCHEDULE_FREE_LR_SCALE:
        twins = ", ".join(SCHEDULE_FREE_LR_SCALE)
        raise ValueError(f"{method.name}: no schedule-free twin of optimizer {optimizer!r}; use one of {twins}")
    if (method.lr is not None and not method.lr > 0) or not method.lr_scale > 0:
        raise ValueError(f"{method.name}: the learning rate must be positive")
    if method.point is not None and not (method.schedule_free and method.pdt is not None):
        raise ValueError(f"{method.name}: a schedule-free point needs PDT on a schedule-free optimizer")
    if method.lawa is not None and method.ema_decay is not None:
        raise ValueError(f"{method.name}: evaluate one average, EMA or LAWA, not both")
    options = (method.pdt or {}) | pdt_options
    if method.pdt is not None and options.get("every_n_steps") is not None:
        raise ValueError(
            "--pdt every_n_steps: the harness steps PDT once per epoch itself (step mode is for own loops)"
        )


def schedule_free_optimizer(
    name: str, params: Iterable[Tensor], lr: float, weight_decay: float, warmup_steps: int
) -> torch.optim.Optimizer:
    """The schedule-free twin of optimizer ``name``: schedule-free SGD for ``sgd``, ``sgd-momentum`` and
    ``sgd-nesterov`` (its interpolation takes momentum's place), schedule-free AdamW for ``adam``/``adamw``."""
    try:
        import schedulefree
    except ImportError:
        raise ValueError(
            "the schedule-free method needs the schedulefree package: pip install 'torch-pdt[bench]'"
        ) from None
    if name in ("sgd", "sgd-momentum", "sgd-nesterov"):
        return schedulefree.SGDScheduleFree(params, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps)
    if name in ("adam", "adamw"):
        return schedulefree.AdamWScheduleFree(params, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps)
    raise ValueError(f"schedule-free has no twin of optimizer {name!r}; use one of {', '.join(SCHEDULE_FREE_LR_SCALE)}")


class LAWA:
    r"""Latest weight averaging: the mean of the last ``k`` checkpoints, in a separate module.

    After the :math:`e`-th :meth:`update`, :attr:`module` holds
    :math:`\bar w_e = \frac{1}{m} \sum_{i=e-m+1}^{e} w_i` with :math:`m = \min(k, e)`, for every
    floating-point parameter and buffer (BatchNorm statistics follow the weights); integer buffers
    (``num_batches_tracked``) are the newest checkpoint's. The live model is only read.

    >>> model = nn.Linear(1, 1, bias=False)
    >>> lawa = LAWA(model, k=2)
    >>> for w in (1.0, 2.0, 6.0):
    ...     _ = model.weight.data.fill_(w)
    ...     lawa.update(model)
    >>> lawa.module.weight.item()  # (2 + 6) / 2
    4.0
    """

    def __init__(self, model: nn.Module, k: int) -> None:
        if k < 1:
            raise ValueError(f"LAWA averages k >= 1 checkpoints, got k={k}")
        self.k = k
        self.module = copy.deepcopy(model)
        self._checkpoints: deque[list[Tensor]] = deque(maxlen=k)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Add ``model``'s current weights as the newest checkpoint and average the window into :attr:`module`."""
        live = list(model.state_dict().values())
        self._checkpoints.append([t.detach().clone() for t in live])
        for i, (target, newest) in enumerate(zip(self.module.state_dict().values(), live)):
            if target.is_floating_point():
                target.copy_(torch.stack([c[i] for c in self._checkpoints]).mean(0))
            else:
                target.copy_(newest)
