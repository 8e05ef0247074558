"""torch-pdt: Predictive Differential Training as a plug-in beside any ``torch.optim`` optimizer.

>>> from torch_pdt import PDT
"""

from . import checkpoint, criteria, dmd, jump, schedule
from .checkpoint import save_atomic
from .pdt import PDT

__all__ = ["PDT", "checkpoint", "criteria", "dmd", "jump", "save_atomic", "schedule"]
__version__ = "0.1.0"
