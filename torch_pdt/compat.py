"""Checkpoints written before the current names: one translation, :func:`upgrade`.

:meth:`PDT.load_state_dict <torch_pdt.PDT.load_state_dict>` passes every state through
:func:`upgrade` before it checks anything, so a state saved by an earlier torch-pdt loads as if
saved now. The earlier names (none was published; main used them until Core v3):

==========================================  ==========================================
earlier                                     now
==========================================  ==========================================
state key ``"schedule"``                    ``"pacing"``
option ``scheduler`` in ``"config"``        ``pacing``
no ``scope``, ``graded``, ``jump`` or       their defaults (:data:`ADDED`)
``horizon_by``
no state key ``"learning_rates"``           ``[]`` (none recorded: ``horizon_by="epochs"``)
choice ``"reference"`` of a criterion       ``"authors"`` (:data:`torch_pdt.config.ALIASES`)
or pacing rule
==========================================  ==========================================

Example:
    >>> old = {"schedule": {"horizon": 5}, "config": {"scheduler": "reference", "criterion": "pdt"}}
    >>> new = upgrade(old)
    >>> new["pacing"], new["config"]["pacing"], new["config"]["scope"], "schedule" in new
    ({'horizon': 5}, 'authors', 'model', False)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import ALIASES, RENAMED_OPTIONS

__all__ = ["ADDED", "RENAMED", "RENAMED_OPTIONS", "upgrade"]

RENAMED = {"schedule": "pacing"}
"""Earlier state keys -> current ones."""

ADDED = {"scope": "model", "graded": False, "jump": "forecast", "horizon_by": "epochs"}
"""Options added after checkpoints were first saved: a checkpoint without one was saved at its default."""


def upgrade(state: Any) -> Any:
    """``state`` (a :meth:`~torch_pdt.PDT.state_dict`) in the current names, as a new dict; the
    input is not changed, and anything that is not a dict is returned as it is (for the caller
    to refuse)."""
    if not isinstance(state, Mapping):
        return state
    new = {RENAMED.get(k, k): v for k, v in state.items()}
    new.setdefault("learning_rates", [])
    config = new.get("config")
    if isinstance(config, Mapping):
        config = {RENAMED_OPTIONS.get(k, k): v for k, v in config.items()}
        for name, default in ADDED.items():
            config.setdefault(name, default)
        for name, earlier in ALIASES.items():
            if isinstance(config.get(name), str):
                config[name] = earlier.get(config[name], config[name])
        new["config"] = config
    return new
