r"""PDT's two passes over the snapshots as fused element-wise loops, compiled or eager.

A prediction step reads the snapshots twice and writes twice; everything else is ``h x h``
algebra. Both passes are written here as pure tensor functions of one parameter's ``h`` ring
rows (oldest first) and the parameter itself, so that ``torch.compile`` turns each into a
single loop over the elements (one call per parameter, no chunks, no temporaries in memory):

**Copy-in and Gram** (:func:`gram_update`). The new snapshot :math:`s_0` is copied into its
ring row, and with :math:`s_1, \dots, s_{h-1}` the older rows (newest first) and the cyclic
differences :math:`d_i = s_i - s_{i+1 \bmod h}`, the ``2h + 1`` inner products

.. math::
    a_i = \langle d_i, s_0\rangle,\qquad b_i = \langle d_i, d_0\rangle,\qquad
    c = \langle s_0, s_0\rangle

are summed in float64 (differences of float32 values are exact there). They are the Gram
entries a new snapshot changes (:class:`torch_pdt.snapshots.SnapshotHistory`).

**Predict, mask, assemble** (:func:`predict_mask_assemble`). With :math:`X_j = s_j - s_{h-1}`
for the older rows and :math:`X_{h-1} = s_{h-1}` (the newest row), row ``k`` of the
``(tau + 1) x h`` coefficient matrix ``coef`` gives :math:`M_k = \sum_j c_{kj} X_j`: the
predicted steps ``k = 1..tau`` and, last, the displacement :math:`D` (``h (tau + 1)``
multiply-adds per element, in the parameters' precision: float64 for float64, float32 for the
rest). The coefficients are a tensor, so new ones never recompile. The mask is the one of
:mod:`torch_pdt.criteria`; the new weight is :math:`s_{h-1} + D` where it passes and is
finite in the parameter's dtype (:math:`s_{h-1} + \tau\Delta` with ``linear``), the parameter
elsewhere.

**Per layer and graded.** With ``scope="layer"`` every parameter is its own call of each pass
(:class:`FusedPasses`): its inner products are its own Gram block, and its
coefficients its own DMD's. With ``graded=True`` the coefficients are ``2 tau x h`` (the steps,
then the displacements :math:`D_1..D_\tau`) and the horizons are a tensor dimension, not an
unrolled loop: Eq. 7 for every ``k`` at once from two minima over the steps
(:func:`_consistent_up_to`), the landing horizon a maximum over ``k`` of the horizons whose
checks pass, its :math:`D_k` then formed from the gathered coefficients. One compiled graph
serves every ``tau`` (the unrolled loop compiled for a minute at ``tau = 32``); the pass runs in
chunks of :data:`CALL_CHUNK` elements and writes each element's landing horizon into a byte
per element, which the counts per horizon are taken from.

**The second Gram pass** (:func:`second_gram`). Where one Cholesky-QR pass is not accurate
enough (a smooth history: :func:`torch_pdt.dmd.orthogonal_factor`), the fit reads the snapshots
once more for the Gram matrix of :math:`Q_1 = B W_1`: per element the ``q`` values
:math:`v = M s` with :math:`M = (TW_1)^\top`, and their ``q (q + 1) / 2`` products, summed in
float64. It needs no parameter, so with ``scope="model"`` it is one call per storage bucket.

Three forms keep the compiled loop one loop, and cheap (measured on CPU with inductor):

* Eq. 7 compares signs. ``sign``, ``minimum`` and ``maximum`` propagate NaN and were most of
  the compute, so the steps are compared as integers: the bit pattern ``b`` of a float
  mapped to ``b ^ ((b >> 31) & 0x7fffffff)`` (the sign-magnitude to two's-complement
  order) orders floats exactly, ``-0 < +0`` and NaN outside ``[-inf, inf]``. "Every step
  has the sign of :math:`\Delta`" is then "the integer minimum and maximum of the steps lie
  in one window" (:func:`_same_sign`): the decision of the eager pass's ``sign`` test on
  every ±0, ±inf, NaN and denormal.
* No boolean tensor is stored: the counts are reductions of the comparisons, and the
  assembly is one ``where`` written into the parameter. Inductor fused at most four sums
  into the loop and stored the mask (as bool, 37x slower than a float store) for a fifth,
  so the five counts travel as three sums, two of them packing two counts in an int64.

The compiled and the eager pass make the same decisions up to rounding: the multiply-adds
run in another order (and fused) than the eager pass's matrix product, so an element whose
displacement or step lies within a few float32 units of a bound (or a step within a few
units of zero) may be decided differently. ``tests/test_kernel.py`` bounds this at
:data:`DECISION_BOUND` of the elements, against the eager pass and a float64 reference.

Compiling (``torch.compile`` with inductor) needs a C++ compiler on CPU or Triton on GPU
(:func:`compiles`); :class:`FusedPasses` is the compiled implementation of
:mod:`torch_pdt.passes`, which falls back to the eager one where compiling fails.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import criteria, dmd, staging
from .prediction import Coefficients, OnChunk, PassCounts

if TYPE_CHECKING:
    from .passes import Plan

__all__ = [
    "AUTO_MIN_NUMEL",
    "AUTO_MIN_TENSORS",
    "DECISION_BOUND",
    "KERNELS",
    "PAD",
    "FusedPasses",
    "CALL_CHUNK",
    "compiled",
    "compiles",
    "gram_update",
    "predict_mask_assemble",
    "ring_coefficients",
    "second_gram",
    "work_dtype",
]

KERNELS = ("auto", "compiled", "eager")
"""``PDT(kernel=...)``: compile where possible, always compile (fail otherwise), never compile."""

PAD = 16
"""Elements of padding ahead of every ring row. Compiled functions specialise on a view's
storage offset being zero or not; without the pad the oldest row of the first parameter
moves through offset 0 as the ring turns, and each function recompiled up to ``h`` times."""

DECISION_BOUND = 1e-6
"""Largest fraction of elements whose decision may differ between the compiled and the
eager pass or the float64 reference (rounding near a bound, see the module docstring). Measured
on 4M float32 weights over 8 predictions: none against the eager pass, at most 1 against
float64 (as for the eager pass). The bound assumes a forecast that is more than rounding:
where the step coefficients are huge (seen: 1e16, from float16 weights that barely move) both
passes forecast rounding noise, and their counts per rejection reason differed (the accepted
counts did not)."""

_COUNTS = ("finite", "consistency", "lower_bound", "upper_bound", "accepted")

_INT = {torch.float32: torch.int32, torch.float64: torch.int64}
_KEY_INF = {torch.float32: 0x7F800000, torch.float64: 0x7FF0000000000000}  # bit patterns of +inf


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision of the prediction pass: float64 for float64 parameters, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram_update(new: Tensor, older: Sequence[Tensor], dest: Tensor) -> Tensor:
    r"""Copy ``new`` into ``dest`` and return the float64 inner products ``[a_0..a_{h-1}, b_0..b_{h-1}, c]``.

    ``older`` are the other ``h - 1`` ring rows, newest first (see the module docstring);
    ``dest`` is the row ``new`` enters; the products are of ``new`` rounded to its dtype.
    """
    s = [new.to(dest.dtype).to(torch.float64)] + [r.to(torch.float64) for r in older]
    h = len(s)
    d = [s[i] - s[(i + 1) % h] for i in range(h)]
    sums = [(di * s[0]).sum() for di in d] + [(di * d[0]).sum() for di in d] + [(s[0] * s[0]).sum()]
    dest.copy_(new)
    return torch.stack(sums)


def second_gram(rows: Sequence[Tensor], combination: Tensor) -> Tensor:
    r"""The float64 upper triangle (row by row) of :math:`V^\top V` with :math:`V = S\,M^\top`.

    ``rows`` are the ``m`` snapshots :math:`S` (ring rows, oldest first) of one stretch of the
    storage, ``combination`` the float64 ``q x m`` matrix :math:`M = (TW)^\top` of the second
    Cholesky-QR pass (:func:`torch_pdt.dmd.orthogonal_factor`): per element, the ``q`` values
    :math:`v_a = \sum_j M_{aj} s_j` in float64 and their ``q (q + 1) / 2`` products, summed.
    The same sums as :func:`torch_pdt.dmd.snapshot_gram_of`'s matrix products, in one fused
    loop that reads each snapshot once (no float64 copy of a chunk, no ``q x c`` temporary).
    """
    q, m = combination.shape
    s = [r.to(torch.float64) for r in rows]
    v = []
    for a in range(q):
        acc = combination[a, 0] * s[0]
        for j in range(1, m):
            acc = acc + combination[a, j] * s[j]
        v.append(acc)
    return torch.stack([(v[a] * v[b]).sum() for a in range(q) for b in range(a, q)])


def overflow_threshold(dtype: torch.dtype) -> float:
    """The smallest magnitude that rounds to inf in ``dtype`` (round to nearest, ties to even: the
    largest finite value plus half its spacing, a tie that rounds up since its last bit is odd);
    inf for float32 and float64, where the working precision is the parameter's own."""
    if dtype in (torch.float32, torch.float64):
        return math.inf
    info = torch.finfo(dtype)
    return info.max + info.eps * 2.0 ** math.floor(math.log2(info.max)) / 2


