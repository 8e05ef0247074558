"""Promises kept under attack, each broken through the public API as a user might (issue 11, section 3).

* never a non-finite weight, checked in the parameter's own dtype;
* never a corrupted weight: complex and meta parameters refused, rank-0 fits skipped;
* ``step()`` and ``load_state_dict()`` are all-or-nothing: when they raise, nothing changed;
* clear errors, and numbers of any numeric type where a number is meant;
* step mode can be detached, and a dropped PDT stops stepping;
* ``save_atomic`` behaves like ``torch.save`` for the user's file (permissions, symlinks);
* a rollback after a dtype change is refused, not approximated.
"""

from __future__ import annotations

import gc
import io
import math
import os
import stat
import weakref
from fractions import Fraction

import numpy as np
import pytest
import torch
from test_pdt import make_data, make_model, train_epoch, weights
from torch import nn

from torch_pdt import PDT, save_atomic


def snapshot_of(pdt: PDT) -> dict:
    """Everything a step or a load could change: PDT's whole state, its counters and statistics."""
    buffer = io.BytesIO()
    torch.save(pdt.state_dict(), buffer)
    return {"state": buffer.getvalue(), "stats": repr(pdt.last_stats), "steps": pdt.optimizer_steps}


def trained(epochs: int, **kwargs) -> tuple[nn.Module, torch.optim.Optimizer, PDT]:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pdt = PDT(opt, model=model, **(dict(history=3, horizon=2, start_epoch=2, interval=0) | kwargs))
    data = make_data()
    for _ in range(epochs):
        train_epoch(model, opt, data)
        pdt.step(loss=1.0)
    return model, opt, pdt


# --- never a non-finite weight ---------------------------------------------------------------


def test_a_forecast_that_overflows_float16_is_rejected():
    """Weights 10, 100, 1000: the 2-step forecast 1e5 is finite in float32 but not in float16."""
    p = nn.Parameter(torch.zeros(3, dtype=torch.float16))
    pdt = PDT(torch.optim.SGD([p], lr=0.0), history=3, horizon=2, start_epoch=2, interval=0, criterion="none")
    for t in range(3):
        with torch.no_grad():
            p.copy_(torch.tensor([1.0, 2.0, -3.0]) * 10.0 ** (t + 1))
        stats = pdt.step()
    assert stats["predicted"]
    assert stats["rejected"]["nonfinite"] == 3 and stats["accepted"] == 0
    assert torch.isfinite(p).all() and torch.equal(p.detach(), torch.tensor([1000.0, 2000.0, -3000.0]).half())


# --- never a corrupted weight ----------------------------------------------------------------


