"""Which tensors PDT predicts, and how it reaches their values: discovery, flattening, sharding.

* **Discovery** (:func:`collect`): the trainable parameters of the optimizer's groups, each once,
  in group order; a group with ``"pdt": False`` opts out, frozen parameters are skipped.
  Names come from the model, else from named groups, else ``group{g}.param{j}``; a name that
  repeats (one optimizer over two models' ``named_parameters()``) gets the suffix ``#2``, ``#3``,
  ... in group order, so that every tensor has its own entry in the statistics.
* **Sharding** (:func:`local_shard`): of an FSDP2 DTensor, PDT snapshots and writes the shard
  this process holds.
* **Flattening** (:func:`flat_view`): a 1-D view of each tensor in *memory* order, so that
  channels-last weights (and optimizer state laid out like them) are read and written in place.
* **Layout** (:class:`Layout`): what the snapshot storage depends on (shape, dtype, device and
  memory order of the local shard). :func:`check_unchanged` compares it, and the optimizer's
  tensors, before anything changes; :class:`Tracked` runs it at every step only where a cheap
  fingerprint says that something may have changed, and keeps the flat views.

Example:
    >>> model = torch.nn.Linear(3, 2)
    >>> names, params = collect(torch.optim.SGD(model.parameters(), lr=0.1), model)
    >>> names, [tuple(flat.shape) for flat in flat_views(names, params)]
    (['weight', 'bias'], [(6,), (2,)])
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

if torch.distributed.is_available():
    from torch.distributed.tensor import DTensor
else:  # a build without torch.distributed has no DTensor parameters to look for
    DTensor = ()

__all__ = [
    "DTensor",
    "Layout",
    "Tracked",
    "check_dense_state",
    "check_supported",
    "check_unchanged",
    "collect",
    "flat_view",
    "flat_views",
    "local_shard",
    "unique",
]


def local_shard(p: Tensor) -> Tensor:
    """The part of ``p`` this process holds and updates: a DTensor's (FSDP2) local shard, else ``p``.

    Under ``torch.no_grad`` the local shard aliases the parameter's storage, so writing it
    updates the parameter in place.
    """
    return p.to_local() if isinstance(p, DTensor) else p


def flat_view(t: Tensor, like: Tensor | None = None) -> Tensor | None:
    """A 1-D view of ``t`` in the memory order of ``like`` (default ``t``), or ``None`` if there is none.

    Memory order, not logical order, so that channels-last weights (and optimizer state laid
    out like them) are viewed without a copy and can be updated in place.
    """
    like = t if like is None else like
    if t.is_contiguous() and (like is t or like.is_contiguous()):  # the common case, 5x faster
        return t.detach().view(-1)
    order = sorted(range(like.dim()), key=lambda d: (-like.stride(d), -like.shape[d]))
    dense = t.detach().permute(order)
    return dense.view(-1) if dense.is_contiguous() else None


def collect(optimizer: torch.optim.Optimizer, model: nn.Module | None = None) -> tuple[list[str], list[Tensor]]:
    """Names and tensors of the parameters PDT predicts (see the module docstring)."""
    known = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    names: list[str] = []
    params: list[Tensor] = []
    seen: set[int] = set()
    for g, group in enumerate(optimizer.param_groups):
        if not group.get("pdt", True):
            continue
        group_names = group.get("param_names")
        for j, p in enumerate(group["params"]):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            params.append(p)
            names.append(known.get(id(p)) or (group_names[j] if group_names else f"group{g}.param{j}"))
    return unique(names), params


def unique(names: Sequence[str]) -> list[str]:
    """``names`` with each repeat renamed ``name#k`` (``k = 2, 3, ...``, the first free one): deterministic.

    >>> unique(["weight", "bias", "weight", "weight#2", "weight"])
    ['weight', 'bias', 'weight#3', 'weight#2', 'weight#4']
    """
    taken = set(names)
    counts: dict[str, int] = {}
    out: list[str] = []
    for name in names:
        if name not in counts:
            counts[name] = 1
            out.append(name)
            continue
        k = counts[name]
        while True:
            k += 1
            candidate = f"{name}#{k}"
            if candidate not in taken:
                break
        counts[name] = k
        taken.add(candidate)
        out.append(candidate)
    return out


def check_supported(names: Sequence[str], params: Sequence[Tensor]) -> None:
    """``ValueError`` unless every parameter holds real floating-point values in memory, and some do."""
    if not params:
        raise ValueError("optimizer has no trainable parameters for PDT (all frozen or opted out)")
    for name, p in zip(names, map(local_shard, params)):
        if p.is_complex() or not p.is_floating_point():
            # A complex weight would lose its imaginary part in the real-valued forecast.
            raise ValueError(f"parameter {name} is {p.dtype}: PDT predicts real floating-point weights only")
        if p.is_meta or p.layout != torch.strided:
            raise ValueError(
                f"parameter {name} is a {p.device.type} tensor of layout {p.layout}: PDT needs its values in memory"
            )
    if sum(p.numel() for p in params) == 0:  # a DTensor's numel is the whole parameter's
        raise ValueError("the optimizer's trainable parameters have no elements")


@dataclass(frozen=True)
class Layout:
    """What a parameter's snapshot storage depends on: its local shard's shape, dtype, device and
    strides (the memory order its flat view, hence every snapshot row, follows)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    stride: tuple[int, ...]

    @classmethod
    def of(cls, p: Tensor) -> Layout:
        q = local_shard(p)
        return cls(tuple(q.shape), q.dtype, q.device, q.stride())