def _order_key(x: Tensor) -> Tensor:
    """Integers ordered as the floats ``x`` are (totally: ``-0 < +0``, NaN beyond ``±inf``)."""
    itype = _INT[x.dtype]
    b = x.view(itype)
    return b ^ ((b >> (torch.iinfo(itype).bits - 1)) & torch.iinfo(itype).max)


def _same_sign(low: Tensor, high: Tensor, delta: Tensor) -> Tensor:
    """Eq. 7 as the eager pass decides it, from the order keys of the smallest and largest step.

    The eager pass compares ``torch.sign`` of the steps' ``amin`` and ``amax`` with that of
    ``delta``; ``sign`` maps NaN to 0 and the extremes are NaN when any step is. So: with a
    NaN step, the test passes exactly when ``delta`` is zero or NaN; otherwise every step
    must lie in the window of ``delta``'s sign: keys ``[1, key(inf)]`` for ``delta > 0``,
    ``[key(-inf), key(-0) - 1]`` for ``delta < 0`` and ``[key(-0), key(+0)]`` for zero or NaN.
    """
    key_inf = _KEY_INF[delta.dtype]
    itype = low.dtype

    def const(v: int) -> Tensor:
        return torch.full((), v, dtype=itype, device=low.device)

    positive, negative = delta > 0, delta < 0
    lo = torch.where(positive, const(1), torch.where(negative, const(-key_inf - 1), const(-1)))
    hi = torch.where(positive, const(key_inf), torch.where(negative, const(-2), const(0)))
    # A NaN step (a key beyond +-inf; ~key mirrors the negative ones) lands the extremes on
    # the window of zero: it passes for a zero or NaN delta only, as sign(NaN) = 0 does.
    nan_step = torch.maximum(high, ~low) > key_inf
    low, high = torch.where(nan_step, const(-1), low), torch.where(nan_step, const(0), high)
    return (low >= lo) & (high <= hi)


