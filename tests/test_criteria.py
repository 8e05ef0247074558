r"""Hand-worked tests of the masking criteria (:mod:`torch_pdt.criteria`) and of PDT's use of them.

Notation used in the comments, per element ``j``:

* ``steps``  the ``tau`` predicted increments ``w_pred(i+k) - w_pred(i+k-1)``, k = 1..tau
  (written per element; :func:`_increments` transposes them to the ``(tau, c)`` layout);
* ``D``      their sum, the predicted displacement;
* ``d``      ``delta``, the optimizer's last one-epoch displacement.

Criteria (paper Sec. 3.2, NOTES.md section 2):

* ``pdt``:  Eq. 7 (every step has sign(d), with sign(0) = 0) and Eq. 6 ``|d| < |D| <= tau |d|``;
* ``authors`` (the authors' code; earlier name ``"reference"``): sign(D) = sign(d) and
  ``|d| <= |D| <= (tau + 1) |d|`` (final displacement only);
* ``accel_only``: Eq. 6 only; ``consistency_only``: Eq. 7 only; ``none``: everything.

Every expected mask below was worked out by hand from these definitions, element by element.
Each verdict is also checked on the mirrored input (``-steps``, ``-d``), which must give the same
masks. The values are dyadic (0.5, 0.25, ...), so every sum and product is exact in float64 and
the ties really are ties.
"""

from __future__ import annotations

import math

import pytest
import torch

from torch_pdt import PDT, criteria
from torch_pdt.criteria import CRITERIA, evaluate

T, F = True, False
NAN, INF = math.nan, math.inf
CHECKS = ("accept", "consistency", "lower_bound", "upper_bound")


def _increments(steps: list[list[float]]) -> torch.Tensor:
    """Per-element step lists (c lists of tau values) -> the ``(tau, c)`` float64 increments."""
    return torch.tensor(steps, dtype=torch.float64).T.contiguous()


def _masks(name, increments, delta, tau) -> dict:
    v = evaluate(name, increments, delta, tau)
    out = {}
    for check in CHECKS:
        got = getattr(v, check)
        if got is not None:
            assert got.dtype == torch.bool, (name, check, got.dtype)
            assert got.shape == delta.shape, (name, check, tuple(got.shape))
            got = got.tolist()
        out[check] = got
    return out


def assert_verdicts(steps, delta, tau, expected) -> None:
    """Check every criterion in ``expected`` (name -> (accept, consistency, lower, upper)).

    ``None`` means the criterion does not apply that check (the Verdict field must be None).
    Also checks that the mirrored input (all signs flipped) gives exactly the same masks.
    """
    assert set(expected) == set(CRITERIA), "every criterion must be worked out"
    inc = _increments(steps)
    d = torch.tensor(delta, dtype=torch.float64)
    for name, want in expected.items():
        want = dict(zip(CHECKS, want))
        assert _masks(name, inc, d, tau) == want, name
        assert _masks(name, -inc, -d, tau) == want, f"{name} (mirrored)"


def _none(c: int) -> tuple:
    """Expected verdict of ``"none"``: accept all ``c`` elements, no check applied."""
    return ([T] * c, None, None, None)


# --------------------------------------------------------------------------------------------
# Criteria on hand-worked vectors
# --------------------------------------------------------------------------------------------


