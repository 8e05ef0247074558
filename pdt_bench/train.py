"""One benchmark run: train a task with one method and one seed, epoch by epoch.

The clock counts the training epochs and every PDT step and stops while evaluating. After each
epoch (and its PDT step) the run measures, off the clock, the full-pass training loss on a
fixed subset of the training set, and the validation loss and accuracy.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from torch_pdt import PDT, recompute_batch_norm
from torch_pdt.batchnorm import has_batch_norm

from . import memory, peers, tasks
from .methods import STEP_SCHEDULES, Method, make_optimizer, make_schedule, parse_method
from .records import Epoch, Run

__all__ = ["RunConfig", "pdt_flops_per_prediction", "run"]

TRAIN_EVAL_SAMPLES = 10_000
"""Training-loss evaluation uses at most this many training samples (a fixed subset)."""
EVAL_BATCH = 256
"""Evaluation batch size: on one CPU thread the CIFAR FCN evaluated 2x faster in batches of 256 than
of 1,024 (activations that fit in cache); results differ only by float rounding."""


@dataclass
class RunConfig:
    """Everything that defines a run; ``None`` takes the task's default."""

    task: str
    method: str
    seed: int = 0
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    schedule: str | None = None
    eta_min: float | None = None
    weight_decay: float | None = None
    non_iid: bool = False
    """Every batch from one class, in random batch order (paper App. A.8)."""
    history: int = 5
    horizon: int = 5
    start_epoch: int = 5
    interval: int = 1
    pdt_options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of :class:`torch_pdt.PDT` (``--pdt KEY=VALUE``)."""
    device: str = "cpu"
    threads: int | None = None
    mask_epoch: int | None = None
    """Record which elements PDT accepted at this epoch (for the mask heatmap)."""
    task_options: tasks.TaskOptions = field(default_factory=tasks.TaskOptions)

    DEFAULT_EPOCHS = 60

    def resolved(self, task: tasks.Task) -> RunConfig:
        """A copy with every ``None`` replaced by the task's default."""
        d = dict(
            epochs=self.DEFAULT_EPOCHS,
            lr=0.05,
            batch_size=128,
            optimizer="sgd",
            schedule="cosine",
            eta_min=0.0,
            weight_decay=0.0,
        )
        d |= task.defaults
        values = {k: getattr(self, k) if getattr(self, k) is not None else d[k] for k in d}
        return RunConfig(**(asdict(self) | values | {"task_options": self.task_options}))


def _batches(y: Tensor, batch_size: int, non_iid: bool, num_classes: int, generator: torch.Generator) -> list[Tensor]:
    """Index batches of one epoch. Partial batches are dropped: one small batch through a BatchNorm
    layer can undo much of an epoch (seen on the CIFAR FCN), which no method should be credited for.
    """
    if not non_iid:
        batches = list(torch.randperm(len(y), generator=generator).split(batch_size))
    else:
        batches = []
        for c in range(num_classes):
            idx = (y == c).nonzero().squeeze(1)
            batches += list(idx[torch.randperm(len(idx), generator=generator)].split(batch_size))
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
    full = [b for b in batches if len(b) == batch_size]
    return full or batches  # a dataset smaller than one batch still trains


def _inputs(task: tasks.Task, x: Tensor, train: bool, device: torch.device) -> Tensor:
    x = x.to(device)
    return task.prepare(x, train) if task.prepare is not None else x


def _loss(task: tasks.Task, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The task's training objective on one prepared batch (cross-entropy, with the task's label smoothing,
    unless the task has its own)."""
    if task.loss is not None:
        return task.loss(model, x, y)
    return nn.functional.cross_entropy(model(x), y, label_smoothing=task.label_smoothing)


@torch.no_grad()
def _bn_batches(task: tasks.Task, batches: list[Tensor], model: nn.Module, device: torch.device) -> list[Tensor]:
    """The first :data:`~pdt_bench.peers.BN_BATCHES` of the epoch's batches, prepared, where the model has
    BatchNorm (else none: nothing to recompute)."""
    if not has_batch_norm(model):
        return []
    return [_inputs(task, task.x_train[idx], True, device) for idx in batches[: peers.BN_BATCHES]]


def _evaluate(model: nn.Module, task: tasks.Task, x: Tensor, y: Tensor, device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy over ``(x, y)`` in eval mode.

    Classification: cross-entropy and accuracy without augmentation. A task with its own loss
    (self-supervised) is scored by that loss on augmented views drawn with a fixed seed, so every
    evaluation sees the same views; it has no accuracy here (NaN).
    """
    model.eval()
    loss, correct = 0.0, 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for idx in torch.arange(len(y)).split(EVAL_BATCH):
            target = y[idx].to(device)
            if task.loss is not None:
                loss += task.loss(model, _inputs(task, x[idx], True, device), target).item() * len(idx)
                continue
            out = model(_inputs(task, x[idx], False, device))
            loss += nn.functional.cross_entropy(out, target, reduction="sum").item()
            correct += (out.argmax(1) == target).sum().item()
    model.train()
    return loss / len(y), (math.nan if task.loss is not None else correct / len(y))


