"""Reliability v3 (issue 23, items 2-4): silent wrong results, refusals that changed state, untrue warnings.

Each test breaks a promise through the public API as a user did in the attack, and fails
without its fix.
"""

from __future__ import annotations

import copy
import gc
import io
import os
import subprocess
import sys
import warnings
import weakref
from pathlib import Path

import pytest
import torch
from test_pdt import make_data, make_model, train_epoch, weights
from torch import Tensor, nn

from torch_pdt import PDT, recompute_batch_norm
from torch_pdt.misuse import PDTMisuseWarning

REPO = Path(__file__).resolve().parents[1]


def state_bytes(pdt: PDT) -> bytes:
    buffer = io.BytesIO()
    torch.save(pdt.state_dict(), buffer)
    return buffer.getvalue()


def misuse_messages(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, PDTMisuseWarning)]


# --- recompute_batch_norm: all or nothing; a frozen BatchNorm is left alone --------------------


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 4), nn.BatchNorm1d(4))
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.num_batches_tracked.fill_(17)
    return model


def bn_state(model: nn.Module) -> list:
    return [
        (m.momentum, m.training, [b.clone() for b in m.buffers()])
        for m in model.modules()
        if isinstance(m, nn.BatchNorm1d)
    ]


def same_bn_state(a: list, b: list) -> bool:
    return all(
        ma == mb and ta == tb and all(torch.equal(x, y) for x, y in zip(ba, bb))
        for (ma, ta, ba), (mb, tb, bb) in zip(a, b)
    )


@pytest.mark.parametrize(
    "batches",
    [
        [torch.randn(8, 3), torch.randn(8, 5)],  # the second batch has the wrong width
        [{"x": torch.randn(8, 3)}],  # a loader of dicts
        [torch.randn(8, 3), torch.randn(1, 3)],  # one sample: BatchNorm cannot train on it
    ],
    ids=["bad batch", "dicts", "one sample"],
)
def test_recompute_batch_norm_that_fails_part_way_restores_every_batch_norm(batches):
    model = bn_model()
    before = bn_state(model)
    with pytest.raises((RuntimeError, TypeError, ValueError)):
        recompute_batch_norm(model, batches)
    assert same_bn_state(bn_state(model), before)


def test_a_frozen_batch_norm_keeps_its_statistics_and_the_others_are_refreshed():
    model = bn_model()
    frozen = model[1]
    frozen.eval()
    frozen.requires_grad_(False)
    kept = [b.clone() for b in frozen.buffers()]
    stale = model[4].running_mean.clone()
    batches = [torch.randn(8, 3) for _ in range(3)]
    assert recompute_batch_norm(model, batches)
    assert all(torch.equal(a, b) for a, b in zip(frozen.buffers(), kept))
    assert not frozen.training and model[4].training
    # The trainable BatchNorm saw inputs normalised by the frozen one's running statistics.
    with torch.no_grad():
        hidden = [model[3](model[2](frozen(model[0](x)))) for x in batches]
    torch.testing.assert_close(model[4].running_mean, torch.stack([h.mean(0) for h in hidden]).mean(0))
    assert not torch.equal(model[4].running_mean, stale)


def test_a_batch_norm_in_eval_mode_with_trainable_parameters_is_refreshed():
    """Eval mode alone is not frozen: it is also what the whole model is in right after evaluation."""
    model = bn_model().eval()
    stale = model[1].running_mean.clone()
    assert recompute_batch_norm(model, [torch.randn(8, 3)])
    assert not torch.equal(model[1].running_mean, stale)
    assert not model.training


# --- one optimizer over two models: a statistics entry per tensor ----------------------------


def test_duplicate_names_get_one_entry_per_tensor_and_unfitted_counts_each():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    named = [*a.named_parameters(), *b.named_parameters()]
    opt = torch.optim.SGD([{"params": [p for _, p in named], "param_names": [n for n, _ in named]}], lr=0.1)
    with torch.no_grad():  # a's snapshots are non-finite: neither of its tensors can be fitted
        a.weight[0, 0] = float("nan")
        a.bias[0] = float("inf")
    pdt = PDT(opt, history=3, horizon=2, start_epoch=2, interval=0, scope="layer", kernel="eager")
    assert pdt.names == ["weight", "bias", "weight#2", "bias#2"]
    for _ in range(3):
        with torch.no_grad():
            for p in b.parameters():
                p.add_(0.1)
        stats = pdt.step()
    assert stats["predicted"]
    assert sorted(stats["layers"]) == sorted(pdt.names)
    assert [stats["layers"][n]["reason"] is None for n in pdt.names] == [False, False, True, True]
    assert stats["rejected"]["unfitted"] == a.weight.numel() + a.bias.numel()


