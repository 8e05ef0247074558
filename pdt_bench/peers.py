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
* **Fresh BatchNorm statistics** (``pdt-fresh-bn``): PDT, and after every accepted prediction the running
  statistics recomputed at the new weights from :data:`BN_BATCHES` of the epoch's training batches
  (:func:`torch_pdt.recompute_batch_norm`), on the clock as part of PDT's time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from .methods import Method

__all__ = ["check_method", "schedule_free_optimizer"]

BN_BATCHES = 20
"""Training batches that re-estimate BatchNorm statistics (:func:`torch_pdt.recompute_batch_norm`) for
schedule-free evaluation and after an accepted prediction (``pdt-fresh-bn``)."""
SCHEDULE_FREE_LR_SCALE = {"sgd": 10.0, "sgd-momentum": 10.0, "adam": 1.0, "adamw": 1.0}
"""The schedule-free learning rate over the task's, unless the method sets its own: the low end of the
package's guidance (SGD 10-50x, AdamW 1-10x the scheduled rate)."""


def check_method(method: Method, optimizer: str | None, pdt_options: dict[str, Any]) -> None:
    """Refuse, before anything runs, a control that would not measure what it says."""
    if method.schedule_free and optimizer is not None and optimizer not in SCHEDULE_FREE_LR_SCALE:
        raise ValueError(f"{method.name}: no schedule-free twin of optimizer {optimizer!r}; use sgd or adam(w)")
    if (method.lr is not None and not method.lr > 0) or not method.lr_scale > 0:
        raise ValueError(f"{method.name}: the learning rate must be positive")
    options = (method.pdt or {}) | pdt_options
    if method.pdt is not None and options.get("every_n_steps") is not None:
        raise ValueError(
            "--pdt every_n_steps: the harness steps PDT once per epoch itself (step mode is for own loops)"
        )


def schedule_free_optimizer(
    name: str, params: Iterable[Tensor], lr: float, weight_decay: float, warmup_steps: int
) -> torch.optim.Optimizer:
    """The schedule-free twin of optimizer ``name`` (``sgd``/``sgd-momentum``, ``adam``/``adamw``)."""
    try:
        import schedulefree
    except ImportError:
        raise ValueError(
            "the schedule-free method needs the schedulefree package: pip install 'torch-pdt[bench]'"
        ) from None
    if name in ("sgd", "sgd-momentum"):
        return schedulefree.SGDScheduleFree(params, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps)
    if name in ("adam", "adamw"):
        return schedulefree.AdamWScheduleFree(params, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps)
    raise ValueError(f"schedule-free has no twin of optimizer {name!r}; use sgd, sgd-momentum, adam or adamw")