def _validate(model: nn.Module, task: tasks.Task, device: torch.device) -> tuple[float, float]:
    """Validation loss and accuracy: the task's own evaluation (e.g. a kNN probe) when it has one."""
    if task.evaluate is not None:
        result = task.evaluate(model)
        return result["loss"], result["accuracy"]
    return _evaluate(model, task, task.x_val, task.y_val, device)


def _train_flops(model: nn.Module, task: tasks.Task, batch_size: int, device: torch.device) -> int:
    """FLOPs of one training step (forward and backward) on one batch; ``model`` is left with gradients."""
    x = _inputs(task, task.x_train[:batch_size], True, device)
    with FlopCounterMode(display=False) as counter:
        _loss(task, model, x, task.y_train[:batch_size].to(device)).backward()
    return counter.get_total_flops()


def pdt_flops_per_prediction(numel: int, history: int, horizon: int) -> int:
    r"""Floating-point operations of one PDT prediction on ``numel`` parameters, counted analytically.

    Gram passes :math:`2 N h^2` (two of them, :math:`h(h+1)/2` distinct products each, counted as
    :math:`h^2`); forecasting every step :math:`k \le \tau` and the displacement:
    :math:`2 N h (\tau + 1)`; the criteria and the assembly: about :math:`6 N \tau`. The ``h x h``
    algebra is negligible.
    """
    return 2 * 2 * numel * history**2 + 2 * numel * history * (horizon + 1) + 6 * numel * horizon


def _param_types(model: nn.Module) -> dict[str, str]:
    types = {}
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            types[f"{module_name}.{name}" if module_name else name] = type(module).__name__
    return types


