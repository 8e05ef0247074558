"""Misuse PDT can see, said once per :class:`~torch_pdt.PDT` as a :class:`PDTMisuseWarning`.

PDT still does what it is told; the warning says why that is probably not what the user wants
and what to do instead. Three kinds, each warned at most once per PDT:

* ``step()`` called again with no optimizer step in between: the new snapshot repeats the
  last one, so the optimizer's step :math:`\\Delta` is zero and a prediction accepts nothing.
* ``step()`` called after every optimizer step, :data:`EVERY_STEP_CALLS` times in a row: PDT
  is meant once per epoch (a user's trial that stepped it every batch ran 4x slower and ended
  at a worse loss). ``every_n_steps=K`` is the way to step it every ``K`` optimizer steps. Full-batch
  training, where an epoch *is* one optimizer step, looks the same; there the warning can be
  ignored.
* an option that the chosen criterion or scheduler ignores (``tolerance`` without
  ``scheduler="adaptive"``: :meth:`~torch_pdt.config.PDTConfig.ignored`), at construction.

The optimizer steps are counted by an optimizer step post-hook (``Optimizer.register_step_post_hook``);
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

import os
import sys
import warnings

__all__ = ["EVERY_STEP_CALLS", "PDTMisuseWarning", "StepWatch", "warn_once"]

EVERY_STEP_CALLS = 100
"""``step()`` calls in a row, each after exactly one optimizer step, that make PDT say it is being
stepped every batch. An epoch of 100 batches or more shows this within its first epoch; full-batch
training (one optimizer step per epoch) for more than 100 epochs sees the warning too."""

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class PDTMisuseWarning(UserWarning):
    """PDT is used in a way that wastes it; the message says what to do instead.

    Silence one kind by its message, e.g.
    ``warnings.filterwarnings("ignore", ".*followed every optimizer step", PDTMisuseWarning)``.
    """


def warn_once(said: set[str], kind: str, message: str) -> None:
    """Warn ``message`` unless ``kind`` is in ``said`` (one PDT's record); then record it.

    The warning points at the first caller outside :mod:`torch_pdt`: the user's line (or the
    training framework's), whichever class and how many layers of PDT it went through.
    """
    if kind in said:
        return
    said.add(kind)
    frame, level = sys._getframe(), 1  # this function's frame is warnings.warn's stacklevel 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, PDTMisuseWarning, stacklevel=level)


class StepWatch:
    """The optimizer steps between two ``PDT.step()`` calls, and the misuse they show."""

    def __init__(self) -> None:
        self.optimizer_steps = 0
        """Optimizer steps since construction (the post-hook counts them)."""
        self.counting = True
        """Whether the count is live; a closed PDT, whose hook is removed, judges nothing."""
        self.said: set[str] = set()
        """The kinds of misuse already warned about."""
        self._at_last_step: int | None = None
        self._single_steps = 0

    def optimizer_stepped(self) -> None:
        self.optimizer_steps += 1

    def pdt_stepped(self, step_mode: bool) -> None:
        """``PDT.step()`` has run; warn (once each) when it followed no or exactly one optimizer step."""
        last, self._at_last_step = self._at_last_step, self.optimizer_steps
        # Weights updated without optimizer.step() (a hand-written update) are not judged.
        if not self.counting or last is None or self.optimizer_steps == 0:
            return
        between = self.optimizer_steps - last
        if between == 0:
            advice = (
                "With every_n_steps=K, PDT steps itself after every K-th optimizer step: do not call step() too."
                if step_mode
                else "Call step() once per epoch, after the epoch's optimizer steps."
            )
            warn_once(
                self.said,
                "repeated",
                "PDT.step() was called again with no optimizer step in between: unless the weights were changed "
                "otherwise, its snapshot repeats the last one, so the optimizer's step is zero and a prediction "
                f"accepts nothing. {advice}",
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