def test_bound_ties_and_magnitudes():
    """Ties of Eq. 6 and of the reference bounds, all steps in the optimizer's direction.

    pdt/accel_only: strict lower bound (D == |d| rejected), inclusive upper bound tau|d|.
    reference: inclusive lower bound (D == |d| accepted), inclusive upper bound (tau+1)|d|.
    consistency_only accepts all six (no step against d, no zero step).
    """
    tau = 3
    steps = [
        [1, 1, 1],  # 0: d=1, D=3 = tau|d|: pdt ok (upper inclusive); ref ok (3 <= 4)
        [0.5, 0.25, 0.25],  # 1: d=1, D=1 = |d|: pdt lower fails (strict); ref ok (>= inclusive)
        [2, 1, 1],  # 2: d=1, D=4 = (tau+1)|d|: pdt upper fails (4 > 3); ref ok (4 <= 4)
        [2, 2, 1],  # 3: d=1, D=5 > (tau+1)|d| = 4: upper fails for both
        [1, 0.5, 0.5],  # 4: d=1, D=2 strictly inside (1, 3]: everyone accepts
        [0.25, 0.25, 0.25],  # 5: d=1, D=0.75 < |d|: lower fails for both
        [-0.25, -0.125, -0.125],  # 6: d=-0.5, D=-0.5, |D| = |d| (negative direction): as 1
    ]
    delta = [1, 1, 1, 1, 1, 1, -0.5]
    assert_verdicts(
        steps,
        delta,
        tau,
        {
            #         accept                   consistency          lower                  upper
            "pdt": (
                [T, F, F, F, T, F, F],
                [F, F, F, F, F, F, F],
                [F, T, F, F, F, T, T],
                [F, F, T, T, F, F, F],
            ),
            "authors": (
                [T, T, T, F, T, F, T],
                [F, F, F, F, F, F, F],
                [F, F, F, F, F, T, F],
                [F, F, F, T, F, F, F],
            ),
            "accel_only": ([T, F, F, F, T, F, F], None, [F, T, F, F, F, T, T], [F, F, T, T, F, F, F]),
            "consistency_only": ([T] * 7, [F] * 7, None, None),
            "none": _none(7),
        },
    )


def test_intermediate_sign_flips():
    """Eq. 7 checks every predicted step, the reference only the final displacement.

    A step against d, or a zero step, fails pdt's and consistency_only's consistency check even
    when D keeps the sign of d; the reference accepts such elements when the bounds hold, and
    accel_only decides on the bounds alone (it even accepts element 4, whose whole prediction
    goes against the optimizer).
    """
    tau = 3
    steps = [
        [2, -1, 1],  # 0: D=2 in (1, 3]; step 2 against d: pdt consistency only; ref/accel ok
        [1, 0, 2],  # 1: D=3 = tau|d|; step 2 is zero, sign 0 != 1: pdt consistency only; ref/accel ok
        [0.5, -0.25, 0.25],  # 2: D=0.5 < 1: pdt consistency + lower; ref lower only
        [3, -1, 2],  # 3: D=4: pdt consistency + upper (4 > 3); ref ok (4 <= 4)
        [-1, -1, -1],  # 4: D=-3, |D|=3 in (1, 3]: every step against d; accel_only accepts
        [-1, 2, 1],  # 5: D=2; the *first* step is against d: pdt consistency; ref/accel ok
        [-2, 1, 0],  # 6: D=-1, |D| = |d|: pdt consistency + lower; ref sign(D) != sign(d)
    ]
    delta = [1] * 7
    assert_verdicts(
        steps,
        delta,
        tau,
        {
            "pdt": (
                [F, F, F, F, F, F, F],
                [T, T, T, T, T, T, T],
                [F, F, T, F, F, F, T],
                [F, F, F, T, F, F, F],
            ),
            "authors": (
                [T, T, F, T, F, T, F],
                [F, F, F, F, T, F, T],  # sign(D) against sign(d) only for 4 and 6
                [F, F, T, F, F, F, F],  # |D| >= |d| fails only for 2 (element 6: 1 >= 1 holds)
                [F, F, F, F, F, F, F],  # all |D| <= 4
            ),
            "accel_only": ([T, T, F, F, T, T, F], None, [F, F, T, F, F, F, T], [F, F, F, T, F, F, F]),
            "consistency_only": ([F] * 7, [T] * 7, None, None),
            "none": _none(7),
        },
    )


