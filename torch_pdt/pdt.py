"""The PDT plug-in: epoch-level DMD prediction beside any ``torch.optim`` optimizer."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import dmd
from .criteria import CRITERIA, Verdict, evaluate
from .snapshots import SnapshotHistory

__all__ = ["PDT"]

_RANDOM = "random"
_HISTORY_AFTER_JUMP = ("optimizer", "assembled")
_MODES = ("projected", "exact")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


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
        chunk_size: elements per chunk of the prediction pass (bounds the working memory).
        model: optional module, used only to name parameters in the statistics.

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
        model: nn.Module | None = None,
    ) -> None:
        _check_int("history", history, 2)
        _check_int("horizon", horizon, 1)
        _check_int("start_epoch", start_epoch, 0)
        _check_int("interval", interval, 0)
        _check_int("chunk_size", chunk_size, 1)
        _check_int("seed", seed, 0)
        _check_choice("criterion", criterion, (*CRITERIA, _RANDOM))
        if forecast is None:
            forecast = "increment" if criterion == "reference" else "paper"
        _check_choice("forecast", forecast, dmd.FORECASTS)
        _check_choice("modes", modes, _MODES)
        _check_choice("history_after_jump", history_after_jump, _HISTORY_AFTER_JUMP)
        if random_ratio != "measured" and (
            isinstance(random_ratio, bool)
            or not isinstance(random_ratio, (int, float))
            or not 0.0 <= random_ratio <= 1.0
        ):
            raise ValueError(f"random_ratio must be 'measured' or a float in [0, 1], got {random_ratio!r}")
        dmd.validate_options(modes == "exact", rank, rtol)
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
        )
        self.chunk_size = chunk_size
        self.names, self.params = self._collect(optimizer, model)
        if not self.params:
            raise ValueError("optimizer has no trainable parameters for PDT (all frozen or opted out)")
        self.numel = sum(p.numel() for p in self.params)
        self._history = SnapshotHistory(self.params, history)
        self._start_of_epoch = criterion == "reference"
        self._generators: dict[torch.device, torch.Generator] = {}
        self.epoch = 0
        self.plain_epochs = 0
        self.last_stats: dict[str, Any] = {}
        self._flat_params()  # fail early on a layout PDT cannot update in place
        if self._start_of_epoch:
            self._history.push(self._flat_params())

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
        """1-D views of the parameters in memory order (channels-last weights included)."""
        flats = []
        for name, p in zip(self.names, self.params):
            order = sorted(range(p.dim()), key=lambda d: (-p.stride(d), -p.shape[d]))
            dense = p.detach().permute(order)
            if not dense.is_contiguous():
                raise ValueError(f"parameter {name} is not dense in memory; PDT cannot update it in place")
            flats.append(dense.view(-1))
        return flats

    @property
    def snapshot_bytes(self) -> int:
        """Memory held by the snapshot history."""
        return self._history.nbytes

    def _due(self) -> bool:
        return self.epoch >= self.config["start_epoch"] and self.plain_epochs >= self.config["interval"]

    def step(self, *, predict: bool = True) -> dict[str, Any]:
        """Call once at the end of every epoch, after the optimizer's (and scheduler's) steps.

        With ``predict=False`` the snapshot is still taken but no prediction runs (the epoch
        counts as a plain one): a caller's own rule can switch PDT off and on.

        Returns the statistics of this epoch (also kept in :attr:`last_stats`): ``epoch``,
        ``predicted``, ``reason`` (why no prediction ran, else ``None``), ``accepted_ratio``,
        ``accepted`` and ``numel``, ``rejected`` (counts per check: ``consistency``,
        ``lower_bound``, ``upper_bound``, ``nonfinite``), ``accepted_ratio_per_param`` (by
        name), ``eigenvalues`` (complex), ``rank``; with ``criterion="random"`` also the
        ``random_ratio`` used.
        """
        if not self._start_of_epoch:
            self._history.push(self._flat_params())
        stats: dict[str, Any] = {"epoch": self.epoch, "predicted": False, "reason": None, "accepted_ratio": 0.0}
        if not predict:
            stats["reason"] = "disabled by the caller"
        elif not self._due():
            stats["reason"] = "warm-up" if self.epoch < self.config["start_epoch"] else "interval"
        elif len(self._history) < self.config["history"]:
            stats["reason"] = f"insufficient history ({len(self._history)} of {self.config['history']} snapshots)"
        else:
            stats.update(self._predict())

        if stats["predicted"]:
            self.plain_epochs = 0
        else:
            self.plain_epochs += 1
        if self._start_of_epoch:
            self._history.push(self._flat_params())
        elif stats["predicted"] and stats["accepted"] and self.config["history_after_jump"] == "assembled":
            self._history.replace_newest(self._flat_params())
        self.epoch += 1
        self.last_stats = stats
        return stats

    def _predict(self) -> dict[str, Any]:
        cfg = self.config
        try:
            R, W = dmd.orthogonal_factor(self._history.gram_of(self.chunk_size), len(self._history))
            fit = dmd.fit_factor(R, W, exact=cfg["modes"] == "exact", rank=cfg["rank"], rtol=cfg["rtol"])
        except dmd.DMDError as e:
            return {"reason": f"decomposition failed: {e}"}
        tau = cfg["horizon"]
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
            predicted=True,
            accepted_ratio=result["accepted"] / self.numel,
            eigenvalues=fit.eigenvalues.tolist(),
            rank=fit.rank,
        )
        return result

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.config["seed"])
        return self._generators[device]

    def _pass(self, steps: Tensor, criterion: str, write: bool, ratio: float = 0.0) -> dict[str, Any]:
        """One chunked pass over the snapshots: predict, mask, and (if ``write``) assemble."""
        tau = self.config["horizon"]
        accepted = [torch.zeros((), dtype=torch.int64, device=p.device) for p in self.params]
        checks = ("consistency", "lower_bound", "upper_bound", "nonfinite")
        rejected = {c: torch.zeros((), dtype=torch.int64, device=self.params[0].device) for c in checks}
        steps_on: dict[torch.device, Tensor] = {}
        with torch.no_grad():
            flats = self._flat_params()
            for i, start, S in self._history.chunks(self.chunk_size):
                p = self.params[i]
                flat = flats[i][start : start + S.shape[1]]
                if p.device not in steps_on:
                    steps_on[p.device] = steps.to(p.device)
                S64 = S.to(torch.float64)
                predicted = steps_on[p.device] @ S64
                increments, displacement = predicted[:-1], predicted[-1]
                origin = S64[-1]
                delta = flat.to(torch.float64) - origin if self._start_of_epoch else origin - S64[-2]
                if criterion == _RANDOM:
                    keep = torch.rand(flat.shape, generator=self._generator(p.device), device=p.device) < ratio
                    verdict = Verdict(keep)
                else:
                    verdict = evaluate(criterion, increments, delta, tau, displacement)
                new = (origin + displacement).to(p.dtype)
                finite = torch.isfinite(new)
                accept = verdict.accept & finite
                accepted[i] += torch.count_nonzero(accept)
                for c in checks[:3]:
                    failed = getattr(verdict, c)
                    if failed is not None:
                        rejected[c] += torch.count_nonzero(failed).to(rejected[c].device)
                rejected["nonfinite"] += torch.count_nonzero(~finite).to(rejected["nonfinite"].device)
                if write:
                    flat.copy_(torch.where(accept, new, flat))
        counts = [int(a) for a in torch.stack([a.cpu() for a in accepted]).tolist()]
        return {
            "accepted": sum(counts),
            "numel": self.numel,
            "rejected": {c: int(v) for c, v in rejected.items()},
            "accepted_ratio_per_param": {n: a / p.numel() for n, a, p in zip(self.names, counts, self.params)},
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: configuration, counters, snapshots, RNG states."""
        return {
            "config": dict(self.config),
            "epoch": self.epoch,
            "plain_epochs": self.plain_epochs,
            "history": self._history.state_dict(),
            "generators": {str(d): g.get_state() for d, g in self._generators.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; raises ``ValueError`` (changing nothing) on a mismatch."""
        saved = state_dict["config"]
        diff = {k: (saved.get(k), v) for k, v in self.config.items() if saved.get(k) != v}
        if diff:
            raise ValueError(
                "PDT state was saved with another configuration: "
                + ", ".join(f"{k}={s!r} (saved) vs {c!r} (now)" for k, (s, c) in diff.items())
            )
        self._history.load_state_dict(state_dict["history"])
        self.epoch = int(state_dict["epoch"])
        self.plain_epochs = int(state_dict["plain_epochs"])
        self._generators = {}
        for device, rng_state in state_dict["generators"].items():
            self._generator(torch.device(device)).set_state(rng_state)