def _matrix_views(pdt: PDT) -> dict[str, Tensor]:
    return {n: p.detach().reshape(p.shape[0], -1) for n, p in zip(pdt.names, pdt.params) if p.dim() >= 2}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(
    config: RunConfig,
    out_dir: Path | None = None,
    on_epoch: Callable[[Epoch, int], None] | None = None,
    on_weights: Callable[[int, nn.Module], None] | None = None,
) -> Run:
    """Train ``config.task`` with ``config.method``; return the :class:`~pdt_bench.records.Run`.

    With ``out_dir``, also save the accepted-element masks at ``config.mask_epoch`` to
    ``out_dir/masks/<method>-seed<seed>.pt``. ``on_epoch(row, epochs)`` is called after every
    epoch with its record and the run's number of epochs (progress display). ``on_weights(epoch,
    model)`` is called off the clock with the evaluated model before training (epoch 0) and after
    each epoch's PDT step (the weight trajectories of ``pdt-bench landscape``).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    task = tasks.build(config.task, config.task_options)
    cfg = config.resolved(task)
    method: Method = parse_method(cfg.method)
    peers.check_method(method, cfg.optimizer, cfg.pdt_options)
    device = torch.device(cfg.device)
    # Schedule-free's own default rate is a multiple of the task's; @lrx scales that default.
    sf_scale = peers.SCHEDULE_FREE_LR_SCALE.get(cfg.optimizer, 1.0) if method.schedule_free else 1.0
    lr = method.learning_rate(cfg.lr * sf_scale)

    torch.manual_seed(cfg.seed)
    model = task.model().to(device)
    # Counted on a copy, with the RNG restored after: training starts from the same weights,
    # normalisation statistics and random stream as if nothing had been measured.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model_flops = _train_flops(copy.deepcopy(model), task, cfg.batch_size, device)
    epochs_total = method.epochs or cfg.epochs
    steps_per_epoch = max(1, len(task.y_train) // cfg.batch_size)  # partial batches are dropped
    if method.schedule_free:
        opt = peers.schedule_free_optimizer(
            cfg.optimizer, model.parameters(), lr, cfg.weight_decay, warmup_steps=steps_per_epoch
        )
        schedule = None
    else:
        opt = make_optimizer(cfg.optimizer, model, lr, cfg.weight_decay, lookahead=method.lookahead)
        schedule = make_schedule(cfg.schedule, opt, epochs_total, cfg.eta_min, steps_per_epoch)
    step_schedule = schedule is not None and cfg.schedule in STEP_SCHEDULES
    pdt = None
    if method.pdt is not None:
        kwargs = dict(history=cfg.history, horizon=cfg.horizon, start_epoch=cfg.start_epoch, interval=cfg.interval)
        pdt = PDT(opt, **(kwargs | method.pdt | cfg.pdt_options | {"seed": cfg.seed}), model=model)
    averaged = None
    if method.ema_decay is not None:
        ema = torch.optim.swa_utils.get_ema_multi_avg_fn(method.ema_decay)
        averaged = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema, use_buffers=True)
    lawa = peers.LAWA(model, method.lawa) if method.lawa is not None else None
    evaluated = averaged.module if averaged is not None else lawa.module if lawa is not None else model
    order = torch.Generator().manual_seed(cfg.seed)
    n_eval = min(len(task.y_train), TRAIN_EVAL_SAMPLES)
    x_eval, y_eval = task.x_train[:n_eval], task.y_train[:n_eval]
    if device.type == "cuda":  # on CPU, the run's own process holds nothing else
        memory.reset_peak(device)

    if on_weights is not None:
        on_weights(0, evaluated)
    rows: list[Epoch] = []
    clock = 0.0
    diverged = False
    for epoch in range(1, epochs_total + 1):
        _sync(device)
        start = time.perf_counter()
        if method.schedule_free:
            opt.train()
        batch_losses = []
        batches = _batches(task.y_train, cfg.batch_size, cfg.non_iid, task.num_classes, order)
        for idx in batches:
            x = _inputs(task, task.x_train[idx], True, device)
            loss = _loss(task, model, x, task.y_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if averaged is not None:
                averaged.update_parameters(model)
            if step_schedule:
                schedule.step()
            batch_losses.append(loss.detach())
        if schedule is not None and not step_schedule:
            schedule.step()
        if method.schedule_free and method.point == "eval":
            opt.eval()  # PDT then snapshots and moves x (peers: PDT on schedule-free)
        _sync(device)
        clock += time.perf_counter() - start

        stats = None
        pdt_time = 0.0
        if pdt is not None:
            before = {n: t.clone() for n, t in _matrix_views(pdt).items()} if epoch == cfg.mask_epoch else None
            predict = not method.switch_by_val_loss or (len(rows) >= 2 and rows[-1]["val_loss"] < rows[-2]["val_loss"])
            _sync(device)
            start = time.perf_counter()
            stats = pdt.step(loss=torch.stack(batch_losses).mean(), predict=predict)
            if method.fresh_batch_norm and stats["accepted"]:
                recompute_batch_norm(model, _bn_batches(task, batches, model, device))
            _sync(device)
            pdt_time = time.perf_counter() - start
            clock += pdt_time
            if before is not None and out_dir is not None:
                masks = {n: (t != before[n]).cpu() for n, t in _matrix_views(pdt).items()}
                (out_dir / "masks").mkdir(parents=True, exist_ok=True)
                torch.save({"epoch": epoch, "masks": masks}, out_dir / "masks" / f"{cfg.method}-seed{cfg.seed}.pt")

        # The end of the epoch, after PDT's step: the weights to evaluate (on the clock, the methods' work).
        start = time.perf_counter()
        if method.schedule_free:
            if method.point != "eval":
                opt.eval()
            recompute_batch_norm(model, _bn_batches(task, batches, model, device))
        if lawa is not None:
            lawa.update(model)
        _sync(device)
        clock += time.perf_counter() - start

        start = time.perf_counter()
        train_loss, train_acc = _evaluate(evaluated, task, x_eval, y_eval, device)
        val_loss, val_acc = _validate(evaluated, task, device)
        rows.append(
            Epoch(
                epoch=epoch,
                train_time=clock,
                pdt_time=pdt_time,
                eval_time=time.perf_counter() - start,
                train_loss=train_loss,
                batch_loss=torch.stack(batch_losses).mean().item(),
                train_acc=train_acc,
                val_loss=val_loss,
                val_acc=val_acc,
                lr=opt.param_groups[0]["lr"],
                pdt=stats,
            )
        )
        if on_weights is not None:
            on_weights(epoch, evaluated)
        if on_epoch is not None:
            on_epoch(rows[-1], epochs_total)
        if not math.isfinite(train_loss):
            diverged = True
            break

    numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    overhead = {
        "numel": numel,
        "model_flops_per_step": model_flops,
        "model_flops_per_epoch": model_flops * steps_per_epoch,
        "pdt_flops_per_prediction": pdt_flops_per_prediction(numel, cfg.history, cfg.horizon) if pdt else 0,
        "predictions": sum(1 for r in rows if r["pdt"] and r["pdt"]["predicted"]),
        "pdt_time": sum(r["pdt_time"] for r in rows),
        "snapshot_bytes": pdt.snapshot_bytes if pdt else 0,
        "peak_memory_bytes": memory.peak(device),
        "peak_memory_kind": memory.kind(device),
    }
    run_config = asdict(cfg) | {
        "task_options": {k: str(v) for k, v in asdict(cfg.task_options).items()},
        "lr": lr,
        "epochs": epochs_total,
    }
    return Run(
        task=cfg.task,
        method=cfg.method,
        seed=cfg.seed,
        config=run_config | {"task_description": task.description},
        epochs=rows,
        param_types=_param_types(model),
        overhead=overhead,
        diverged=diverged,
    )
