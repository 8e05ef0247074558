r"""``pdt-bench steps``: PDT in step mode on a small byte-level language model, in optimizer steps.

Does PDT help a run that lasts less than an epoch, stepping every K optimizer steps
(``PDT(..., every_n_steps=K)``) instead of every epoch? Every (method, seed) trains
:class:`ByteGPT`, a causal transformer over bytes (2 pre-LayerNorm blocks, width 64, 4 heads,
context 64), to predict the next byte of the AG News text: title and description of each row of
the CSV, one row per line, the last 10 % of rows held out. A step is one batch of 16 windows of 65
bytes drawn at random from the training text (64 inputs, each predicting the byte after it), in a
fixed order per seed: every method of a seed sees the same batches, from the same initial weights.

Every ``--eval-every`` steps (and after the last) the held-out loss, the mean next-byte
cross-entropy on 8 fixed batches of the held-out text, is measured off the clock. The clock counts
training and PDT's work and stops while evaluating. PDT's own time is measured by optimizer
post-hooks registered just before and just after PDT's own hook, so it holds every call PDT makes
in step mode: counting the step, and after every K-th one the snapshot and the prediction.

PDT methods run with ``every_n_steps`` = K: the method's own (``pdt@every_n_steps=10``), else
``--every``. A PDT "epoch" is K steps: ``history`` (h), ``horizon`` (tau), ``start_epoch`` (T0)
and ``interval`` (Ti) count periods of K steps, by default h = 5, tau = 5, T0 = 5, Ti = 1
(``pdt@horizon=10@interval=0`` changes them). With K = 25 the first prediction comes after step
150, then one every 50 steps.

The figure of merit is the **steps to target**: the first evaluation step whose held-out loss is at
most the best held-out loss of the reference run (``--reference``, the baseline) of the same seed;
the reference's own is the step of its best. **Fewer steps** is ``1 - steps / reference steps``
per seed; a run that never reaches the target counts as infinitely late in medians, as does a run
that diverged (a non-finite loss ends it). The summary also gives the best and final held-out loss,
PDT's mean accepted ratio over its predictions and its share of the clock.

Each run is written to ``OUT/runs/<method>-seed<seed>.json`` when it finishes, then folded into
``OUT/runs.jsonl.xz``; a run whose record holds the same settings is not run again (``--rerun``
forces it), so an interrupted study continues.

Example::

    OMP_NUM_THREADS=1 pdt-bench steps --methods baseline,pdt@every_n_steps=25 --seeds 0,1,2 \
        --optimizer adamw --lr 3e-3 --out results/steps
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from torch_pdt import PDT

from . import plots, report, tasks
from .compare import (
    Report,
    _code_version,
    _float_list,
    _int_list,
    _jobs,
    _non_negative,
    _positive,
    check_pdt,
    execute,
)
from .methods import SCHEDULES, Method, make_optimizer, parse_method, with_lr
from .metrics import by_method, describe
from .records import save_json, stored_config, write_text
from .tasks.agnews import FILE

__all__ = ["ByteGPT", "StepsConfig", "add_command", "load_text", "run", "steps_to_target", "summarize"]

CONTEXT, BATCH, EVAL_BATCHES = 64, 16, 8
HELD_OUT = 0.1
"""The last 10 % of the CSV's rows."""
EVAL_SEED = 12345
"""The held-out batches are the same for every method and seed."""
PDT_DEFAULTS = dict(history=5, horizon=5, start_epoch=5, interval=1)
"""In periods of K steps; a method suffix overrides them."""
_PDT_ONLY = {"name", "pdt", "lr", "lr_scale", "description"}
"""The fields of a :class:`~pdt_bench.methods.Method` that this study honours: PDT's options and the learning rate."""


