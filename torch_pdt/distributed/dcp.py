r"""PDT's state through ``torch.distributed.checkpoint`` (DCP), beside model and optimizer, on any world size.

A PDT state has two parts. The **snapshots** are laid out like the parameters: snapshot row
:math:`t` of parameter :math:`p` is a tensor of :math:`p`'s shape. So each parameter's ring is
one tensor of shape ``(history, *p.shape)`` whose placements are :math:`p`'s, one dimension
further in (an FSDP2 ``Shard(0)`` parameter gives ``Shard(1)`` snapshots, a replicated one a
plain tensor), and DCP reshards it like the parameter itself: ranks of another world size read
the rows of their own shards. The **rest** (configuration, counters, pacing, generator states,
the ring position) is the same on every rank and saved once, as one object.

The local Gram matrix is not saved: it depends on the sharding. Loading replays the snapshots
into an empty ring, oldest first, at their ring positions, which computes every Gram entry by
the same arithmetic as the run did (:meth:`torch_pdt.snapshots.SnapshotHistory.push`), so a
resume on the same world size is bit-exact. On another world size each rank's Gram is its new
shard's, and their sum is the model's Gram up to float64 rounding.

Example (every rank, beside the model and optimizer; ``dcp.load`` takes the same dictionary)::

    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({"model": model_state, "optim": optim_state, "pdt": DCPState(pdt)}, checkpoint_id=path)

Loading needs :math:`h \cdot N / W` elements of scratch memory per rank beside the ring (the
rows read, and the replayed ring before it is committed): a load that fails changes nothing.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import Tensor
from torch.distributed.checkpoint.stateful import Stateful
from torch.distributed.tensor import DTensor, Replicate, Shard

from ..params import local_shard
from ..pdt import PDT
from ..prediction import EagerPasses
from ..snapshots import SnapshotHistory
from .pdt import DistributedPDT

__all__ = ["DCPState"]

_FORMAT = 1


class DCPState(Stateful):
    """A :class:`~torch.distributed.checkpoint.stateful.Stateful` view of a :class:`~torch_pdt.PDT` or
    :class:`~torch_pdt.distributed.DistributedPDT`, for ``dcp.save`` and ``dcp.load``.

    Hand-sharded parameters (``sharded=True`` with plain tensors) have no global layout and are
    refused; save their :meth:`~torch_pdt.PDT.state_dict` per rank instead. Parameters must be
    plain tensors or DTensors whose placements are ``Shard`` or ``Replicate``, with contiguous
    local shards.

    Example:
        >>> import tempfile, torch.distributed.checkpoint as dcp
        >>> from torch_pdt import PDT
        >>> model = torch.nn.Linear(3, 2)
        >>> pdt = PDT(torch.optim.SGD(model.parameters(), lr=0.1), history=2)
        >>> _ = pdt.step()
        >>> path = tempfile.mkdtemp()
        >>> _ = dcp.save({"pdt": DCPState(pdt)}, checkpoint_id=path, no_dist=True)
        >>> resumed = PDT(torch.optim.SGD(model.parameters(), lr=0.1), history=2)
        >>> dcp.load({"pdt": DCPState(resumed)}, checkpoint_id=path, no_dist=True)
        >>> resumed.epoch, len(resumed._history)
        (1, 1)
    """

    def __init__(self, pdt: PDT) -> None:
        if not isinstance(pdt, PDT):
            raise TypeError(f"DCPState wraps a PDT, got {type(pdt).__name__}")
        if getattr(pdt, "sharded", False) and not all(isinstance(p, DTensor) for p in pdt.params):
            raise ValueError(
                "DCPState needs DTensor parameters to reshard; hand-sharded PDT (sharded=True with plain tensors) "
                "saves state_dict() per rank"
            )
        for name, p in zip(pdt.names, pdt.params):
            placements = p.placements if isinstance(p, DTensor) else ()
            if not all(isinstance(q, (Shard, Replicate)) for q in placements) or not local_shard(p).is_contiguous():
                raise ValueError(f"DCPState: parameter {name} is not a contiguous Shard/Replicate tensor")
        self.pdt = pdt

    def state_dict(self) -> dict[str, Any]:
        """The snapshots (one tensor per parameter, laid out like it) and the rest, serialised once."""
        pdt = self.pdt
        state = pdt.state_dict()
        rest = {k: v for k, v in state.items() if k != "history"}
        history = pdt._history
        rest |= {"format": _FORMAT, "names": list(pdt.names), "next": history._next, "count": len(history)}
        buffer = io.BytesIO()
        torch.save(rest, buffer)
        return {"rest": buffer.getvalue(), "snapshots": {str(i): t for i, t in enumerate(self._rings())}}

    def _rings(self) -> list[Tensor]:
        """Every parameter's ring, ``(history, *shape)``: its storage rows copied, a DTensor where the parameter is."""
        storage, slots = self.pdt._history.layout()
        rings = []
        for p, (bucket, offset, numel) in zip(self.pdt.params, slots):
            local = storage[bucket][:, offset : offset + numel].reshape(-1, *local_shard(p).shape).clone()
            if isinstance(p, DTensor):
                placements = [Shard(q.dim + 1) if isinstance(q, Shard) else q for q in p.placements]
                shape = (local.shape[0], *p.shape)
                local = DTensor.from_local(
                    local, p.device_mesh, placements, run_check=False, shape=shape, stride=_contiguous(shape)
                )
            rings.append(local)
        return rings

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved on this rank's shards; a mismatch: ``ValueError``, nothing changed."""
        pdt = self.pdt
        rest, rings = self._read(state_dict)
        history = pdt._history
        count, ring_next = rest["count"], rest["next"]
        # Replay the snapshots, oldest first, at their ring positions (see the module docstring).
        replay = SnapshotHistory(
            pdt._flat_params(), history.capacity, pdt.config.storage, pdt.chunk_size, history.scope
        )
        replay._next = (ring_next - count) % history.capacity
        copy_in = EagerPasses(*replay.layout(), chunk_size=pdt.chunk_size, scope=history.scope)
        for row in [(replay._next + i) % history.capacity for i in range(count)]:
            replay.push([ring[row].reshape(-1) for ring in rings], copy_in)
        state = {k: v for k, v in rest.items() if k not in ("format", "names", "next", "count", "ranks")}
        state["history"] = replay.state_dict()
        run = rest.get("ranks", {}).get("run")
        if isinstance(pdt, DistributedPDT):
            pdt._load_resharded(state, run)
        else:
            pdt.load_state_dict(state)

    def _read(self, state_dict: Any) -> tuple[dict[str, Any], list[Tensor]]:
        """The saved rest and this rank's rings, every part that the load reads checked first: a damaged or
        foreign state is a ``ValueError`` naming what is wrong, never a ``KeyError`` half-way through the load."""
        pdt = self.pdt
        if not isinstance(state_dict, dict) or not isinstance(state_dict.get("rest"), bytes):
            raise ValueError("not a PDT state saved by DCPState: no serialised 'rest' entry")
        try:
            rest = torch.load(io.BytesIO(state_dict["rest"]), weights_only=True)
        except Exception as e:  # unpickling and zip errors: the bytes are damaged, or are not a PDT state
            raise ValueError(f"PDT state saved by DCPState is unreadable ({type(e).__name__}): {e}") from e
        if not isinstance(rest, dict) or rest.get("format") != _FORMAT:
            raise ValueError("not a PDT state saved by DCPState")
        missing = sorted({"names", "next", "count"} - set(rest))
        if missing:
            raise ValueError(f"PDT state saved by DCPState lacks {missing}")
        if rest["names"] != list(pdt.names):
            raise ValueError(f"saved PDT state is of other parameters: {rest['names']} vs {list(pdt.names)}")
        count, ring_next, capacity = rest["count"], rest["next"], pdt._history.capacity
        # bool is an int subclass: True would load as a count of 1
        integers = type(count) is int and type(ring_next) is int
        if not (integers and 0 <= count <= capacity and 0 <= ring_next < capacity):
            raise ValueError(
                f"saved ring position must be integers within the history of {capacity}, got count={count!r}, "
                f"next={ring_next!r}"
            )
        ranks = rest.get("ranks", {})
        # DistributedPDT records the run token after the state is committed: check it now, not then.
        if not isinstance(ranks, dict) or type(ranks.get("run", 0)) is not int:
            raise ValueError(f"saved ranks entry must be a dict whose run is an int, got {ranks!r}")
        snapshots = state_dict.get("snapshots")
        if not isinstance(snapshots, dict):
            raise ValueError("not a PDT state saved by DCPState: no 'snapshots' entry")
        rings = []
        for i, (name, p) in enumerate(zip(pdt.names, pdt.params)):
            ring = snapshots.get(str(i))
            if not isinstance(ring, Tensor):
                raise ValueError(f"PDT state saved by DCPState has no snapshots of parameter {name}")
            ring = local_shard(ring)
            expected = (capacity, *local_shard(p).shape)
            if tuple(ring.shape) != expected:
                raise ValueError(f"saved snapshots of {name} are {tuple(ring.shape)}, expected {expected}")
            rings.append(ring)
        return rest, rings


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides of ``shape``."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))