# --- bound to an optimizer that no longer steps -----------------------------------------------


def test_rebuilding_the_optimizer_says_pdt_is_bound_to_the_old_one_and_nothing_false():
    model = make_model()
    old = torch.optim.SGD(model.parameters(), lr=0.1)
    pdt = PDT(old, history=3, horizon=2, start_epoch=10, kernel="eager")
    train_epoch(model, old, make_data(n=32))
    pdt.step()
    new = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(3):
            train_epoch(model, new, make_data(seed=epoch, n=32))
            pdt.step()
    said = misuse_messages(caught)
    assert len(said) == 1 and "PDT was not created with" in said[0], said
    assert not any("no optimizer step in between" in m for m in said)


def test_a_second_optimizer_over_other_parameters_is_not_misuse():
    model = make_model()
    first, rest = list(model.parameters())[:2], list(model.parameters())[2:]
    opt, other = torch.optim.SGD(first, lr=0.1), torch.optim.SGD(rest, lr=0.1)
    pdt = PDT(opt, history=3, horizon=2, start_epoch=10, kernel="eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(2):
            x, y = make_data(seed=epoch, n=32)
            for i in range(0, 32, 16):
                opt.zero_grad()
                other.zero_grad()
                nn.functional.cross_entropy(model(x[i : i + 16]), y[i : i + 16]).backward()
                opt.step()
                other.step()
            pdt.step()
    assert misuse_messages(caught) == []


# --- a dropped step-mode PDT stops at once, without a garbage collection -----------------------


@pytest.mark.parametrize("how", ["del", "replaced"])
@pytest.mark.parametrize("options", [{}, {"scope": "layer"}, {"on_jump": "rescale"}, {"criterion": "authors"}])
def test_a_deleted_step_mode_pdt_writes_nothing_even_without_gc(options, how):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pdt = PDT(
        opt, history=2, horizon=5, start_epoch=0, interval=0, every_n_steps=1, kernel="eager", model=model, **options
    )
    train_epoch(model, opt, make_data(n=16 * 3))
    assert pdt.last_stats["predicted"]
    expected_model = copy.deepcopy(model)  # from here on, plain SGD
    expected_opt = torch.optim.SGD(expected_model.parameters(), lr=0.1, momentum=0.9)
    expected_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # not the same momentum tensors
    enabled = gc.isenabled()
    gc.disable()
    try:
        gone = weakref.ref(pdt)
        if how == "del":
            del pdt
        else:  # the new one never predicts
            pdt = PDT(opt, history=2, start_epoch=10**6, every_n_steps=1, kernel="eager")  # noqa: F841
        assert gone() is None, gc.get_referrers(gone())
        train_epoch(model, opt, make_data(seed=1, n=16 * 6))
        train_epoch(expected_model, expected_opt, make_data(seed=1, n=16 * 6))
    finally:
        if enabled:
            gc.enable()
    assert torch.equal(weights(model), weights(expected_model))


# --- load_state_dict: tensors without values refused, naming the key, before any change ------


@pytest.mark.parametrize("damage", ["meta", "sparse"])
def test_loading_meta_or_sparse_snapshots_is_refused_naming_the_key_and_changes_nothing(damage):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pdt = PDT(opt, history=3, kernel="eager")
    for epoch in range(2):
        train_epoch(model, opt, make_data(seed=epoch, n=32))
        pdt.step()
    saved = pdt.state_dict()
    train_epoch(model, opt, make_data(seed=5, n=32))
    pdt.step()
    before = state_bytes(pdt)
    convert = (lambda t: t.to("meta")) if damage == "meta" else (lambda t: t.to_sparse())
    saved["history"]["snapshots"] = [convert(t) for t in saved["history"]["snapshots"]]
    with pytest.raises(ValueError, match=r"\['history'\]\['snapshots'\]\[0\]"):
        pdt.load_state_dict(saved)
    assert state_bytes(pdt) == before


def test_a_checkpoint_read_with_map_location_meta_is_refused(tmp_path):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pdt = PDT(opt, history=3, kernel="eager")
    train_epoch(model, opt, make_data(n=32))
    pdt.step()
    torch.save(pdt.state_dict(), tmp_path / "pdt.pt")
    before = state_bytes(pdt)
    with pytest.raises(ValueError, match="meta tensor"):
        pdt.load_state_dict(torch.load(tmp_path / "pdt.pt", map_location="meta", weights_only=True))
    assert state_bytes(pdt) == before


# --- kernel="compiled" with a broken compiler: refused at construction -------------------------


def test_compiled_kernel_with_a_broken_compiler_is_refused_at_construction(tmp_path):
    broken = tmp_path / "broken-c++"
    broken.write_text("#!/bin/sh\necho 'this compiler is broken' >&2\nexit 1\n")
    broken.chmod(0o755)
    script = (
        "import torch\n"
        "from torch_pdt import PDT\n"
        "opt = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1)\n"
        "try:\n"
        "    PDT(opt, history=3, kernel='compiled')\n"
        "except ValueError as e:\n"
        "    print('refused:', e)\n"
        "else:\n"
        "    print('accepted')\n"
    )
    env = dict(os.environ, CXX=str(broken), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert "refused: kernel='compiled' is not available here" in done.stdout, done.stdout + done.stderr


# --- sparse optimizer state with on_jump: refused at construction, naming the parameter --------


@pytest.mark.parametrize("on_jump", ["reset", "rescale"])
def test_a_sparse_embedding_with_on_jump_is_refused_at_construction(on_jump):
    model = nn.Sequential(nn.Embedding(10, 3, sparse=True), nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"parameter 0\.weight.*sparse"):
        PDT(opt, model=model, on_jump=on_jump)
    PDT(opt, model=model, on_jump="keep")  # nothing to change in place: accepted


def test_sparse_state_found_after_training_names_the_parameter():
    """Without the model to tell, the sparse gradient or state itself does."""
    emb = nn.Embedding(10, 3, sparse=True)
    opt = torch.optim.SGD(emb.parameters(), lr=0.1, momentum=0.9)
    emb(torch.tensor([1, 2])).sum().backward()
    opt.step()
    with pytest.raises(ValueError, match="parameter group0.param0: its optimizer state 'momentum_buffer'"):
        PDT(opt, on_jump="reset")


# --- misuse warnings that are true ---------------------------------------------------------------


def test_step_mode_with_an_explicit_step_each_epoch_warns():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pdt = PDT(opt, history=3, horizon=2, start_epoch=100, every_n_steps=3, kernel="eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(3):
            train_epoch(model, opt, make_data(seed=epoch, n=16 * 10))  # 10 steps: never a multiple of 3 at the end
            pdt.step()
    said = misuse_messages(caught)
    assert len(said) == 1 and "called by hand" in said[0], said
    assert caught[0].filename == __file__  # points at the user's call


def test_step_mode_alone_does_not_warn():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    PDT(opt, history=3, horizon=2, start_epoch=100, every_n_steps=3, kernel="eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(3):
            train_epoch(model, opt, make_data(seed=epoch, n=16 * 10))
    assert misuse_messages(caught) == []


@pytest.mark.parametrize(
    "options", [{}, {"pacing": "adaptive", "tolerance": 0.2}, {"criterion": "random", "random_ratio": 0.3}]
)
def test_a_pdt_rebuilt_from_its_saved_configuration_is_not_warned(options):
    opt = torch.optim.SGD(make_model().parameters(), lr=0.1)
    first = PDT(opt, kernel="eager", **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PDT(opt, kernel="eager", **first.config.saved())
    assert misuse_messages(caught) == []


def test_an_ignored_option_given_another_value_is_still_warned():
    opt = torch.optim.SGD(make_model().parameters(), lr=0.1)
    with pytest.warns(PDTMisuseWarning, match="PDT ignores tolerance"):
        PDT(opt, kernel="eager", tolerance=0.5)


def test_the_error_for_a_changed_requires_grad_names_the_parameter():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pdt = PDT(opt, model=model, kernel="eager")
    name = pdt.names[-1]
    dict(model.named_parameters())[name].requires_grad_(False)
    with pytest.raises(ValueError, match=f"requires_grad turned off: {name}"):
        pdt.step()


# --- the integrations name their extra ----------------------------------------------------------


@pytest.mark.parametrize("module, extra", [("lightning", "lightning"), ("transformers", "transformers")])
def test_an_integration_without_its_extra_names_the_pip_command(module, extra):
    script = f"import sys\nsys.modules[{module!r}] = None\nimport torch_pdt.integrations.{module}\n"
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert f"ImportError: this integration needs {module}: pip install 'torch-pdt[{extra}]'" in done.stderr


def test_a_state_that_contains_itself_is_refused_not_a_recursion_error():
    """Self-attack: the walk that looks for meta and sparse tensors met a list holding itself."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pdt = PDT(opt, history=3, kernel="eager")
    pdt.step()
    saved, before = pdt.state_dict(), state_bytes(pdt)
    loop: list = []
    loop.append(loop)
    saved["history"]["numels"] = loop
    with pytest.raises(ValueError, match="contains itself"):
        pdt.load_state_dict(saved)
    assert state_bytes(pdt) == before


# --- Self-attack, second pass: the DCP state, old and foreign states, compiled fallbacks, the store -


def trained_pdt(epochs: int = 4) -> PDT:
    model, data = make_model(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pdt = PDT(opt, history=3, horizon=2, kernel="eager")
    for _ in range(epochs):
        train_epoch(model, opt, data)
        pdt.step()
    return pdt


def dcp_state(change: dict) -> dict:
    """A :class:`DCPState` dictionary of a trained PDT with the saved rest (or, under ``"snapshots"``, the
    snapshots) changed: ``None`` removes a key."""
    from torch_pdt.distributed.dcp import DCPState

    saved = DCPState(trained_pdt()).state_dict()
    rest = torch.load(io.BytesIO(saved["rest"]), weights_only=True)
    snapshots = dict(saved["snapshots"])
    for key, value in change.items():
        target = snapshots if key.startswith("snapshot ") else rest
        key = key.removeprefix("snapshot ")
        if value is None:
            target.pop(key)
        else:
            target[key] = value(target[key]) if callable(value) else value
    buffer = io.BytesIO()
    torch.save(rest, buffer)
    return {"rest": buffer.getvalue(), "snapshots": snapshots}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"names": None}, r"lacks \['names'\]"),
        ({"count": None}, r"lacks \['count'\]"),
        ({"next": None}, r"lacks \['next'\]"),
        ({"count": True}, "count=True"),
        ({"next": 3}, "next=3"),
        ({"next": -1}, "next=-1"),
        ({"ranks": "x"}, "ranks entry"),
        ({"ranks": {"run": "abc"}}, "ranks entry"),
        ({"snapshot 3": None}, "no snapshots of parameter group0.param3"),
        ({"snapshot 0": lambda t: t[:, :1]}, r"are \(3, 1, 8\), expected \(3, 16, 8\)"),
    ],
)
def test_a_damaged_dcp_state_is_a_value_error_that_changes_nothing(change, message):
    """Self-attack: a DCP state missing a key of its rest was a ``KeyError``; a ring position of True, or
    past the history, loaded; a snapshot of another shape was a ``RuntimeError`` of ``reshape``."""
    from torch_pdt.distributed.dcp import DCPState

    pdt = trained_pdt(epochs=1)  # another state than the saved one: a load would show
    before = state_bytes(pdt)
    with pytest.raises(ValueError, match=message):
        DCPState(pdt).load_state_dict(dcp_state(change))
    assert state_bytes(pdt) == before


@pytest.mark.parametrize("rest", [b"garbage", None, "truncated"])
def test_unreadable_dcp_bytes_are_a_value_error(rest):
    """Self-attack: damaged bytes were an ``UnpicklingError`` or a zip ``RuntimeError``; no bytes a ``KeyError``."""
    from torch_pdt.distributed.dcp import DCPState

    pdt = trained_pdt(epochs=1)
    state = dcp_state({})
    state["rest"] = state["rest"][:50] if rest == "truncated" else rest
    before = state_bytes(pdt)
    with pytest.raises(ValueError, match="DCPState"):
        DCPState(pdt).load_state_dict(state)
    assert state_bytes(pdt) == before


@pytest.fixture
def one_rank_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def distributed_pdt():
    from torch_pdt.distributed import DistributedPDT

    model = make_model()
    return DistributedPDT(torch.optim.SGD(model.parameters(), lr=0.1), history=3, horizon=2, kernel="eager")


def test_a_dcp_state_with_a_foreign_run_token_is_refused_before_the_load(one_rank_group):
    """Self-attack: ``DistributedPDT`` records the run token after committing the state; a token that is not
    an int (``"abc"``) raised ``ValueError: Unknown format code 'x'`` with the state already loaded."""
    from torch_pdt.distributed.dcp import DCPState

    pdt = distributed_pdt()
    before = state_bytes(pdt)
    with pytest.raises(ValueError, match="ranks entry"):
        foreign = {"run": "abc", "rank": 0, "world_size": 1, "sharded": False}
        DCPState(pdt).load_state_dict(dcp_state({"ranks": foreign}))
    assert state_bytes(pdt) == before


def test_a_per_rank_file_with_a_foreign_run_token_changes_nothing(one_rank_group):
    saved = trained_pdt().state_dict() | {"ranks": {"run": "abc", "rank": 0, "world_size": 1, "sharded": False}}
    pdt = distributed_pdt()
    before = state_bytes(pdt)
    with pytest.raises(ValueError, match="ranks"):
        pdt.load_state_dict(saved)
    assert state_bytes(pdt) == before


@pytest.mark.parametrize("options", [{"storage": "bf16"}, {"criterion": "authors"}])
def test_auto_kernel_falls_back_when_the_prediction_pass_fails_to_compile(monkeypatch, options):
    """kernel='auto' promises 'eager from then on if compiling fails'. The failure is simulated where it
    strikes first: the snapshot and Gram passes compile, the prediction pass does not."""
    from torch_pdt import kernel

    attempts = []

    def compiled(fn):
        if fn is not kernel.predict_mask_assemble:
            return fn  # the eager function stands in for its compiled graph

        def broken(rows, param, *args, **kwargs):
            attempts.append(fn)
            if poison:  # a failure part-way: the first parameter written, then the error
                param.fill_(float("nan"))
            raise RuntimeError("simulated inductor failure")

        return broken

    monkeypatch.setattr(kernel, "compiles", lambda device: True)
    monkeypatch.setattr(kernel, "compiled", compiled)

    def run(poison_first_write: bool) -> list[Tensor]:
        nonlocal poison
        poison = poison_first_write
        torch.manual_seed(0)
        params = [nn.Parameter(torch.randn(3)) for _ in range(kernel.AUTO_MIN_TENSORS)]  # enough tensors to compile
        drift = [torch.randn(3) * 0.01 for _ in params]
        opt = torch.optim.SGD(params, lr=0.0)
        pdt = PDT(opt, history=4, horizon=3, start_epoch=4, kernel="auto", **options)
        for _ in range(8):
            with torch.no_grad():
                for p, d in zip(params, drift):
                    p.add_(d)
            opt.step()
            pdt.step()
        assert pdt.epoch == 8
        return [p.detach().clone() for p in params]

    poison = False
    clean = run(poison_first_write=False)
    assert len(attempts) == 1  # the compiled pass was tried once, then eager from then on
    # What the failed call wrote did not stay: the run is the one whose failure wrote nothing, bit for bit.
    assert all(torch.equal(a, b) for a, b in zip(run(poison_first_write=True), clean))
    assert len(attempts) == 2 and all(torch.isfinite(p).all() for p in clean)


# --- recompute_batch_norm: non-finite batches ---------------------------------------------------


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_batch_holding_nan_or_inf_keeps_the_batch_norm_statistics(poison):
    """Self-attack: one batch holding NaN made every running mean and variance NaN, and the call returned True."""
    model = bn_model()
    before = bn_state(model)
    batches = [torch.randn(8, 3), torch.full((8, 3), poison)]
    with pytest.raises(ValueError, match=r"non-finite running statistics in 1, 4"):
        recompute_batch_norm(model, batches)
    after = bn_state(model)
    assert [(m, t) for m, t, _ in after] == [(m, t) for m, t, _ in before]
    assert all(torch.equal(a, b) for (_, _, x), (_, _, y) in zip(before, after) for a, b in zip(x, y))


# --- the DeepSpeed adapter: what it is given ----------------------------------------------------


def test_deepspeed_adapter_given_a_model_is_a_type_error():
    """Self-attack: ``DeepSpeedPDT(model)`` was ``AttributeError: ... 'zero_optimization_stage'``."""
    pytest.importorskip("deepspeed")
    from torch_pdt.distributed.deepspeed import DeepSpeedPDT

    with pytest.raises(TypeError, match="needs the engine of deepspeed.initialize, got Sequential"):
        DeepSpeedPDT(make_model(), history=3)


def test_deepspeed_adapter_at_stage_0_gives_the_reason_of_stage_0():
    """Self-attack: stage 0 was refused because 'stages 1-2 keep the fp32 master copy as one flat buffer'."""
    pytest.importorskip("deepspeed")
    from types import SimpleNamespace

    from torch_pdt.distributed.deepspeed import DeepSpeedPDT

    with pytest.raises(ValueError, match=r"stage 0: without ZeRO .* DistributedPDT\(engine.optimizer\)"):
        DeepSpeedPDT(SimpleNamespace(zero_optimization_stage=lambda: 0), history=3)