def check_unchanged(
    optimizer: torch.optim.Optimizer, names: Sequence[str], params: Sequence[Tensor], layouts: Sequence[Layout]
) -> None:
    """``ValueError`` unless the optimizer still trains exactly ``params``, each with its ``layout``, dense.

    Snapshots have a fixed layout: a parameter added (``add_param_group``) or unfrozen mid-run
    has no history, one removed would leave stale rows, and one whose ``p.data`` was replaced
    by a tensor of another shape, dtype, device or memory order (``model.double()``, a resize,
    ``.to(memory_format=torch.channels_last)``) no longer fits its rows: a prediction or a
    rollback could not be exact.
    """
    _, now = collect(optimizer)
    if [id(p) for p in now] != [id(p) for p in params]:
        ours = {id(p) for p in params}
        theirs = {id(p) for p in now}
        frozen = [n for n, p in zip(names, params) if not p.requires_grad]
        gone = [n for n, p in zip(names, params) if p.requires_grad and id(p) not in theirs]
        new = sum(id(p) not in ours for p in now)
        what = "; ".join(
            part
            for part in (
                f"requires_grad turned off: {', '.join(frozen)}" if frozen else "",
                f"no longer in the optimizer: {', '.join(gone)}" if gone else "",
                f"{new} new tensor(s) (add_param_group, or requires_grad turned on)" if new else "",
                "the same tensors in another order" if not (frozen or gone or new) else "",
            )
            if part
        )
        raise ValueError(
            f"the optimizer's trainable parameters changed since PDT was created ({len(params)} -> "
            f"{len(now)} tensors; {what}); give a new group "
            '{"pdt": False} to leave it out of PDT, or create a new PDT'
        )
    for name, p, then in zip(names, params, layouts):
        now_ = Layout.of(p)
        if now_ == then:  # dense: it was at construction (flat_views)
            continue
        for what in ("shape", "dtype", "device", "stride"):
            if getattr(then, what) != getattr(now_, what):
                dense = "" if what != "stride" or flat_view(local_shard(p)) is not None else ", no longer dense,"
                raise ValueError(
                    f"parameter {name} changed {what}{dense} from {getattr(then, what)} to {getattr(now_, what)} "
                    "since PDT was created: its snapshots no longer fit it; create a new PDT"
                )


_OF_MEMBERS: tuple[Callable[[Tensor], Any], ...] = (id, operator.attrgetter("requires_grad"))
"""What :func:`collect` reads of every tensor in the groups PDT predicts."""
_OF_SHARDS: tuple[Callable[[Tensor], Any], ...] = (
    Tensor.data_ptr,
    Tensor.size,
    Tensor.stride,
    operator.attrgetter("dtype"),
)
"""What a predicted tensor's :class:`Layout` holds but the device, and where its memory is."""


