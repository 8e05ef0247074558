r"""What happens to the optimizer's state when PDT moves a weight: ``on_jump=``.

An accepted prediction moves weight :math:`j` from :math:`w^{opt}_{i,j}` to
:math:`\hat w_{i+\tau,j}`, about :math:`\tau` epochs ahead. The optimizer's *velocity* of that
element (SGD's ``momentum_buffer``, Adam's and AdamW's first moment ``exp_avg``, RMSprop's
``momentum_buffer``) still describes the motion at epoch :math:`i`:

``"keep"``
    leave the optimizer's state alone (the paper, and the authors' code).

``"reset"``
    zero the velocity of the accepted elements, as the authors' SimSiam trainer clears the
    optimizer state.

``"rescale"`` (ours)
    carry the velocity forward with the same dynamics that moved the weight: multiply it by

    .. math::
        r_j = \operatorname{clip}\Bigl(\frac{\hat w_{i+\tau,j} - \hat w_{i+\tau-1,j}}
        {w^{opt}_{i,j} - w^{opt}_{i-1,j}},\ 0,\ 1\Bigr),

    the ratio of the predicted per-epoch step at the landing point to the optimizer's last
    step. For one decaying DMD mode :math:`\lambda` this is :math:`\lambda^\tau`: the
    element lands where the optimizer would be moving :math:`\lambda^\tau` times as fast, so
    its momentum should too. The clip never amplifies a velocity and zeroes one the forecast
    would reverse ("reset" is the special case :math:`r = 0`, "keep" is :math:`r = 1`).

Only velocities are touched. Second moments (``exp_avg_sq``, ``max_exp_avg_sq``,
``square_avg``, RMSprop's ``grad_avg``, Adagrad's ``sum``, Adadelta's ``acc_delta``,
Adamax's ``exp_inf``) and step counts are kept: they estimate the gradient's scale, which a
short jump does not change, and zeroing :math:`v` under a bias correction that has already
reached 1 would make Adam's next step :math:`(1-\beta_1)/\sqrt{1-\beta_2} \approx 3.2` times
larger than usual, and the ones after up to 6.6 times (at step 12, for a steady gradient and
the default betas). Any other state tensor of a
parameter's shape is *left unchanged*, named in the statistics (``optimizer_state_untouched``)
and logged once, so an unknown optimizer runs as with ``"keep"`` for that state.

Example:
    >>> p = torch.nn.Parameter(torch.ones(3))
    >>> opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    >>> p.grad = torch.ones(3); opt.step()
    >>> velocities, untouched = velocity_buffers(opt, [p])
    >>> scale(velocities[0], 0, 3, torch.tensor([True, False, True]), torch.tensor([0.5, 0.5, 0.0]))
    >>> opt.state[p]["momentum_buffer"]
    tensor([0.5000, 1.0000, 0.0000])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import get_args

import torch
from torch import Tensor

from .config import OnJump
from .params import flat_view, local_shard

__all__ = [
    "ON_JUMP",
    "SCALE_KEYS",
    "VELOCITY_KEYS",
    "prepare",
    "scale",
    "updater",
    "velocity_buffers",
    "velocity_ratio",
    "zero_velocities",
]

ON_JUMP = get_args(OnJump)

VELOCITY_KEYS = frozenset({"momentum_buffer", "exp_avg"})
"""State entries holding a per-element velocity: reset or rescaled."""

SCALE_KEYS = frozenset(
    {"exp_avg_sq", "max_exp_avg_sq", "square_avg", "grad_avg", "sum", "acc_delta", "exp_inf", "step", "mu_product"}
)
"""State entries holding a gradient scale or a step count: always kept."""


def velocity_buffers(optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> tuple[list[list[Tensor]], set[str]]:
    """Flat views (in each parameter's memory order) of its velocity buffers, and unknown state keys.

    Under FSDP2 the views are of this rank's shards, like PDT's snapshots.

    Read afresh at each jump: optimizers create their state lazily and ``load_state_dict``
    replaces it.
    """

    views: list[list[Tensor]] = []
    untouched: set[str] = set()
    for p in params:
        mine = []
        for key, value in optimizer.state.get(p, {}).items():
            if not isinstance(value, Tensor) or value.shape != p.shape or key in SCALE_KEYS:
                continue  # SGD without momentum stores momentum_buffer=None; step counts are scalars
            if key not in VELOCITY_KEYS:
                untouched.add(key)
                continue
            # FSDP2: the views are of this rank's shard.
            view = flat_view(local_shard(value), like=local_shard(p)) if value.layout == torch.strided else None
            if view is None:
                raise ValueError(
                    f"optimizer state {key!r} ({value.layout}) is not laid out like its parameter; PDT cannot "
                    "update it: use on_jump='keep'"
                )
            mine.append(view)
        views.append(mine)
    return views, untouched


def zero_velocities(optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> None:
    """Zero every velocity buffer of ``params`` in place, whatever its layout (a rollback's reset)."""
    with torch.no_grad():
        for p in params:
            for key, value in optimizer.state.get(p, {}).items():
                if key in VELOCITY_KEYS and isinstance(value, Tensor) and value.shape == p.shape:
                    value.zero_()


def velocity_ratio(last_predicted_step: Tensor, delta: Tensor) -> Tensor:
    """:math:`r` of ``"rescale"``: predicted step at the landing point over the optimizer's last step, in [0, 1].

    Where both steps are zero the element moves on as it did, and keeps its velocity (:math:`r = 1`:
    ``jump="linear"`` lands every element with the optimizer's own step, which may be zero).
    """
    ratio = torch.where(delta != 0, last_predicted_step / delta, (last_predicted_step == 0).to(delta.dtype))
    # +inf (a same-sign ratio beyond the dtype's range) clips to 1 as a large finite one does.
    return ratio.nan_to_num(0.0, 1.0, 0.0).clamp(0.0, 1.0)


def prepare(
    optimizer: torch.optim.Optimizer, params: Sequence[Tensor], on_jump: str
) -> tuple[Callable[[int, int, Tensor, Tensor, Tensor], None] | None, set[str]]:
    """For one prediction pass: the per-chunk hook (:func:`updater`; ``None`` for ``"keep"``) and
    the unknown state keys it leaves alone."""
    if on_jump == "keep":
        return None, set()
    velocities, untouched = velocity_buffers(optimizer, params)
    return updater(on_jump, velocities), untouched


def updater(on_jump: str, velocities: Sequence[Sequence[Tensor]]) -> Callable[[int, int, Tensor, Tensor, Tensor], None]:
    """The prediction pass's per-chunk hook for ``on_jump`` ``"reset"`` or ``"rescale"``.

    ``velocities`` are :func:`velocity_buffers`' views; the hook scales elements
    ``start:start + c`` of parameter ``i`` where ``accept`` holds, by 0 or by :func:`velocity_ratio`.
    """

    def update(i: int, start: int, accept: Tensor, last_step: Tensor, delta: Tensor) -> None:
        factor = 0.0 if on_jump == "reset" else velocity_ratio(last_step, delta)
        scale(velocities[i], start, start + accept.numel(), accept, factor)

    return update


def scale(buffers: Sequence[Tensor], start: int, stop: int, where: Tensor, factor: Tensor | float) -> None:
    """Multiply elements ``start:stop`` of each flat buffer by ``factor`` where ``where`` holds."""
    with torch.no_grad():
        for flat in buffers:
            part = flat[start:stop]
            scaled = part * torch.as_tensor(factor, dtype=torch.float64, device=part.device)
            part.copy_(torch.where(where, scaled.to(part.dtype), part))
