"""PDT across the ranks of a ``torch.distributed`` process group.

* :mod:`torch_pdt.distributed.pdt`: :class:`DistributedPDT` for DDP and FSDP2, ranks that agree or fail together.
* :mod:`torch_pdt.distributed.dcp`: its state through ``torch.distributed.checkpoint``, on any world size.
* :mod:`torch_pdt.distributed.deepspeed`: on the fp32 partitions of a DeepSpeed ZeRO-3 engine (imported on use).
"""

from .pdt import CompiledPassError, DistributedPDT, RanksOutOfStepError, ReplicaMismatchError

__all__ = ["CompiledPassError", "DistributedPDT", "RanksOutOfStepError", "ReplicaMismatchError"]
