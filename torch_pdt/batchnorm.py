r"""Fresh BatchNorm statistics after a jump.

An accepted prediction moves the weights about ``tau`` epochs ahead but leaves every BatchNorm's
running statistics where the optimizer's weights put them. At evaluation the network then
normalises with the mean and variance of activations its new weights no longer produce.
:func:`recompute_batch_norm` re-estimates them at the current weights, as
:func:`torch.optim.swa_utils.update_bn` does after weight averaging: with the running
statistics reset and ``momentum=None``, each BatchNorm's running mean and variance become the
cumulative averages over the ``B`` batches,

.. math::
    \mu = \frac{1}{B}\sum_{b=1}^{B} \bar x_b, \qquad \sigma^2 = \frac{1}{B}\sum_{b=1}^{B} s^2_b,

with :math:`\bar x_b` and :math:`s^2_b` the mean and unbiased variance of the layer's input in
batch ``b``. Call it after :meth:`torch_pdt.PDT.step` when the statistics say a prediction was
accepted, with a few training batches (a cached handful is enough: the cost is ``B`` forward
passes):

>>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
>>> batches = [torch.randn(8, 3) for _ in range(4)]
>>> # stats = pdt.step(); if stats["predicted"] and stats["accepted"]:
>>> recompute_batch_norm(model, batches)
True
>>> recompute_batch_norm(torch.nn.Linear(3, 4), batches)  # no BatchNorm: no forward pass
False
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["has_batch_norm", "is_frozen", "recompute_batch_norm"]


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` holds a BatchNorm layer (any ``torch.nn.modules.batchnorm._BatchNorm``)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def is_frozen(bn: nn.modules.batchnorm._BatchNorm) -> bool:
    """Whether ``bn`` is frozen: in eval mode, with affine parameters none of which requires a gradient.

    This is how a frozen backbone is written (``bn.eval()`` and ``bn.requires_grad_(False)``):
    its statistics are part of what was frozen. A BatchNorm without affine parameters is never
    frozen by this rule (eval mode alone is also what a model is in right after evaluation).
    """
    weights = list(bn.parameters(recurse=False))
    return not bn.training and bool(weights) and not any(w.requires_grad for w in weights)


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, batches: Iterable[Tensor | tuple | list]) -> bool:
    """Re-estimate every BatchNorm's running statistics from ``batches`` at the current weights.

    ``batches`` are model inputs, or tuples and lists whose first element is (a loader's
    ``(x, y)``), already on the model's device. The forward passes run in training mode (as
    :func:`torch.optim.swa_utils.update_bn` runs them); every module's mode is restored as it
    was (a model with some layers in eval mode keeps them so).

    A *frozen* BatchNorm (:func:`is_frozen`: eval mode, affine parameters all with
    ``requires_grad=False``) keeps its statistics and stays in eval mode during the passes.
    A BatchNorm without running statistics (``track_running_stats=False``) has none to refresh.

    All or nothing: if a forward pass raises (a batch of the wrong shape, a loader of dicts), or
    the batches give a non-finite running mean or variance (a batch holding NaN or Inf), every
    BatchNorm gets back its running statistics, ``num_batches_tracked`` and ``momentum``, and the
    error propagates.

    Returns whether there was a BatchNorm to refresh (``False``: nothing ran).

    Raises:
        ValueError: when ``batches`` is empty (and the model has a BatchNorm to refresh), before
            anything changes: the running statistics would be reset to mean 0, variance 1 with
            nothing to average; or when the batches give non-finite statistics (after the passes,
            with every statistic restored), naming the BatchNorm layers.
    """
    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and not is_frozen(m)
    ]
    if not norms:
        return False
    it = iter(batches)
    first = next(it, _NONE)
    if first is _NONE:
        raise ValueError("batches is empty: recompute_batch_norm needs at least one batch to average over")
    modes = [(m, m.training) for m in model.modules()]
    frozen = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and is_frozen(m)]
    saved = [(bn, bn.momentum, [b.clone() for b in _statistics(bn)]) for bn in norms]
    try:
        model.train()
        for bn in frozen:
            bn.eval()
        for bn in norms:
            # Reset, and momentum=None: the running statistics become cumulative averages.
            bn.reset_running_stats()
            bn.momentum = None
        for batch in itertools.chain([first], it):
            model(batch[0] if isinstance(batch, (list, tuple)) else batch)
        # A batch holding NaN or Inf (or activations that overflow) averages into every later statistic:
        # keep the statistics the model had, as for a batch that raised.
        refreshed = {id(bn) for bn in norms}
        bad = [name or type(m).__name__ for name, m in model.named_modules() if id(m) in refreshed and not _finite(m)]
        if bad:
            raise ValueError(
                f"recompute_batch_norm: the batches gave non-finite running statistics in {', '.join(bad)}; "
                "the statistics are kept as they were"
            )
    except BaseException:
        for bn, _, old in saved:
            for b, value in zip(_statistics(bn), old):
                b.copy_(value)
        raise
    finally:
        for bn, momentum, _ in saved:
            bn.momentum = momentum
        for m, training in modes:
            m.training = training
    return True


def _finite(bn: nn.modules.batchnorm._BatchNorm) -> bool:
    return bool(torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var).all())


def _statistics(bn: nn.modules.batchnorm._BatchNorm) -> list[Tensor]:
    """The buffers a refresh changes: running mean, running variance, batches tracked."""
    return [bn.running_mean, bn.running_var, bn.num_batches_tracked]


_NONE = object()