def test_zero_steps_and_zero_delta():
    """sign(0) = 0: zero optimizer steps (d = 0) and exactly-zero predicted steps.

    d = 0 never passes the strict lower bound (|D| > 0 = |d| fails for D = 0, and any D != 0
    fails the upper bound tau * 0), so pdt and accel_only reject every d = 0 element; the
    reference's inclusive bounds accept D = 0 when d = 0 (a no-op "prediction"), even when
    the steps cancel. "none" accepts everything, d = 0 included.
    """
    tau = 2
    steps = [
        [0, 0],  # 0: d=0, all steps 0: consistency ok (0 == 0); lower 0 > 0 fails; ref: all ok
        [1, 0],  # 1: d=0: step 1 sign 1 != 0; |D|=1 > 0 ok; upper 1 <= 0 fails (both pdt and ref)
        [1, -1],  # 2: d=0, D=0 by cancellation: pdt consistency + lower; ref sign(0)==sign(0): ok
        [0, 0],  # 3: d=1, nothing predicted: consistency (0 != 1) + lower (0 < 1), pdt and ref
        [1, -1],  # 4: d=1, D=0: pdt consistency (step 2) + lower; ref consistency (sign 0) + lower
        [-1, 0],  # 5: d=-1, D=-1: pdt consistency (zero step) + lower (1 > 1 fails); ref ok (1 >= 1)
        [0, 1.5],  # 6: d=1, D=1.5 in (1, 2]: first step zero -> pdt consistency only; ref ok
    ]
    delta = [0, 0, 0, 1, 1, -1, 1]
    assert_verdicts(
        steps,
        delta,
        tau,
        {
            "pdt": (
                [F, F, F, F, F, F, F],
                [F, T, T, T, T, T, T],
                [T, F, T, T, T, T, F],
                [F, T, F, F, F, F, F],
            ),
            "authors": (
                [T, F, T, F, F, T, T],
                [F, T, F, T, T, F, F],
                [F, F, F, T, T, F, F],
                [F, T, F, F, F, F, F],
            ),
            "accel_only": ([F, F, F, F, F, F, T], None, [T, F, T, T, T, T, F], [F, T, F, F, F, F, F]),
            "consistency_only": ([T, F, F, F, F, F, F], [F, T, T, T, T, T, T], None, None),
            "none": _none(7),
        },
    )


def test_tau_one_leaves_pdt_an_empty_interval():
    """tau = 1: Eq. 6 reads |d| < |D| <= |d|, which no element satisfies.

    pdt and accel_only accept nothing; the reference still accepts |d| <= |D| <= 2|d|.
    With tau = 1 the single step is D itself, so pdt's and the reference's consistency agree.
    """
    tau = 1
    steps = [
        [0.5],  # 0: d=1: lower fails (0.5 < 1) for both; upper ok
        [1],  # 1: d=1, D = |d|: pdt lower fails (strict), upper ok (1 <= 1); ref ok
        [2],  # 2: d=1, D = 2|d|: pdt upper fails (2 > 1); ref ok (2 <= 2)
        [3],  # 3: d=1, D = 3|d|: upper fails for both
        [1],  # 4: d=-1: against d: consistency fails; pdt lower fails (1 > 1); ref bounds ok
        [0],  # 5: d=0, D=0: consistency ok; pdt lower fails (0 > 0); ref ok
    ]
    delta = [1, 1, 1, 1, -1, 0]
    assert_verdicts(
        steps,
        delta,
        tau,
        {
            "pdt": ([F] * 6, [F, F, F, F, T, F], [T, T, F, F, T, T], [F, F, T, T, F, F]),
            "authors": ([F, T, T, F, F, T], [F, F, F, F, T, F], [T, F, F, F, F, F], [F, F, F, T, F, F]),
            "accel_only": ([F] * 6, None, [T, T, F, F, T, T], [F, F, T, T, F, F]),
            "consistency_only": ([T, T, T, T, F, T], [F, F, F, F, T, F], None, None),
            "none": _none(6),
        },
    )


