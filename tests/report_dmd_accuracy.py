"""Print the largest DMD errors against numpy and PyDMD over the cases of test_dmd.py.

Run: ``python tests/report_dmd_accuracy.py`` (the tests assert the 1e-8 bound; this shows
how far inside it the implementation is).
"""

from __future__ import annotations


def main() -> None:
    import pathlib
    import sys

    import torch

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    import test_dmd as t

    from torch_pdt import dmd

    fixture = t.mlp_trajectory
    trajectory = (getattr(fixture, "__wrapped__", None) or fixture._get_wrapped_function())()
    cases = [("linear", t.linear_trajectory(*c)[0], True) for c in t.LINEAR_CASES]
    cases += [("mlp", S, False) for S in t.mlp_windows(trajectory)]
    worst: dict[tuple[str, str], float] = {}
    for name, S, tell_rank in cases:
        for exact in (False, True):
            fit = dmd.fit(torch.from_numpy(S), exact=exact)
            rank = fit.rank if tell_rank else None
            got = t.torch_forecasts(fit, S)
            lam, Phi, b, _ = t.numpy_dmd(S, exact, r=rank)
            py_eigs, py_forecasts = t.pydmd_fit(S, exact, svd_rank=rank or -1)
            errors = {
                "eigenvalues vs numpy": t.eig_err(fit.eigenvalues.numpy(), lam),
                "eigenvalues vs PyDMD": t.eig_err(fit.eigenvalues.numpy(), py_eigs),
            }
            for form in ("paper", "increment"):
                ref = t.numpy_forecast(lam, Phi, b, S[:, -1], t.TAUS, form)
                errors[f"{form} forecast vs numpy"] = t.rel_err(got[form], ref)
                errors[f"{form} forecast vs PyDMD"] = t.rel_err(got[form], py_forecasts[form])
                errors[f"{form} displacement vs numpy"] = t.displacement_err(got[form], ref, S[:, -1])
            for what, err in errors.items():
                worst[name, what] = max(worst.get((name, what), 0.0), err)
    print(f"{'data':<8}{'quantity (tau = 1..9, both mode types)':<40}{'max rel. error':>15}")
    for (name, what), err in sorted(worst.items()):
        print(f"{name:<8}{what:<40}{err:>15.1e}")


if __name__ == "__main__":
    main()
