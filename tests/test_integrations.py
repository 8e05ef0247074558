"""The Lightning and Hugging Face callbacks: PDT predicts, and save -> resume equals an uninterrupted run.

Each part skips when its extra (``torch-pdt[lightning]``, ``torch-pdt[transformers]``) is missing.
"""

from __future__ import annotations

import atexit
import signal
from contextlib import contextmanager
from datetime import timedelta

import pytest
import torch
from test_statistics import check_epochs
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

PDT_ARGS = dict(history=3, horizon=2, start_epoch=2, interval=0)


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# --- Lightning -----------------------------------------------------------------------------


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g))


try:
    import lightning.pytorch as pl
except ImportError:  # the tests below skip
    pl = None


def destroy_process_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if pl is not None:  # at module level: ddp_spawn pickles the module into its processes

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
            self.seen_by_validation: list[tuple[int, int]] = []  # (trainer epoch, PDT steps taken)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def on_validation_epoch_start(self):
            pdt = next(c for c in self.trainer.callbacks if type(c).__name__ == "PDTCallback").pdt
            self.seen_by_validation.append((self.current_epoch, pdt.epoch))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

        def setup(self, stage):
            # Lightning destroys the process group at exit only under NCCL; a ddp_spawn worker on
            # gloo exits with it alive. If ProcessGroupGloo's worker thread (runLoop) frees the
            # last all_reduce's work while Py_FinalizeEx runs, releasing its tensors takes the
            # GIL, CPython ends the thread with pthread_exit, and the forced unwind through the
            # noexcept runLoop calls std::terminate: "terminate called without an active
            # exception", SIGABRT (gdb backtrace; 11 of 30 bare 2-rank gloo runs without, 0 of
            # 30 with destroy_process_group). Destroying it at exit, before finalization, ends
            # the race.
            if torch.distributed.is_initialized():
                atexit.register(destroy_process_group)

        def train_dataloader(self):
            # Global batches of 16, each rank taking every world-th sample: the batches one
            # process sees (Lightning's own distributed sampler would shuffle).
            world, rank = self.trainer.world_size, self.trainer.global_rank
            sampler = DistributedSampler(dataset(), world, rank, shuffle=False)
            return DataLoader(dataset(), batch_size=16 // world, sampler=sampler)

        def val_dataloader(self):
            return DataLoader(dataset(), batch_size=16)


def fit(max_epochs: int, ckpt_dir=None, ckpt_path=None, pdt_kwargs=None, **trainer_kwargs):
    pytest.importorskip("lightning.pytorch")
    from torch_pdt.integrations.lightning import PDTCallback

    callback = PDTCallback(**PDT_ARGS, **(pdt_kwargs or {}))
    callbacks = [callback]
    if ckpt_dir is not None:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True))
    module = Classifier()
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=ckpt_dir is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        **trainer_kwargs,
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return module, callback


def test_lightning_validation_sees_predictions_and_resume_is_exact(tmp_path):
    module, callback = fit(6, accelerator="cpu")
    assert callback.pdt.last_stats["predicted"]
    # PDT has stepped for epoch i when epoch i's validation runs.
    assert module.seen_by_validation == [(i, i + 1) for i in range(6)]

    fit(3, ckpt_dir=tmp_path, accelerator="cpu")
    resumed, resumed_callback = fit(
        6, ckpt_dir=tmp_path / "resumed", ckpt_path=tmp_path / "last.ckpt", accelerator="cpu"
    )
    assert resumed_callback.pdt.epoch == 6 and resumed_callback.pdt.last_stats == callback.pdt.last_stats
    assert all(torch.equal(a, b) for a, b in zip(weights(resumed), weights(module)))


def test_lightning_step_mode_steps_with_the_optimizer():
    """every_n_steps under Lightning: 2 epochs of 4 steps, K = 2, 4 PDT steps."""
    _, callback = fit(2, pdt_kwargs=dict(every_n_steps=2), accelerator="cpu")
    assert (callback.pdt.optimizer_steps, callback.pdt.epoch) == (8, 4)
    assert callback.pdt.last_stats["predicted"]
    check_epochs([callback.pdt.last_stats], callback.pdt.names)  # all keys, plain JSON