def _checks(
    criterion: str, consistent: Tensor | None, displacement: Tensor, delta: Tensor, tau: int | Tensor
) -> dict[str, Tensor]:
    """The checks of ``criterion`` (:mod:`torch_pdt.criteria`) at horizon ``tau`` (a tensor of
    horizons broadcasts): ``consistent`` is Eq. 7 over the first ``tau`` steps, for the criteria
    that make it."""
    checks: dict[str, Tensor] = {}
    if criterion in ("pdt", "consistency_only"):
        checks["consistency"] = consistent
    elif criterion == "authors":
        key = _order_key(displacement)
        checks["consistency"] = _same_sign(key, key, delta)
    jump, step = displacement.abs(), delta.abs()
    if criterion in ("pdt", "accel_only"):
        checks["lower_bound"] = jump > step
        checks["upper_bound"] = jump <= tau * step
    elif criterion == "authors":
        checks["lower_bound"] = jump >= step
        checks["upper_bound"] = jump <= (tau + 1) * step
    return checks


def _all(mask: Tensor, checks: dict[str, Tensor]) -> Tensor:
    for passed in checks.values():
        mask = mask & passed
    return mask


def _unchecked(k: Tensor | int) -> Tensor | None:
    """Eq. 7 at ``k`` for a criterion that does not make it: no check."""
    return None


