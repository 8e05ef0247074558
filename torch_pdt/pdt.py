"""The PDT plug-in: epoch-level DMD prediction beside any ``torch.optim`` optimizer."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor, nn

from . import dmd, jump, schedule
from .criteria import CHECKS, CRITERIA, NEEDS_STEPS, extremes
from .snapshots import STORAGE, SnapshotHistory, flat_view

if torch.distributed.is_available():
    from torch.distributed.tensor import DTensor
else:  # a build without torch.distributed has no DTensor parameters to look for
    DTensor = ()

__all__ = ["PDT"]

logger = logging.getLogger("torch_pdt")

_RANDOM = "random"
_HISTORY_AFTER_JUMP = ("optimizer", "assembled")
_MODES = ("projected", "exact")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def local_shard(p: Tensor) -> Tensor:
    """The part of ``p`` this process holds and updates: a DTensor's (FSDP2) local shard, else ``p``.

    Under ``torch.no_grad`` the local shard aliases the parameter's storage, so writing it
    updates the parameter in place.
    """
    return p.to_local() if isinstance(p, DTensor) else p


class PDT:
    r"""Predictive Differential Training (PDT) beside an optimizer, stepped once per epoch.

    After each epoch, :meth:`step` snapshots the parameters. From epoch ``start_epoch`` on, it
    predicts once and then after every ``interval`` plain epochs (Algorithm 1 of the paper):
    it fits DMD to the last ``history`` snapshots, forecasts the weights ``horizon`` epochs
    ahead, and overwrites only the parameters whose prediction passes the ``criterion``:

    .. math::
        w \leftarrow m \odot \hat w_{i+\tau} + (1 - m) \odot w^{opt}_i,\qquad
        \hat w_{i+\tau} = \operatorname{Re}\{\Phi \Lambda^{\tau} \Phi^{+} w^{opt}_i\}.

    With ``criterion="pdt"`` an element is accepted when its predicted displacement
    :math:`D` exceeds the optimizer's last step :math:`\Delta = w^{opt}_i - w^{opt}_{i-1}` but
    not :math:`\tau|\Delta|` (Eq. 6), and every predicted step ``k = 1..tau`` has the sign of
    :math:`\Delta` (Eq. 7). See :mod:`torch_pdt.criteria` for every criterion and
    :mod:`torch_pdt.dmd` for how DMD is computed from an ``h x h`` Gram matrix, in float64.

    Args:
        optimizer: any optimizer exposing ``param_groups``. Groups with ``"pdt": False`` and
            parameters with ``requires_grad=False`` are left alone; buffers are never touched.
        history: ``h``, number of snapshots the DMD is fitted to (>= 2).
        horizon: ``tau``, epochs predicted ahead (>= 1).
        start_epoch: ``T0``, index of the first epoch (0-based) after which to predict.
        interval: ``Ti``, plain epochs between two predictions (0 = predict every epoch).
        criterion: ``"pdt"`` (Eq. 6 and 7), ``"reference"`` (the authors' code: see below),
            ``"accel_only"``, ``"consistency_only"``, ``"none"`` (accept every prediction),
            or ``"random"`` (accept a random subset, see ``random_ratio``).
        forecast: ``"paper"`` (the formula above) or ``"increment"``
            (:math:`w + \operatorname{Re}\{\Phi(\Lambda^\tau - I)\Phi^+ w\}`); default
            ``"increment"`` for ``criterion="reference"``, else ``"paper"``.
        modes: ``"projected"`` (:math:`U\Psi`, the paper) or ``"exact"`` DMD modes.
        rank, rtol: SVD truncation, see :func:`torch_pdt.dmd.fit_factor`.
        history_after_jump: what the newest snapshot holds after an assembled prediction:
            ``"optimizer"`` keeps :math:`w^{opt}_i`, so the history is the optimizer's record
            (default; the toy problem's ablations behave as in the paper only this way),
            ``"assembled"`` replaces it by the assembled weights the model continues from.
        random_ratio: for ``criterion="random"``, the fraction accepted, or ``"measured"`` for
            the fraction ``criterion="pdt"`` accepts at the same step.
        seed: seed of the random criterion's own generator (global RNGs are never touched).
        chunk_size: elements per chunk of the snapshot and prediction passes (bounds the
            working memory).
        storage: where snapshots live: ``"same"`` (the parameters' device and dtype),
            ``"cpu"`` (pinned CPU memory, asynchronous copies; for CPU parameters the same as
            ``"same"``) or ``"bf16"`` (bfloat16: half the memory of float32, but it cannot
            resolve steps below 2^-8 of a weight; see the README).
        every_n_steps: step mode, for training that lasts one epoch or less: ``None`` (default)
            means :meth:`step` is called by you, once per epoch; ``K`` makes PDT call it itself
            after every ``K`` optimizer steps (an ``Optimizer.register_step_post_hook``; steps a
            ``GradScaler`` skips do not count). A PDT "epoch" is then ``K`` steps: ``horizon``,
            ``start_epoch`` and ``interval`` count periods of ``K`` steps.
        model: optional module, used only to name parameters in the statistics.
        scheduler: how ``horizon`` and ``interval`` evolve (:mod:`torch_pdt.schedule`):
            ``"fixed"`` (default, the paper), ``"reference"`` (the authors' distributed
            trainer: shrink on loss rises) or ``"adaptive"`` (judge each prediction by the next
            loss, roll a bad one back, back off and grow back). The last two need
            ``step(loss=...)`` (so not step mode); ``"adaptive"`` needs the optimizer's weights in the history,
            exactly (``history_after_jump="optimizer"``, ``criterion`` other than
            ``"reference"``, ``storage`` other than ``"bf16"``).
        tolerance: ``"adaptive"``: relative loss rise after a prediction that counts as bad (>= 0).
        patience: ``"adaptive"``: good predictions in a row before ``horizon`` and
            ``interval`` grow back towards the given values (>= 1).
        on_jump: the optimizer's velocities (momentum, Adam's first moment) of accepted
            elements: ``"keep"`` (default, the paper), ``"reset"`` to zero, or ``"rescale"``
            by the forecast's own slow-down (:mod:`torch_pdt.jump`).

    ``criterion="reference"`` reproduces the authors' public code: snapshots are the weights at
    the *start* of each epoch (taken at construction and after each :meth:`step`), so the
    newest optimizer result is not in the fit; the forecast starts from the start-of-epoch
    weights :math:`w_{ref}`; the mask is :math:`\operatorname{sign}(D) = \operatorname{sign}(\delta)`,
    :math:`|\delta| \le |D| \le (\tau + 1)|\delta|` with :math:`\delta = w^{opt} - w_{ref}`.

    :meth:`step` never writes a non-finite value: non-finite predicted elements are rejected,
    and a decomposition that fails (rank 0, non-finite snapshots) skips the prediction, with the
    reason in the returned statistics.

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
        criterion: str = "pdt",
        forecast: str | None = None,
        modes: str = "projected",
        rank: int | float | None = None,
        rtol: float | None = None,
        history_after_jump: str = "optimizer",
        random_ratio: float | str = "measured",
        seed: int = 0,
        chunk_size: int = dmd.CHUNK_SIZE,
        storage: str = "same",
        every_n_steps: int | None = None,
        model: nn.Module | None = None,
        scheduler: str = "fixed",
        tolerance: float = 0.05,
        patience: int = 3,
        on_jump: str = "keep",
    ) -> None:
        _check_int("history", history, 2)
        _check_int("horizon", horizon, 1)
        _check_int("start_epoch", start_epoch, 0)
        _check_int("interval", interval, 0)
        _check_int("chunk_size", chunk_size, 1)
        _check_int("seed", seed, 0)
        if every_n_steps is not None:
            _check_int("every_n_steps", every_n_steps, 1)
        _check_choice("criterion", criterion, (*CRITERIA, _RANDOM))
        if forecast is None:
            forecast = "increment" if criterion == "reference" else "paper"
        _check_choice("forecast", forecast, dmd.FORECASTS)
        _check_choice("modes", modes, _MODES)
        _check_choice("history_after_jump", history_after_jump, _HISTORY_AFTER_JUMP)
        _check_choice("storage", storage, STORAGE)
        if random_ratio != "measured" and (
            isinstance(random_ratio, bool)
            or not isinstance(random_ratio, (int, float))
            or not 0.0 <= random_ratio <= 1.0
        ):
            raise ValueError(f"random_ratio must be 'measured' or a float in [0, 1], got {random_ratio!r}")
        dmd.validate_options(modes == "exact", rank, rtol)
        _check_choice("scheduler", scheduler, tuple(schedule.SCHEDULERS))
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < math.inf:
            raise ValueError(f"tolerance must be a finite float >= 0, got {tolerance!r}")
        _check_int("patience", patience, 1)
        _check_choice("on_jump", on_jump, jump.ON_JUMP)
        if scheduler == "adaptive" and (criterion == "reference" or history_after_jump != "optimizer"):
            raise ValueError(
                "scheduler='adaptive' rolls back to the optimizer's weights held in the history: it needs "
                f"history_after_jump='optimizer' and a criterion other than 'reference', got {history_after_jump!r}, "
                f"{criterion!r}"
            )
        if scheduler != "fixed" and every_n_steps is not None:
            raise ValueError(
                f"scheduler={scheduler!r} needs step(loss=...), which step mode (every_n_steps) calls without a loss; "
                "use scheduler='fixed'"
            )
        if not hasattr(optimizer, "param_groups"):
            raise ValueError(f"optimizer must expose param_groups, got {type(optimizer).__name__}")

        self.optimizer = optimizer
        self.config: dict[str, Any] = dict(
            history=history,
            horizon=horizon,
            start_epoch=start_epoch,
            interval=interval,
            criterion=criterion,
            forecast=forecast,
            modes=modes,
            rank=rank,
            rtol=rtol,
            history_after_jump=history_after_jump,
            random_ratio=random_ratio,
            seed=seed,
            storage=storage,
            every_n_steps=every_n_steps,
            scheduler=scheduler,
            tolerance=tolerance,
            patience=patience,
            on_jump=on_jump,
        )
        self.schedule = schedule.make(scheduler, horizon, interval, tolerance, patience)
        self.chunk_size = chunk_size
        self.names, self.params = self._collect(optimizer, model)
        if not self.params:
            raise ValueError("optimizer has no trainable parameters for PDT (all frozen or opted out)")
        self.numel = sum(p.numel() for p in self.params)
        # Snapshots hold what this process updates: the local shards of sharded parameters.
        self._history = SnapshotHistory(
            self._flat_params(), history, storage, chunk_size
        )  # fails early on a bad layout
        if scheduler == "adaptive" and not self._history.exact:
            raise ValueError(
                f"scheduler='adaptive' restores weights from the snapshots, which storage={storage!r} rounds; "
                "use storage='same' or 'cpu'"
            )
        self._start_of_epoch = criterion == "reference"
        self._generators: dict[torch.device, torch.Generator] = {}
        self.epoch = 0
        self.plain_epochs = 0
        self.last_stats: dict[str, Any] = {}
        self._warned_untouched = False
        self.optimizer_steps = 0
        self._step_hook = None
        if every_n_steps is not None:
            self._step_hook = optimizer.register_step_post_hook(self._after_optimizer_step)
        if self._start_of_epoch:
            self._snapshot()

    @staticmethod
    def _collect(optimizer: torch.optim.Optimizer, model: nn.Module | None) -> tuple[list[str], list[Tensor]]:
        known = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        names: list[str] = []
        params: list[Tensor] = []
        seen: set[int] = set()
        for g, group in enumerate(optimizer.param_groups):
            if not group.get("pdt", True):
                continue
            group_names = group.get("param_names")
            for j, p in enumerate(group["params"]):
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                params.append(p)
                names.append(known.get(id(p)) or (group_names[j] if group_names else f"group{g}.param{j}"))
        return names, params

    def _flat_params(self) -> list[Tensor]:
        """1-D views of the (local shards of the) parameters in memory order (channels-last included)."""
        flats = []
        for name, p in zip(self.names, map(local_shard, self.params)):
            flat = flat_view(p)
            if flat is None:
                raise ValueError(f"parameter {name} is not dense in memory; PDT cannot update it in place")
            flats.append(flat)
        return flats

    def _check_parameters_unchanged(self) -> None:
        # Snapshots have a fixed layout: a parameter added (add_param_group) or unfrozen
        # mid-run has no history, and one removed would leave stale rows.
        _, now = self._collect(self.optimizer, None)
        if [id(p) for p in now] != [id(p) for p in self.params]:
            raise ValueError(
                f"the optimizer's trainable parameters changed since PDT was created ({len(self.params)} -> "
                f"{len(now)} tensors: add_param_group or requires_grad changed); give a new group "
                '{"pdt": False} to leave it out of PDT, or create a new PDT'
            )

    def _loss_value(self, loss: float | Tensor | None) -> float | None:
        if loss is None:
            if self.schedule.needs_loss:
                raise ValueError(f"loss is required: scheduler={self.schedule.name!r} needs step(loss=...)")
            return None
        if isinstance(loss, Tensor) and loss.numel() == 1 and not loss.is_complex():
            return float(loss.detach())
        if isinstance(loss, (int, float)) and not isinstance(loss, bool):
            return float(loss)
        raise ValueError(f"loss must be a real number or a one-element real tensor, got {loss!r}")

    @property
    def snapshot_bytes(self) -> int:
        """Memory held by the snapshot history."""
        return self._history.nbytes

    def _snapshot(self) -> None:
        """Push the current parameters; a sharded subclass turns a failure here into a skip on all ranks."""
        self._history.push(self._flat_params())

    def detach(self) -> None:
        """Stop stepping with the optimizer (step mode's hook is removed); a no-op in epoch mode."""
        if self._step_hook is not None:
            self._step_hook.remove()
            self._step_hook = None

    def _agreement(self) -> dict[str, Any]:
        """The settings that every rank of a distributed run must share (compared by DistributedPDT)."""
        return dict(self.config)

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """The optimizer's step post-hook in step mode: :meth:`step` after every K-th optimizer step."""
        self.optimizer_steps += 1
        if self.optimizer_steps % self.config["every_n_steps"] == 0:
            self.step()

    def _due(self) -> bool:
        return self.epoch >= self.config["start_epoch"] and self.plain_epochs >= self.schedule.interval

    def step(self, loss: float | Tensor | None = None, *, predict: bool = True) -> dict[str, Any]:
        """Call once at the end of every epoch, after the optimizer's (and LR scheduler's) steps.

        Args:
            loss: the loss of the epoch that just ended (mean training loss, or a held-out
                loss of the weights the optimizer reached); required by the ``"reference"``
                and ``"adaptive"`` schedulers, ignored by ``"fixed"``.
            predict: with ``False`` the snapshot is still taken (and the scheduler still sees
                the loss) but no prediction runs (the epoch counts as a plain one): a caller's
                own rule can switch PDT off and on.

        Returns the statistics of this epoch (also kept in :attr:`last_stats`): ``epoch``,
        ``predicted``, ``reason`` (why no prediction ran, else ``None``), ``accepted_ratio``,
        ``accepted`` and ``numel``, ``rejected`` (counts per check: ``consistency``,
        ``lower_bound``, ``upper_bound``, ``nonfinite``), ``accepted_ratio_per_param`` (by
        name), ``eigenvalues`` (complex), ``rank``; with ``criterion="random"`` also the
        ``random_ratio`` used; ``schedule`` (the scheduler's :class:`~torch_pdt.schedule.Decision`
        as a dict: verdict, horizon and interval from now on), ``rolled_back`` and the running
        count ``rollbacks``; with ``on_jump`` other than ``"keep"``, the optimizer state keys
        left untouched (``optimizer_state_untouched``).

        Raises:
            ValueError: on a missing or non-numeric ``loss``, or when the optimizer's
                trainable parameters changed since construction.
        """
        self._check_parameters_unchanged()
        value = self._loss_value(loss)
        decision = self.schedule.observe(value)
        stats: dict[str, Any] = {
            "epoch": self.epoch,
            "predicted": False,
            "reason": None,
            "accepted_ratio": 0.0,
            "rolled_back": decision.rollback,
        }
        if decision.rollback:
            self._roll_back(decision)
            stats["reason"] = "rolled back"
        else:
            if not self._start_of_epoch:
                self._snapshot()
            if not predict:
                stats["reason"] = "disabled by the caller"
            elif not self._due():
                stats["reason"] = "warm-up" if self.epoch < self.config["start_epoch"] else "interval"
            elif len(self._history) < self.config["history"]:
                stats["reason"] = f"insufficient history ({len(self._history)} of {self.config['history']} snapshots)"
            else:
                stats.update(self._predict())
        stats["schedule"] = decision.as_dict()
        stats["rollbacks"] = self.schedule.rollbacks

        if stats["predicted"] or decision.rollback:
            self.plain_epochs = 0
        else:
            self.plain_epochs += 1
        if stats["predicted"] and stats["accepted"]:
            self.schedule.predicted(value)
        if self._start_of_epoch:
            self._snapshot()
        elif stats["predicted"] and stats["accepted"] and self.config["history_after_jump"] == "assembled":
            self._history.replace_newest(self._flat_params())
        self.epoch += 1
        self.last_stats = stats
        return stats

    def _roll_back(self, decision: schedule.Decision) -> None:
        """Restore the optimizer's weights from before the last prediction; zero the velocities.

        The newest snapshot is the optimizer's result of the prediction's epoch (the adaptive
        scheduler requires ``history_after_jump="optimizer"``), so no copy of the weights is
        kept for this. The epoch trained since the prediction is discarded, and so are the
        velocities it accumulated on weights that no longer exist.
        """
        self._history.copy_newest_to(self._flat_params())
        velocities, _ = jump.velocity_buffers(self.optimizer, self.params)
        with torch.no_grad():
            for flat in (v for vs in velocities for v in vs):
                flat.zero_()
        logger.warning(
            "PDT rolled back the prediction made after epoch %d: loss %.6g against %.6g before it; "
            "horizon now %d, interval %d",
            self.epoch - 1,
            decision.loss,
            decision.reference_loss,
            decision.horizon,
            decision.interval,
        )

    def _predict(self) -> dict[str, Any]:
        cfg = self.config
        m = len(self._history)
        passes = [1]  # the first Gram pass is the history's incremental Gram
        second_pass = self._history.gram_of(self.chunk_size)

        def gram_of(W: Tensor) -> Tensor:
            passes[0] += 1
            return self._reduce_gram(second_pass(W))

        try:
            R, W = dmd.orthogonal_factor(
                gram_of, m, gram=self._reduce_gram(self._history.gram()), resolution=self._history.resolution
            )
            fit = dmd.fit_factor(
                R,
                W,
                basis=dmd.consecutive_basis(m),
                exact=cfg["modes"] == "exact",
                rank=cfg["rank"],
                rtol=cfg["rtol"],
            )
        except dmd.DMDError as e:
            return {"reason": f"decomposition failed: {e}", "gram_passes": passes[0]}
        tau = self.schedule.horizon
        # Predicted displacement from the newest snapshot after k steps is S @ coef[:, k-1].
        coef = fit.coefficients(range(1, tau + 1), cfg["forecast"])
        coef[-1] -= 1.0
        if not torch.isfinite(coef).all():
            return {"reason": "decomposition failed: non-finite forecast", "eigenvalues": fit.eigenvalues.tolist()}
        # Rows 0..tau-1 map snapshots to the predicted steps k = 1..tau; the last row to their sum.
        steps = torch.diff(coef.T, dim=0, prepend=torch.zeros(1, coef.shape[0], dtype=coef.dtype))
        steps = torch.cat([steps, coef[:, -1:].T])

        criterion = cfg["criterion"]
        ratio = cfg["random_ratio"]
        if criterion == _RANDOM and ratio == "measured":
            measured = self._pass(steps, "pdt", write=False)
            ratio = measured["accepted"] / self.numel
        result = self._pass(steps, criterion, write=True, ratio=ratio)
        if criterion == _RANDOM:
            result["random_ratio"] = ratio
        result.update(
            horizon=tau,
            predicted=True,
            accepted_ratio=result["accepted"] / self.numel,
            eigenvalues=fit.eigenvalues.tolist(),
            rank=fit.rank,
            gram_passes=passes[0],
        )
        return result

    def _reduce_gram(self, gram: Tensor) -> Tensor:
        """The Gram matrix of the whole model from this process's; a sharded subclass sums the ranks'."""
        return gram

    def _reduce_counts(self, counts: Tensor) -> Tensor:
        """Statistics (int64 counts) of the whole model from this process's; a sharded subclass sums them."""
        return counts

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.config["seed"])
        return self._generators[device]

    def _pass(self, steps: Tensor, criterion: str, write: bool, ratio: float = 0.0) -> dict[str, Any]:
        r"""One chunked pass over the snapshots: predict, mask, and (if ``write``) assemble.

        ``steps`` (``(tau + 1) x h``, snapshots oldest first) maps the snapshots to the ``tau``
        predicted steps and, in its last row, to the displacement. Per chunk the work is a
        handful of whole-chunk operations in the parameters' precision (float32 for float32,
        bfloat16 and float16 parameters, float64 for float64 ones):

        * :math:`X_j = s_j - s_{last}` for every row but the newest, which holds
          :math:`s_{last}` itself. For float32 snapshots these differences are exact
          (Sterbenz) wherever two snapshots are within a factor 2 of each other, and every
          predicted quantity is a small combination of them, so its rounding is a few units
          of the float32 rounding of the *displacement*, far below that of the weight. The
          snapshots themselves are never combined in float32: their rounding would be that
          of the weight times the size of the coefficients.
        * one matrix product gives every step and the displacement;
        * the consistency test of Eq. 7 needs only the smallest and largest step;
        * the paper's :math:`\Delta = s_{last} - s_{prev} = -X_{prev}` is free: the mask is
          invariant under flipping the sign of steps, displacement and :math:`\Delta`
          together, so the product is taken with ``-steps`` and compared with
          :math:`X_{prev}` as it is.

        Statistics accumulate on device; the only host transfer is at the end.
        """
        tau = self.schedule.horizon
        on_jump = self.config["on_jump"] if write else "keep"
        velocities, untouched = jump.velocity_buffers(self.optimizer, self.params) if on_jump != "keep" else ([], set())
        if untouched and not self._warned_untouched:
            self._warned_untouched = True
            logger.warning("PDT on_jump=%r leaves unknown optimizer state %s unchanged", on_jump, sorted(untouched))
        history = self._history
        rows = history.rows()
        last, prev = rows[-1], rows[-2]
        mirrored = not self._start_of_epoch
        # Coefficients in storage order; the newest row of X holds s_last, so its column takes
        # the sum of all coefficients: S c = sum_{j != last} c_j X_j + (sum_j c_j) s_last.
        coef = torch.zeros(steps.shape[0], history.capacity, dtype=torch.float64)
        coef[:, rows] = -steps if mirrored else steps
        coef[:, last] = coef.sum(1)
        # The newest snapshot is w_opt exactly unless the storage rounds it.
        origin_is_param = not history.exact and mirrored
        accepted = [torch.zeros((), dtype=torch.int64, device=p.device) for p in self.params]
        applied: set[str] = set()  # the checks the criterion makes
        counts: dict[torch.device, Tensor] = {}
        work: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        size = min(self.chunk_size, max(p.numel() for p in self.params))
        with torch.no_grad():
            flats = self._flat_params()
            for i, start, V in history.views(self.chunk_size):
                p = self.params[i]
                flat = flats[i][start : start + V.shape[1]]
                device, dtype = p.device, torch.float64 if p.dtype == torch.float64 else torch.float32
                if (device, dtype) not in work:
                    work[device, dtype] = (
                        coef.to(device=device, dtype=dtype),
                        torch.empty(history.capacity, size, dtype=dtype, device=device),
                        torch.empty(tau + 1, size, dtype=dtype, device=device),
                        torch.empty(size, dtype=dtype, device=device),
                    )
                if device not in counts:
                    counts[device] = torch.zeros(len(CHECKS) + 1, dtype=torch.int64, device=device)
                C, Xbuf, Mbuf, Abuf = work[device, dtype]
                c = V.shape[1]
                X, M, anchor = Xbuf[:, :c], Mbuf[:, :c], Abuf[:c]
                V = V.to(device, non_blocking=True)
                anchor.copy_(V[last])
                if V.dtype == dtype:
                    torch.sub(V, anchor, out=X)
                else:
                    X.copy_(V)
                    X.sub_(anchor)
                X[last].copy_(anchor)
                torch.mm(C, X, out=M)
                displacement = M[tau]
                if self._start_of_epoch:
                    delta = torch.sub(flat, anchor) if flat.dtype == dtype else flat.to(dtype) - anchor
                else:
                    delta = X[prev]  # -(s_last - s_prev), matching the mirrored coefficients
                if criterion == _RANDOM:
                    keep = torch.rand(flat.shape, generator=self._generator(device), device=device) < ratio
                    passed = {}
                else:
                    low, high = extremes(M[:tau]) if criterion in NEEDS_STEPS else (None, None)
                    passed = CRITERIA[criterion](low, high, displacement, delta, tau)
                    applied.update(passed)
                origin = anchor
                if origin_is_param:
                    origin = flat if flat.dtype == dtype else flat.to(dtype)
                new = torch.sub(origin, displacement, out=displacement) if mirrored else displacement.add_(origin)
                accept = new.abs() < math.inf  # finite (NaN fails too); 2.5x faster than isfinite on CPU
                tally = counts[device]
                tally[-1] += torch.count_nonzero(accept)
                if criterion == _RANDOM:
                    accept &= keep
                for k, check in enumerate(CHECKS):
                    if check in passed:
                        tally[k] += torch.count_nonzero(passed[check])
                        accept &= passed[check]
                accepted[i] += torch.count_nonzero(accept)
                if write:
                    if flat.dtype == dtype:
                        torch.where(accept, new, flat, out=flat)
                    else:
                        flat.copy_(torch.where(accept, new.to(flat.dtype), flat))
                if on_jump != "keep":
                    # M[tau - 1] is the last predicted step and delta the optimizer's (both
                    # negated when mirrored): their ratio is the same either way.
                    factor = 0.0 if on_jump == "reset" else jump.velocity_ratio(M[tau - 1], delta)
                    jump.scale(velocities[i], start, start + c, accept, factor)
        # Counts so far are of elements passing; every check saw every element.
        passing = sum((t.cpu() for t in counts.values()), torch.zeros(len(CHECKS) + 1, dtype=torch.int64))
        both = self._reduce_counts(torch.cat([torch.stack([a.cpu() for a in accepted]), passing])).tolist()
        per_param, totals = both[: len(accepted)], both[len(accepted) :]
        rejected = {c: self.numel - n if c in applied else 0 for c, n in zip(CHECKS, totals)}
        rejected["nonfinite"] = self.numel - totals[-1]
        stats: dict[str, Any] = {"optimizer_state_untouched": sorted(untouched)} if on_jump != "keep" else {}
        return stats | {
            "accepted": sum(per_param),
            "numel": self.numel,
            "rejected": rejected,
            "accepted_ratio_per_param": {n: a / p.numel() for n, a, p in zip(self.names, per_param, self.params)},
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: configuration, counters, scheduler, snapshots, RNG states."""
        return {
            "config": dict(self.config),
            "epoch": self.epoch,
            "plain_epochs": self.plain_epochs,
            "optimizer_steps": self.optimizer_steps,
            "schedule": self.schedule.state_dict(),
            "history": self._history.state_dict(),
            "generators": {str(d): g.get_state() for d, g in self._generators.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; raises ``ValueError`` (changing nothing) on a mismatch."""
        keys = {"config", "epoch", "plain_epochs", "optimizer_steps", "schedule", "history", "generators"}
        missing = keys - set(state_dict)
        if missing:
            raise ValueError(f"not a PDT state: missing {sorted(missing)}")
        saved = state_dict["config"]
        diff = {k: (saved.get(k), v) for k, v in self.config.items() if saved.get(k) != v}
        if diff:
            raise ValueError(
                "PDT state was saved with another configuration: "
                + ", ".join(f"{k}={s!r} (saved) vs {c!r} (now)" for k, (s, c) in diff.items())
            )
        # Build every part aside first; the history validates before it copies. Only then commit.
        cfg = self.config
        restored = schedule.make(cfg["scheduler"], cfg["horizon"], cfg["interval"], cfg["tolerance"], cfg["patience"])
        restored.load_state_dict(state_dict["schedule"])
        generators = {}
        for device, rng_state in state_dict["generators"].items():
            generators[torch.device(device)] = torch.Generator(device=device)
            try:
                generators[torch.device(device)].set_state(rng_state)
            except (RuntimeError, TypeError) as e:
                raise ValueError(f"saved random generator state for {device} is invalid: {e}") from e
        self._history.load_state_dict(state_dict["history"])
        self.schedule = restored
        self.epoch = int(state_dict["epoch"])
        self.plain_epochs = int(state_dict["plain_epochs"])
        self.optimizer_steps = int(state_dict["optimizer_steps"])
        self._generators = generators
