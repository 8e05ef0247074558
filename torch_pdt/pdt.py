"""The PDT plug-in: epoch-level DMD prediction beside any ``torch.optim`` optimizer.

:class:`PDT` is the epoch state machine: snapshot, predict when due, roll back when the pacing
rule says so, step mode's optimizer hook, and its state. The concepts it orchestrates live one
per module: options (:mod:`~torch_pdt.config`), parameters (:mod:`~torch_pdt.params`),
snapshots (:mod:`~torch_pdt.snapshots`), the DMD fit of the history (:mod:`~torch_pdt.fitting`,
on :mod:`~torch_pdt.dmd`), the passes over the snapshots (:mod:`~torch_pdt.passes`: a plan,
an eager and a compiled implementation), masks (:mod:`~torch_pdt.criteria`), the pacing of τ
and Ti (:mod:`~torch_pdt.pacing`), and the optimizer's state after a jump
(:mod:`~torch_pdt.jump`), the horizon of each prediction (:mod:`~torch_pdt.horizon`).
:mod:`~torch_pdt.reference` is a readable float64 twin of one step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import checkpoint, compat, criteria, fitting, horizon, jump, misuse, pacing, params, passes, statistics
from .config import PDTConfig, as_int, as_loss, check_names
from .params import DTensor, local_shard
from .prediction import Coefficients
from .snapshots import SnapshotHistory
from .statistics import PDTStatistics

__all__ = ["PDT", "DTensor", "local_shard"]

logger = logging.getLogger("torch_pdt")


class PDT:
    r"""Predictive Differential Training (PDT) beside an optimizer, stepped once per epoch.

    After each epoch, :meth:`step` snapshots the parameters. From epoch ``start_epoch`` on, it
    predicts once and then after every ``interval`` plain epochs (Algorithm 1 of the paper):
    it fits DMD to the last ``history`` snapshots, forecasts the weights ``horizon`` epochs
    ahead, and overwrites only the elements whose prediction passes the ``criterion``:

    .. math::
        w \leftarrow m \odot \hat w_{i+\tau} + (1 - m) \odot w^{opt}_i,\qquad
        \hat w_{i+\tau} = \operatorname{Re}\{\Phi \Lambda^{\tau} \Phi^{+} w^{opt}_i\}.

    With ``criterion="pdt"`` an element is accepted when its predicted displacement
    :math:`D` exceeds the optimizer's last step :math:`\Delta = w^{opt}_i - w^{opt}_{i-1}` but
    not :math:`\tau|\Delta|` (Eq. 6), and every predicted step ``k = 1..tau`` has the sign of
    :math:`\Delta` (Eq. 7). ``criterion="authors"`` reproduces the authors' public code: the
    snapshots are the weights at the *start* of each epoch (taken at construction and after
    each :meth:`step`), the forecast starts from them, and the mask is
    :math:`\operatorname{sign}(D) = \operatorname{sign}(\delta)`,
    :math:`|\delta| \le |D| \le (\tau + 1)|\delta|` with :math:`\delta = w^{opt} - w_{start}`.

    Args:
        optimizer: any optimizer exposing ``param_groups``. Groups with ``"pdt": False`` and
            parameters with ``requires_grad=False`` are left alone; buffers are never touched.
        history, horizon, start_epoch, interval: ``h``, ``tau``, ``T0`` and ``Ti`` (>= 2, >= 1,
            >= 0, >= 0; ``interval=0`` predicts every epoch).
        model: optional module, used only to name parameters in the statistics.
        **options: the other options, each a field of :class:`~torch_pdt.config.PDTConfig`
            (``criterion``, ``forecast``, ``modes``, ``rank``, ``rtol``, ``history_after_jump``,
            ``random_ratio``, ``seed``, ``chunk_size``, ``storage``, ``every_n_steps``,
            ``pacing``, ``tolerance``, ``patience``, ``on_jump``, ``kernel``, ``scope``,
            ``graded``, ``jump``, ``horizon_by``). Every invalid value raises a ``ValueError`` naming it.

    Beyond the paper (each in its module and in ``docs/usage.md``): ``scope="layer"`` fits one DMD
    per parameter tensor; ``graded=True`` lets each element jump to the largest ``k <= tau`` whose
    checks pass; ``jump="linear"`` moves an accepted element to :math:`w^{opt}_i + \tau\Delta`;
    ``horizon_by="lr"`` forecasts :math:`\tau_{eff} \le \tau` epochs ahead by the learning rates
    (:mod:`torch_pdt.horizon`). ``kernel`` chooses how the passes over the snapshots run:
    ``"compiled"`` (:mod:`torch_pdt.kernel`, near the memory-traffic floor, compiling for seconds),
    ``"eager"``, or ``"auto"`` (default: compiled where ``torch.compile`` can build kernels and it
    pays off, else eager, and eager from then on if compiling fails; one log line says which). Both
    decide alike up to rounding (:data:`~torch_pdt.kernel.DECISION_BOUND`).

    With ``every_n_steps=K`` (step mode) PDT steps itself after every ``K`` optimizer steps (a
    step post-hook holding PDT weakly; :meth:`close` stops it). In epoch mode the hook counts the
    optimizer's steps, so that misuse is warned once (:mod:`torch_pdt.misuse`). :meth:`step` never
    writes a non-finite value: such elements are rejected, and a decomposition that fails skips
    the prediction, with the reason in the statistics. When :meth:`step` or
    :meth:`load_state_dict` raises, nothing has changed.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> pdt = PDT(opt, history=5, horizon=5, start_epoch=5, interval=1)
        >>> for epoch in range(8):
        ...     for _ in range(10):  # one "epoch" of training
        ...         opt.zero_grad()
        ...         model(torch.ones(3, 4)).square().mean().backward()
        ...         opt.step()
        ...     stats = pdt.step()
        ...     if stats["predicted"]:
        ...         print(epoch, 0.0 <= stats["accepted_ratio"] <= 1.0)
        5 True
        7 True
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        history: int = 5,
        horizon: int = 5,
        start_epoch: int = 5,
        interval: int = 1,
        *,
        model: nn.Module | None = None,
        **options: Any,
    ) -> None:
        check_names(options)
        self.config = cfg = PDTConfig(history, horizon, start_epoch, interval, **options)
        if not hasattr(optimizer, "param_groups"):
            raise ValueError(f"optimizer must expose param_groups, got {type(optimizer).__name__}")
        if model is not None and not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module (used to name parameters), got {type(model).__name__}")
        self.optimizer = optimizer
        self.names, self.params = params.collect(optimizer, model)
        params.check_supported(self.names, self.params)
        params.check_dense_state(optimizer, self.names, self.params, cfg.on_jump, model)
        # Fixed: every step checks the layouts first (a list comprehension over 10,000 tensors: 2 ms).
        self._numels = [p.numel() for p in self.params]
        self.numel = sum(self._numels)
        self._tracked = params.Tracked(optimizer, self.names, self.params)
        # Snapshots hold what this process updates: the local shards of sharded parameters.
        self._history = SnapshotHistory(self._flat_params(), cfg.history, cfg.storage, cfg.chunk_size, cfg.scope)
        if cfg.pacing == "adaptive" and not self._history.exact:
            raise ValueError(
                f"pacing='adaptive' restores weights from the snapshots, which storage={cfg.storage!r} rounds; "
                "use storage='same' or 'cpu'"
            )
        self.pacing = pacing.make(cfg.pacing, cfg.horizon, cfg.interval, cfg.tolerance, cfg.patience)
        self._draws = criteria.RandomDraws(cfg.seed)
        self._rates: list[float] = []
        """``horizon_by="lr"``: the learning rate recorded with each snapshot in the history, oldest first."""
        self.epoch = 0
        self.plain_epochs = 0
        self.optimizer_steps = 0
        self.last_stats: PDTStatistics | dict[str, Any] = {}
        """The statistics of the latest :meth:`step` (empty before the first)."""
        self._warned_untouched = False
        self._watch = misuse.StepWatch()
        self._hook = misuse.register_step_hook(self, optimizer, required=cfg.every_n_steps is not None)
        self._watch.counting = self._hook is not None
        misuse.watch_other_optimizers(self._watch, optimizer, self.params)
        rate = self._rate()  # horizon_by="lr" on an optimizer without learning rates fails here
        self._choose_kernel()
        if cfg.start_of_epoch:
            self._record(rate)
        ignored = misuse.ignored_options(cfg, options)
        if ignored:
            message = f"PDT ignores {'; '.join(ignored)}: leave it out, or choose the setting it applies to"
            misuse.warn_once(self._watch.said, "ignored", message)

    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    @property
    def snapshot_bytes(self) -> int:
        """Memory held by the snapshot history."""
        return self._history.nbytes

    def _agreement(self) -> dict[str, Any]:
        """The settings that every rank of a distributed run must share (compared by DistributedPDT)."""
        return self.config.saved()

    # --- the epoch state machine ----------------------------------------------------------

    def step(self, loss: float | Tensor | None = None, *, predict: bool = True) -> PDTStatistics:
        """Call once at the end of every epoch, after the optimizer's (and LR scheduler's) steps.

        Args:
            loss: the loss of the epoch that just ended (mean training loss, or a held-out
                loss of the weights the optimizer reached): any real number, numpy scalar or
                one-element tensor; required by the ``"authors"`` and ``"adaptive"`` pacing
                rules (``pacing=``), ignored by ``"fixed"``.
            predict: with ``False`` the snapshot is still taken (and the pacing rule still sees
                the loss) but no prediction runs (the epoch counts as a plain one): a caller's
                own rule can switch PDT off and on.

        Returns the statistics of this epoch, a :class:`~torch_pdt.statistics.PDTStatistics`
        (also kept in :attr:`last_stats`): the same keys every epoch, every value plain JSON
        (``json.dumps`` takes it), with ``predicted`` and ``reason`` saying what happened.

        Raises:
            ValueError: before anything changes, on a missing or non-numeric ``loss``, when the
                optimizer's trainable parameters changed since construction (other tensors, or
                another shape, dtype or device), or when ``on_jump`` would have to change
                optimizer state it cannot (sparse, or laid out unlike its parameter).
        """
        value = self._validate(loss, predict)
        rate = self._rate()
        decision = self.pacing.observe(value)
        stats = statistics.nothing_predicted(self.epoch, self.names, self.numel, decision, self.pacing.rollbacks)
        if decision.rollback:
            self._roll_back(decision)
            stats["reason"] = "rolled back"
        else:
            if not self.config.start_of_epoch:
                self._record(rate)
            stats.update(self._predict_if_due(predict))

        jumped = stats["predicted"] and stats["accepted"]
        self.plain_epochs = 0 if stats["predicted"] or decision.rollback else self.plain_epochs + 1
        if jumped:
            self.pacing.predicted(value)
        if self.config.start_of_epoch:
            self._record(rate)
        elif jumped and self.config.history_after_jump == "assembled":
            self._history.replace_newest(self._flat_params(), self._passes)
        self.epoch += 1
        self.last_stats = stats
        self._watch.pdt_stepped(self.config.every_n_steps is not None)
        return stats

    def _predict_if_due(self, predict: bool) -> dict[str, Any]:
        cfg = self.config
        if not predict:
            return {"reason": "disabled by the caller"}
        if self.epoch < cfg.start_epoch:
            return {"reason": "warm-up"}
        if self.plain_epochs < self.pacing.interval:
            return {"reason": "interval"}
        if len(self._history) < cfg.history:
            return {"reason": f"insufficient history ({len(self._history)} of {cfg.history} snapshots)"}
        return self._predict()

    def _rate(self) -> float | None:
        """``horizon_by="lr"``: the learning rate to record with the next snapshot, checked; else ``None``."""
        return horizon.learning_rate(self.optimizer) if self.config.horizon_by == "lr" else None

    def _record(self, rate: float | None) -> None:
        """Snapshot the parameters and, where ``rate`` is given, record it beside the snapshot."""
        self._snapshot()
        if rate is not None:
            self._rates = [*self._rates, rate][-self.config.history :]

    def _validate(self, loss: Any, predict: Any) -> float | None:
        """Everything :meth:`step` can check before it changes anything; the loss as a float (or ``None``)."""
        if not isinstance(predict, bool):
            raise ValueError(f"predict must be True or False, got {predict!r}")
        self._tracked.check()
        if loss is None and self.pacing.needs_loss:
            raise ValueError(f"loss is required: pacing={self.pacing.name!r} needs step(loss=...)")
        value = None if loss is None else as_loss(loss)
        self._rate()  # checked here too, where a distributed subclass makes every rank refuse together
        if self.config.on_jump != "keep":
            params.check_dense_state(self.optimizer, self.names, self.params, self.config.on_jump)
            jump.velocity_buffers(self.optimizer, self.params)
        return value

    def _roll_back(self, decision: pacing.Decision) -> None:
        """Restore the optimizer's weights from before the last prediction; zero the velocities.

        The newest snapshot is the optimizer's result of the prediction's epoch (the adaptive
        rule requires ``history_after_jump="optimizer"``), so no copy of the weights is
        kept for this. The epoch trained since the prediction is discarded, and so are the
        velocities it accumulated on weights that no longer exist.
        """
        self._history.copy_newest_to(self._flat_params())
        jump.zero_velocities(self.optimizer, self.params)
        logger.warning(
            "PDT rolled back the prediction made after epoch %d: loss %.6g against %.6g before it; "
            "horizon now %d, interval %d",
            self.epoch - 1,
            decision.loss,
            decision.reference_loss,
            decision.horizon,
            decision.interval,
        )

    # --- one prediction ------------------------------------------------------------------

    def _predict(self) -> dict[str, Any]:
        """Fit DMD to the history, turn the forecast into step coefficients, run the pass."""
        cfg = self.config
        tau = self.pacing.horizon
        if cfg.horizon_by == "lr":
            tau = horizon.effective_horizon(self._rates, tau)
        history, rows = self._history, self._history.rows()
        fitted = fitting.fit(
            lambda: self._reduce_gram(history.grams()),
            lambda W: self._reduce_gram(self._passes.gram(rows, W)),
            len(history),
            history.resolution,
            cfg,
            tau,
            self.names,
            self._model_numels(),
        )
        if "reason" in fitted:
            return fitted
        coefficients = fitted.pop("coefficients")
        ratio = cfg.random_ratio
        if cfg.criterion == "random" and ratio == "measured":
            ratio = self._pass(coefficients, self._plan(tau, "pdt", write=False))["accepted"] / self.numel
        result = self._pass(coefficients, self._plan(tau, cfg.criterion, write=True, ratio=ratio))
        if cfg.criterion == "random":
            result["random_ratio"] = ratio
        # Elements of layers without a fit (scope="layer") are kept, and counted apart.
        numels = self._model_numels()
        layers = fitted.get("layers", {})
        result["rejected"]["unfitted"] = sum(n for n, layer in zip(numels, layers.values()) if layer["reason"])
        return result | {"horizon": tau, "predicted": True, "accepted_ratio": result["accepted"] / self.numel} | fitted

    def _plan(self, tau: int, criterion: str, write: bool, ratio: float = 0.0) -> passes.Plan:
        cfg = self.config
        return passes.Plan(
            tau,
            criteria.canonical(criterion),
            start_of_epoch=cfg.start_of_epoch,
            # The newest snapshot is w_opt exactly unless the storage rounds it.
            origin_is_param=not self._history.exact and not cfg.start_of_epoch,
            newest_is_param=self._history.exact and not cfg.start_of_epoch,
            graded=cfg.graded,
            linear=cfg.jump == "linear",
            write=write,
            ratio=ratio,
        )

    def _pass(self, coefficients: Coefficients, plan: passes.Plan) -> dict[str, Any]:
        """One prediction pass (:meth:`torch_pdt.passes.Backend.predict`) and its statistics.

        ``coefficients`` (``(tau + 1) x h``, snapshots oldest first; ``2 tau x h`` where graded)
        map the snapshots to the ``tau`` predicted steps and the displacement; with
        ``scope="layer"`` there is one per parameter (``None``: not predicted).
        """
        on_jump = self.config.on_jump if plan.write else "keep"
        on_chunk, untouched = jump.prepare(self.optimizer, self.params, on_jump)
        if untouched and not self._warned_untouched:
            self._warned_untouched = True
            logger.warning("PDT on_jump=%r leaves unknown optimizer state %s unchanged", on_jump, sorted(untouched))
        flats, rows = self._flat_params(), self._history.rows()
        counts = self._passes.predict(flats, rows, coefficients, plan, on_chunk=on_chunk, draws=self._draws)
        stats = counts.statistics(self._reduce_counts(counts.counts()), self.names, self._model_numels())
        return ({"optimizer_state_untouched": sorted(untouched)} if on_jump != "keep" else {}) | stats

    # --- hooks a distributed subclass overrides ------------------------------------------

    def _model_numels(self) -> list[int]:
        """Elements of each parameter in the whole model; a sharded subclass counts every rank's part."""
        return self._numels

    def _flat_params(self) -> Sequence[Tensor]:
        """1-D views of the (local shards of the) parameters in memory order (channels-last included),
        as of the check that starts every step (:meth:`torch_pdt.params.Tracked.flats`)."""
        return self._tracked.flats()

    def _snapshot(self) -> None:
        """Push the current parameters; a sharded subclass turns a failure here into a skip on all ranks."""
        self._history.push(self._flat_params(), self._passes)

    def _choose_kernel(self) -> None:
        """Choose the passes (:func:`torch_pdt.passes.choose`) into ``self._passes``; a subclass may refuse some."""
        self._passes = passes.choose(self._history, self.config, self._flat_params(), self.numel)

    def _reduce_gram(self, gram: Tensor) -> Tensor:
        """The Gram matrix of the whole model from this process's; a sharded subclass sums the ranks'."""
        return gram

    def _reduce_counts(self, counts: Tensor) -> Tensor:
        """Statistics (int64 counts) of the whole model from this process's; a sharded subclass sums them."""
        return counts

    # --- step mode -----------------------------------------------------------------------

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """The optimizer's step post-hook: count the step; in step mode, :meth:`step` after every K-th."""
        self._watch.optimizer_stepped()
        if self.config.every_n_steps is None:
            return
        self.optimizer_steps += 1
        if self.optimizer_steps % self.config.every_n_steps == 0:
            self._watch.in_hook = True
            try:
                self.step()
            except Exception:
                self.optimizer_steps -= 1  # a step that raised changed nothing: the next one retries it
                raise
            finally:
                self._watch.in_hook = False

    def close(self) -> None:
        """Detach from the optimizer: remove the hook that counts its steps and, in step mode,
        steps PDT (idempotent).

        Explicit :meth:`step` calls still work (unwatched by :mod:`~torch_pdt.misuse`). A PDT
        that is garbage-collected is detached too.
        """
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._watch.counting = False

    # --- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: configuration, counters, pacing, snapshots, RNG
        states, the learning rates recorded with the snapshots (``horizon_by="lr"``)."""
        return {
            "config": self.config.saved(),
            "epoch": self.epoch,
            "plain_epochs": self.plain_epochs,
            "optimizer_steps": self.optimizer_steps,
            "pacing": self.pacing.state_dict(),
            "history": self._history.state_dict(),
            "generators": self._draws.state_dict(),
            "learning_rates": list(self._rates),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; raises ``ValueError`` (changing nothing) on a mismatch.

        A state in earlier names loads too (:func:`torch_pdt.compat.upgrade`). Every field's type
        and range is checked, and every part built aside, before any is committed.
        """
        state_dict = compat.upgrade(state_dict)
        keys = {
            "config",
            "epoch",
            "plain_epochs",
            "optimizer_steps",
            "pacing",
            "history",
            "generators",
            "learning_rates",
        }
        if not isinstance(state_dict, dict):
            raise ValueError(f"not a PDT state: a {type(state_dict).__name__}, not a dict")
        missing = keys - set(state_dict)
        if missing:
            raise ValueError(f"not a PDT state: missing {sorted(missing)}")
        checkpoint.check_loadable(state_dict)
        self.config.check_saved(state_dict["config"])
        counters = [as_int(f"saved {k}", state_dict[k], 0) for k in ("epoch", "plain_epochs", "optimizer_steps")]
        cfg = self.config
        restored = pacing.make(cfg.pacing, cfg.horizon, cfg.interval, cfg.tolerance, cfg.patience)
        restored.load_state_dict(state_dict["pacing"])
        draws = self._draws.restored(state_dict["generators"], {local_shard(p).device for p in self.params})
        count = self._history.check_state(state_dict["history"])["count"]
        rates = horizon.checked_rates(state_dict["learning_rates"], count, cfg.horizon_by == "lr")
        # Only now commit.
        self._history.load_state_dict(state_dict["history"])
        self.pacing = restored
        self.epoch, self.plain_epochs, self.optimizer_steps = counters
        self._draws = draws
        self._rates = rates
