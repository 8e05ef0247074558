r"""PDT beside a DeepSpeed ZeRO-3 engine (``pip install 'torch-pdt[deepspeed]'``).

ZeRO-3 splits every parameter's flat elements into ``W`` equal partitions (the last one padded)
and keeps each rank's fp32 master copy in its optimizer. :class:`DeepSpeedPDT` is a sharded
:class:`~torch_pdt.distributed.DistributedPDT` over these partitions: each rank snapshots the
unpadded part of its own fp32 partition of each parameter, as read by
``deepspeed.utils.safe_get_local_fp32_param`` (a view of the master copy), so the model's Gram
matrix is one ``all_reduce`` of the ranks' local ones, :math:`S^\top S = \sum_r S_r^\top S_r`,
exactly as under FSDP2. A prediction writes each rank's fp32 partition in place, then copies it
into the partition the engine computes with (``param.ds_tensor``), which the next forward pass
gathers; parameters that ZeRO-3 keeps whole (below ``stage3_param_persistence_threshold``) are
re-gathered at once, as the engine does after its own steps.

Supported: ZeRO stage 3, epoch mode (``step()`` once per epoch on every rank), ``on_jump="keep"``,
the ``"fixed"`` and ``"authors"`` pacing rules. Refused, with the reason: stages 1 and 2 (their fp32
master copy is one flat buffer per parameter group, cut across parameters), optimizer
offload, ``every_n_steps``, ``on_jump="reset"/"rescale"`` and ``pacing="adaptive"`` (the
velocities live in DeepSpeed's partitioned optimizer state, which PDT does not write).

Example (every rank, after ``deepspeed.initialize``)::

    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config={"zero_optimization": {"stage": 3}, ...})
    pdt = DeepSpeedPDT(engine, history=5, horizon=5)
    for epoch in range(epochs):
        train_one_epoch(engine)
        pdt.step()
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .pdt import DistributedPDT

__all__ = ["DeepSpeedPDT"]


class _Partitions:
    """What PDT needs of an optimizer, over this rank's fp32 partitions: one parameter group, and the step
    hook of the engine's torch optimizer (which counts optimizer steps for the ranks' step check)."""

    def __init__(self, names: list[str], tensors: list[Tensor], inner: torch.optim.Optimizer) -> None:
        self.param_groups = [{"params": tensors, "param_names": names}]
        self.state: dict[Tensor, Any] = {}
        self._inner = inner

    def register_step_post_hook(self, hook: Any) -> Any:
        return self._inner.register_step_post_hook(lambda optimizer, args, kwargs: hook(self, args, kwargs))


class DeepSpeedPDT(DistributedPDT):
    r""":class:`~torch_pdt.distributed.DistributedPDT` on the local fp32 partitions of a DeepSpeed ZeRO-3 engine.

    Args:
        engine: the ``deepspeed.DeepSpeedEngine`` (ZeRO stage 3, optimizer state not offloaded).
        \*args, \*\*kwargs: as for :class:`~torch_pdt.PDT` (``group`` too); ``sharded`` is implied.

    Raises:
        ImportError: without DeepSpeed installed.
        TypeError: when ``engine`` is not a DeepSpeed engine (a model, an optimizer).
        ValueError: for a setting this adapter refuses (see the module docstring).
    """

    def __init__(self, engine: Any, *args: Any, **kwargs: Any) -> None:
        try:
            from deepspeed.utils import safe_get_local_fp32_param
        except ImportError as e:
            raise ImportError("DeepSpeedPDT needs DeepSpeed: pip install 'torch-pdt[deepspeed]'") from e
        if not callable(getattr(engine, "zero_optimization_stage", None)):
            raise TypeError(
                f"DeepSpeedPDT needs the engine of deepspeed.initialize, got {type(engine).__name__} "
                "(a model's optimizer goes to PDT or DistributedPDT)"
            )
        stage = engine.zero_optimization_stage()
        if stage == 0:
            raise ValueError(
                "DeepSpeedPDT supports ZeRO stage 3, got stage 0: without ZeRO every rank holds the whole "
                "parameters; in fp32, use DistributedPDT(engine.optimizer) instead"
            )
        if stage != 3:
            raise ValueError(
                f"DeepSpeedPDT supports ZeRO stage 3, got stage {stage}: stages 1-2 keep the fp32 master copy as one "
                "flat buffer per parameter group, cut across parameters"
            )
        if engine.zero_offload_optimizer() or engine.zero_offload_param():
            raise ValueError("DeepSpeedPDT needs the fp32 partitions on the device: turn ZeRO offload off")
        for option, allowed in (("every_n_steps", None), ("on_jump", "keep")):
            if kwargs.get(option, allowed) != allowed:
                raise ValueError(
                    f"DeepSpeedPDT supports {option}={allowed!r} only (see torch_pdt.distributed.deepspeed)"
                )
        if kwargs.get("pacing") == "adaptive":
            raise ValueError("DeepSpeedPDT: pacing='adaptive' rolls back velocities, which live in DeepSpeed's state")
        if "sharded" in kwargs:
            raise ValueError("DeepSpeedPDT is sharded by construction; leave sharded out")
        rank = torch.distributed.get_rank(kwargs.get("group"))
        names, views, self._partitions = [], [], []
        for name, p in engine.module.named_parameters():
            if not p.requires_grad:
                continue
            local = safe_get_local_fp32_param(p)
            # Rank r holds flat elements [r * part, (r + 1) * part); the last partition is padded.
            valid = max(0, min(p.ds_numel - rank * local.numel(), local.numel()))
            names.append(name)
            view = local.detach()[:valid]  # shares the master copy's memory: PDT writes it in place
            views.append(view.requires_grad_())
            self._partitions.append((p, view))
        super().__init__(_Partitions(names, views, engine.optimizer.optimizer), *args, sharded=True, **kwargs)

    def step(self, loss: float | Tensor | None = None, *, predict: bool = True) -> dict[str, Any]:
        """:meth:`DistributedPDT.step`, then the fp32 partitions copied into the ones the engine computes with."""
        stats = super().step(loss, predict=predict)
        # Parameters below stage3_param_persistence_threshold stay whole on every rank between steps:
        # partition them (which writes their partitions from the whole values), overwrite the
        # partitions, and gather them whole again, as the engine does around its own steps.
        persistent = [p for p, _ in self._partitions if getattr(p, "ds_persist", False)]
        with torch.no_grad():
            if persistent:
                persistent[0].partition(persistent)
            for p, view in self._partitions:
                p.ds_tensor.data[: view.numel()].copy_(view)
            if persistent:
                persistent[0].all_gather(persistent)
        return stats
