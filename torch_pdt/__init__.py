"""torch-pdt: Predictive Differential Training as a plug-in beside any ``torch.optim`` optimizer.

One concept per module: :mod:`~torch_pdt.pdt` (the orchestrator, :class:`PDT`),
:mod:`~torch_pdt.config` (its options), :mod:`~torch_pdt.params` (which tensors, flat and
sharded), :mod:`~torch_pdt.snapshots` (the ring buffer and its Gram matrix),
:mod:`~torch_pdt.dmd` (DMD from a Gram matrix), :mod:`~torch_pdt.prediction` (predict, mask,
assemble), :mod:`~torch_pdt.criteria` (the masks), :mod:`~torch_pdt.pacing` (how far and how often
to predict: the horizon and interval), :mod:`~torch_pdt.jump` (optimizer state after a jump),
:mod:`~torch_pdt.statistics` (what ``step()`` returns), :mod:`~torch_pdt.misuse` (the warnings
on misuse), :mod:`~torch_pdt.batchnorm` (fresh BatchNorm statistics after a jump),
:mod:`~torch_pdt.checkpoint` (atomic saves), and :mod:`~torch_pdt.reference` (a readable
float64 twin of one step, for tests and benchmarks).

>>> from torch_pdt import PDT
"""

from . import (
    batchnorm,
    checkpoint,
    config,
    criteria,
    dmd,
    jump,
    misuse,
    pacing,
    params,
    prediction,
    reference,
    schedule,
    statistics,
)
from .batchnorm import recompute_batch_norm
from .checkpoint import save_atomic
from .config import PDTConfig
from .misuse import PDTMisuseWarning
from .pdt import PDT
from .statistics import PDTStatistics

__all__ = [
    "PDT",
    "PDTConfig",
    "PDTMisuseWarning",
    "PDTStatistics",
    "batchnorm",
    "checkpoint",
    "config",
    "criteria",
    "dmd",
    "jump",
    "misuse",
    "pacing",
    "params",
    "prediction",
    "recompute_batch_norm",
    "reference",
    "save_atomic",
    "schedule",
    "statistics",
]
__version__ = "0.1.0"
