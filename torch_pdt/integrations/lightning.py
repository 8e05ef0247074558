"""PDT as a Lightning callback (``pip install torch-pdt[lightning]``).

**Hook order.** In epoch mode PDT steps in ``on_train_batch_end`` of an epoch's last batch:
after that batch's optimizer step, and before Lightning's end-of-epoch validation,
``on_train_epoch_end`` hooks, epoch-interval LR scheduler steps and checkpoints. So

* the validation of epoch ``i`` sees the weights PDT assembled at the end of epoch ``i``
  (predicted where accepted, the optimizer's elsewhere), and so does epoch ``i + 1``;
* a checkpoint written at the end of epoch ``i`` holds those weights and PDT's state after its
  step of epoch ``i``: resuming from it continues exactly as the uninterrupted run does.

Validation that runs inside an epoch (``val_check_interval < 1``) sees the optimizer's weights
of that moment. In step mode (``every_n_steps=K``) PDT steps inside the optimizer step of every
``K``-th step, so everything after that step (``on_train_batch_end``, validation, checkpoints)
sees the assembled weights.

Under DDP every rank predicts the same weights on its own (see
:mod:`torch_pdt.distributed`); the checkpoint holds rank 0's PDT state, which is every
rank's. Sharded (FSDP2, ``ModelParallelStrategy``) training keeps a different part of the
snapshots on each rank, which rank 0's callback state cannot hold. Its state goes into the
distributed checkpoint beside the model's, as :class:`~torch_pdt.distributed.dcp.DCPState`
lays it out (under the key ``_pdt`` of the model's state), and the callback state records only
that it is there; resuming (``fit(ckpt_path=...)``) reads it back on each rank's shards, on any
world size. A consolidated (``save_distributed_checkpoint=False``) checkpoint of a sharded run
is refused with a ``ValueError``.
"""

from __future__ import annotations

from typing import Any

from ..pdt import PDT
from . import extra, make_pdt

with extra("lightning", "lightning"):
    import lightning.pytorch as pl

_KEY = "_pdt"  # where a sharded PDT's state lives in the model's part of a distributed checkpoint

__all__ = ["PDTCallback"]


class PDTCallback(pl.Callback):
    """Run PDT beside the (single) optimizer of a ``LightningModule``.

    Args:
        **pdt_kwargs: arguments of :class:`torch_pdt.PDT` (``history``, ``horizon``,
            ``start_epoch``, ``interval``, ``criterion``, ``every_n_steps``, ...). The optimizer
            and the model come from the trainer.

    Attributes:
        pdt: the :class:`torch_pdt.PDT` (or :class:`~torch_pdt.distributed.DistributedPDT`) of
            this process, created at ``on_fit_start`` (each ``fit`` creates a new one and
            closes the previous one from its optimizer); ``pdt.last_stats`` holds the
            statistics of its latest step.

    Example::

        trainer = lightning.Trainer(max_epochs=30, callbacks=[PDTCallback(history=5, horizon=5)])
        trainer.fit(module, train_loader)
    """

    def __init__(self, **pdt_kwargs: Any) -> None:
        self.pdt_kwargs = pdt_kwargs
        self.pdt: PDT | None = None
        self._pending_state: dict[str, Any] | None = None
        self._trainer: pl.Trainer | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(f"PDTCallback needs exactly one optimizer, the module has {len(trainer.optimizers)}")
        if self.pdt is not None:  # a new fit() with the same callback
            self.pdt.close()
        self.pdt = make_pdt(trainer.optimizers[0], model=pl_module, **self.pdt_kwargs)
        self._trainer = trainer
        # Strategies restore callbacks before or after this hook; a state that came first waits here.
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.pdt_kwargs.get("every_n_steps") is None and trainer.is_last_batch:
            self.pdt.step()

    def state_dict(self) -> dict[str, Any]:
        if self.pdt is None:
            return self._pending_state or {}
        if getattr(self.pdt, "sharded", False):
            return {"sharded": True, "key": _KEY, "epoch": self.pdt.epoch}  # the state: on_save_checkpoint
        return self.pdt.state_dict()

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.pdt is None or not getattr(self.pdt, "sharded", False):
            return
        if not getattr(trainer.strategy, "_save_distributed_checkpoint", False):
            raise ValueError(
                "PDTCallback: a sharded PDT saves into a distributed checkpoint; a consolidated one "
                "(save_distributed_checkpoint=False) has no place for its shards"
            )
        from ..distributed.dcp import DCPState

        checkpoint["state_dict"][_KEY] = DCPState(self.pdt).state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.pdt is None:
            self._pending_state = state_dict
        else:
            self._restore(state_dict)

    def _restore(self, state_dict: dict[str, Any]) -> None:
        """Load a callback state; a sharded one from the distributed checkpoint being resumed."""
        if not state_dict.get("sharded"):
            self.pdt.load_state_dict(state_dict)
            return
        import torch.distributed.checkpoint as dcp

        from ..distributed.dcp import DCPState

        stateful = DCPState(self.pdt)
        state = {"state_dict": {state_dict["key"]: stateful.state_dict()}}
        dcp.load(state, checkpoint_id=self._trainer.ckpt_path)
        stateful.load_state_dict(state["state_dict"][state_dict["key"]])