@contextmanager
def time_limit(seconds: int):
    """Fail the test (instead of blocking the suite) if the block runs longer than ``seconds``."""

    def fail(signum, frame):
        pytest.fail(f"did not finish within {seconds} s (a rank hangs)")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_lightning_ddp_spawn_matches_one_process(tmp_path):
    single, _ = fit(4, accelerator="cpu")
    # A rank left waiting in a collective fails after 30 s, and the whole fit after 150 s
    # (38 s measured on 2 cores at load 7).
    strategy = pl.strategies.DDPStrategy(start_method="spawn", timeout=timedelta(seconds=30))
    with time_limit(150):
        spawned, _ = fit(4, ckpt_dir=tmp_path, accelerator="cpu", strategy=strategy, devices=2)
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"]["PDTCallback"]
    assert state["epoch"] == 4 and state["plain_epochs"] == 0  # predicted at epochs 2 and 3
    for a, b in zip(weights(spawned), weights(single)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --- Hugging Face Trainer ------------------------------------------------------------------


class StopAfter:
    """Stop training at the end of an epoch (after its checkpoint), as an interrupted job would."""

    def __new__(cls, epochs: int):
        transformers = pytest.importorskip("transformers")

        class _Stop(transformers.TrainerCallback):
            def on_epoch_end(self, args, state, control, **kwargs):
                if state.epoch >= epochs:
                    control.should_training_stop = True

        return _Stop()


def hf_trainer(out_dir, stop_after=None, epochs=6, **pdt_kwargs):
    """A Trainer of a one-layer GPT-2 with the PDT callback, and the callback."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # the Trainer's own requirement
    from torch_pdt.integrations.transformers import PDTTrainerCallback

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=32, n_positions=8, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
    )
    model = transformers.GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(2)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 32, (32, 8), generator=g)]
    args = transformers.TrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        save_strategy="epoch",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    callback = PDTTrainerCallback(**PDT_ARGS, **pdt_kwargs)
    callbacks = [callback] + ([StopAfter(stop_after)] if stop_after else [])
    return transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks), callback


def hf_train(out_dir, stop_after=None, resume=False, epochs=6, **pdt_kwargs):
    trainer, callback = hf_trainer(out_dir, stop_after, epochs, **pdt_kwargs)
    trainer.train(resume_from_checkpoint=resume or None)
    return trainer.model, callback


def test_hf_trainer_state_saved_beside_checkpoint_and_resumed(tmp_path):
    model, callback = hf_train(tmp_path / "full")
    assert [callback.pdt.epoch, callback.pdt.last_stats["predicted"]] == [6, True]
    assert callback.pdt.last_stats["accepted"] > 0

    hf_train(tmp_path / "interrupted", stop_after=3)
    assert (tmp_path / "interrupted" / "checkpoint-12" / "pdt.pt").exists()
    resumed, resumed_callback = hf_train(tmp_path / "interrupted", resume=True)
    assert resumed_callback.pdt.last_stats == callback.pdt.last_stats
    for a, b in zip(weights(resumed), weights(model)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_hf_trainer_step_mode_steps_with_the_optimizer(tmp_path):
    """every_n_steps hooks the optimizer inside accelerate's wrapper: 8 steps, K = 2, 4 PDT steps."""
    _, callback = hf_train(tmp_path, epochs=2, every_n_steps=2)
    assert (callback.pdt.optimizer_steps, callback.pdt.epoch) == (8, 4)
    assert callback.pdt.last_stats["predicted"]
    check_epochs([callback.pdt.last_stats], callback.pdt.names)  # all keys, plain JSON


def test_hf_trainer_train_twice_steps_with_one_pdt(tmp_path):
    """A second train() on the same Trainer replaces the PDT; the first one steps no more."""
    trainer, callback = hf_trainer(tmp_path, epochs=2, every_n_steps=2)
    trainer.train()
    first = callback.pdt
    trainer.train()
    assert callback.pdt is not first and callback.pdt.optimizer is first.optimizer  # the same optimizer, reused
    assert (first.optimizer_steps, first.epoch) == (8, 4)
    assert (callback.pdt.optimizer_steps, callback.pdt.epoch) == (8, 4)