def test_nonfinite_inputs():
    """What the criteria themselves say about NaN and inf. (PDT.step separately rejects every
    element whose assembled prediction is non-finite, whatever the criterion says: that guard
    in pdt.py, counted as rejected["nonfinite"], is not exercised here.)

    Facts used: torch.sign(nan) == 0 (not NaN) and torch.sign(inf) == 1; every comparison
    with NaN is False, so both bounds (written as ~(|D| > |d|) and ~(|D| <= k|d|)) reject NaN.
    Consequences worth knowing: consistency_only (and "none") accept element 3 (an infinite
    step) and element 2 (NaN steps with d = 0, because sign(nan) == sign(0) == 0);
    the bound checks of pdt/reference/accel_only reject every non-finite D.
    """
    assert torch.sign(torch.tensor(NAN)).item() == 0.0, "premise of element 2 changed"
    tau = 2
    steps = [
        [NAN, 1],  # 0: d=1: sign(nan)=0 != 1; D=nan fails both bounds
        [1, 1],  # 1: d=nan: sign(d)=0 != 1; |D|=2 > nan and 2 <= 2*nan are False
        [NAN, NAN],  # 2: d=0: sign(nan) == sign(0) == 0 -> consistency passes; bounds fail
        [INF, 1],  # 3: d=1: sign(inf)=1 ok; D=inf: lower ok, upper fails
        [INF, -INF],  # 4: d=1: step 2 against d; D = inf - inf = nan: bounds fail, sign(nan)=0
        [1, 0.5],  # 5: d=1, finite control D=1.5: accepted by all (NaN does not leak across elements)
    ]
    delta = [1, NAN, 0, 1, 1, 1]
    assert_verdicts(
        steps,
        delta,
        tau,
        {
            "pdt": ([F, F, F, F, F, T], [T, T, F, F, T, F], [T, T, T, F, T, F], [T, T, T, T, T, F]),
            "authors": ([F, F, F, F, F, T], [T, T, F, F, T, F], [T, T, T, F, T, F], [T, T, T, T, T, F]),
            "accel_only": ([F, F, F, F, F, T], None, [T, T, T, F, T, F], [T, T, T, T, T, F]),
            "consistency_only": ([F, F, T, T, F, T], [T, T, F, F, T, F], None, None),
            "none": _none(6),
        },
    )


@pytest.mark.parametrize(
    "inc_shape, delta_shape",
    [
        ((3, 4), (5,)),  # element counts differ
        ((4,), (4,)),  # increments without the tau axis
        ((3, 4), (4, 1)),  # delta not 1-D
        ((3, 1), ()),  # scalar delta
        ((2, 3, 4), (3, 4)),  # increments 3-D
    ],
)
@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_evaluate_rejects_shape_mismatch(name, inc_shape, delta_shape):
    """evaluate() raises ValueError (for every criterion) unless increments is (tau, c) and delta (c,)."""
    with pytest.raises(ValueError, match="increments must be"):
        evaluate(name, torch.zeros(inc_shape, dtype=torch.float64), torch.zeros(delta_shape, dtype=torch.float64), 2)


@pytest.mark.parametrize("tau", [1, 2, 3, 5])
def test_criteria_properties_on_small_integers(tau):
    """Relations between the criteria on many small-integer inputs (full of ties and zeros).

    * mirroring all signs (increments and delta) changes no mask;
    * pdt == accel_only and consistency_only, and each pdt rejection mask equals the one of the
      corresponding ablation;
    * every element pdt accepts, the reference accepts too;
    * "none" accepts everything; with tau = 1, pdt and accel_only accept nothing.
    """
    g = torch.Generator().manual_seed(tau)
    inc = torch.randint(-3, 4, (tau, 4000), generator=g).to(torch.float64)
    delta = torch.randint(-3, 4, (4000,), generator=g).to(torch.float64)
    v = {n: evaluate(n, inc, delta, tau) for n in CRITERIA}
    for n in CRITERIA:
        m = evaluate(n, -inc, -delta, tau)
        for check in CHECKS:
            a, b = getattr(v[n], check), getattr(m, check)
            assert (a is None and b is None) or torch.equal(a, b), (n, check)
    pdt = v["pdt"]
    assert torch.equal(pdt.accept, v["accel_only"].accept & v["consistency_only"].accept)
    assert torch.equal(pdt.consistency, v["consistency_only"].consistency)
    assert torch.equal(pdt.lower_bound, v["accel_only"].lower_bound)
    assert torch.equal(pdt.upper_bound, v["accel_only"].upper_bound)
    assert not (pdt.accept & ~v["authors"].accept).any()
    assert v["none"].accept.all()
    # the draw is rich enough that the criteria actually differ
    assert (v["authors"].accept & ~pdt.accept).any()
    if tau == 1:
        assert not pdt.accept.any() and not v["accel_only"].accept.any()
    else:
        assert pdt.accept.any()


