"""PDT as a Hugging Face ``Trainer`` callback (``pip install torch-pdt[transformers]``).

**Hook order.** In epoch mode PDT steps in ``on_epoch_end``, which the ``Trainer`` calls before
its end-of-epoch logging, evaluation and checkpoint: evaluation (``eval_strategy="epoch"``)
sees the weights PDT assembled, and the checkpoint holds them. In step mode
(``every_n_steps=K``) PDT steps inside every ``K``-th optimizer step, before the LR scheduler
step and before ``on_step_end``, evaluation and checkpoints of that step.

**Checkpoints.** ``on_save`` writes PDT's state beside the trainer's files, as
``checkpoint-<step>/pdt.pt`` (sharded training: ``pdt-rank<r>.pt`` on each rank). When
``trainer.train(resume_from_checkpoint=...)`` resumes at step ``s``, the callback loads it back
from ``<output_dir>/checkpoint-<s>``, so the resumed run continues as the uninterrupted one.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..pdt import PDT
from . import extra, make_pdt

with extra("transformers", "transformers"):
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

__all__ = ["PDTTrainerCallback"]


class PDTTrainerCallback(TrainerCallback):
    """Run PDT beside the ``Trainer``'s optimizer.

    Args:
        **pdt_kwargs: arguments of :class:`torch_pdt.PDT` (``history``, ``horizon``,
            ``start_epoch``, ``interval``, ``criterion``, ``every_n_steps``, ...). The optimizer
            and the model come from the trainer.

    Attributes:
        pdt: this process's :class:`torch_pdt.PDT` (or
            :class:`~torch_pdt.distributed.DistributedPDT`), created at ``on_train_begin``;
            ``pdt.last_stats`` holds the statistics of its latest step. Each ``trainer.train()``
            creates a new one (a fresh history) and closes the previous one from the optimizer.

    Example::

        trainer = Trainer(model, args, train_dataset=data, callbacks=[PDTTrainerCallback(history=5, horizon=5)])
        trainer.train()
    """

    def __init__(self, **pdt_kwargs: Any) -> None:
        self.pdt_kwargs = pdt_kwargs
        self.pdt: PDT | None = None

    def _state_file(self, checkpoint: str) -> str:
        sharded = getattr(self.pdt, "sharded", False)
        return os.path.join(checkpoint, f"pdt-rank{self.pdt.rank}.pt" if sharded else "pdt.pt")

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        if self.pdt is not None:  # a new train() on the same Trainer, which reuses its optimizer
            self.pdt.close()
        # Accelerate wraps the optimizer; the step hook of every_n_steps belongs on the one that steps.
        self.pdt = make_pdt(getattr(optimizer, "optimizer", optimizer), model=model, **self.pdt_kwargs)
        if state.global_step > 0:  # resuming: the trainer has loaded the state of this checkpoint
            path = self._state_file(os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"))
            if not os.path.exists(path):
                raise FileNotFoundError(f"resuming at step {state.global_step}, but there is no PDT state at {path}")
            self.pdt.load_state_dict(torch.load(path, weights_only=True))

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.pdt_kwargs.get("every_n_steps") is None:
            self.pdt.step()

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if getattr(self.pdt, "sharded", False) or state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            torch.save(self.pdt.state_dict(), self._state_file(folder))