def test_complex_parameters_are_refused_at_construction():
    p = nn.Parameter(torch.ones(3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="complex"):
        PDT(torch.optim.SGD([p], lr=0.1))


def test_meta_parameters_are_refused_at_construction():
    model = nn.Linear(3, 2, device="meta")
    with pytest.raises(ValueError, match="meta"):
        PDT(torch.optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.parametrize("criterion", ["none", "random", "pdt"])
@pytest.mark.parametrize("rtol", [1.0, 2.5])
def test_a_truncation_to_rank_zero_skips_instead_of_writing_zeros(criterion, rtol):
    model, opt, pdt = trained(2, criterion=criterion, rtol=rtol)
    train_epoch(model, opt, make_data())
    before = weights(model).clone()
    stats = pdt.step()
    assert not stats["predicted"] and "rank 0" in stats["reason"] and "rtol" in stats["reason"]
    assert torch.equal(weights(model), before)


# --- step() is all-or-nothing ----------------------------------------------------------------


def _resize(model: nn.Module) -> str:
    model[0].bias.data = torch.zeros(17)
    return "0.bias"


def _reshape(model: nn.Module) -> str:
    model[0].weight.data = model[0].weight.data.reshape(8, 16)  # same size, other shape
    return "0.weight"


def _to_double(model: nn.Module) -> str:
    model[2].double()  # values unchanged, exactly
    return "2.weight"


def _strided(model: nn.Module) -> str:
    model[0].weight.data = torch.zeros(16, 16)[:, ::2]  # same shape, not dense in memory
    return "0.weight"


@pytest.mark.parametrize(
    "change, message", [(_resize, "shape"), (_reshape, "shape"), (_to_double, "dtype"), (_strided, "dense")]
)
def test_a_changed_parameter_raises_before_anything_changes(change, message):
    """(A device change, p.data = p.data.cuda(), takes the same check; it needs a GPU to try.)"""
    model, opt, pdt = trained(3, pacing="adaptive")
    before = snapshot_of(pdt)
    kept = {n: p.detach().clone() for n, p in model.named_parameters()}
    changed = change(model)
    with pytest.raises(ValueError, match=message) as error:
        pdt.step(loss=10.0)  # a rollback if it ran
    assert changed in str(error.value)
    assert snapshot_of(pdt) == before
    for n, p in model.named_parameters():
        if n != changed or message == "dtype":
            assert torch.equal(p.detach().double(), kept[n].double()), n


def test_a_changed_memory_order_raises_before_anything_changes():
    """Channels-last after construction: same shape and values, but every snapshot row would be
    read in another element order."""
    conv = nn.Conv2d(3, 4, 3)
    opt = torch.optim.SGD(conv.parameters(), lr=0.0)
    pdt = PDT(opt, history=2, horizon=1, start_epoch=0, interval=0, criterion="none", model=conv)
    pdt.step()
    before = snapshot_of(pdt)
    conv.weight.data = conv.weight.data.to(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="weight changed stride"):
        pdt.step()
    assert snapshot_of(pdt) == before


def _squares() -> tuple[nn.Module, torch.optim.Optimizer]:
    """Two square layers trained by PDT (one bias in float16), and a third opted out (``"pdt": False``)
    with a frozen bias."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].bias.data = model[1].bias.data.half()
    model[2].bias.requires_grad_(False)
    groups = [{"params": [*model[0].parameters(), *model[1].parameters()]}, {"params": [model[2].weight], "pdt": False}]
    groups[0]["params"].append(model[2].bias)  # frozen: in the group, not predicted
    return model, torch.optim.SGD(groups, lr=0.0)


@pytest.mark.parametrize(
    "change, message",
    [
        # Each keeps the data pointer of the tensor it changes: the fingerprint's other parts must see it.
        (lambda m, o: setattr(m[0].weight, "data", m[0].weight.data[:3]), "0.weight changed shape"),  # same strides
        (lambda m, o: setattr(m[0].weight, "data", m[0].weight.data.t()), "0.weight changed stride"),
        (lambda m, o: setattr(m[1].bias, "data", m[1].bias.data.view(torch.bfloat16)), "1.bias changed dtype"),
        (lambda m, o: setattr(m[1].bias, "data", m[1].bias.data.view(2, 2)), "1.bias changed shape"),
        # The optimizer's groups.
        (lambda m, o: o.param_groups[0]["params"].__setitem__(1, nn.Parameter(torch.zeros(4))), "no longer in"),
        (lambda m, o: o.param_groups[0]["params"].reverse(), "another order"),
        (lambda m, o: o.add_param_group({"params": [nn.Parameter(torch.zeros(1))]}), "add_param_group"),
        (lambda m, o: o.param_groups[1].__setitem__("pdt", True), "1 new tensor"),
        (lambda m, o: m[2].bias.requires_grad_(True), "1 new tensor"),
        (lambda m, o: m[1].weight.requires_grad_(False), "requires_grad turned off: 1.weight"),
    ],
)
def test_the_check_at_every_step_sees_every_change(change, message):
    """The check compares a cheap fingerprint and runs the full one only where it differs: every change the
    full check refuses must change the fingerprint, also after a harmless change took a new one."""
    model, opt = _squares()
    pdt = PDT(opt, history=2, horizon=1, start_epoch=0, interval=0, criterion="none", model=model, kernel="eager")
    pdt.step()
    model[0].weight.data = model[0].weight.data.clone()  # same layout elsewhere: harmless, a new fingerprint
    model[1].bias.data = torch.zeros(4, dtype=torch.float16)
    pdt.step()
    before = snapshot_of(pdt)
    change(model, opt)
    with pytest.raises(ValueError, match=message):
        pdt.step()
    assert snapshot_of(pdt) == before


def test_rollback_after_a_dtype_change_is_refused_clearly():
    """model.double() after a prediction: the history holds float32 weights, a rollback could not be exact."""
    model, opt, pdt = trained(3, pacing="adaptive", criterion="none")
    assert pdt.last_stats["predicted"] and pdt.last_stats["accepted"]
    model.double()
    before = snapshot_of(pdt)
    with pytest.raises(ValueError, match="dtype.*float32.*float64|float32.*float64"):
        pdt.step(loss=100.0)
    assert snapshot_of(pdt) == before


def test_a_zero_element_parameter_beside_others_predicts():
    model = make_model()
    empty = nn.Parameter(torch.zeros(0))
    opt = torch.optim.SGD([*model.parameters(), empty], lr=0.1)
    pdt = PDT(opt, history=3, horizon=2, start_epoch=2, interval=0, criterion="none", on_jump="reset")
    for _ in range(3):
        train_epoch(model, opt, make_data())
        stats = pdt.step()
    assert stats["predicted"] and stats["accepted"] == stats["numel"] == sum(p.numel() for p in model.parameters())
    assert stats["accepted_ratio_per_param"][pdt.names[-1]] == 0.0


def test_only_empty_parameters_are_refused():
    with pytest.raises(ValueError, match="no elements"):
        PDT(torch.optim.SGD([nn.Parameter(torch.zeros(0))], lr=0.1))


def test_a_sparse_momentum_buffer_under_reset_raises_before_anything_changes():
    """Checked at every step, so the first epoch says so, not the first prediction."""
    torch.manual_seed(0)
    embedding = nn.Embedding(10, 4, sparse=True)
    opt = torch.optim.SGD(embedding.parameters(), lr=0.1, momentum=0.9)
    pdt = PDT(opt, history=3, horizon=2, start_epoch=0, interval=0, criterion="none", on_jump="reset")
    opt.zero_grad()
    embedding(torch.tensor([1, 2, 3])).sum().backward()
    opt.step()
    assert opt.state[embedding.weight]["momentum_buffer"].layout == torch.sparse_coo
    before, kept = snapshot_of(pdt), embedding.weight.detach().clone()
    with pytest.raises(ValueError, match="momentum_buffer.*on_jump"):
        pdt.step()
    assert snapshot_of(pdt) == before and torch.equal(embedding.weight, kept)


def test_a_sparse_momentum_buffer_is_fine_where_nothing_touches_it():
    """on_jump="keep" never reads the state; an adaptive rollback zeroes a sparse buffer in place."""
    torch.manual_seed(0)
    embedding = nn.Embedding(10, 4, sparse=True)
    opt = torch.optim.SGD(embedding.parameters(), lr=0.1, momentum=0.9)
    pdt = PDT(opt, history=3, horizon=2, start_epoch=2, interval=0, criterion="none", pacing="adaptive")
    index = torch.tensor([1, 2, 3])
    for loss in (1.0, 1.0, 1.0, 9.0):
        opt.zero_grad()
        embedding(index).sum().backward()
        opt.step()
        stats = pdt.step(loss=loss)
    assert stats["rolled_back"]
    assert opt.state[embedding.weight]["momentum_buffer"].to_dense().abs().sum() == 0


# --- load_state_dict() is all-or-nothing ------------------------------------------------------


def _set(path: tuple, value):
    def damage(state):
        target = state
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return damage


DAMAGES = {
    "epoch-str": (_set(("epoch",), "7"), "epoch"),
    "epoch-negative": (_set(("epoch",), -1), "epoch"),
    "epoch-float": (_set(("epoch",), 2.5), "epoch"),
    "plain-none": (_set(("plain_epochs",), None), "plain_epochs"),
    "steps-bool": (_set(("optimizer_steps",), True), "optimizer_steps"),
    "horizon-zero": (_set(("pacing", "horizon"), 0), "horizon"),
    "horizon-too-large": (_set(("pacing", "horizon"), 99), "horizon"),
    "interval-negative": (_set(("pacing", "interval"), -1), "interval"),
    "interval-str": (_set(("pacing", "interval"), "1"), "interval"),
    "rollbacks-negative": (_set(("pacing", "rollbacks"), -2), "rollbacks"),
    "generator-device": (_set(("generators", "cuda:7"), torch.Generator().get_state()), "generator"),
    "generator-bogus": (_set(("generators", "no-such-device"), torch.Generator().get_state()), "generator"),
    "ring-negative": (_set(("history", "next"), -1), "next"),
    "ring-too-large": (_set(("history", "next"), 3), "next"),
    "ring-str": (_set(("history", "next"), "0"), "next"),
    "gram-not-tensor": (_set(("history", "gram"), [[0.0]]), "gram"),
    "snapshots-not-tensors": (_set(("history", "snapshots"), [[1.0, 2.0]]), "snapshots"),
    "numels-not-list": (_set(("history", "numels"), 5), "numels"),
    "config-not-dict": (_set(("config",), "pdt"), "config"),
    "state-not-dict": (None, "state"),
}


@pytest.mark.parametrize("name", DAMAGES)
def test_a_damaged_state_changes_nothing(name):
    damage, message = DAMAGES[name]
    *_, source = trained(5, criterion="random")
    state = source.state_dict()
    if damage is None:
        state = list(state.items())
    else:
        damage(state)
    *_, target = trained(3, criterion="random")
    before = snapshot_of(target)
    with pytest.raises(ValueError, match=message):
        target.load_state_dict(state)
    assert snapshot_of(target) == before


@pytest.mark.parametrize("key, value", [("pending", "x"), ("good_streak", -1), ("judged", 1.5), ("losses", 3)])
def test_scheduler_state_fields_are_checked(key, value):
    scheduler = "reference" if key == "losses" else "adaptive"
    *_, source = trained(4, pacing=scheduler, criterion="none")
    state = source.state_dict()
    state["pacing"][key] = value
    *_, target = trained(2, pacing=scheduler, criterion="none")
    before = snapshot_of(target)
    with pytest.raises(ValueError, match=key):
        target.load_state_dict(state)
    assert snapshot_of(target) == before


def test_a_pending_nan_loss_is_a_valid_state():
    """A prediction made in an epoch whose loss was NaN awaits its judgement like any other."""
    *_, source = trained(4, pacing="adaptive", criterion="none")
    state = source.state_dict()
    state["pacing"]["pending"] = math.nan
    *_, target = trained(2, pacing="adaptive", criterion="none")
    target.load_state_dict(state)
    assert math.isnan(target.pacing.pending)


# --- numbers of any numeric type; clear errors -----------------------------------------------


def test_numpy_numbers_are_accepted_and_stored_as_python_numbers():
    model = make_model()
    pdt = PDT(
        torch.optim.SGD(model.parameters(), lr=0.1),
        history=np.int64(3),
        horizon=np.int32(2),
        start_epoch=np.int16(2),
        interval=np.uint8(0),
        chunk_size=np.int64(50),
        seed=np.uint64(2**64 - 1),
        criterion="random",
        random_ratio=np.float32(0.5),
        rank=np.int64(2),
        rtol=np.float64(1e-9),
        pacing="adaptive",
        tolerance=np.float32(0.1),
        patience=np.int64(2),
    )
    config = pdt.state_dict()["config"]
    for key in ("history", "horizon", "start_epoch", "interval", "seed", "rank", "patience"):
        assert type(config[key]) is int, key
    for key in ("random_ratio", "rtol", "tolerance"):
        assert type(config[key]) is float, key
    data = make_data()
    for loss in (np.float32(1.0), np.float64(0.9), np.int64(1), np.array(0.8), torch.tensor(0.7), Fraction(1, 2)):
        train_epoch(model, pdt.optimizer, data)
        pdt.step(loss=loss)
    assert pdt.last_stats["predicted"] and pdt.last_stats["pacing"]["loss"] == 0.5
    buffer = io.BytesIO()
    torch.save(pdt.state_dict(), buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)  # plain Python numbers only


@pytest.mark.parametrize(
    "loss",
    [10**400, -(10**400), np.array([1.0, 2.0]), "1.0", np.bool_(True), 2 + 0j],
    ids=["huge", "-huge", "array", "str", "numpy-bool", "complex"],
)
def test_a_loss_that_is_no_real_number_names_the_argument(loss):
    *_, pdt = trained(1, pacing="adaptive")
    before = snapshot_of(pdt)
    with pytest.raises((ValueError, TypeError), match="loss"):
        pdt.step(loss=loss)
    assert snapshot_of(pdt) == before


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(model=object()), "model"),
        (dict(model="net"), "model"),
        (dict(seed=2**64), "seed"),
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(history=np.float64(3.0)), "history"),
        (dict(history=np.bool_(True)), "history"),
        (dict(every_n_steps=np.int64(0)), "every_n_steps"),
        (dict(tolerance=10**400), "tolerance"),
        (dict(random_ratio=np.float64(1.5)), "random_ratio"),
        (dict(rank=np.int64(0)), "rank"),
    ],
)
def test_invalid_numbers_and_objects_name_the_argument(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        PDT(torch.optim.SGD(make_model().parameters(), lr=0.1), **kwargs)


def test_the_largest_seed_works():
    *_, pdt = trained(4, criterion="random", seed=2**64 - 1)
    assert pdt.last_stats["predicted"]


# --- step mode can be detached ---------------------------------------------------------------


def _plain_run(steps: int) -> nn.Module:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = make_data(n=16 * steps)
    train_epoch(model, opt, data)
    return model


def test_close_detaches_step_mode():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pdt = PDT(opt, history=3, horizon=2, start_epoch=2, interval=0, every_n_steps=2)
    train_epoch(model, opt, make_data(n=16 * 4))
    assert (pdt.optimizer_steps, pdt.epoch) == (4, 2)
    pdt.close()
    pdt.close()  # twice is fine
    train_epoch(model, opt, make_data(seed=1, n=16 * 8))
    assert (pdt.optimizer_steps, pdt.epoch) == (4, 2)
    pdt.step()  # stepping by hand still works
    assert pdt.epoch == 3


def test_a_dropped_pdt_stops_stepping():
    """The first PDT would predict from the second step on; replaced at once, it never writes."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pdt = PDT(opt, history=2, horizon=5, start_epoch=0, interval=0, every_n_steps=1, criterion="none")
    gone = weakref.ref(pdt)
    pdt = PDT(opt, history=2, horizon=5, start_epoch=10**6, interval=0, every_n_steps=1)
    gc.collect()
    assert gone() is None
    train_epoch(model, opt, make_data(n=16 * 6))
    assert pdt.optimizer_steps == 6
    assert torch.equal(weights(model), weights(_plain_run(6)))


# --- save_atomic behaves like torch.save ------------------------------------------------------


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_save_atomic_gives_the_permissions_torch_save_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        torch.save({"a": 1}, tmp_path / "plain.pt")
        save_atomic({"a": 1}, tmp_path / "atomic.pt")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "atomic.pt") == _mode(tmp_path / "plain.pt") == 0o666 & ~umask


def test_save_atomic_keeps_the_mode_of_an_existing_file(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"a": 1}, path)
    os.chmod(path, 0o640)
    save_atomic({"a": 2}, path)
    assert _mode(path) == 0o640 and torch.load(path, weights_only=True) == {"a": 2}


