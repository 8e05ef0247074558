"""torch-pdt: Predictive Differential Training as a plug-in beside any ``torch.optim`` optimizer.

>>> from torch_pdt import PDT
"""

from . import criteria, dmd
from .pdt import PDT

__all__ = ["PDT", "criteria", "dmd"]
__version__ = "0.1.0"