class Block(nn.Module):
    """Pre-LayerNorm causal self-attention, then a 4x MLP, each added to the residual stream."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class ByteGPT(nn.Module):
    """A causal transformer over bytes: token and position embeddings, blocks, a final LayerNorm and an
    untied linear head to 256 logits."""

    def __init__(self, width: int = 64, heads: int = 4, layers: int = 2, context: int = CONTEXT) -> None:
        super().__init__()
        self.token, self.position = nn.Embedding(256, width), nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(layers)))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, 256, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        # GPT-2's initialisation: PyTorch's default gives the 256-way head logits far from uniform.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: Tensor) -> Tensor:
        x = self.token(idx) + self.position(torch.arange(idx.shape[1], device=idx.device))
        return self.head(self.ln(self.blocks(x)))


@dataclass(frozen=True)
class StepsConfig:
    """Everything that defines one run of the study (its record's ``config``)."""

    method: str
    seed: int
    data: str
    steps: int
    eval_every: int
    optimizer: str
    lr: float
    """The run's learning rate before a method's ``@lr`` suffix."""
    schedule: str
    eta_min: float
    warmup: int
    weight_decay: float
    width: int
    every: int | None
    """K of step mode (None: no PDT)."""
    threads: int = 1


def default_data() -> Path:
    """``$PDT_DATA/ag_news_test.csv``, else ``../shared/data/ag_news_test.csv`` (the tasks' data directory)."""
    return tasks.data_root(tasks.TaskOptions()) / FILE


@functools.cache
def load_text(path: str) -> tuple[Tensor, Tensor]:
    """The UTF-8 bytes of the training rows and of the held-out rows: ``title. description``, one row a line."""
    file = Path(path)
    if not file.is_file():
        said = "is not a file" if file.exists() else "does not exist"  # a directory given as --data
        raise tasks.DataMissing(
            f"AG News not found: {file} {said}. Provide the AG News CSV ({FILE}, rows "
            '"class","title","description", no header) there, or name it with --data FILE or its '
            "directory with the PDT_DATA environment variable."
        )
    try:
        with file.open(newline="", encoding="utf-8") as f:
            rows = [f"{row[1]}. {' '.join(row[2:])}\n" for row in csv.reader(f) if len(row) >= 2]
    except UnicodeDecodeError as e:  # a ValueError, but one that does not name the file
        raise ValueError(f"{file}: not UTF-8 text ({e})") from None
    cut = round(len(rows) * (1 - HELD_OUT))
    train, held_out = ("".join(part).encode() for part in (rows[:cut], rows[cut:]))
    if min(len(train), len(held_out)) <= CONTEXT + 1:
        raise ValueError(f"{file}: too little text for windows of {CONTEXT + 1} bytes in both parts")
    return tuple(torch.frombuffer(bytearray(b), dtype=torch.uint8).long() for b in (train, held_out))


def _batches(data: Tensor, n: int, seed: int) -> list[Tensor]:
    """``n`` batches of :data:`BATCH` windows of ``CONTEXT + 1`` bytes at random places of ``data``."""
    starts = torch.randint(0, len(data) - CONTEXT, (n, BATCH), generator=torch.Generator().manual_seed(seed))
    return [data[s[:, None] + torch.arange(CONTEXT + 1)] for s in starts]


def _loss(model: nn.Module, batch: Tensor) -> Tensor:
    """Mean cross-entropy of each byte's prediction of the next."""
    return nn.functional.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())


@torch.no_grad()
def _held_out_loss(model: nn.Module, batches: list[Tensor]) -> float:
    return sum(_loss(model, b).item() for b in batches) / len(batches)


