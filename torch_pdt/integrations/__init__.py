"""Callbacks that add PDT to training frameworks, each behind its optional extra.

* :mod:`torch_pdt.integrations.lightning`: ``PDTCallback`` (``pip install torch-pdt[lightning]``)
* :mod:`torch_pdt.integrations.transformers`: ``PDTTrainerCallback`` (``pip install torch-pdt[transformers]``)

Importing this package imports neither framework. Importing a callback's module without its
framework raises an :class:`ImportError` that names the extra to install (:func:`extra`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from ..pdt import PDT

__all__ = ["extra", "make_pdt"]


@contextlib.contextmanager
def extra(name: str, package: str) -> Iterator[None]:
    """Turn a missing ``package`` imported inside into an ``ImportError`` naming the extra ``name``.

    A missing module of another package (a broken install of one of its dependencies) is not
    renamed: its own error says more.

    >>> with extra("lightning", "lightning"):
    ...     import lightning_that_is_not_installed
    Traceback (most recent call last):
    ...
    ModuleNotFoundError: No module named 'lightning_that_is_not_installed'
    """
    try:
        yield
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != package:
            raise
        raise ImportError(f"this integration needs {package}: pip install 'torch-pdt[{name}]'", name=e.name) from e


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