def test_save_atomic_writes_through_a_symlink(tmp_path):
    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "real.pt"
    torch.save({"a": 1}, real)
    link = tmp_path / "last.pt"
    link.symlink_to(os.path.relpath(real, tmp_path))
    save_atomic({"a": 2}, link)
    assert link.is_symlink() and torch.load(real, weights_only=True) == {"a": 2}
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["real.pt"]
    dangling = tmp_path / "new.pt"
    dangling.symlink_to(tmp_path / "store" / "fresh.pt")
    save_atomic({"a": 3}, dangling)
    assert dangling.is_symlink() and torch.load(tmp_path / "store" / "fresh.pt", weights_only=True) == {"a": 3}


# --- found by an attack on the integrated core ------------------------------------------------


@pytest.mark.parametrize("predict", ["False", 0.5, None, 1])
def test_predict_must_be_a_bool_and_a_refusal_changes_nothing(predict):
    model, opt, pdt = trained(3)
    before = snapshot_of(pdt)
    with pytest.raises(ValueError, match="predict must be True or False"):
        pdt.step(loss=1.0, predict=predict)
    assert snapshot_of(pdt) == before


def test_a_step_mode_step_that_raises_leaves_the_counter_for_a_retry():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pdt = PDT(opt, history=3, horizon=2, start_epoch=0, interval=0, every_n_steps=2)
    x, y = make_data()

    def one_step():
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    one_step()
    extra = nn.Parameter(torch.zeros(3))
    opt.add_param_group({"params": [extra]})
    with pytest.raises(ValueError):
        one_step()  # the hook's step() refuses: the optimizer's parameters changed
    assert (pdt.optimizer_steps, pdt.epoch) == (1, 0)
    opt.param_groups.pop()
    one_step()  # the retried second step of the period: PDT steps now
    assert (pdt.optimizer_steps, pdt.epoch) == (2, 1)


@pytest.mark.parametrize("every_n_steps", [None, 2])
def test_the_whole_optimizer_pickles_with_pdt_attached(every_n_steps):
    # torch.save(optimizer) of the object, not its state_dict, with PDT's step hook registered:
    # the loaded optimizer steps and counts for no PDT.
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pdt = PDT(opt, history=3, horizon=2, start_epoch=2, every_n_steps=every_n_steps)
    train_epoch(model, opt, make_data())
    steps = pdt.optimizer_steps  # counted in step mode only
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    before = [p.detach().clone() for g in loaded.param_groups for p in g["params"]]
    for g in loaded.param_groups:
        for p in g["params"]:
            p.grad = torch.ones_like(p)
    loaded.step()
    after = [p for g in loaded.param_groups for p in g["params"]]
    assert all(not torch.equal(a, b) for a, b in zip(after, before))
    assert pdt.optimizer_steps == steps  # the copy's hook counts for no PDT