def _schedule(optimizer: torch.optim.Optimizer, config: StepsConfig, lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Per step: a linear warm-up over ``warmup`` steps, then ``constant`` or ``cosine`` decay to ``eta_min``
    at the last step."""
    floor = config.eta_min / lr

    def factor(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        if config.schedule == "constant":
            return 1.0
        progress = (step - config.warmup) / max(1, config.steps - 1 - config.warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_method(method: Method) -> None:
    """Refuse, before anything runs, a method this study cannot run as it says."""
    changed = [f.name for f in fields(Method) if f.name not in _PDT_ONLY and getattr(method, f.name) != f.default]
    if changed:
        raise ValueError(
            f"{method.name}: pdt-bench steps runs the baseline and the methods that only change PDT's options "
            "(pdt, pdt-linear, pdt-graded, pdt-layer, nonselective, random-mask...), with @lr; "
            f"not {', '.join(changed)}"
        )
    if not 0 < method.learning_rate(1.0) < math.inf:  # @lr=1e999 parses as inf
        raise ValueError(f"{method.name}: the learning rate must be positive and finite")


def pdt_options(config: StepsConfig) -> dict[str, Any] | None:
    """The keyword arguments of the run's :class:`torch_pdt.PDT` (None: no PDT)."""
    method = parse_method(config.method)
    if method.pdt is None:
        return None
    return PDT_DEFAULTS | method.pdt | {"every_n_steps": config.every, "seed": config.seed}


class _PDTClock:
    """Optimizer post-hooks on both sides of PDT's own: the time PDT takes, and what it predicted when."""

    def __init__(self, optimizer: torch.optim.Optimizer, build: Callable[[], PDT]) -> None:
        self.seconds = 0.0
        self.predicted: list[list[float]] = []
        """``[step, accepted ratio]`` of each prediction."""
        self.accepting = 0
        self._started = 0.0
        # Post-hooks run in the order they were registered.
        optimizer.register_step_post_hook(self._start)
        self.pdt = build()
        optimizer.register_step_post_hook(self._stop)
        self._epoch = self.pdt.epoch

    def _start(self, *_: Any) -> None:
        self._started = time.perf_counter()

    def _stop(self, *_: Any) -> None:
        self.seconds += time.perf_counter() - self._started
        if self.pdt.epoch != self._epoch:
            self._epoch = self.pdt.epoch
            stats = self.pdt.last_stats
            if stats["predicted"]:
                self.predicted.append([self.pdt.optimizer_steps, stats["accepted_ratio"]])
                self.accepting += stats["accepted"] > 0


def run(config: StepsConfig, report: Report | None = None) -> dict[str, Any]:
    """Train one (method, seed); return its record. ``report(step, steps, words)`` after each evaluation."""
    torch.set_num_threads(config.threads)
    method = parse_method(config.method)
    lr = method.learning_rate(config.lr)
    train_text, held_out_text = load_text(config.data)
    batches = _batches(train_text, config.steps, config.seed)
    evaluation = _batches(held_out_text, EVAL_BATCHES, EVAL_SEED)
    torch.manual_seed(config.seed)
    model = ByteGPT(config.width)
    opt = make_optimizer(config.optimizer, model, lr, config.weight_decay)
    schedule = _schedule(opt, config, lr)
    options = pdt_options(config)
    clock = None if options is None else _PDTClock(opt, lambda: PDT(opt, **options, model=model))

    curve: list[list[float]] = []
    train_loss: list[float] = []
    seconds = evaluating = 0.0
    losses: list[Tensor] = []
    diverged = False
    start = time.perf_counter()
    for step, batch in enumerate(batches, start=1):
        loss = _loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()  # in step mode, PDT steps inside every K-th call
        schedule.step()
        losses.append(loss.detach())
        if step % config.eval_every and step < config.steps:
            continue
        seconds += time.perf_counter() - start
        evaluated = time.perf_counter()
        train_loss.append(torch.stack(losses).mean().item())
        losses = []
        curve.append([step, _held_out_loss(model, evaluation)])
        evaluating += time.perf_counter() - evaluated
        if report is not None:
            report(step, config.steps, f"held-out loss {curve[-1][1]:.4g}")
        if not (math.isfinite(train_loss[-1]) and math.isfinite(curve[-1][1])):
            diverged = True
            break
        start = time.perf_counter()
    if clock is not None:
        clock.pdt.close()
    ratios = [r for _, r in clock.predicted] if clock else []
    return {
        "method": config.method,
        "seed": config.seed,
        "config": asdict(config)
        | {"learning_rate": lr, "pdt_options": options, "parameters": sum(p.numel() for p in model.parameters())},
        "curve": curve,
        "train_loss": train_loss,
        "clock_s": seconds,
        "pdt_s": clock.seconds if clock else 0.0,
        "eval_s": evaluating,
        "steps_done": curve[-1][0],
        "predictions": len(clock.predicted) if clock else None,
        "accepting_predictions": clock.accepting if clock else None,
        "accepted_ratio": sum(ratios) / len(ratios) if ratios else None,
        "predicted_at": clock.predicted if clock else [],
        "diverged": diverged,
    }


def _identity(config: StepsConfig) -> dict[str, Any]:
    """What makes two runs the same run: every setting but the threads."""
    return {k: v for k, v in asdict(config).items() if k != "threads"}


def _finished(path: Path, config: StepsConfig) -> bool:
    stored = stored_config(path)
    return stored is not None and all(stored.get(k) == v for k, v in _identity(config).items())


def _run_to_file(config: StepsConfig, path: Path, report: Report | None = None) -> Path:
    record = run(config, report)
    record["config"]["code_version"] = _code_version()
    save_json(path, record)
    return path


def steps_to_target(curve: list[list[float]], target: float) -> int | None:
    """The first evaluation step whose held-out loss is at most ``target``; ``None`` if there is none.

    >>> steps_to_target([[50, 3.0], [100, 2.5], [150, 2.6]], 2.55)
    100
    >>> steps_to_target([[50, 3.0], [100, float("nan")]], 2.9) is None
    True
    """
    return next((int(step) for step, loss in curve if loss <= target), None)


def _best(record: dict[str, Any]) -> float | None:
    values = [loss for _, loss in record["curve"] if math.isfinite(loss)]
    return min(values) if values else None


def _row(record: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    """One run's figures; the comparative ones against ``reference``, the reference run of its seed."""
    ok = not record["diverged"]
    row = {
        "seed": record["seed"],
        "diverged": record["diverged"],
        "compared": reference is not None,
        "steps_to_target": None,
        "fewer_steps": None,
        "final_loss_ratio": None,
        "best_loss": _best(record) if ok else None,
        "final_loss": record["curve"][-1][1] if ok else None,
        "accepted_ratio": record["accepted_ratio"],
        "predictions": record["predictions"],
        "accepting_predictions": record["accepting_predictions"],
        "pdt_time_share": record["pdt_s"] / record["clock_s"] if record["clock_s"] > 0 else None,
        "seconds_per_1k_steps": 1000 * record["clock_s"] / record["steps_done"],
    }
    if reference is not None:
        target = _best(reference)
        row["steps_to_target"] = steps_to_target(record["curve"], target)
        if row["steps_to_target"] is not None:
            row["fewer_steps"] = 1 - row["steps_to_target"] / steps_to_target(reference["curve"], target)
        if ok:
            row["final_loss_ratio"] = row["final_loss"] / reference["curve"][-1][1]
    return row


def summarize(records: list[dict[str, Any]], reference: str = "baseline") -> dict[str, Any]:
    """Per method, over seeds (statistics of :func:`pdt_bench.metrics.describe`): ``steps_to_target``,
    ``fewer_steps`` (misses ranked last), ``best_loss``, ``final_loss``, ``final_loss_ratio`` (to the
    reference's of the same seed), ``accepted_ratio``, ``predictions``, ``accepting_predictions``,
    ``pdt_time_share``, ``seconds_per_1k_steps``; ``per_seed`` holds the rows. A seed whose reference
    run diverged is not compared; a diverged run counts as never reaching the target, and its losses
    are left out."""
    groups = by_method(records)
    if reference not in groups:
        raise ValueError(f"no runs of the reference method {reference!r} (methods: {', '.join(groups)})")
    references = {r["seed"]: r for r in groups[reference] if not r["diverged"]}
    methods = {}
    for name, group in groups.items():
        rows = [_row(r, references.get(r["seed"])) for r in group]
        compared = [r for r in rows if r["compared"]]
        m: dict[str, Any] = {"runs": len(rows), "diverged": sum(r["diverged"] for r in rows), "compared": len(compared)}
        m["steps_to_target"] = describe([r["steps_to_target"] for r in compared])
        m["fewer_steps"] = describe([r["fewer_steps"] for r in compared], missing=-math.inf)
        m["final_loss_ratio"] = describe([r["final_loss_ratio"] for r in compared if not r["diverged"]])
        for key in ("best_loss", "final_loss", "pdt_time_share", "seconds_per_1k_steps"):
            m[key] = describe([r[key] for r in rows if not r["diverged"]])
        with_pdt = [r for r in rows if r["predictions"] is not None]
        m["pdt"] = bool(with_pdt)
        m["accepted_ratio"] = describe([r["accepted_ratio"] for r in with_pdt if r["accepted_ratio"] is not None])
        m["predictions"] = describe([r["predictions"] for r in with_pdt])
        m["accepting_predictions"] = describe([r["accepting_predictions"] for r in with_pdt])
        m["per_seed"] = rows
        methods[name] = m
    return {"reference": reference, "seeds": sorted({r["seed"] for r in records}), "methods": methods}


def _steps_cell(m: dict[str, Any]) -> str:
    """Median steps to target and the spread over seeds, ``250 (200-300)``; a miss reads ``never``."""
    s = m["steps_to_target"]
    if s["of"] == 0:
        return "-"
    median, low, high = ("never" if s[k] is None else f"{s[k]:g}" for k in ("median", "min", "max"))
    return median if s["of"] == 1 else f"{median} ({low}-{high})"


def _number(stat: dict[str, Any], spec: str, scale: float = 1.0) -> str:
    return "-" if stat["mean"] is None else format(scale * stat["mean"], spec)


def table(summary: dict[str, Any]) -> str:
    """The Markdown table of a steps summary, one row per method (the report's and the results page's)."""
    rows = [
        [
            name,
            _steps_cell(m),
            report.percent_change(m["fewer_steps"]["median"]) if m["compared"] else "-",
            _number(m["best_loss"], ".4f"),
            _number(m["final_loss"], ".4f"),
            _number(m["accepted_ratio"], ".1f", 100),
            _number(m["pdt_time_share"], ".1f", 100),
            _number(m["seconds_per_1k_steps"], ".0f"),
        ]
        for name, m in summary["methods"].items()
    ]
    headers = ["method", "steps to target", "fewer", "best", "final", "acc %", "PDT %", "s/1k"]
    return report.markdown_table(headers, rows)


def _fewer_words(fraction: float) -> str:
    """A reduction in steps in words; below the 0.1 % shown, it is no difference."""
    if abs(fraction) < 0.0005:
        return "the same number of steps"
    return f"{100 * abs(fraction):.1f} % {'fewer' if fraction > 0 else 'more'} steps"


def verdict(name: str, m: dict[str, Any], reference: str, brief: bool = False) -> str:
    """One line: whether method ``name`` reached the reference's best held-out loss in fewer steps, and
    its final held-out loss against the reference's; a PDT method that never predicted or never
    accepted an element had no effect, whatever its numbers."""
    title = name if brief else f"**{name}**"
    if m["compared"] == 0:
        return f"{title}: not compared (no successful {reference} run of the same seed)."
    caveat = " (one seed)" if m["compared"] == 1 else ""
    nothing = report.no_effect(m)
    if nothing is not None:
        return f"{title}: no effect to report: {nothing}{caveat}."
    steps, fewer, ratio = m["steps_to_target"], m["fewer_steps"], m["final_loss_ratio"]["mean"]
    words = f"{title}{caveat}: reached the {reference}'s best held-out loss on {steps['n']}/{steps['of']} seeds"
    if fewer["median"] is not None:
        words += f", median: {_fewer_words(fewer['median'])}"
        if fewer["of"] > 1:
            low, high = ("never" if fewer[k] is None else report._signed_percent(fewer[k]) for k in ("min", "max"))
            words += f" (seeds: {low} to {high})"
    if ratio is not None:
        words += f"; final held-out loss {ratio:.4g}x the {reference}'s"
    sides = {
        "steps to target": report._side(fewer["median"], report.SAME["time"]),
        "final loss": report._side(None if ratio is None else 1 - ratio, report.SAME["loss"]),
    }
    if m["diverged"]:
        sides["stability"] = "worse"
    judged = [
        f"{words_of_side}: {', '.join(aspect for aspect, s in sides.items() if s == side)}"
        for side, words_of_side in (("helped", "helped"), ("same", "about the same"), ("worse", "worse"))
        if side in sides.values()
    ]
    line = "; ".join(judged)
    return f"{words}. {line[0].upper()}{line[1:]}."


def compact_table(summary: dict[str, Any]) -> str:
    """The table and one verdict line per method, for a terminal (under 100 columns for method names up to
    ~30 characters)."""
    ref = summary["reference"]
    legend = (
        f"steps to target: median (min-max over seeds) of the first evaluation step at the {ref}'s best held-out "
        f"loss of the same seed; fewer: median % fewer steps than the {ref}; best, final: held-out loss; "
        "acc %: accepted ratio over PDT's predictions; PDT %: PDT's share of the clock; s/1k: clock seconds per "
        "1,000 steps (no evaluation); means over seeds."
    )
    lines = textwrap.wrap(legend, 100)
    for name, m in summary["methods"].items():
        if name != ref:
            lines += textwrap.wrap(verdict(name, m, ref, brief=True), 100, subsequent_indent="  ")
    return table(summary) + "\n\n" + "\n".join(lines)


def write_report(out: Path, records: list[dict[str, Any]], summary: dict[str, Any], command: str, figure: Path) -> Path:
    """Write ``out/report.md``: the command, the settings, the table, the verdicts and the plot."""
    ref = summary["reference"]
    verdicts = "\n".join(f"- {verdict(n, m, ref)}" for n, m in summary["methods"].items() if n != ref)
    text = f"""# Step mode on a byte-level language model: {", ".join(summary["methods"])}

```
{command}
```

Seeds {", ".join(map(str, summary["seeds"]))}; reference method `{ref}`. Written by `pdt-bench steps`
(`pdt_bench/steps.py` says what it measures and how).

## Settings

{report._settings(records)}

## Results

Steps to target: the first evaluation step whose held-out loss is at most the best held-out loss
of the `{ref}` run of the same seed, median (min-max) over seeds; "never": not reached (a diverged
run never reaches it). Fewer: the median over seeds of 1 - steps / the `{ref}`'s steps to its own
best. Best and final held-out loss, the accepted ratio (acc %, over PDT's predictions) and PDT's
share of the clock (PDT %): means over seeds. s/1k: clock seconds per 1,000 steps, training and
PDT, no evaluation.

{table(summary)}

## Verdicts

{verdicts}

## Plot

![held-out loss]({figure.relative_to(out).as_posix()})
"""
    path = out / "report.md"
    write_text(path, text)
    return path


def _steps(args: argparse.Namespace) -> int:
    if args.existing and args.rerun:
        raise ValueError("--existing runs nothing and --rerun runs everything again: choose one")
    if args.eval_every > args.steps:
        raise ValueError(f"--eval-every {args.eval_every} is more than --steps {args.steps}: nothing would be measured")
    if args.width % 4:
        raise ValueError(f"--width {args.width}: the 4 attention heads need a multiple of 4")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be 0 or more, got {args.warmup}")
    if not 0 <= args.eta_min < math.inf:  # a negative floor would turn the cosine's last steps into ascent
        raise ValueError(f"--eta-min must be a finite learning rate, 0 or more, got {args.eta_min}")
    if args.schedule == "cosine" and args.warmup >= args.steps:
        raise ValueError(f"--warmup {args.warmup} leaves no step of --steps {args.steps} to decay over")
    methods = list(dict.fromkeys(m for m in args.methods.split(",") if m))
    if args.reference not in methods:
        methods.insert(0, args.reference)
    methods += [m for m in (with_lr(args.reference, lr) for lr in args.lr_sweep or ()) if m not in methods]
    data = str(args.data or default_data())
    load_text(data)  # a missing or short file fails before any run
    configs = []
    for name in methods:
        method = parse_method(name)
        check_method(method)
        every = None if method.pdt is None else method.pdt.get("every_n_steps", args.every)
        settings = dict(
            method=name,
            data=data,
            steps=args.steps,
            eval_every=args.eval_every,
            optimizer=args.optimizer,
            lr=args.lr,
            schedule=args.schedule,
            eta_min=args.eta_min,
            warmup=args.warmup,
            weight_decay=args.weight_decay,
            width=args.width,
            every=every,
            threads=args.threads,
        )
        configs += [StepsConfig(seed=seed, **settings) for seed in args.seeds]
        options = pdt_options(configs[-1])
        if options is not None:
            check_pdt(name, options)
    out = args.out
    records = execute(
        configs,
        out,
        jobs=args.jobs,
        rerun=args.rerun,
        quiet=args.quiet,
        existing=args.existing,
        work=_run_to_file,
        finished=_finished,
        unit="step",
    )
    if not records:
        raise ValueError(f"no finished runs of these settings under {out}/runs")
    summary = summarize(records, args.reference)
    report.write_summary(out, summary)
    title = f"step mode, study {out.resolve().name}"
    figure = plots.plot_steps(out / "plots" / "heldout_loss.png", records, args.reference, title)
    path = write_report(out, records, summary, args.command_line, figure)
    print(compact_table(summary))
    print(f"report: {path}")
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    """The ``pdt-bench steps`` sub-command."""
    p = sub.add_parser(
        "steps",
        help="PDT in step mode (every K optimizer steps) on a byte-level language model, in steps to target",
        description="Every (method, seed) trains a small byte-level transformer on the AG News text; the table "
        "gives the steps each method needs to reach the reference's best held-out loss.",
    )
    p.add_argument("--methods", default="baseline,pdt", help="comma-separated method names (default baseline,pdt)")
    p.add_argument("--reference", default="baseline", help="the method whose best held-out loss is the target")
    p.add_argument(
        "--every", type=_positive(int), default=25, help="K of a PDT method without @every_n_steps (default 25)"
    )
    p.add_argument("--lr-sweep", type=_float_list(0.0, float("inf")), help="also run the reference at these lrs")
    p.add_argument("--seeds", type=_int_list, default=[0, 1, 2], help="comma-separated (default 0,1,2)")
    p.add_argument(
        "--out", type=Path, default=Path("results") / "steps", help="output directory (default results/steps)"
    )
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=_positive(int), default=3000, help="optimizer steps per run (default 3000)")
    g.add_argument(
        "--eval-every", type=_positive(int), default=50, help="steps between held-out evaluations (default 50)"
    )
    g.add_argument("--optimizer", choices=["adamw", "sgd-momentum"], default="adamw")
    g.add_argument("--lr", type=_positive(float), default=3e-3, help="default 3e-3")
    g.add_argument(
        "--schedule", choices=list(SCHEDULES), default="cosine", help="per step, after the warm-up (default cosine)"
    )
    g.add_argument("--eta-min", type=float, default=0.0, help="final learning rate of the cosine (default 0)")
    g.add_argument("--warmup", type=int, default=100, help="linear warm-up steps, either schedule (default 100)")
    g.add_argument("--weight-decay", type=_non_negative, default=0.0, help="default 0")
    g.add_argument("--width", type=_positive(int), default=64, help="model width, a multiple of 4 (default 64)")
    g = p.add_argument_group("data and machine")
    g.add_argument("--data", type=Path, help=f"the AG News CSV (default $PDT_DATA/{FILE}, else ../shared/data/{FILE})")
    g.add_argument("--threads", type=_positive(int), default=1, help="torch threads per run (default 1)")
    g.add_argument(
        "--jobs", type=_jobs, default=1, help="runs in parallel, each in its own process; 0: in this one (default 1)"
    )
    g.add_argument("--rerun", action="store_true", help="run again even when a result file exists")
    g.add_argument("--existing", action="store_true", help="run nothing: summary, report and plot of the finished runs")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_steps)
