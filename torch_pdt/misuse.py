"""Misuse PDT can see, said once per :class:`~torch_pdt.PDT` as a :class:`PDTMisuseWarning`.

PDT still does what it is told; the warning says why that is probably not what the user wants
and what to do instead. Five kinds, each warned at most once per PDT:

* ``step()`` called again with no optimizer step in between (and no other optimizer stepping
  PDT's parameters): the new snapshot repeats the last one, so the optimizer's step
  :math:`\\Delta` is zero and a prediction accepts nothing.
* ``step()`` called by hand in step mode (``every_n_steps=K``), where PDT already steps itself
  after every ``K``-th optimizer step: each call adds a snapshot that was not due.
* another optimizer stepping PDT's parameters (the optimizer was rebuilt after PDT was
  created): PDT stays bound to the optimizer it was given (its ``param_groups``, its state for
  ``on_jump``, its step count), which no longer trains them. Seen by a global optimizer step
  post-hook (:func:`torch.optim.optimizer.register_optimizer_step_post_hook`), said at that
  foreign step.
* ``step()`` called after every optimizer step, :data:`EVERY_STEP_CALLS` times in a row: PDT
  is meant once per epoch (a user's trial that stepped it every batch ran 4x slower and ended
  at a worse loss). ``every_n_steps=K`` is the way to step it every ``K`` optimizer steps. Full-batch
  training, where an epoch *is* one optimizer step, looks the same; there the warning can be
  ignored.
* an option that the chosen criterion or pacing rule ignores (``tolerance`` without
  ``pacing="adaptive"``: :meth:`~torch_pdt.config.PDTConfig.ignored`), at construction;
  only when given a value other than its default (:func:`ignored_options`), so that a PDT
  rebuilt from another's ``config.saved()`` is not warned.

The optimizer steps are counted by an optimizer step post-hook (:func:`register_step_hook`);
an optimizer without one, a PDT after :meth:`~torch_pdt.PDT.close`, or weights updated without
``optimizer.step()`` are not judged.

Example:
    >>> import warnings
    >>> watch = StepWatch()
    >>> watch.optimizer_stepped(); watch.pdt_stepped(step_mode=False)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     watch.pdt_stepped(step_mode=False)  # again, with no optimizer step in between
    ...     watch.pdt_stepped(step_mode=False)  # said once only
    >>> [w.category.__name__ for w in caught]
    ['PDTMisuseWarning']
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook

from .config import PDTConfig

__all__ = [
    "EVERY_STEP_CALLS",
    "PDTMisuseWarning",
    "StepWatch",
    "ignored_options",
    "register_step_hook",
    "warn_once",
    "watch_other_optimizers",
]

EVERY_STEP_CALLS = 100
"""``step()`` calls in a row, each after exactly one optimizer step, that make PDT say it is being
stepped every batch. An epoch of 100 batches or more shows this within its first epoch; full-batch
training (one optimizer step per epoch) for more than 100 epochs sees the warning too."""

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
# Warnings said from inside an optimizer step point past torch.optim's frames too.
_SKIPPED = (_PACKAGE, os.path.dirname(os.path.abspath(torch.optim.__file__)) + os.sep)


class PDTMisuseWarning(UserWarning):
    """PDT is used in a way that wastes it; the message says what to do instead.

    Silence one kind by its message, e.g.
    ``warnings.filterwarnings("ignore", ".*followed every optimizer step", PDTMisuseWarning)``.
    """


def warn_once(said: set[str], kind: str, message: str) -> None:
    """Warn ``message`` unless ``kind`` is in ``said`` (one PDT's record); then record it.

    The warning points at the first caller outside :mod:`torch_pdt`: the user's line (or the
    training framework's), whichever class and how many layers of PDT (or of an optimizer step)
    it went through.
    """
    if kind in said:
        return
    said.add(kind)
    frame, level = sys._getframe(), 1  # this function's frame is warnings.warn's stacklevel 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_SKIPPED):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, PDTMisuseWarning, stacklevel=level)


def ignored_options(config: PDTConfig, options: Mapping[str, Any]) -> list[str]:
    """:meth:`~torch_pdt.config.PDTConfig.ignored` for the ``options`` given a value other than the default.

    A default value changes nothing, wherever it came from: ``PDT(opt, **other.config.saved())``
    passes every option, ``tolerance`` included, with ``pacing="fixed"``.

    >>> ignored_options(PDTConfig(), PDTConfig().saved())
    []
    >>> ignored_options(PDTConfig(), {"tolerance": 0.5})
    ["tolerance (it applies to pacing='adaptive' only; got pacing='fixed')"]
    """
    defaults = {f.name: f.default for f in dataclasses.fields(PDTConfig)}
    return config.ignored([k for k, v in options.items() if k not in defaults or v != defaults[k]])


def watch_other_optimizers(watch: StepWatch, optimizer: torch.optim.Optimizer, params: Iterable[Tensor]) -> None:
    """Make ``watch`` warn when an optimizer other than ``optimizer`` steps one of ``params``.

    A global step post-hook, held by ``watch`` weakly and removed when ``watch`` is collected.
    Whether an optimizer shares a parameter is worked out at its first step and remembered
    (``WeakKeyDictionary``); the bound optimizer's own steps cost one identity test.
    """
    ours = {id(p) for p in params}
    watch_ref, bound = weakref.ref(watch), weakref.ref(optimizer)
    shares: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def after_any_step(other: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        owner = watch_ref()
        if owner is None or other is bound() or not owner.counting:
            return
        if other not in shares:
            groups = getattr(other, "param_groups", [])
            shares[other] = any(id(p) in ours for g in groups for p in g.get("params", ()))
        if shares[other]:
            owner.other_optimizer_stepped(other, bound())

    handle = register_optimizer_step_post_hook(after_any_step)
    weakref.finalize(watch, handle.remove)


def register_step_hook(
    owner: Any, optimizer: torch.optim.Optimizer, required: bool
) -> torch.utils.hooks.RemovableHandle | None:
    """The optimizer post-hook that calls ``owner._after_optimizer_step``, holding ``owner`` (a
    PDT) only weakly: a PDT that is dropped stops counting and stepping.

    Step mode (``required``) needs it; epoch mode only counts steps for this module, and goes
    without where the optimizer cannot take a hook (no ``register_step_post_hook``, or a
    subclass that skipped ``Optimizer.__init__``): ``None`` then.
    """
    ref = weakref.ref(owner)

    def after_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        pdt = ref()
        if pdt is not None:
            pdt._after_optimizer_step(optimizer, args, kwargs)

    try:
        handle = optimizer.register_step_post_hook(after_optimizer_step)
    except AttributeError:
        if required:
            raise
        return None
    weakref.finalize(owner, handle.remove)
    return handle


class StepWatch:
    """The optimizer steps between two ``PDT.step()`` calls, and the misuse they show."""

    def __init__(self) -> None:
        self.optimizer_steps = 0
        """Optimizer steps since construction (the post-hook counts them)."""
        self.counting = True
        """Whether the count is live; a closed PDT, whose hook is removed, judges nothing."""
        self.said: set[str] = set()
        """The kinds of misuse already warned about."""
        self.in_hook = False
        """Whether the step now running was called by the step-mode hook (not by hand)."""
        self.other_steps = 0
        """Steps of other optimizers over PDT's parameters (:func:`watch_other_optimizers`)."""
        self._at_last_step: int | None = None
        self._others_at_last_step = 0
        self._single_steps = 0
        self._empty_epoch_expected = False

    def expect_empty_epoch(self) -> None:
        """The coming ``PDT.step()`` may follow no optimizer step rightly: under ``Join`` with uneven
        inputs a rank can run out of batches for a whole epoch, and its repeated snapshot is no misuse."""
        self._empty_epoch_expected = True

    def optimizer_stepped(self) -> None:
        self.optimizer_steps += 1

    def other_optimizer_stepped(self, other: torch.optim.Optimizer, bound: torch.optim.Optimizer | None) -> None:
        """Another optimizer than PDT's stepped PDT's parameters: say that PDT is bound elsewhere, once."""
        self.other_steps += 1
        warn_once(
            self.said,
            "other optimizer",
            f"an optimizer ({type(other).__name__}) that PDT was not created with stepped PDT's parameters. PDT is "
            f"bound to the optimizer it was given ({type(bound).__name__}, which has taken {self.optimizer_steps} "
            "steps since): it counts that one's steps (step mode steps PDT), reads its param_groups and, for "
            "on_jump, its state. If the optimizer was rebuilt, create a new PDT for the new optimizer "
            "(load_state_dict carries the history over).",
        )

    def pdt_stepped(self, step_mode: bool) -> None:
        """``PDT.step()`` has run; warn (once each) when it was called by hand in step mode, or followed
        no or exactly one optimizer step."""
        last, self._at_last_step = self._at_last_step, self.optimizer_steps
        others, self._others_at_last_step = self.other_steps - self._others_at_last_step, self.other_steps
        # Consumed by this call whatever it judges, so it never excuses a later repeated step.
        empty_epoch_expected, self._empty_epoch_expected = self._empty_epoch_expected, False
        if step_mode and not self.in_hook and self.counting:
            warn_once(
                self.said,
                "step mode by hand",
                "PDT.step() was called by hand, but with every_n_steps=K PDT steps itself after every K-th "
                "optimizer step: each such call adds a snapshot that was not due. Leave the step() calls out, "
                "or drop every_n_steps and step PDT by hand at the end of each epoch.",
            )
            return
        # Weights updated without optimizer.step() (a hand-written update) are not judged.
        if not self.counting or last is None or self.optimizer_steps == 0:
            return
        between = self.optimizer_steps - last
        # In step mode the hook steps PDT after an optimizer step only.
        if between == 0 and others == 0 and not empty_epoch_expected:
            warn_once(
                self.said,
                "repeated",
                "PDT.step() was called again with no optimizer step in between: unless the weights were changed "
                "otherwise, its snapshot repeats the last one, so the optimizer's step is zero and a prediction "
                "accepts nothing. Call step() once per epoch, after the epoch's optimizer steps.",
            )
        self._single_steps = self._single_steps + 1 if between == 1 else 0
        if not step_mode and self._single_steps >= EVERY_STEP_CALLS:
            warn_once(
                self.said,
                "every step",
                f"PDT.step() followed every optimizer step {EVERY_STEP_CALLS} times in a row: it is meant once "
                "per epoch (after every batch it predicts from batch-to-batch noise, and runs slower). Call it at "
                "the end of each epoch, or construct PDT with every_n_steps=K to step it every K optimizer steps. "
                "If one epoch is one optimizer step (full-batch training), ignore this warning.",
            )
