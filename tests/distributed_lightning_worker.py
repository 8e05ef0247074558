"""One rank of the Lightning FSDP2 test (run by tests/test_distributed_lightning.py, two processes, gloo on CPU).

``python tests/distributed_lightning_worker.py PORT OUT_DIR`` with ``RANK`` and ``WORLD_SIZE``:
Lightning's ``ModelParallelStrategy`` (FSDP2) and ``PDTCallback``, ranks started by hand (Lightning
then creates no processes). An uninterrupted run of ``EPOCHS`` epochs; a run of ``SAVE_AT``
epochs saved as a distributed checkpoint; a run resumed from it to ``EPOCHS``. Writes each run's
local weight shards and PDT statistics to ``OUT_DIR/rank{r}.pt``.
"""

from __future__ import annotations

import os
import sys

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from torch_pdt.integrations.lightning import PDTCallback
from torch_pdt.params import local_shard

PDT_ARGS = dict(history=3, horizon=2, start_epoch=2, interval=0)
EPOCHS, SAVE_AT = 6, 3
ENVIRONMENT: dict[str, str] = {}


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(64, 16, generator=g), torch.randn(64, 5, generator=g))


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(16, 33), nn.Tanh(), nn.Linear(33, 5))  # uneven shards

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in (self.net[0], self.net[2]):
            fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def train_dataloader(self):
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(dataset(), world, rank, shuffle=False)
        return DataLoader(dataset(), batch_size=16 // world, sampler=sampler)


def fit(max_epochs: int, ckpt_path: str | None = None) -> tuple[pl.Trainer, Regressor, PDTCallback]:
    # Lightning's teardown removes the environment it was started with: set it for every fit.
    os.environ |= ENVIRONMENT
    callback = PDTCallback(**PDT_ARGS)
    module = Regressor()
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=int(ENVIRONMENT["WORLD_SIZE"]),
        strategy=pl.strategies.ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer, module, callback


def result(module: Regressor, callback: PDTCallback, stats: list[dict]) -> dict:
    return {"weights": [local_shard(p.detach()).clone() for p in module.parameters()], "stats": stats}


def main() -> None:
    port, out_dir = sys.argv[1], sys.argv[2]
    rank, world = os.environ["RANK"], os.environ["WORLD_SIZE"]
    ENVIRONMENT.update(
        RANK=rank, WORLD_SIZE=world, LOCAL_RANK=rank, NODE_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port
    )
    _, module, callback = fit(EPOCHS)
    out = {"uninterrupted": result(module, callback, callback.pdt.last_stats), "epochs": callback.pdt.epoch}
    trainer, _, callback = fit(SAVE_AT)
    path = os.path.join(out_dir, "ckpt")
    trainer.save_checkpoint(path)
    out["saved_epoch"] = callback.pdt.epoch
    _, module, callback = fit(EPOCHS, ckpt_path=path)
    out["resumed"] = result(module, callback, callback.pdt.last_stats)
    out["resumed_epochs"] = callback.pdt.epoch
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