class Tracked:
    """The parameters PDT predicts: :func:`check_unchanged` at the cost of a few C-level passes over
    the tensors, and their flat views (:func:`flat_views`) as of the last check.

    The full check collects the optimizer's parameters with their names and compares each one's
    :class:`Layout`: 3-4 us a tensor in Python, half of a predicting step for 10,000 one-element
    tensors. This one compares a fingerprint with ``map`` over built-in getters (about 0.1 us a
    tensor each): the ids of every tensor in the groups PDT predicts and their
    ``requires_grad`` (all ``collect`` reads), and the data pointer, size, strides and dtype of
    each predicted tensor's local shard (all of its :class:`Layout` but the device, which no
    pointer shares with another device: CPU and accelerator memory are distinct ranges of one
    virtual address space). Where the fingerprint differs the full check runs: it raises on a
    real change and takes the new fingerprint on a harmless one (``p.data`` replaced by a
    tensor of the same layout elsewhere in memory, whose views are then made anew).

    Args:
        optimizer: the optimizer PDT steps beside.
        names, params: :func:`collect`'s result for it.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, names: Sequence[str], params: Sequence[Tensor]) -> None:
        self.optimizer = optimizer
        self.names = list(names)
        self.params = list(params)
        self.layouts = [Layout.of(p) for p in self.params]
        self._sharded = any(isinstance(p, DTensor) for p in self.params)
        self._fingerprint = self._take()
        self._flats = tuple(flat_views(self.names, self.params))

    def _parts(self) -> list[tuple[Callable[[Tensor], Any], Sequence[Tensor]]]:
        """Each part of the fingerprint: a getter and the tensors it reads."""
        groups = (g["params"] for g in self.optimizer.param_groups if g.get("pdt", True))
        members = list(itertools.chain.from_iterable(groups))
        shards = list(map(local_shard, self.params)) if self._sharded else self.params
        return [(get, members) for get in _OF_MEMBERS] + [(get, shards) for get in _OF_SHARDS]

    def _take(self) -> list[list[Any]]:
        return [list(map(get, tensors)) for get, tensors in self._parts()]

    def _matches(self) -> bool:
        parts = self._parts()
        if len(parts[0][1]) != len(self._fingerprint[0]):
            return False
        # Compared as made, none kept: keeping 20,000 sizes and strides a step set off the garbage
        # collector's full pass within it (70 ms, for 10,000 tensors).
        return all(
            all(map(operator.eq, map(get, tensors), then)) for (get, tensors), then in zip(parts, self._fingerprint)
        )

    def check(self) -> None:
        """``ValueError`` (:func:`check_unchanged`'s) unless the optimizer trains the same tensors, laid out alike."""
        if self._matches():
            return
        check_unchanged(self.optimizer, self.names, self.params, self.layouts)
        now = self._take()
        if now[len(_OF_MEMBERS)] != self._fingerprint[len(_OF_MEMBERS)]:  # the data pointers: other memory
            self._flats = tuple(flat_views(self.names, self.params))
        self._fingerprint = now

    def flats(self) -> tuple[Tensor, ...]:
        """1-D views of the (local shards of the) parameters in memory order, as of the last :meth:`check`.

        Kept, not made at each call (building 10,000 views took 37 ms, three times a step), and
        not copied: a tuple.
        """
        return self._flats


def flat_views(names: Sequence[str], params: Sequence[Tensor]) -> list[Tensor]:
    """1-D views of the (local shards of the) parameters in memory order; ``ValueError`` if one has none."""
    flats = []
    for name, p in zip(names, map(local_shard, params)):
        flat = flat_view(p)
        if flat is None:
            raise ValueError(f"parameter {name} is not dense in memory; PDT cannot update it in place")
        flats.append(flat)
    return flats


def check_dense_state(
    optimizer: torch.optim.Optimizer,
    names: Sequence[str],
    params: Sequence[Tensor],
    on_jump: str,
    model: nn.Module | None = None,
) -> None:
    """``ValueError`` naming the parameter whose optimizer state is (or will be) sparse.

    Checked where ``on_jump`` is ``"reset"`` or ``"rescale"``: they change the velocity of the accepted elements in
    place, which a sparse tensor cannot take. Optimizers create their state lazily, so before
    the first optimizer step the sparse gradient is what tells: a ``sparse=True`` embedding of
    ``model``, a sparse ``.grad``, or :class:`torch.optim.SparseAdam`, whose state follows it.
    """
    sparse_modules = (nn.Embedding, nn.EmbeddingBag)
    sparse_weights = (
        {id(m.weight) for m in model.modules() if isinstance(m, sparse_modules) and m.sparse}
        if model is not None
        else set()
    )
    if on_jump == "keep":
        return
    for name, p in zip(names, params):
        why = ""
        state = optimizer.state.get(p, {}) if hasattr(optimizer, "state") else {}
        sparse_state = [k for k, v in state.items() if isinstance(v, Tensor) and v.layout != torch.strided]
        if sparse_state:
            why = f"its optimizer state {sparse_state[0]!r} is {state[sparse_state[0]].layout}"
        elif p.grad is not None and p.grad.layout != torch.strided:
            why = f"its gradient is {p.grad.layout}"
        elif id(p) in sparse_weights:
            why = "it is the weight of a sparse=True embedding (sparse gradient, sparse optimizer state)"
        elif isinstance(optimizer, torch.optim.SparseAdam):
            why = "SparseAdam keeps sparse state"
        if why:
            raise ValueError(
                f"parameter {name}: {why}, which on_jump={on_jump!r} cannot change in place; use on_jump='keep', "
                'or put it in a group with {"pdt": False}'
            )
