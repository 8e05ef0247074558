r"""The DMD fit of the snapshot history: one operator for the model, or one per parameter tensor.

:func:`fit_model` fits one DMD to all parameters from the history's Gram matrix (the sum of
the tensors' blocks); :func:`fit_layers` (``scope="layer"``) fits one per tensor, each from
its own ``h x h`` block. Both factor the consecutive basis of the snapshots by Cholesky-QR
(:func:`torch_pdt.dmd.orthogonal_factor`), reading the snapshots a second time only where the
first factor is not accurate enough, and turn the fit into the step coefficients the passes
apply (:meth:`torch_pdt.dmd.DMD.step_coefficients`):

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
    >>> fitted = fit_model(lambda: (B.T @ B)[None], lambda W: ((B @ W).T @ (B @ W))[None], 4, 1e-16,
    ...                    PDTConfig(), 2, ["w"], [3])
    >>> fitted["rank"], fitted["coefficients"].shape
    (1, torch.Size([3, 4]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from . import dmd, statistics
from .config import PDTConfig

__all__ = ["fit_layers", "fit_model"]

Grams = Callable[[], Tensor]
"""The first Gram pass: ``blocks x m x m`` float64 (one block for the model, one per tensor per layer)."""
SecondGram = Callable[[Any], Tensor]
"""The second Gram pass (:meth:`torch_pdt.passes.Passes.gram`): ``blocks x q x q`` for the basis change ``W``."""


def fit_model(
    grams: Grams,
    second_gram: SecondGram,
    m: int,
    resolution: float,
    config: PDTConfig,
    tau: int,
    names: Sequence[str],
    numels: Sequence[int],
) -> dict[str, Any]:
    """One DMD of all parameters (``names`` and ``numels`` unused: the signature of :func:`fit_layers`)."""
    count = [1]  # the first Gram pass is the history's incremental Gram

    def gram_of(W: Tensor) -> Tensor:
        count[0] += 1
        return second_gram(W)[0]

    try:
        gram = grams()[0]
        R, W = dmd.orthogonal_factor(gram_of, m, gram=gram, resolution=resolution)
        fit = dmd.fit_factor(
            R, W, basis=dmd.consecutive_basis(m), exact=config.modes == "exact", rank=config.rank, rtol=config.rtol
        )
    except dmd.DMDError as e:
        return {"reason": f"decomposition failed: {e}", "gram_passes": count[0]}
    coefficients = fit.step_coefficients(tau, config.forecast, config.graded)
    fitted = {"eigenvalues": statistics.complex_pairs(fit.eigenvalues), "rank": fit.rank, "gram_passes": count[0]}
    if not torch.isfinite(coefficients).all():
        return {"reason": "decomposition failed: non-finite forecast"} | fitted
    return {"coefficients": coefficients} | fitted


def fit_layers(
    grams: Grams,
    second_gram: SecondGram,
    m: int,
    resolution: float,
    config: PDTConfig,
    tau: int,
    names: Sequence[str],
    numels: Sequence[int],
) -> dict[str, Any]:
    r"""``scope="layer"``: one DMD per parameter tensor, from its own ``h x h`` Gram matrix.

    The second Gram pass, for the tensors whose first factor is not accurate enough
    (:func:`torch_pdt.dmd.first_factor`), is one pass over the snapshots for all of them.
    A tensor whose fit fails (rank 0, a non-finite forecast) is kept as the optimizer left
    it; its reason is in ``layers`` (per tensor: ``rank``, ``eigenvalues`` as ``[re, im]``
    pairs, ``reason``); ``rank`` is the largest, ``eigenvalues`` is empty (they are per tensor).
    """
    try:
        blocks = grams()
    except dmd.DMDError as e:
        return {"reason": f"decomposition failed: {e}", "gram_passes": 1}
    firsts: list[tuple[Tensor, Tensor, bool] | str] = []
    for K in blocks:
        try:
            firsts.append(dmd.first_factor(K, m, resolution))
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
            R, W = dmd.finish_factor(R1, W1, m, None if refine[i] is None else second[i])
            fit = dmd.fit_factor(
                R, W, basis=dmd.consecutive_basis(m), exact=config.modes == "exact", rank=config.rank, rtol=config.rtol
            )
            mine = fit.step_coefficients(tau, config.forecast, config.graded)
            if not torch.isfinite(mine).all():
                raise dmd.DMDError("non-finite forecast")
        except dmd.DMDError as e:
            coefficients.append(None)
            layers[name] = {"rank": 0, "eigenvalues": [], "reason": str(e)}
            continue
        coefficients.append(mine)
        layers[name] = {"rank": fit.rank, "eigenvalues": statistics.complex_pairs(fit.eigenvalues), "reason": None}
    if all(c is None for c in coefficients):
        return {"reason": "decomposition failed: no layer could be fitted", "gram_passes": passes, "layers": layers}
    rank = max(layer["rank"] for layer in layers.values())
    return {"coefficients": coefficients, "eigenvalues": [], "rank": rank, "gram_passes": passes, "layers": layers}
