"""Fresh BatchNorm statistics after a jump (torch_pdt.batchnorm), against hand-computed averages."""

from __future__ import annotations

import torch
from torch import nn

from torch_pdt import PDT, recompute_batch_norm


def test_running_statistics_are_the_average_over_the_batches_at_the_current_weights():
    """BatchNorm after a linear layer: mean of the batch means, mean of the unbiased batch variances."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double()
    batches = [torch.randn(8, 3, dtype=torch.float64) * (1 + b) for b in range(4)]
    with torch.no_grad():
        model[0].weight.mul_(3.0)  # "a jump": the stored statistics are stale
        hidden = [model[0](x) for x in batches]
    model.eval()
    assert recompute_batch_norm(model, [(x, None) for x in batches])  # loaders' (x, y) pairs too
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, torch.stack([h.mean(0) for h in hidden]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([h.var(0) for h in hidden]).mean(0))
    assert not model.training and bn.momentum == 0.1  # mode and momentum as they were


def test_after_an_accepted_prediction_the_statistics_follow_the_predicted_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    frozen = nn.Linear(3, 4)
    frozen.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pdt = PDT(opt, history=3, horizon=3, start_epoch=3, interval=0, criterion="none")
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    for _ in range(4):
        for i in range(0, 32, 8):
            opt.zero_grad()
            nn.functional.mse_loss(model(x[i : i + 8]), y[i : i + 8]).backward()
            opt.step()
        stats = pdt.step()
    assert stats["predicted"] and stats["accepted"] == stats["numel"]
    stale = model[1].running_mean.clone()
    batches = [x[i : i + 8] for i in range(0, 32, 8)]
    assert recompute_batch_norm(model, batches)
    with torch.no_grad():
        expected = torch.stack([model[0](b).mean(0) for b in batches]).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected)
    assert not torch.allclose(stale, expected)
    assert not recompute_batch_norm(frozen, batches)  # no BatchNorm: nothing to do


def test_an_empty_batch_list_is_refused_and_leaves_the_statistics_as_they_were():
    """update_bn on no batches resets the running statistics to 0 and 1: refused before that."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    for _ in range(5):
        model(torch.randn(8, 3) + 5.0)
    before = {k: v.clone() for k, v in model[1].state_dict().items()}
    model.eval()
    for empty in ([], iter([])):
        try:
            recompute_batch_norm(model, empty)
        except ValueError as error:
            assert "batches is empty" in str(error)
        else:
            raise AssertionError("an empty batch list was accepted")
    for k, v in model[1].state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not model.training
    assert recompute_batch_norm(model, iter([torch.randn(8, 3)]))  # a one-shot iterator: its first batch counts
    assert model[1].num_batches_tracked == 1


def test_each_module_keeps_its_own_training_mode():
    """A model in training with one BatchNorm frozen in eval mode (fine-tuning) keeps it in eval."""
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 4), nn.BatchNorm1d(4))
    model.train()
    model[1].eval()
    assert recompute_batch_norm(model, [torch.randn(8, 3)])
    assert [m.training for m in model] == [True, False, True, True]
    model.eval()
    model[3].train()
    assert recompute_batch_norm(model, [torch.randn(8, 3)])
    assert [m.training for m in model] == [False, False, False, True] and not model.training
