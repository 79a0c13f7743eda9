"""`fit_population(gradient="implicit")`: the gradient of -log L at the converged modes by
implicit differentiation, against central finite differences of the objective itself
(`objective_values`, each point with its own conditional modes), and the fit it drives
against the default finite-difference fit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from jax.flatten_util import ravel_pytree

import calibration as C
import pkpd
from calibration import _laplace

TIMES = [0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0]


def simulated(n: int = 24, seed: int = 2):
    pm = C.PopulationModel(
        pkpd.OneCompartmentOral(),
        theta={"KA": 1.2, "CL": 3.0, "V": 30.0},
        omega={"KA": 0.2, "CL": 0.1},
        error=C.Combined(0.2, 0.1),
    )
    rows = []
    for i in range(1, n + 1):
        rows.append(dict(ID=i, TIME=0.0, EVID=1, AMT=300.0, CMT=1, DV=0.0, MDV=1))
        rows += [dict(ID=i, TIME=t, EVID=0, AMT=0.0, CMT=2, DV=1.0, MDV=0) for t in TIMES]
    design = C.Dataset.from_records(pd.DataFrame(rows))
    return pm, C.simulate_dataset(pm, None, design, key=seed).dataset()


@pytest.mark.extended  # its compilation takes about a minute on 2 cores (make test-all)
def test_implicit_gradient_equals_finite_differences_of_the_objective():
    """(Its compilation, about a minute on 2 shared cores, is most of this test's time.)"""
    pm, data = simulated(8)
    start = C.PopulationModel(
        pm.model,
        theta={"KA": 0.9, "CL": 3.6, "V": 26.0},
        omega=pm.omega,
        error=C.Combined(0.3, 0.15),
    )
    phi = start.initial()
    flat = np.asarray(ravel_pytree(phi)[0])
    est = C.FOCEI()
    out = _laplace._objective(start, phi, data.numeric(), _laplace._zeros(start, data), est)
    grad = np.asarray(_laplace._implicit_gradient(start, phi, data.numeric(), out[1], est))
    h = 1e-5
    points = np.concatenate(
        [flat[None, :], flat + h * np.eye(flat.size), flat - h * np.eye(flat.size)]
    )
    v = C.objective_values(start, data, points).values
    fd = (v[1 : flat.size + 1] - v[flat.size + 1 :]) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=2e-5, atol=1e-4 * np.max(np.abs(fd)))


@pytest.mark.extended  # two fits, ~25 s after the gradient above compiled (make test-all)
def test_implicit_fit_equals_the_finite_difference_fit():
    pm, data = simulated()
    start = C.PopulationModel(
        pm.model,
        theta={"KA": 0.9, "CL": 3.6, "V": 26.0},
        omega=pm.omega,
        error=C.Combined(0.3, 0.15),
    )
    ref = C.fit_population(start, data)
    fit = C.fit_population(start, data, gradient="implicit")
    assert fit.converged and ref.converged
    assert fit.ofv == pytest.approx(ref.ofv, abs=1e-3)
    a, b = (np.asarray(ravel_pytree(f.phi)[0]) for f in (fit, ref))
    np.testing.assert_allclose(a, b, atol=2e-3)  # the log-scale estimates: 3 significant digits
    np.testing.assert_allclose(fit.table["se"], ref.table["se"], rtol=0.02)
    with pytest.raises(ValueError, match="gradient must be 'differences' or 'implicit'"):
        C.fit_population(start, data, gradient="exact")
