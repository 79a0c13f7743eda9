"""calibration's two halves of `fit_population` (`objective_values`, `minimize_objective`),
the public hook of federated population fits."""

from __future__ import annotations

import math
import pathlib
import warnings

import numpy as np
import pandas as pd
import pytest
from jax.flatten_util import ravel_pytree

import calibration as C
import pkpd

REF = pathlib.Path(__file__).parent / "data" / "reference"


def _theo() -> tuple[C.PopulationModel, C.Dataset]:
    df = pd.read_csv(REF / "datasets" / "theo_sd_nlmixr2data.csv")
    df.loc[df["EVID"] == 101, "EVID"] = 1
    df.loc[df["EVID"] == 0, "CMT"] = 2
    pm = C.PopulationModel(
        pkpd.OneCompartmentOral(),
        theta={"KA": 1.0, "CL": 3.0, "V": 30.0},
        omega={"KA": 0.3, "CL": 0.1, "V": 0.1},
        error=C.Additive(1.0),
    )
    return pm, C.Dataset.from_records(df, covariates=["WT"])


def test_the_two_halves_are_fit_population():
    """`minimize_objective` over `objective_values` gives fit_population's numbers exactly
    (the same floats: fit_population is these two)."""
    pm, data = _theo()
    with warnings.catch_warnings():
        warnings.simplefilter("error", C.ConvergenceWarning)
        fit = C.fit_population(pm, data)
    x0 = np.asarray(ravel_pytree(pm.initial())[0])
    outer = C.minimize_objective(
        lambda points, start: C.objective_values(pm, data, points, start=start).values, x0
    )
    np.testing.assert_array_equal(outer.x, np.asarray(ravel_pytree(fit.phi)[0]))
    assert outer.ofv == fit.ofv
    np.testing.assert_array_equal(outer.cov, fit.cov_phi)
    assert outer.n_steps == fit.n_steps and outer.converged and fit.converged
    assert outer.gradient_evaluations == fit.diagnostics["gradient_evaluations"]
    assert outer.rejected_evaluations == fit.diagnostics["rejected_evaluations"] == 0


def test_objective_values_is_the_sum_of_the_subjects_terms():
    pm, data = _theo()
    x0 = np.asarray(ravel_pytree(pm.initial())[0])
    points = np.stack([x0, x0 + 0.01])
    whole = C.objective_values(pm, data, points).values
    halves = sum(
        C.objective_values(pm, data.subset(idx), points).values
        for idx in (np.arange(0, 5), np.arange(5, 12))
    )
    np.testing.assert_allclose(whole, halves, rtol=1e-10)
    assert whole.shape == (2,) and np.all(np.isfinite(whole))
    # The pooled fit's -2LL is twice the objective at its estimate.
    laplace = C.objective_values(pm, data, points, estimator=C.Laplace()).values
    assert not np.allclose(laplace, whole)


def test_objective_values_checks_its_points_and_the_start():
    pm, data = _theo()
    x0 = np.asarray(ravel_pytree(pm.initial())[0])
    with pytest.raises(ValueError, match=r"points must have shape \(points, 7\).*got \(7,\)"):
        C.objective_values(pm, data, x0)
    bad = x0.copy()
    bad[-1] = -800.0  # residual SD exp(-800) = 0: no observation can be explained
    with pytest.raises(C.SubjectError, match="subject ID=1") as info:
        C.objective_values(pm, data, bad[None, :], start=True)
    assert len(info.value.failures) == 12
    out = C.objective_values(pm, data, np.stack([bad, x0]))  # a rejected base point
    assert np.all(out.values == math.inf)
    assert len(out.rejected) == 12 and all(isinstance(r, str) and r for r in out.rejected.values())


def test_minimize_objective_reports_what_it_did_not_reach():
    pm, data = _theo()
    x0 = np.asarray(ravel_pytree(pm.initial())[0])
    outer = C.minimize_objective(
        lambda points, start: C.objective_values(pm, data, points, start=start).values,
        x0,
        max_steps=1,
        standard_errors=False,
    )
    assert not outer.converged and outer.cov is None
    assert outer.convergence_problem().startswith("population fit did not converge after 1 steps")

    def nowhere(points, start):
        return np.full(len(points), math.inf)

    with pytest.raises(C.SubjectError, match="site-a: 3 subject") as info:
        C.minimize_objective(nowhere, x0, who="test", rejected=lambda: {"site-a": "3 subjects"})
    assert "not finite next to the initial estimates" in str(info.value)