# --------------------------------------------------------------------------------------------
# End to end through the PDT plug-in
# --------------------------------------------------------------------------------------------
#
# Trajectory shared by both tests: each element is a mix of two geometric modes,
#     w_j(t) = a_j * 2**t + b_j * 2**(-t),
# an exact linear system with eigenvalues 2 and 1/2. Three snapshots span the two modes
# (a and b are linearly independent), so DMD with history 3 recovers it exactly and forecasts
# w_pred(t) = w(t) for every later t (both the "paper" and the "increment" form, since the
# snapshots lie in the span of the modes). All values are small integers or halves.
#
#   element   a    b     w(0)  w(1)  w(2) | w(3)  w(4)
#      0      1    0       1     2     4  |   8    16
#      1      0   16      16     8     4  |   2     1
#      2      1  -32     -31   -14    -4  |   4    14
#      3      1   16      17    10     8  |  10    17
#      4      0    0       0     0     0  |   0     0
#      5     -1   32      31    14     4  |  -4   -14

A = [1.0, 0.0, 1.0, 1.0, 0.0, -1.0]
B = [0.0, 16.0, -32.0, 16.0, 0.0, 32.0]


def w(t: int) -> torch.Tensor:
    return torch.tensor([a * 2.0**t + b * 2.0 ** (-t) for a, b in zip(A, B)], dtype=torch.float64)


def test_trajectory_table():
    """The table in the comment above is what w(t) computes (guards the hand-worked numbers)."""
    assert w(0).tolist() == [1, 16, -31, 17, 0, 31]
    assert w(1).tolist() == [2, 8, -14, 10, 0, 14]
    assert w(2).tolist() == [4, 4, -4, 8, 0, 4]
    assert w(3).tolist() == [8, 2, 4, 10, 0, -4]
    assert w(4).tolist() == [16, 1, 14, 17, 0, -14]


def _setup(criterion: str, **kwargs):
    p = torch.nn.Parameter(w(0).clone())
    opt = torch.optim.SGD([p], lr=0.0)
    pdt = PDT(opt, history=3, horizon=2, start_epoch=2, interval=1, criterion=criterion, **kwargs)
    return p, pdt


def _set(p: torch.Tensor, value: torch.Tensor) -> None:
    with torch.no_grad():
        p.copy_(value)


def test_pdt_plugin_paper_criterion_hand_worked():
    """criterion="pdt" (snapshots after each epoch, forecast from w_opt(2) = w(2), tau = 2).

    Epochs 0 and 1 are warm-up; at epoch 2 the history is w(0), w(1), w(2), so
    d = w(2) - w(1), steps = [w(3) - w(2), w(4) - w(3)], D = w(4) - w(2):

      0: d=2,   steps [4, 8],   D=12:  12 > 2*2 -> upper                       -> keep 4
      1: d=-4,  steps [-2, -1], D=-3:  3 < 4    -> lower                       -> keep 4
      2: d=10,  steps [8, 10],  D=18:  10 < 18 <= 20, same signs               -> accept 14
      3: d=-2,  steps [2, 7],   D=9:   steps against d -> consistency; 9 > 4 -> upper; keep 8
      4: d=0,   steps [0, 0],   D=0:   consistency ok (0 == 0); 0 > 0 fails -> lower; keep 0
      5: d=-10, steps [-8,-10], D=-18: mirror of 2                              -> accept -14

    The epoch after a prediction is a plain one (interval = 1) and leaves the weights alone.
    """
    p, pdt = _setup("pdt")
    assert pdt.config.forecast == "paper" and pdt.config.history_after_jump == "optimizer"
    for epoch in (0, 1):
        _set(p, w(epoch))
        stats = pdt.step()
        assert stats["predicted"] is False and stats["reason"] == "warm-up"
        assert torch.equal(p.detach(), w(epoch))
    _set(p, w(2))
    stats = pdt.step()
    assert stats["predicted"] is True and stats["reason"] is None and stats["epoch"] == 2
    expected = torch.tensor([4, 4, 14, 8, 0, -14], dtype=torch.float64)
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-9)
    # the rejected elements keep the optimizer's value bit for bit
    assert p.detach()[[0, 1, 3, 4]].tolist() == [4, 4, 8, 0]
    assert stats["accepted"] == 2 and stats["numel"] == 6
    assert stats["accepted_ratio"] == pytest.approx(2 / 6)
    assert stats["rejected"] == {"consistency": 1, "lower_bound": 2, "upper_bound": 2, "nonfinite": 0, "unfitted": 0}
    assert stats["accepted_ratio_per_param"] == {"group0.param0": pytest.approx(2 / 6)}
    assert stats["rank"] == 2
    eig = sorted(re for re, _ in stats["eigenvalues"])
    assert eig == pytest.approx([0.5, 2.0], abs=1e-9)
    assert max(abs(im) for _, im in stats["eigenvalues"]) < 1e-9

    after = p.detach().clone()
    stats = pdt.step()  # epoch 3: the optimizer did not move (lr = 0); interval = 1 -> plain epoch
    assert stats["predicted"] is False and stats["reason"] == "interval"
    assert torch.equal(p.detach(), after)


