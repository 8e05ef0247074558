r"""The DMD fit of the snapshot history: one operator for the model, or one per parameter tensor.

:func:`fit` fits one DMD to all parameters from the history's Gram matrix, or with
``scope="layer"`` one per tensor, each from its own ``h x h`` block. Either factors the
consecutive basis of the snapshots by Cholesky-QR (:func:`torch_pdt.dmd.orthogonal_factor`),
reading the snapshots a second time only where the first factor is not accurate enough, and
turns the fit into the step coefficients the passes apply (:meth:`torch_pdt.dmd.DMD.step_coefficients`):

.. math::
    \hat w_{i+k} - \hat w_{i+k-1} = S a_k,\quad k = 1..\tau, \qquad D = S \textstyle\sum_k a_k .

Each returns a dict: ``coefficients`` (one matrix, or one per tensor with ``None`` where no fit)
and the statistics ``eigenvalues``, ``rank``, ``gram_passes`` (and ``layers`` per tensor); or,
where no fit could be made, the ``reason`` with what is known. The Gram matrices come through
callables, so that a sharded PDT sums them over the ranks (``PDT._reduce_gram``).

Example:
    >>> from torch_pdt.config import PDTConfig
    >>> S = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64).T * 0.9 ** torch.arange(4.0)
    >>> B = S @ dmd.consecutive_basis(4)  # the newest snapshot, then the differences
    >>> fitted = fit(lambda: (B.T @ B)[None], lambda W: ((B @ W).T @ (B @ W))[None], 4, 1e-16,
    ...              PDTConfig(), 2, ["w"], [3])
    >>> fitted["rank"], fitted["coefficients"].shape
    (1, torch.Size([3, 4]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import dmd, statistics
from .config import PDTConfig

__all__ = ["fit"]

Grams = Callable[[], Tensor]
"""The first Gram pass: ``blocks x m x m`` float64 (one block for the model, one per tensor per layer)."""
SecondGram = Callable[[Any], Tensor]
"""The second Gram pass (:meth:`torch_pdt.passes.Passes.gram`): ``blocks x q x q`` for the basis change ``W``."""


def fit(
    grams: Grams,
    second_gram: SecondGram,
    m: int,
    resolution: float,
    config: PDTConfig,
    tau: int,
    names: Sequence[str],
    numels: Sequence[int],
) -> dict[str, Any]:
    """The DMD of ``m`` snapshots for ``config.scope`` and its step coefficients ``tau`` epochs ahead.

    ``resolution`` is the unit roundoff of the stored snapshots (when one Cholesky-QR pass
    suffices); ``names`` and ``numels`` are the parameters' (per layer: the statistics' keys, and
    a tensor without elements is not fitted).
    """
    fitter = _Fitter(m, resolution, config, tau)
    if config.scope == "layer":
        return _fit_layers(grams, second_gram, fitter, names, numels)
    return _fit_model(grams, second_gram, fitter)


@dataclass(frozen=True)
class _Fitter:
    """The options every fit shares."""

    m: int
    resolution: float
    config: PDTConfig
    tau: int

    def coefficients(self, R: Tensor, W: Tensor) -> tuple[dmd.DMD, Tensor]:
        """The fit of the factor ``R``, ``W`` and its step coefficients."""
        cfg = self.config
        basis = dmd.consecutive_basis(self.m)
        fitted = dmd.fit_factor(R, W, basis=basis, exact=cfg.modes == "exact", rank=cfg.rank, rtol=cfg.rtol)
        return fitted, fitted.step_coefficients(self.tau, cfg.forecast, cfg.graded)


def _fit_model(grams: Grams, second_gram: SecondGram, fitter: _Fitter) -> dict[str, Any]:
    """One DMD of all parameters."""
    count = [1]  # the first Gram pass is the history's incremental Gram

    def gram_of(W: Tensor) -> Tensor:
        count[0] += 1
        return second_gram(W)[0]

    try:
        R, W = dmd.orthogonal_factor(gram_of, fitter.m, gram=grams()[0], resolution=fitter.resolution)
        fitted, coefficients = fitter.coefficients(R, W)
    except dmd.DMDError as e:
        return {"reason": f"decomposition failed: {e}", "gram_passes": count[0]}
    stats = {"eigenvalues": statistics.complex_pairs(fitted.eigenvalues), "rank": fitted.rank, "gram_passes": count[0]}
    if not torch.isfinite(coefficients).all():
        return {"reason": "decomposition failed: non-finite forecast"} | stats
    return {"coefficients": coefficients} | stats


def _fit_layers(
    grams: Grams, second_gram: SecondGram, fitter: _Fitter, names: Sequence[str], numels: Sequence[int]
) -> dict[str, Any]:
    r"""``scope="layer"``: one DMD per parameter tensor, from its own ``h x h`` Gram matrix.

    The second Gram pass, for the tensors whose first factor is not accurate enough
    (:func:`torch_pdt.dmd.first_factor`), is one pass over the snapshots for all of them.
    A tensor whose fit fails (rank 0, a non-finite forecast) is kept as the optimizer left
    it; its reason is in ``layers`` (per tensor: ``rank``, ``eigenvalues`` as ``[re, im]``
    pairs, ``reason``); ``rank`` is the largest, ``eigenvalues`` is empty (they are per tensor).
    """
    m = fitter.m
    try:
        blocks = grams()
    except dmd.DMDError as e:
        return {"reason": f"decomposition failed: {e}", "gram_passes": 1}
    firsts: list[tuple[Tensor, Tensor, bool] | str] = []
    for K in blocks:
        try:
            firsts.append(dmd.first_factor(K, m, fitter.resolution))
        except dmd.DMDError as e:
            firsts.append(str(e))
    refine = [None if isinstance(f, str) or f[2] else f[1] for f in firsts]
    passes = 1
    second = None
    if any(w is not None for w in refine):
        passes += 1
        try:
            second = second_gram(refine)
        except dmd.DMDError as e:
            return {"reason": f"decomposition failed: {e}", "gram_passes": passes}
    coefficients: list[Tensor | None] = []
    layers: dict[str, dict[str, Any]] = {}
    for i, (name, first) in enumerate(zip(names, firsts)):
        try:
            if numels[i] == 0:  # its Gram matrix is zero too: say why, not "rank 0"
                raise dmd.DMDError("no elements")
            if isinstance(first, str):
                raise dmd.DMDError(first)
            R1, W1, _ = first
            fitted, mine = fitter.coefficients(*dmd.finish_factor(R1, W1, m, None if refine[i] is None else second[i]))
            if not torch.isfinite(mine).all():
                raise dmd.DMDError("non-finite forecast")
        except dmd.DMDError as e:
            coefficients.append(None)
            layers[name] = {"rank": 0, "eigenvalues": [], "reason": str(e)}
            continue
        coefficients.append(mine)
        eigenvalues = statistics.complex_pairs(fitted.eigenvalues)
        layers[name] = {"rank": fitted.rank, "eigenvalues": eigenvalues, "reason": None}
    if all(c is None for c in coefficients):
        return {"reason": "decomposition failed: no layer could be fitted", "gram_passes": passes, "layers": layers}
    rank = max(layer["rank"] for layer in layers.values())
    return {"coefficients": coefficients, "eigenvalues": [], "rank": rank, "gram_passes": passes, "layers": layers}
