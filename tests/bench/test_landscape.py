"""The landscape picture and the loss-against-FLOPs plot: planes, loss grid, FLOPs curves, CLI end to end."""

import json
import math

import numpy as np
import pytest
import torch
from fake_runs import make_run

from pdt_bench import cli, metrics, plots
from pdt_bench.landscape import Plane, ends_plane, loss_grid, pca_plane, project

PNG = b"\x89PNG\r\n\x1a\n"


def _basis(dim: int = 50) -> torch.Tensor:
    """Two orthonormal directions of R^dim (columns), in general position."""
    q, _ = torch.linalg.qr(torch.randn(dim, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    return q


def test_pca_plane_gives_back_the_known_coordinates_of_a_trajectory_on_a_plane():
    q = _basis()
    t = torch.arange(12, dtype=torch.float64) * (2 * math.pi / 12)
    # Centred coordinates with a diagonal covariance: variances 9 and 1 along the two directions.
    coords = torch.stack([3 * torch.cos(t), torch.sin(t)], 1)
    offset = torch.linspace(-1, 1, 50, dtype=torch.float64)
    plane = pca_plane(offset + coords @ q.T)
    assert plane.explained == pytest.approx([0.9, 0.1])
    assert torch.allclose(plane.origin, offset)
    got = project(plane, offset + coords @ q.T)
    signs = torch.sign((got * coords).sum(0))
    assert torch.allclose(got * signs, coords, atol=1e-10)
    assert torch.allclose(plane.directions @ plane.directions.T, torch.eye(2, dtype=torch.float64), atol=1e-12)


def test_ends_plane_puts_the_start_and_both_ends_at_their_known_coordinates():
    q = _basis()
    start = torch.linspace(0, 1, 50, dtype=torch.float64)
    a, b = start + 2 * q[:, 0], start + q[:, 0] + 3 * q[:, 1]
    got = project(ends_plane(start, a, b), torch.stack([start, a, b]))
    assert torch.allclose(got, torch.tensor([[0.0, 0], [2, 0], [1, 3]], dtype=torch.float64), atol=1e-12)


def test_a_trajectory_on_a_line_has_no_plane():
    line = torch.arange(5.0)[:, None] * torch.ones(50)
    with pytest.raises(ValueError, match="fewer than two directions"):
        pca_plane(line)
    with pytest.raises(ValueError, match="one line"):
        ends_plane(line[0], line[-1], line[2])


def test_loss_grid_of_a_two_parameter_linear_model_matches_the_loss_worked_by_hand():
    x, y = torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0], [5.0]])
    model = torch.nn.Linear(1, 1)  # parameters in order: weight w, bias b
    before = [p.detach().clone() for p in model.parameters()]
    s = 1 / math.sqrt(2)
    origin = torch.tensor([0.5, -1.0], dtype=torch.float64)
    plane = Plane("hand", origin, torch.tensor([[s, s], [s, -s]], dtype=torch.float64))
    alphas, betas = np.array([-1.0, 0.0, 2.0]), np.array([0.5, 1.5])

    def mse(m):
        return torch.nn.functional.mse_loss(m(x), y).item()

    got = loss_grid(model, plane, alphas, betas, mse)
    for i, beta in enumerate(betas):
        for j, alpha in enumerate(alphas):
            w, b = 0.5 + s * (alpha + beta), -1.0 + s * (alpha - beta)
            assert got[i, j] == pytest.approx(((w + b - 3) ** 2 + (2 * w + b - 5) ** 2) / 2, rel=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # the model's weights are back


def _flops_run(seed, losses, predicted):
    stats = [{"predicted": p, "accepted": 1 if p else 0, "accepted_ratio": 0.5} for p in predicted]
    run = make_run("pdt", seed, losses, [0.5] * len(losses), pdt=stats)
    run["overhead"] = {"model_flops_per_epoch": 100.0, "pdt_flops_per_prediction": 10.0}
    return run


def test_flops_curve_of_a_hand_made_run_is_the_cumulative_sum_of_model_and_pdt_work():
    run = _flops_run(0, [1.0, 0.5, 0.25, 0.125], [False, True, False, True])
    assert metrics.cumulative_flops(run) == [100, 210, 310, 420]
    assert metrics.jump_epochs(run) == [2, 4]


def test_flops_band_is_over_the_span_every_seed_covers(tmp_path):
    # Seed 1 predicts once more: its epochs cost more, so the common span ends at seed 0's last FLOPs.
    runs = [
        _flops_run(0, [1.0, 0.5, 0.25], [False, False, False]),
        _flops_run(1, [2.0, 1.0, 0.5], [False, True, True]),
    ]
    x, losses = plots._by_flops(runs)
    assert x[0] == 100 and x[-1] == 300
    assert losses[:, 0].tolist() == [1.0, 2.0]
    # Seed 1 reaches 300 FLOPs between its epoch 2 (210) and epoch 3 (320): 1.0 + (90 / 110)(0.5 - 1.0).
    assert losses[:, -1] == pytest.approx([0.25, 1.0 - 0.5 * 90 / 110])
    baseline = [_flops_run(s, [3.0, 1.5, 0.6], [False] * 3) | {"method": "baseline"} for s in (0, 1)]
    (path,) = plots.loss_against_flops(tmp_path / "flops.png", [*baseline, *runs])
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5_000  # drawn (a 64-colour palette PNG)
    assert plots.loss_against_flops(tmp_path / "none.png", [make_run("baseline", 0, [1.0], [0.5])]) == []


def test_landscape_picture_of_a_hand_made_record_is_written(tmp_path):
    square = [[0.0, 0.0], [1.0, 0.5], [2.0, 0.2]]
    record = {
        "task": "hand",
        "seed": 0,
        "methods": ["baseline", "pdt"],
        "plane": "ends",
        "explained": None,
        "paths": {"baseline": square, "pdt": [[0.0, 0.0], [1.5, 1.0], [1.8, 1.2]]},
        "jumps": [1],
        "alphas": [-1.0, 0.0, 1.0, 2.0],
        "betas": [-1.0, 0.0, 1.5],
        "losses": [[-1.0 + a * a + b * b for a in (-1, 0, 1, 2)] for b in (-1, 0, 1.5)],  # negative: linear levels
        "subset": 10,
        "best_loss": 0.5,
        "seconds": {},
    }
    path = plots.plot_landscape(tmp_path / "ends.png", record)
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5_000  # drawn (a 64-colour palette PNG)
    record |= {"plane": "pca", "explained": [0.8, 0.1], "jumps": [], "losses": np.exp(record["losses"]).tolist()}
    assert plots.plot_landscape(tmp_path / "pca.png", record).read_bytes()[:8] == PNG


QUICK = ["landscape", "--task", "mnist1d-mlp", "--tiny", "--epochs", "4", "--quiet", "--grid", "3"]
PREDICTING = ["--history", "2", "--start-epoch", "1", "--interval", "0"]


@pytest.mark.parametrize("plane", ["pca", "ends"])
def test_landscape_command_end_to_end(plane, tmp_path, capsys):
    out = tmp_path / plane
    assert cli.main([*QUICK, *PREDICTING, "--plane", plane, "--subset", "100", "--out", str(out)]) == 0
    assert "landscape.png" in capsys.readouterr().out
    assert (out / "landscape.png").read_bytes()[:8] == PNG
    land = json.loads((out / "landscape.json").read_text())
    assert land["methods"] == ["baseline", "pdt"] and land["plane"] == plane and land["subset"] == 100
    assert land["command"].startswith("pdt-bench landscape")
    baseline, pdt = (np.array(land["paths"][m]) for m in land["methods"])
    assert baseline.shape == pdt.shape == (5, 2)  # the start and 4 epochs
    assert np.allclose(baseline[0], pdt[0])  # one seed, one start
    assert land["jumps"] and set(land["jumps"]) <= {1, 2, 3, 4}
    losses = np.array(land["losses"])
    assert losses.shape == (3, 3) and np.isfinite(losses).all() and land["best_loss"] > 0
    # The grid spans every projected snapshot, with room to spare.
    both = np.concatenate([baseline, pdt])
    assert land["alphas"][0] < both[:, 0].min() and land["alphas"][-1] > both[:, 0].max()
    assert land["betas"][0] < both[:, 1].min() and land["betas"][-1] > both[:, 1].max()
    if plane == "ends":
        assert np.allclose(baseline[0], 0) and abs(baseline[-1][1]) < 1e-6
    else:
        assert 0 < sum(land["explained"]) <= 1


def test_landscape_of_a_run_where_pdt_never_jumped(tmp_path, capsys):
    # Four epochs before T0 = 5: PDT never predicts and its trajectory is the baseline's.
    out = tmp_path / "never"
    assert cli.main([*QUICK, "--out", str(out)]) == 0
    land = json.loads((out / "landscape.json").read_text())
    assert land["jumps"] == [] and np.allclose(land["paths"]["baseline"], land["paths"]["pdt"])
    assert cli.main([*QUICK, "--plane", "ends", "--out", str(tmp_path / "ends")]) == 2
    assert "PDT never jumped" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "1"], "--grid must be at least 2"),
        (["--subset", "0"], "--subset must be at least 1"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--margin", "nan"], "--margin"),
        (["--task", "imagenet"], "unknown task"),
        (["--method", "magic"], "unknown method"),
        (["--method", "baseline"], "always drawn"),
        (["--history", "0"], "history"),
    ],
)
def test_landscape_refuses_bad_input_before_training(args, message, tmp_path, capsys):
    assert cli.main([*QUICK, *args, "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