def _consistent_up_to(steps: Tensor, delta: Tensor, horizons: Tensor) -> Callable[[Tensor | int], Tensor | None]:
    r"""Eq. 7 over the first ``k`` of the ``tau x n`` ``steps``, for any ``k``, from two minima over the horizons.

    :func:`_same_sign` of the running extremes, in closed form: without a NaN among the first
    ``k`` steps it passes while every one has ``delta``'s sign (``> 0``, ``< 0``, or a zero of
    either sign where ``delta`` is zero or NaN), i.e. for ``k`` below the first step that has
    not; with a NaN, exactly where ``delta`` is zero or NaN. The first such step and the first
    NaN are minima over the horizon dimension, which ``torch.compile`` fuses into one loop
    whatever ``tau``, where the running extremes were unrolled over it.
    """
    positive, negative = delta > 0, delta < 0
    zero = ~(positive | negative)  # or NaN
    signed = torch.where(positive, steps > 0, torch.where(negative, steps < 0, steps == 0))
    never = torch.full_like(horizons, steps.shape[0] + 1)
    first_out = torch.where(signed, never, horizons).amin(0)
    first_nan = torch.where(steps != steps, horizons, never).amin(0)

    def consistent(k: Tensor | int) -> Tensor:
        return (k < first_out) | (zero & (k >= first_nan))

    return consistent


