"""torch-pdt: Predictive Differential Training as a plug-in beside any ``torch.optim`` optimizer.

One concept per module: :mod:`~torch_pdt.pdt` (the epoch state machine, :class:`PDT`),
:mod:`~torch_pdt.config` (its options), :mod:`~torch_pdt.compat` (checkpoints in earlier names),
:mod:`~torch_pdt.params` (which tensors, flat and sharded), :mod:`~torch_pdt.snapshots` (the
ring buffer and its Gram matrix), :mod:`~torch_pdt.dmd` (DMD from a Gram matrix),
:mod:`~torch_pdt.fitting` (the DMD of the history, per model or per layer),
:mod:`~torch_pdt.passes` (the seam of the passes over the snapshots: a plan, the eager
:mod:`~torch_pdt.prediction` and the compiled :mod:`~torch_pdt.kernel`),
:mod:`~torch_pdt.criteria` (the masks), :mod:`~torch_pdt.pacing` (how far and how often to
predict: the horizon and interval), :mod:`~torch_pdt.jump` (optimizer state after a jump),
:mod:`~torch_pdt.statistics` (what ``step()`` returns), :mod:`~torch_pdt.misuse` (the warnings
on misuse), :mod:`~torch_pdt.batchnorm` (fresh BatchNorm statistics after a jump),
:mod:`~torch_pdt.checkpoint` (atomic saves), and :mod:`~torch_pdt.reference` (a readable
float64 twin of one step, for tests and benchmarks).

>>> from torch_pdt import PDT
"""

from . import (
    batchnorm,
    checkpoint,
    compat,
    config,
    criteria,
    dmd,
    fitting,
    jump,
    misuse,
    pacing,
    params,
    passes,
    prediction,
    reference,
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
    "compat",
    "config",
    "criteria",
    "dmd",
    "fitting",
    "jump",
    "misuse",
    "pacing",
    "params",
    "passes",
    "prediction",
    "recompute_batch_norm",
    "reference",
    "save_atomic",
    "statistics",
]
__version__ = "0.1.0"
