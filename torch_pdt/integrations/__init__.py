"""Callbacks that add PDT to training frameworks, each behind its optional extra.

* :mod:`torch_pdt.integrations.lightning`: ``PDTCallback`` (``pip install torch-pdt[lightning]``)
* :mod:`torch_pdt.integrations.transformers`: ``PDTTrainerCallback`` (``pip install torch-pdt[transformers]``)

Importing this package imports neither framework.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..pdt import PDT

__all__ = ["make_pdt"]


def make_pdt(optimizer: torch.optim.Optimizer, **kwargs: Any) -> PDT:
    """The PDT for this process: :class:`~torch_pdt.distributed.DistributedPDT` when a process
    group of more than one rank is running (the framework launched DDP or FSDP2), else
    :class:`~torch_pdt.PDT`. ``kwargs`` go to the constructor.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> type(make_pdt(torch.optim.SGD(model.parameters(), lr=0.1), history=3)).__name__
        'PDT'
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from ..distributed import DistributedPDT

        return DistributedPDT(optimizer, **kwargs)
    return PDT(optimizer, **kwargs)
