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

__all__ = ["has_batch_norm", "recompute_batch_norm"]


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` holds a BatchNorm layer (any ``torch.nn.modules.batchnorm._BatchNorm``)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, batches: Iterable[Tensor | tuple | list]) -> bool:
    """Re-estimate every BatchNorm's running statistics from ``batches`` at the current weights.

    ``batches`` are model inputs, or tuples and lists whose first element is (a loader's
    ``(x, y)``), already on the model's device. Every module's training mode is restored as
    it was (a model with some layers in eval mode keeps them so).
    Returns whether there was a BatchNorm to refresh (``False``: nothing ran).

    Raises:
        ValueError: when ``batches`` is empty (and the model has a BatchNorm), before anything
            changes: the running statistics would be reset to mean 0, variance 1 with nothing
            to average.
    """
    if not has_batch_norm(model):
        return False
    it = iter(batches)
    first = next(it, _NONE)
    if first is _NONE:
        raise ValueError("batches is empty: recompute_batch_norm needs at least one batch to average over")
    modes = [(m, m.training) for m in model.modules()]
    try:
        # torch's own: reset, momentum=None (cumulative average), one forward pass per batch.
        torch.optim.swa_utils.update_bn(itertools.chain([first], it), model)
    finally:
        for m, training in modes:  # update_bn restores only the top module's mode, on every child
            m.training = training
    return True


_NONE = object()
