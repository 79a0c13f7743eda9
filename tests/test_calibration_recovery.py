"""Known truth recovered from simulated data: a covariate model, and censoring (M3)."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import calibration as C
import pkpd


def _simulate_records(model, params, dose_cmt, dose, obs_cmt, times, dv):
    """NONMEM records: one dose at t=0 per subject, then the observations `dv`."""
    rows = []
    n = dv.shape[0]
    for i in range(n):
        rows.append({"ID": i + 1, "TIME": 0.0, "EVID": 1, "AMT": dose, "CMT": dose_cmt, "DV": 0.0})
        for t, y in zip(times, dv[i], strict=True):
            rows.append({"ID": i + 1, "TIME": t, "EVID": 0, "AMT": 0.0, "CMT": obs_cmt, "DV": y})
    return pd.DataFrame(rows)


def _predict(model, params, regimen, times):
    return np.asarray(
        jax.vmap(lambda p: pkpd.simulate(model, p, regimen, jnp.asarray(times)))(params)
    )


# Extended (80-115 s on 2 cores): population recovery is also checked in `make test` on
# Oral_1CPT (geometric means), theophylline (against nlmixr2), M3 (below) and IOV
# (test_iov.py); the covariate exponent and the two-compartment FOCE-I only here.
@pytest.mark.extended
def test_two_compartment_weight_covariate_proportional_error():
    """Two compartments, allometric weight exponent estimated, proportional error."""
    rng = np.random.default_rng(2026)
    n = 60
    wt = rng.uniform(50.0, 110.0, n)
    truth = {"CL": 5.0, "V1": 20.0, "Q": 8.0, "V2": 60.0, "CL_WT": 0.75}
    omega_true = {"CL": 0.09, "V1": 0.04}
    times = np.array([0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0, 36.0])
    params = {
        "CL": truth["CL"] * (wt / 70) ** 0.75 * np.exp(rng.normal(0, 0.3, n)),
        "V1": truth["V1"] * (wt / 70) * np.exp(rng.normal(0, 0.2, n)),
        "Q": np.full(n, truth["Q"]),
        "V2": np.full(n, truth["V2"]),
    }
    model = pkpd.TwoCompartment()
    pred = _predict(model, {k: jnp.asarray(v) for k, v in params.items()}, pkpd.bolus(500.0), times)
    dv = pred * (1.0 + 0.1 * rng.standard_normal(pred.shape))
    df = _simulate_records(model, params, 1, 500.0, 1, times, dv)
    df["WT"] = np.repeat(wt, times.size + 1)
    data = C.Dataset.from_records(df, covariates=["WT"])

    pm = C.PopulationModel(
        model,
        theta={"CL": 3.5, "V1": 28.0, "Q": 5.0, "V2": 90.0, "CL_WT": 0.3},
        omega={"CL": 0.2, "V1": 0.1},
        error=C.Proportional(0.2),
        typical=lambda th, cov: {
            "CL": th["CL"] * (cov["WT"] / 70.0) ** th["CL_WT"],
            "V1": th["V1"] * cov["WT"] / 70.0,
            "Q": th["Q"],
            "V2": th["V2"],
        },
        unconstrained=("CL_WT",),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", C.ConvergenceWarning)
        fit = C.fit_population(pm, data)
    t = fit.table.set_index(["kind", "parameter"])
    for name, tol in (("CL", 0.10), ("V1", 0.10), ("Q", 0.25), ("V2", 0.15)):
        assert t.loc[("theta", name), "estimate"] == pytest.approx(truth[name], rel=tol), name
    # The exponent is weakly determined by 60 subjects: the truth must lie in its 95% CI.
    lo, hi = t.loc[("theta", "CL_WT"), ["ci_low", "ci_high"]]
    assert lo < truth["CL_WT"] < hi
    for name, var in omega_true.items():
        assert t.loc[("omega", name), "estimate"] == pytest.approx(var, rel=0.5), name
    assert t.loc[("sigma", "prop_sd"), "estimate"] == pytest.approx(0.1, rel=0.15)


@pytest.mark.extended  # ~45 s; make test: the M3 likelihood in test_calibration.py and others
def test_m3_censoring_matches_complete_data_where_dropping_deviates():
    """About 30% of observations below the LOQ (M3, Beal 2001).

    The truth of a simulated data set is its subjects' own parameters: the M3 fit recovers
    their geometric means within 10% and stays within 3% of the fit to the same data before
    censoring; the fit that drops the censored values deviates more from that complete-data fit.
    """
    rng = np.random.default_rng(7)
    n = 50
    typical = {"KA": 1.2, "CL": 4.0, "V": 40.0}
    times = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 18.0, 24.0, 30.0, 36.0])
    eta = rng.normal(0, 0.25, (n, 3))
    params = {k: typical[k] * np.exp(eta[:, i]) for i, k in enumerate(typical)}
    truth = {k: float(np.exp(np.mean(np.log(v)))) for k, v in params.items()}
    model = pkpd.OneCompartmentOral()
    pred = _predict(model, {k: jnp.asarray(v) for k, v in params.items()}, pkpd.oral(200.0), times)
    dv = pred * np.exp(0.15 * rng.standard_normal(pred.shape))
    lloq = float(np.quantile(dv, 0.30))
    cens = dv < lloq
    complete = _simulate_records(model, params, 1, 200.0, 2, times, dv)
    df = _simulate_records(model, params, 1, 200.0, 2, times, np.where(cens, lloq, dv))
    df["CENS"] = 0
    df.loc[df["EVID"] == 0, "CENS"] = cens.ravel().astype(int)
    assert 0.25 < cens.mean() < 0.35

    pm = C.PopulationModel(
        model,
        theta={"KA": 1.0, "CL": 3.0, "V": 50.0},
        omega={"KA": 0.1, "CL": 0.1, "V": 0.1},
        error=C.Exponential(0.3),
    )

    def thetas(records):
        fit = C.fit_population(pm, C.Dataset.from_records(records))
        assert fit.converged
        t = fit.table.set_index(["kind", "parameter"])
        return {k: float(t.loc[("theta", k), "estimate"]) for k in typical}

    full, m3, dropped = thetas(complete), thetas(df), thetas(df[df["CENS"] == 0])
    for k in typical:
        assert m3[k] == pytest.approx(truth[k], rel=0.10), (k, m3[k], truth[k])
        assert m3[k] == pytest.approx(full[k], rel=0.03), (k, m3[k], full[k])
    dev_m3 = sum(abs(np.log(m3[k] / full[k])) for k in typical)
    dev_drop = sum(abs(np.log(dropped[k] / full[k])) for k in typical)
    assert dev_drop > 2 * dev_m3, (dev_drop, dev_m3)