def test_pdt_plugin_reference_criterion_hand_worked():
    """criterion="reference": start-of-epoch snapshots, newest optimizer result not in the fit.

    The snapshot w(0) is taken at construction, w(1) and w(2) after epochs 0 and 1. In epoch 2
    the "optimizer" moves the weights from w(2) to hand-picked values w_opt that are NOT on the
    trajectory (and never enter the fit). The forecast (increment form) starts from w_ref = w(2):
    D = w(4) - w(2) = [12, -3, 18, 9, 0, -18], and d = w_opt - w(2):

      0: w_opt=10,  d=6:   6 <= 12 <= 18, same sign                -> accept w(4) = 16
      1: w_opt=3.5, d=-0.5: |D|=3 > 3 * 0.5 -> upper               -> keep 3.5
      2: w_opt=-14, d=-10: sign(18) != sign(-10) -> consistency; 10 <= 18 <= 30 -> keep -14
      3: w_opt=28,  d=20:  |D|=9 < 20 -> lower                      -> keep 28
      4: w_opt=0,   d=0:   D=0: signs 0 == 0, 0 <= 0 <= 0          -> accepted (a no-op), 0
      5: w_opt=-5,  d=-9:  9 <= 18 <= 27                            -> accept w(4) = -14

    After the step, the assembled weights are the next start-of-epoch snapshot.
    """
    p, pdt = _setup("reference")
    assert pdt.config.forecast == "increment"
    for epoch in (0, 1):
        _set(p, w(epoch + 1))  # the optimizer's epoch ends on the next point of the trajectory
        stats = pdt.step()
        assert stats["predicted"] is False and stats["reason"] == "warm-up"
    w_opt = torch.tensor([10, 3.5, -14, 28, 0, -5], dtype=torch.float64)
    _set(p, w_opt)
    stats = pdt.step()
    assert stats["predicted"] is True and stats["epoch"] == 2
    expected = torch.tensor([16, 3.5, -14, 28, 0, -14], dtype=torch.float64)
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-9)
    assert p.detach()[[1, 2, 3, 4]].tolist() == [3.5, -14, 28, 0]
    assert stats["accepted"] == 3 and stats["accepted_ratio"] == pytest.approx(0.5)
    assert stats["rejected"] == {"consistency": 1, "lower_bound": 1, "upper_bound": 1, "nonfinite": 0, "unfitted": 0}
    assert stats["rank"] == 2
    # the newest snapshot is now the assembled start of epoch 3
    newest = pdt.state_dict()["history"]["snapshots"][0][-1]
    torch.testing.assert_close(newest, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", [*criteria.DECLARED])
def test_each_criterion_declares_exactly_the_checks_it_makes(name):
    """The passes report rejections for the declared checks (torch_pdt.passes.Plan.checks): they must
    be the ones the rule returns."""
    x = torch.zeros(3)
    criterion = criteria.make(name, ratio=0.5, draws=criteria.RandomDraws())
    assert set(criterion(x, x, x, x, 1)) & set(criteria.CHECKS) == set(criterion.checks)