def predict_mask_assemble(
    rows: Sequence[Tensor],
    param: Tensor,
    coef: Tensor,
    tau: int,
    criterion: str,
    start_of_epoch: bool,
    write: bool,
    origin_is_param: bool = False,
    accepted: Tensor | None = None,
    linear: bool = False,
    graded: bool = False,
    drawn: Tensor | None = None,
    jump_steps: Tensor | None = None,
) -> Tensor:
    r"""One parameter's prediction: returns integer counts ``[finite, consistency, lower, upper, accepted]``.

    ``rows`` are the ``h`` ring rows, oldest first; ``coef`` is ``(tau + 1) x h`` in
    :func:`work_dtype` (:func:`ring_coefficients`). ``start_of_epoch``: the rows are
    start-of-epoch weights and :math:`\Delta` is ``param`` minus the newest row (the authors'
    code); otherwise the newest row is the optimizer's result and
    :math:`\Delta = s_{h-1} - s_{h-2}` (the paper). The counts are of elements passing each check (zero for a check the
    criterion does not make); with ``write`` the accepted elements of ``param`` are replaced.
    ``origin_is_param``: the forecast starts from ``param`` rather than the newest row (rows
    that round the weights, at the end of an epoch). ``accepted``, if given, receives the per-element
    decision as 0/1 (graded: the landing horizon, 0 for none), for a bucket of small parameters,
    whose counts are then split, and for the counts per horizon.
    ``linear``: accepted elements move by ``tau`` times :math:`\Delta` instead of by :math:`D`
    (``PDT(jump="linear")``). ``graded``: ``coef`` is ``2 tau x h``, the steps then the
    displacements :math:`D_1..D_\tau`, and an element that fails at ``tau`` lands at the largest
    ``k`` whose checks pass (:mod:`torch_pdt.prediction`); the checks' counts are those at ``tau``.
    ``drawn``: ``criterion="random"``'s draws, the elements it accepts where finite.
    ``jump_steps``, if given (``2 x n``), receives for ``on_jump`` the predicted step at the landing
    horizon (:math:`\Delta` itself with ``linear``) and :math:`\Delta`
    (:data:`torch_pdt.prediction.OnChunk`).
    """
    h = len(rows)
    dtype = coef.dtype
    last = rows[-1].to(dtype)
    X = [r.to(dtype) - last for r in rows[:-1]]

    def combination(c: Tensor) -> Tensor:
        """``sum_j c[j] X_j``: ``c`` is one row of coefficients, or ``h x ...`` of them broadcast
        against the elements (``h x tau x 1`` for every horizon, ``h x n`` for one per element)."""
        acc = c[h - 1] * last
        for j in range(h - 1):
            acc = acc + c[j] * X[j]
        return acc

    if start_of_epoch:
        delta = param.to(dtype) - last
    else:
        delta = last - rows[-2].to(dtype)
    origin = param.to(dtype) if origin_is_param else last
    bound = overflow_threshold(param.dtype)
    needs_steps = criterion in ("pdt", "consistency_only")

    def landing(k: int | Tensor, displacement: Tensor) -> tuple[Tensor, Tensor]:
        """The new value at horizon ``k`` and whether it is finite in the parameter's dtype."""
        # Compared in the working precision against the smallest value that rounds to inf,
        # because inductor elided a round trip through the parameter's dtype (an fp16
        # 55,000 + 5 * 5,000 was written as inf).
        new = origin + (k * delta if linear else displacement)
        return new, new.abs() < bound

    if graded:
        # Every horizon at once, as a tensor dimension: compiled, its loop is not unrolled over
        # tau (compile time and code size independent of it). The element lands at the largest k
        # whose checks pass, a maximum over that dimension.
        horizons = torch.arange(1, tau + 1, dtype=torch.int32, device=last.device)[:, None]
        consistent = _unchecked
        if needs_steps:
            consistent = _consistent_up_to(combination(coef[:tau].T[..., None]), delta, horizons)
        D = combination(coef[tau:].T[..., None])
        _, finite_k = landing(horizons, D)
        ok = _all(finite_k, _checks(criterion, consistent(horizons), D, delta, horizons))
        level = torch.where(ok, horizons, 0).amax(0)
        chosen = combination(coef[tau - 1 + level.clamp(min=1)].T)
        displacement = combination(coef[2 * tau - 1])
        _, finite = landing(tau, displacement)
        checks = _checks(criterion, consistent(tau), displacement, delta, tau)
        accept = level > 0
        new, _ = landing(level.to(dtype), chosen)
        last_step = combination(coef[(level - 1).clamp(min=0)].T)
        if accepted is not None:
            accepted.copy_(level)
    else:
        displacement = combination(coef[tau])
        new, finite = landing(tau, displacement)
        consistent = None
        if needs_steps:  # the extremes of the steps' order keys
            keys = [_order_key(combination(coef[k])) for k in range(tau)]
            low, high = keys[0], keys[0]
            for key in keys[1:]:
                low, high = torch.minimum(low, key), torch.maximum(high, key)
            consistent = _same_sign(low, high, delta)
        checks = _checks(criterion, consistent, displacement, delta, tau)
        accept = _all(finite, checks)
        if drawn is not None:
            accept = accept & drawn
        last_step = combination(coef[tau - 1])
        if accepted is not None:
            accepted.copy_(accept)
    if jump_steps is not None:
        jump_steps[0].copy_(delta if linear else last_step)
        jump_steps[1].copy_(delta)
    if write:
        param.copy_(torch.where(accept, new.to(param.dtype), param))
    # Two counts per int64 sum, the second in the high 32 bits (exact below 2^31 elements):
    # inductor fused at most four sums into the loop, and a fifth became a second loop over
    # the mask stored as bool (slower than the whole pass).
    never = torch.zeros_like(finite)
    pairs = [(finite, accept), (checks.get("consistency", never), checks.get("lower_bound", never))]
    sums = [(a.to(torch.int64) + (b.to(torch.int64) << 32)).sum() for a, b in pairs]
    upper = checks.get("upper_bound", never).sum(dtype=torch.int32 if param.numel() < 2**31 else torch.int64)
    low_bits = (1 << 32) - 1
    return torch.stack([sums[0] & low_bits, sums[1] & low_bits, sums[1] >> 32, upper.to(torch.int64), sums[0] >> 32])


def ring_coefficients(
    coefficients: Tensor, dtype: torch.dtype, device: torch.device, rows: Sequence[int] | None = None
) -> Tensor:
    r"""``(tau + 1) x h`` coefficients on the ring rows (oldest first) for :func:`predict_mask_assemble`.

    ``coefficients`` (float64, ``(tau + 1) x h``) maps the snapshots to the predicted steps and the
    displacement; as the rows enter as :math:`X_j = s_j - s_{h-1}` and :math:`X_{h-1} = s_{h-1}`,
    the newest column takes the sum of all (in float64, before rounding). The sum runs in the
    storage order of ``rows`` (the storage rows, oldest first), as in the eager pass, so that
    both round it alike: for an element that never moved it is the whole forecast.
    """
    coef = coefficients.clone()
    by_storage = torch.zeros_like(coefficients)
    by_storage[:, list(range(coefficients.shape[1])) if rows is None else list(rows)] = coefficients
    coef[:, -1] = by_storage.sum(1)
    return coef.to(device=device, dtype=dtype)


