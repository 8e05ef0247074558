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
rank's. Sharded (FSDP2) training keeps a different PDT state on each rank, which a Lightning
checkpoint (rank 0's callback state) does not hold: :meth:`PDTCallback.state_dict` raises then.
"""

from __future__ import annotations

from typing import Any

from ..pdt import PDT
from . import extra, make_pdt

with extra("lightning", "lightning"):
    import lightning.pytorch as pl

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

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(f"PDTCallback needs exactly one optimizer, the module has {len(trainer.optimizers)}")
        if self.pdt is not None:  # a new fit() with the same callback
            self.pdt.close()
        self.pdt = make_pdt(trainer.optimizers[0], model=pl_module, **self.pdt_kwargs)
        # Strategies restore callbacks before or after this hook; a state that came first waits here.
        if self._pending_state is not None:
            self.pdt.load_state_dict(self._pending_state)
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
            raise NotImplementedError("a Lightning checkpoint holds one PDT state; sharded PDT has one per rank")
        return self.pdt.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.pdt is None:
            self._pending_state = state_dict
        else:
            self.pdt.load_state_dict(state_dict)
