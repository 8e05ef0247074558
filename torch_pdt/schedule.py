"""The earlier name of :mod:`torch_pdt.pacing`, kept so that existing imports work.

PDT's rules for its horizon and interval were called schedulers, a word that also means the
learning-rate schedule; they are pacing rules now (the option is still ``scheduler=``).
"""

from .pacing import PACINGS as SCHEDULERS
from .pacing import AdaptivePacing as AdaptiveSchedule
from .pacing import AuthorsPacing as AuthorsSchedule
from .pacing import AuthorsPacing as ReferenceSchedule
from .pacing import Decision, make
from .pacing import FixedPacing as FixedSchedule

__all__ = [
    "SCHEDULERS",
    "AdaptiveSchedule",
    "AuthorsSchedule",
    "Decision",
    "FixedSchedule",
    "ReferenceSchedule",
    "make",
]
