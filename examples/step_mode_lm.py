"""Step mode: PDT every K optimizer steps on a tiny causal language model, within one epoch.

    OMP_NUM_THREADS=1 python examples/step_mode_lm.py --data ../shared/data/ag_news_test.csv \
        --steps 600 --seeds 0,1,2 --every 10,25

Needs the ``transformers`` extra (for the model class only).

A byte-level two-layer GPT-2 (64 wide, from a config: nothing is downloaded) learns the text of
AG News (title and description of each row; the last 10 % of rows held out). AdamW, lr 3e-3,
batches of 16 windows of 64 bytes drawn in a fixed order per seed; the run stops well inside one
epoch. Every 20 steps the loss on 4 fixed held-out batches is measured. Printed per run: the step
at which the held-out loss first reaches the baseline's best (lower is better), the best and
final held-out loss, and PDT's predictions and mean acceptance ratio.
"""

from __future__ import annotations

import argparse
import csv
import time

import torch

from torch_pdt import PDT

WINDOW, BATCH, EVAL_EVERY, EVAL_BATCHES = 64, 16, 20, 4


def load_text(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """UTF-8 bytes of the train and held-out rows, one row per line."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [f"{title}. {text}\n" for _, title, text in csv.reader(f)]
    cut = len(rows) * 9 // 10
    return encode(rows[:cut]), encode(rows[cut:])


def encode(rows: list[str]) -> torch.Tensor:
    return torch.frombuffer(bytearray("".join(rows).encode()), dtype=torch.uint8).long()


def batches(data: torch.Tensor, n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - WINDOW, (n, BATCH), generator=g)
    return [data[s[:, None] + torch.arange(WINDOW)] for s in starts]


def model_for(seed: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=256,
        n_positions=WINDOW,
        n_embd=64,
        n_layer=2,
        n_head=4,
        resid_pdrop=0,
        embd_pdrop=0,
        attn_pdrop=0,
        bos_token_id=10,
        eos_token_id=10,
    )
    return GPT2LMHeadModel(config)


def held_out_loss(model: torch.nn.Module, evaluation: list[torch.Tensor]) -> float:
    with torch.no_grad():
        return sum(model(input_ids=b, labels=b).loss.item() for b in evaluation) / len(evaluation)


def run(train_data, evaluation, steps: int, seed: int, every: int | None) -> dict:
    model = model_for(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pdt = PDT(opt, history=5, horizon=5, start_epoch=5, interval=1, every_n_steps=every) if every else None
    curve, ratios = [], []
    start = time.perf_counter()
    for step, batch in enumerate(batches(train_data, steps, seed), start=1):
        opt.zero_grad()
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()  # with every_n_steps, PDT steps inside every K-th call
        if pdt is not None and pdt.last_stats.get("predicted") and pdt.optimizer_steps % every == 0:
            ratios.append(pdt.last_stats["accepted_ratio"])
        if step % EVAL_EVERY == 0:
            curve.append((step, held_out_loss(model, evaluation)))
    return {"curve": curve, "ratios": ratios, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/ag_news_test.csv", help="AG News CSV (class, title, text)")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per run")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--every", default="10,20", help="comma-separated K of the PDT runs (every_n_steps)")
    args = parser.parse_args()
    train_data, held_out = load_text(args.data)
    evaluation = batches(held_out, EVAL_BATCHES, seed=12345)
    print(f"train bytes {len(train_data):,}; one epoch is about {len(train_data) // (WINDOW * BATCH)} steps")
    print(
        f"{'seed':>4}  {'variant':<12}{'steps to base best':>20}{'best loss':>11}{'final loss':>11}"
        f"{'predictions':>13}{'accepted':>10}{'seconds':>9}"
    )
    for seed in map(int, args.seeds.split(",")):
        results = {"baseline": run(train_data, evaluation, args.steps, seed, None)}
        for k in map(int, args.every.split(",")):
            results[f"pdt K={k}"] = run(train_data, evaluation, args.steps, seed, k)
        target = min(loss for _, loss in results["baseline"]["curve"])
        for name, r in results.items():
            reached = next((step for step, loss in r["curve"] if loss <= target), None)
            ratio = sum(r["ratios"]) / len(r["ratios"]) if r["ratios"] else 0.0
            print(
                f"{seed:>4}  {name:<12}{reached if reached else 'never':>20}"
                f"{min(loss for _, loss in r['curve']):>11.4f}{r['curve'][-1][1]:>11.4f}"
                f"{len(r['ratios']):>13}{ratio:>10.3f}{r['seconds']:>9.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
