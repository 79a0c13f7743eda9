"""Inter-occasion variability together with time-varying covariates (issue 21): the
likelihood, the estimators, simulation and the individual plots of a model with kappas on
data read with `Dataset.from_records(interpolation=...)`.

References written in the tests: the likelihood computed from `pkpd.simulate_records`'
predictions on records written as one would write them for NONMEM (a kappa column by
occasion, an `EVID=2` record closing each occasion); the same model on the same data read
without interpolation (baseline IOV, `pkpd.simulate_piecewise`); the exact identity between
an IOV model on one occasion and the BSV model whose variance is the sum of the two (the
random effects enter only through eta + kappa, so the Laplace integral is the same); known
parameters recovered from simulated data.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from jax.flatten_util import ravel_pytree
from scipy import stats

import calibration as C
import pkpd

STARTS = (0.0, 24.0, 48.0)  # occasions a day apart: the amount carried over matters
DTS = (1.0, 3.0, 8.0, 16.0)
DOSE = 100.0
THETA = {"CL": 3.0, "V": 30.0, "KA": 1.5, "BETA": 0.75}
OMEGA = {"CL": 0.09, "V": 0.04}
IOV = {"CL": 0.04}
PROP = 0.1


def _typical(th, c):
    return {"CL": th["CL"] * (c["WT"] / 70.0) ** th["BETA"], "V": th["V"], "KA": th["KA"]}


def _model(theta=THETA, omega=OMEGA, iov=IOV, prop=PROP, typical=_typical):
    return C.PopulationModel(
        pkpd.OneCompartmentOral(),
        theta=theta,
        omega=omega,
        error=C.Proportional(prop),
        iov=iov,
        typical=typical,
        unconstrained=("BETA",) if "BETA" in theta else (),
    )


def _weight(i: int, t):
    """Subject i's weight (kg) at time t (h): from 50 to 100 kg at the start, moving by up
    to -30% or +30% over the 64 h."""
    w0 = 50.0 + 50.0 * ((i * 0.618) % 1.0)
    return w0 * (1.0 + 0.3 * math.sin(0.7 * i) * np.asarray(t) / 64.0)


def _records(n: int, starts=STARTS) -> pd.DataFrame:
    rows = []
    for i in range(1, n + 1):
        for k, t0 in enumerate(starts):
            rows.append(dict(ID=i, TIME=t0, EVID=1, AMT=DOSE, CMT=1, DV=0.0, MDV=1, OCC=k + 1))
            for dt in DTS:
                rows.append(
                    dict(ID=i, TIME=t0 + dt, EVID=0, AMT=0.0, CMT=2, DV=1.0, MDV=0, OCC=k + 1)
                )
    df = pd.DataFrame(rows)
    df["WT"] = [float(_weight(i, t)) for i, t in zip(df["ID"], df["TIME"], strict=True)]
    return df


def _design(n: int, method: str = "linear", **kw) -> C.Dataset:
    return C.Dataset.from_records(
        _records(n, **kw), covariates=["WT"], interpolation={"WT": method}
    )


def _flat(pm):
    return np.asarray(ravel_pytree(pm.initial())[0])


# ----------------------------------------------------------------------------- the likelihood


@pytest.mark.parametrize("method", ["nonmem", "linear"])
def test_occasions_on_rows_as_without_time_varying_covariates(method):
    """A model whose typical values ignore the weight: the rows the interpolation adds (and
    the copies that close each occasion) must carry the kappas so that the objective equals
    the one of the same data read at baseline, where the parameters change at each
    occasion's start (`pkpd.simulate_piecewise`). Occasions a day apart, so the amount
    carried over from one occasion into the next propagates with the kappa of the one
    before up to the next start."""
    pm = _model(theta={"CL": 3.0, "V": 30.0, "KA": 1.5}, typical=lambda th, c: dict(th))
    records = _records(3)
    rng = np.random.default_rng(5)
    records.loc[records["EVID"] == 0, "DV"] = rng.uniform(0.5, 3.0, (records["EVID"] == 0).sum())
    rows = C.Dataset.from_records(records, covariates=["WT"], interpolation={"WT": method})
    base = C.Dataset.from_records(records, covariates=["WT"])
    assert rows.time_varying and not base.time_varying
    # Each occasion's rows: its start closes the occasion before (a copy of the dose record
    # for "nonmem"; the last linear sub-interval's row for "linear"), then its own records.
    t, occ = rows.row_time[0], rows.row_occasion[0]
    for k, start in enumerate(STARTS[1:], start=1):
        at = np.flatnonzero(t == start)
        assert list(occ[at]) == [k - 1, k], (k, t, occ)
        assert (occ[(t > STARTS[k - 1]) & (t < start)] == k - 1).all()
    points = np.stack([_flat(pm), _flat(pm) + 0.1])
    want = C.objective_values(pm, base, points).values
    got = C.objective_values(pm, rows, points).values
    np.testing.assert_allclose(got, want, rtol=1e-10)


def _nonmem_records(i: int, eta, kappa) -> pd.DataFrame:
    """Subject i's records as one writes them for NONMEM with IOV on CL: the parameters on
    every record from its own weight and occasion's kappa, and an EVID=2 record at each
    occasion's start, before its dose, that still carries the occasion before (the advance
    up to the start is made with it, the convention of data without time-varying
    covariates)."""
    rows = []
    for k, t0 in enumerate(STARTS):
        if k > 0:
            rows.append(dict(TIME=t0, EVID=2, AMT=0.0, CMT=2, MDV=1, OCC=k - 1))
        rows.append(dict(TIME=t0, EVID=1, AMT=DOSE, CMT=1, MDV=1, OCC=k))
        rows += [dict(TIME=t0 + dt, EVID=0, AMT=0.0, CMT=2, MDV=0, OCC=k) for dt in DTS]
    df = pd.DataFrame(rows).assign(ID=i)
    df["WT"] = _weight(i, df["TIME"].to_numpy())

    def params(d):
        occ = d["OCC"].to_numpy().astype(int)
        cl = THETA["CL"] * (d["WT"].to_numpy() / 70.0) ** THETA["BETA"]
        return {
            "CL": cl * np.exp(eta[0] + kappa[occ]),
            "V": THETA["V"] * np.exp(eta[1]) * np.ones(len(d)),
            "KA": THETA["KA"] * np.ones(len(d)),
        }

    out = pkpd.simulate_records(
        pkpd.OneCompartmentOral(), params, df, interpolation={"WT": "linear"}
    )
    return out[out["EVID"] == 0]


def test_likelihood_equals_nonmem_style_records():
    """log p(y | eta, kappa) of each subject with the weight read linearly: equal to the
    likelihood of the predictions `pkpd.simulate_records` gives on records written with a
    kappa per occasion (`_nonmem_records`), at random etas and kappas."""
    pm = _model()
    records = _records(3)
    rng = np.random.default_rng(11)
    records.loc[records["EVID"] == 0, "DV"] = rng.uniform(0.5, 3.0, (records["EVID"] == 0).sum())
    data = C.Dataset.from_records(records, covariates=["WT"], interpolation={"WT": "linear"})
    y = data.dv
    nat = pm.natural(pm.initial())
    arrays = data.arrays()
    loglik = eqx.filter_jit(pm.subject_loglik)
    for i in range(data.n_subjects):
        eta = rng.normal(0.0, 0.3, 2)
        kappa = rng.normal(0.0, 0.3, 3)
        obs = jax.tree_util.tree_map(lambda a, i=i: a[i], arrays)
        cov = {k: jnp.asarray(v[i]) for k, v in data.covariates.items()}
        reg = jax.tree_util.tree_map(lambda a, i=i: a[i], data.regimen)
        b = jnp.asarray(np.concatenate([eta, kappa]))
        got = float(loglik(nat, cov, reg, obs, b))
        pred = _nonmem_records(int(data.ids[i]), eta, kappa)["PRED"].to_numpy()
        m = data.observed[i]
        want = stats.norm.logpdf(y[i][m], pred, PROP * pred).sum()
        np.testing.assert_allclose(got, want, rtol=1e-10)
        # and the kappas matter: another occasion's kappa changes it
        other = b.at[2:].set(b[2:][::-1])
        assert abs(float(loglik(nat, cov, reg, obs, other)) - want) > 0.1


def test_one_occasion_iov_equals_bsv_of_the_summed_variance():
    """On data with one occasion, eta_CL + kappa_CL ~ N(0, omega + omega_IOV): the FOCE-I
    objective of the IOV model equals the model without IOV whose CL variance is the sum
    (the Laplace integral over the direction eta - kappa is exact), weight read linearly."""
    records = _records(4, starts=(0.0,))
    sim = C.simulate_dataset(_model(), None, _design(4, starts=(0.0,)), key=jax.random.key(3))
    records.loc[records["EVID"] == 0, "DV"] = sim.dv[0][sim.observed]
    data = C.Dataset.from_records(records, covariates=["WT"], interpolation={"WT": "linear"})
    assert data.n_occasions == 1 and data.time_varying
    iov = C.objective_values(_model(), data, _flat(_model())[None]).values
    summed = {"CL": OMEGA["CL"] + IOV["CL"], "V": OMEGA["V"]}
    bsv_model = _model(omega=summed, iov={})
    bsv = C.objective_values(bsv_model, data, _flat(bsv_model)[None]).values
    np.testing.assert_allclose(iov, bsv, rtol=1e-7)


# ----------------------------------------------------------------------------- estimation


@pytest.fixture(scope="module")
def simulated():
    """40 subjects x 3 occasions, the weight read linearly (seed fixed in advance)."""
    return C.simulate_dataset(_model(), None, _design(40), key=jax.random.key(2027))


@pytest.fixture(scope="module")
def focei_fit(simulated):
    start = _model(
        theta={"CL": 2.0, "V": 20.0, "KA": 1.0, "BETA": 0.3},
        omega={"CL": 0.2, "V": 0.2},
        iov={"CL": 0.1},
        prop=0.2,
    )
    return C.fit_population(start, simulated.dataset(0))


def test_simulation_follows_weight_and_kappas(simulated):
    """`simulate_dataset` draws kappas per occasion and predicts on the rows: its IPRED of a
    subject equals `simulate_records` on the NONMEM-style records at the drawn etas and
    kappas."""
    for i in (0, 39):
        eta, kappa = simulated.eta[0, i], simulated.kappa[0, i, :, 0]
        pred = _nonmem_records(int(simulated.data.ids[i]), eta, kappa)["PRED"].to_numpy()
        m = simulated.observed[i]
        np.testing.assert_allclose(simulated.ipred[0, i][m], pred, rtol=1e-10)


def test_focei_recovers_the_truth_with_iov_and_a_time_varying_weight(focei_fit):
    """Known values recovered from distant starting values: each estimate within 3 of its
    standard errors of the truth (theta on its own scale; variances through the SE of
    log SD: var * 2 * SE(log SD))."""
    fit = focei_fit
    assert fit.converged
    table = fit.table.set_index(["kind", "parameter"])
    for (kind, name), truth in (
        *((("theta", k), v) for k, v in THETA.items()),
        *((("omega", k), v) for k, v in OMEGA.items()),
        (("iov", "CL"), IOV["CL"]),
    ):
        est, se = table.loc[(kind, name), ["estimate", "se"]]
        assert np.isfinite(se) and se > 0, (kind, name, se)
        assert abs(est - truth) < 3 * se, (kind, name, est, se, truth)
    assert fit.individual.kappa is not None and fit.individual.kappa.shape == (40, 3, 1)


def test_residuals_and_individual_plots_on_the_rows(simulated, focei_fit):
    """IPRED and PRED of `residuals` (the predictions on the data's rows) equal the curves
    of `individual_plots` at the observation times, and those curves follow the weight:
    drawn at the baseline weight they would differ."""
    data = simulated.dataset(0)
    res = C.residuals(focei_fit.model, focei_fit, data, key=1, n_sim=20)
    fig = C.individual_plots(focei_fit.model, focei_fit, data, ids=[1, 2], n_grid=65)
    for k, sid in enumerate((1, 2)):
        ax = fig.axes[k]
        t, ipred = (np.asarray(a) for a in ax.lines[0].get_data())
        pred = np.asarray(ax.lines[1].get_data()[1])
        np.testing.assert_allclose(t, np.arange(65.0))  # the grid: 0 .. 64 h, every hour
        mine = res[res["ID"] == sid]
        at = np.searchsorted(t, mine["TIME"].to_numpy())
        np.testing.assert_allclose(ipred[at], mine["IPRED"].to_numpy(), rtol=1e-9)
        np.testing.assert_allclose(pred[at], mine["PRED"].to_numpy(), rtol=1e-9)
        # PRED at the baseline weight (what a curve ignoring the covariates would draw)
        theta = focei_fit.population["theta"]
        w0 = data.covariates["WT"][k]
        p0 = {
            "CL": theta["CL"] * (w0 / 70.0) ** theta["BETA"],
            "V": theta["V"],
            "KA": theta["KA"],
        }
        reg = jax.tree_util.tree_map(lambda a, k=k: a[k], data.regimen)
        flat = np.asarray(pkpd.simulate(pkpd.OneCompartmentOral(), p0, reg, jnp.asarray(t)))
        assert np.max(np.abs(flat - pred) / np.maximum(pred, 1e-3)) > 0.05