_OPTIONS = {
    # inductor compiles C++ with -ffp-contract=off by default; the pass is h (tau + 1)
    # multiply-adds per element, and fused ones are both faster and more accurate.
    "cpp.enable_floating_point_contract_flag": "fast",
    # The graded pass's tau x n steps and displacements feed several reductions over the
    # horizons; past inductor's default thresholds it stored both (8 tau bytes per element, and
    # 3x slower at tau = 5) instead of recomputing them inside the one loop.
    "realize_reads_threshold": 1000,
    "realize_opcount_threshold": 10000,
    "realize_acc_reads_threshold": 1000,
}


def compiles(device: torch.device) -> bool:
    """Whether ``torch.compile`` can build kernels for ``device``: a C++ compiler on CPU, Triton on GPU."""
    if device.type == "cpu":
        return any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++"))
    from torch.utils._triton import has_triton

    return has_triton()


_COMPILED: dict[Callable[..., Any], Callable[..., Any]] = {}


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (:func:`gram_update`, :func:`second_gram` or :func:`predict_mask_assemble`) compiled, once per process.

    Dynamic shapes: one graph serves every parameter size (sizes 0 and 1 get their own);
    ``h``, ``tau``, the criterion, the flags and the dtypes give one graph each.
    """
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=True, fullgraph=True, options=_OPTIONS)
    return _COMPILED[fn]


_GRAPHS = 64

AUTO_MIN_NUMEL = 1 << 20
"""``kernel="auto"`` compiles for models of at least this many elements: compiling costs
seconds once, the fused passes save about 10 ns per element and step on CPU."""

AUTO_MIN_TENSORS = 256
"""... or of at least this many tensors: the eager pass costs about 200 us per tensor and step."""

CALL_CHUNK = 1 << 18
"""Elements per call of a prediction pass that keeps values per element: graded (its reductions
over the horizons, three int32 values), ``on_jump`` (the steps it scales velocities by, two
values and a byte) or ``criterion="random"`` (the draws, a byte): a few MB a call, within the
``N`` values of extra memory PDT allows itself, and in cache between the loops of a call (the
graded pass at 8M elements, one thread: 46 ms in calls of 2^18, 50-55 ms of 2^20, 47-86 ms in one)."""


class FusedPasses:
    """Both passes of a PDT step over a ring of snapshots, one kernel call per group of parameters
    (:mod:`torch_pdt.staging`: a large parameter, or a run of small ones).

    Args:
        storage: the ring's ``(h, width)`` tensors, one per (device, dtype) bucket.
        slots: ``(bucket, column offset, numel)`` of every parameter, in parameter order.
        use_compiled: run the compiled functions (else the same functions eagerly: memory of
            a few dozen parameter-sized temporaries, for testing).
        scope: ``"layer"``: one Gram matrix and one forecast per parameter; every parameter gets
            calls of its own, small ones too.
    """

    def __init__(
        self,
        storage: Sequence[Tensor],
        slots: Sequence[tuple[int, int, int]],
        use_compiled: bool = True,
        scope: str = "model",
    ) -> None:
        self.storage = list(storage)
        self.slots = list(slots)
        self.capacity = self.storage[0].shape[0]
        self.scope = scope
        self.groups = staging.groups(self.slots, share=scope != "layer")
        self._staged = staging.Staging(self.slots)
        self.use_compiled = use_compiled
        self._enter = compiled(gram_update) if use_compiled else gram_update
        self._predict = compiled(predict_mask_assemble) if use_compiled else predict_mask_assemble
        self._second = compiled(second_gram) if use_compiled else second_gram

    def _variants(self) -> contextlib.AbstractContextManager:
        """Room for every graph a process may need: criteria, flags, ``tau`` values and dtypes
        each compile their own, beyond dynamo's default of 8 per function."""
        if not self.use_compiled:
            return contextlib.nullcontext()
        return torch._dynamo.config.patch(recompile_limit=max(_GRAPHS, torch._dynamo.config.recompile_limit))

    def copy_in(self, flats: Sequence[Tensor], row: int) -> Tensor:
        r"""Copy ``flats`` into ring row ``row``; the ``blocks x (h + 1) x 2`` float64 inner products, on CPU.

        One block for the whole model, or one per parameter with ``scope="layer"``. Row ``j`` of a
        block is :math:`(\langle d_j, s\rangle, \langle d_j, d\rangle)` for the storage row
        ``j`` (its difference to the row before it, cyclically), with ``s`` the new snapshot and
        ``d`` its difference; the last row is :math:`(\langle s, s\rangle, \langle s, d\rangle)`.
        """
        h = self.capacity
        order = [(row - i) % h for i in range(h)]  # newest first
        per_layer = self.scope == "layer"
        blocks = len(self.slots) if per_layer else 1
        parts: dict[torch.device, list[tuple[int, Tensor]]] = {}
        with torch.no_grad(), self._variants():
            for group in self.groups:
                if group.stop == group.start:
                    continue
                rows = self.storage[group.bucket][:, group.start : group.stop]
                source = self._staged.source(group, flats)
                part = self._enter(source, [rows[j] for j in order[1:]], rows[row])
                parts.setdefault(part.device, []).append((group.members[0] if per_layer else 0, part))
        total = torch.zeros(blocks, 2 * h + 1, dtype=torch.float64)
        for found in parts.values():  # one host transfer per device
            index = torch.tensor([block for block, _ in found])
            total.index_add_(0, index, torch.stack([part for _, part in found]).cpu())
        dots = torch.empty(blocks, h + 1, 2, dtype=torch.float64)
        dots[:, order, 0] = total[:, :h]
        dots[:, order, 1] = total[:, h : 2 * h]
        dots[:, h, 0] = total[:, 2 * h]
        dots[:, h, 1] = total[:, 0]
        return dots

    def gram(self, rows: Sequence[int], W: Tensor | Sequence[Tensor | None]) -> Tensor:
        r"""The second Gram pass: float64 :math:`(SM^\top)^\top (SM^\top)`, ``blocks x q x q`` on CPU.

        ``rows``: the storage rows oldest first; ``W``: the ``m x q`` basis change of
        :func:`torch_pdt.dmd.orthogonal_factor`, whose :math:`M = (TW)^\top` :func:`second_gram`
        applies, or with ``scope="layer"`` one per parameter (``None``: skipped, its block is
        zero). With ``scope="model"`` the pass is one call per storage bucket, whatever the
        parameters' sizes: the Gram matrix is of all of them.
        """
        T = dmd.consecutive_basis(len(rows))
        per_layer = not isinstance(W, Tensor)
        if per_layer:
            combination = [None if w is None else (T @ w).T for w in W]
            q = next(c for c in combination if c is not None).shape[0]
            stretches = [(g.members[0], g.bucket, g.start, g.stop, combination[g.members[0]]) for g in self.groups]
        else:
            q = W.shape[1]
            stretches = [(0, b, 0, s.shape[1], (T @ W).T) for b, s in enumerate(self.storage)]
        parts: dict[torch.device, list[tuple[int, Tensor]]] = {}
        with torch.no_grad(), self._variants():
            for block, bucket, start, stop, mine in stretches:
                if stop == start or mine is None:
                    continue
                storage = self.storage[bucket][:, start:stop]
                part = self._second([storage[j] for j in rows], mine.to(storage.device))
                parts.setdefault(part.device, []).append((block, part))
        upper = torch.zeros(len(self.slots) if per_layer else 1, q * (q + 1) // 2, dtype=torch.float64)
        for found in parts.values():  # one host transfer per device
            upper.index_add_(0, torch.tensor([b for b, _ in found]), torch.stack([p for _, p in found]).cpu())
        i, j = torch.triu_indices(q, q)
        K = torch.zeros(upper.shape[0], q, q, dtype=torch.float64)
        K[:, i, j] = upper
        K[:, j, i] = upper
        return K

    def predict(
        self, flats: Sequence[Tensor], rows: Sequence[int], coefficients: Coefficients, plan: Plan, **hooks: Any
    ) -> PassCounts:
        """Predict, mask and (with ``plan.write``) assemble every parameter (:func:`predict_mask_assemble`).

        ``rows``: the storage rows oldest first; ``coefficients``: float64 ``(tau + 1) x h``
        (graded: ``2 tau x h``), the predicted steps and the displacement as combinations of the
        snapshots; with ``scope="layer"`` one per parameter, ``None`` for a parameter without a
        fit, whose elements are kept and counted as passing every check. The ``hooks`` are the
        eager pass's: ``on_chunk`` (:data:`~torch_pdt.prediction.OnChunk`, for ``on_jump``) is
        called per parameter and call, as the eager pass calls it per chunk; ``draws``
        (:class:`~torch_pdt.criteria.RandomDraws`) are drawn in the eager pass's element order.
        """
        on_chunk: OnChunk | None = hooks.get("on_chunk")
        draws: criteria.RandomDraws | None = hooks.get("draws")
        per_layer = not isinstance(coefficients, Tensor)
        tau, graded = plan.horizon, plan.graded
        random = plan.criterion == "random"
        if random and draws is None:
            raise ValueError("criterion 'random' needs its generators (draws)")
        level_dtype = torch.int8 if tau <= torch.iinfo(torch.int8).max else torch.int32
        coefs: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}
        totals: dict[torch.device, Tensor] = {}
        levels: dict[torch.device, Tensor] = {}
        kept = 0  # elements of parameters without a fit: passing every check, not accepted
        per_param: list[Tensor] = []

        def add(into: dict[torch.device, Tensor], counts: Tensor) -> None:
            into[counts.device] = into[counts.device] + counts if counts.device in into else counts

        with torch.no_grad(), self._variants():
            for group in self.groups:
                mine = coefficients[group.members[0]] if per_layer else coefficients
                if group.stop == group.start or mine is None:
                    kept += group.stop - group.start
                    per_param.append(torch.zeros(len(group.members), dtype=torch.int64))
                    continue
                storage = self.storage[group.bucket][:, group.start : group.stop]
                param = self._staged.source(group, flats, storage[rows[-1]] if plan.newest_is_param else None)
                key = (group.members[0] if per_layer else 0, param.device, work_dtype(param.dtype))
                if key not in coefs:
                    coefs[key] = ring_coefficients(mine, key[2], key[1], rows)
                accepted = None
                if group.staged or graded or on_chunk is not None:
                    accepted = torch.empty(param.shape, dtype=level_dtype, device=param.device)
                step = CALL_CHUNK if graded or random or on_chunk is not None else param.numel()
                counts = torch.zeros(5, dtype=torch.int64, device=param.device)
                for start in range(0, param.numel(), step):
                    stop = min(start + step, param.numel())
                    jump_steps = None
                    if on_chunk is not None:
                        jump_steps = torch.empty(2, stop - start, dtype=key[2], device=param.device)
                    counts += self._predict(
                        [storage[j, start:stop] for j in rows],
                        param[start:stop],
                        coefs[key],
                        tau,
                        plan.criterion,
                        plan.start_of_epoch,
                        plan.write,
                        plan.origin_is_param,
                        None if accepted is None else accepted[start:stop],
                        plan.linear,
                        graded,
                        draws.mask(param[start:stop], plan.ratio) if random else None,
                        jump_steps,
                    )
                    if on_chunk is not None:
                        accept = accepted[start:stop] > 0
                        self._staged.hand_over(group, start, on_chunk, accept, jump_steps[0], jump_steps[1])
                add(totals, counts)
                if graded:
                    add(levels, torch.bincount(accepted, minlength=tau + 1))  # of the bytes: no int64 copy
                if not group.staged:
                    per_param.append(counts[4:])
                    continue
                per_param.append(self._staged.per_member(group, flats, accepted))
                if plan.write:
                    self._staged.write_back(group, flats, per_param[-1])
        # Host transfers only now: the first waits for the device, the others find it done.
        total = sum((t.cpu() for t in totals.values()), torch.zeros(5, dtype=torch.int64))
        total[:4] += kept
        per_horizon = None
        if graded:
            per_horizon = sum((t.cpu() for t in levels.values()), torch.zeros(tau + 1, dtype=torch.int64))[1:]
        finite, consistency, lower, upper, _ = total.unbind()
        passing = torch.stack([consistency, lower, upper, finite])
        return PassCounts(torch.cat([t.cpu() for t in per_param]), passing, set(plan.checks), per_horizon)
