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
import warnings

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


def test_occasions_on_rows_as_without_time_varying_covariates():
    """A model whose typical values ignore the weight: the rows the interpolation adds (and
    the copies that close each occasion) must carry the kappas so that the objective equals
    the one of the same data read at baseline, where the parameters change at each
    occasion's start (`pkpd.simulate_piecewise`). Occasions a day apart, so the amount
    carried over from one occasion into the next propagates with the kappa of the one
    before up to the next start. Subject 1's weight changes over each washout (the last
    linear sub-interval's row closes the occasion); subject 2's is the same at the end of
    an occasion and the start of the next (no row added there: a copy of the dose record
    closes it)."""
    pm = _model(theta={"CL": 3.0, "V": 30.0, "KA": 1.5}, typical=lambda th, c: dict(th))
    records = _records(2)
    rng = np.random.default_rng(5)
    is_obs = records["EVID"] == 0
    records.loc[is_obs, "DV"] = rng.uniform(0.5, 3.0, is_obs.sum())
    two = records["ID"] == 2
    since = records["TIME"] - 24.0 * (records["TIME"] // 24.0)
    since[two & (records["EVID"] == 1) & (records["TIME"] > 0)] = DTS[-1]
    records.loc[two, "WT"] = 70.0 + since[two]
    rows = C.Dataset.from_records(records, covariates=["WT"], interpolation={"WT": "linear"})
    base = C.Dataset.from_records(records, covariates=["WT"])
    assert rows.time_varying and not base.time_varying
    for i, dose_copy in ((0, False), (1, True)):
        t, occ = rows.row_time[i], rows.row_occasion[i]
        for k, start in enumerate(STARTS[1:], start=1):
            at = np.flatnonzero(t == start)
            assert list(occ[at]) == [k - 1, k], (i, k, t, occ)
            assert (occ[(t > STARTS[k - 1]) & (t < start)] == k - 1).all()
            # subject 2: no linear rows over the washout, only the copy at its end
            washout = (t > STARTS[k - 1] + DTS[-1]) & (t < start)
            assert washout.any() != dose_copy, (i, k, t)
    points = np.stack([_flat(pm), _flat(pm) + 0.1])
    want = C.objective_values(pm, base, points).values
    got = C.objective_values(pm, rows, points).values
    np.testing.assert_allclose(got, want, rtol=1e-10)


def _nonmem_records(i: int, eta, kappa, theta=THETA) -> pd.DataFrame:
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
        cl = theta["CL"] * (d["WT"].to_numpy() / 70.0) ** theta["BETA"]
        return {
            "CL": cl * np.exp(eta[0] + kappa[occ]),
            "V": theta["V"] * np.exp(eta[1]) * np.ones(len(d)),
            "KA": theta["KA"] * np.ones(len(d)),
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


# ----------------------------------------------------------------------------- simulation, plots


def test_simulation_follows_weight_and_kappas():
    """`simulate_dataset` draws kappas per occasion and predicts on the rows: its IPRED of a
    subject equals `simulate_records` on the NONMEM-style records at the drawn etas and
    kappas."""
    sim = C.simulate_dataset(_model(), None, _design(3), key=jax.random.key(8))
    assert sim.kappa is not None and sim.kappa.shape == (1, 3, 3, 1)
    for i in range(3):
        eta, kappa = sim.eta[0, i], sim.kappa[0, i, :, 0]
        pred = _nonmem_records(int(sim.data.ids[i]), eta, kappa)["PRED"].to_numpy()
        np.testing.assert_allclose(sim.ipred[0, i][sim.observed[i]], pred, rtol=1e-10)


def test_individual_plots_pass_through_the_predictions_on_the_rows():
    """The curves of `individual_plots` (IPRED at the modes, PRED) at the observation times
    equal `simulate_records` on the NONMEM-style records at the same etas and kappas (the
    predictions on the data's rows), and they follow the weight: drawn at the baseline
    weight the population curve would differ by more than 5%."""
    pm = _model()
    records = _records(2)
    rng = np.random.default_rng(4)
    is_obs = records["EVID"] == 0
    records.loc[is_obs, "DV"] = rng.uniform(0.5, 3.0, is_obs.sum())
    data = C.Dataset.from_records(records, covariates=["WT"], interpolation={"WT": "linear"})
    modes = C.individual_map(pm, data, estimator=C.FOCEI())
    assert modes.kappa is not None
    fig = C.individual_plots(pm, None, data, n_grid=65, individual=modes)
    for k in range(2):
        ax = fig.axes[k]
        t, ipred = (np.asarray(a) for a in ax.lines[0].get_data())
        pred = np.asarray(ax.lines[1].get_data()[1])
        np.testing.assert_allclose(t, np.arange(65.0))  # the grid: 0 .. 64 h, every hour
        m = data.observed[k]
        at = np.searchsorted(t, data.time[k][m])
        assert np.array_equal(t[at], data.time[k][m])
        sid = int(data.ids[k])
        want = _nonmem_records(sid, modes.eta[k], modes.kappa[k, :, 0])["PRED"].to_numpy()
        np.testing.assert_allclose(ipred[at], want, rtol=1e-9)
        want = _nonmem_records(sid, np.zeros(2), np.zeros(3))["PRED"].to_numpy()
        np.testing.assert_allclose(pred[at], want, rtol=1e-9)
        # the population curve at the baseline weight (a curve that ignores the covariate)
        w0 = data.covariates["WT"][k]
        p0 = _typical(THETA, {"WT": w0})
        reg = jax.tree_util.tree_map(lambda a, k=k: a[k], data.regimen)
        flat = np.asarray(pkpd.simulate(pkpd.OneCompartmentOral(), p0, reg, jnp.asarray(t)))
        assert np.max(np.abs(flat - pred)[1:] / pred[1:]) > 0.05


# ----------------------------------------------------------------------------- estimation
# The fits take a minute or more on 2 cores (make test-all). What stays in make test covers
# their ground: the likelihood they maximise (test_likelihood_equals_nonmem_style_records,
# test_occasions_on_rows_as_without_time_varying_covariates), FOCE-I's objective on such
# data (test_one_occasion_iov_equals_bsv_of_the_summed_variance), and FOCE-I's recovery of
# IOV at baseline covariates (tests/test_iov_estimators.py).


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


@pytest.mark.extended  # about 65 s on 2 cores; see the note above
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


@pytest.mark.extended  # residuals of an IOV model compile for about a minute; the same
# predictions on the rows are checked in make test (test_individual_plots_pass_through_...)
def test_residuals_on_the_rows(simulated, focei_fit):
    """IPRED and PRED of `residuals` equal `simulate_records` on the NONMEM-style records at
    the fit's modes and at 0; CWRES and NPDE are finite."""
    data = simulated.dataset(0)
    res = C.residuals(focei_fit.model, focei_fit, data, key=1, n_sim=20)
    ind, theta = focei_fit.individual, focei_fit.population["theta"]
    assert ind.kappa is not None
    for k in (0, 39):
        mine = res[res["ID"] == data.ids[k]]
        sid = int(data.ids[k])
        want = _nonmem_records(sid, ind.eta[k], ind.kappa[k, :, 0], theta)["PRED"]
        np.testing.assert_allclose(mine["IPRED"], want.to_numpy(), rtol=1e-9)
        want = _nonmem_records(sid, np.zeros(2), np.zeros(3), theta)["PRED"]
        np.testing.assert_allclose(mine["PRED"], want.to_numpy(), rtol=1e-9)
    assert np.isfinite(res["CWRES"]).all() and np.isfinite(res["NPDE"]).all()


@pytest.mark.extended  # NUTS compiles and samples for about a minute; the likelihood it
# samples is checked in make test (test_likelihood_equals_nonmem_style_records)
def test_individual_nuts_samples_kappas_on_the_rows(simulated, focei_fit):
    """Individual NUTS at the FOCE-I estimates, on data with the weight read linearly: the
    posterior means of each subject's kappas are close to their FOCE-I modes (within 0.5
    posterior SD, the Laplace approximation's accuracy here)."""
    one = simulated.dataset(0).subset([0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.ConvergenceWarning)
        ind = C.fit_individual_nuts(
            focei_fit.model, one, focei_fit, num_warmup=200, num_samples=300, num_chains=1,
            key=jax.random.key(1),
        )  # fmt: skip
    kappa = np.asarray(ind.idata.posterior["kappa"])[0]  # draws, subjects, occasions, iov
    assert focei_fit.individual.kappa is not None
    mode = focei_fit.individual.kappa[:2]
    assert (np.abs(kappa.mean(0) - mode) < 0.5 * kappa.std(0)).all()


@pytest.mark.extended  # SVI compiles and runs for about a minute; see the NUTS test's note
def test_svi_on_the_rows_lands_near_focei(simulated, focei_fit):
    """SVI (AutoNormal, 2000 Adam steps) with IOV and the weight read linearly lands within
    10% of FOCE-I's CL and V and 0.15 of its weight exponent (SE about 0.1)."""
    from numpyro.infer.autoguide import AutoNormal

    data = simulated.dataset(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.ConvergenceWarning)
        svi = C.fit_population_svi(
            focei_fit.model, data, guide=AutoNormal, num_steps=2000, learning_rate=0.02,
            num_draws=100, key=jax.random.key(2),
        )  # fmt: skip
    est = svi.table.set_index(["kind", "parameter"])["estimate"]
    ref = focei_fit.table.set_index(["kind", "parameter"])["estimate"]
    for key in [("theta", "CL"), ("theta", "V")]:
        assert abs(est[key] / ref[key] - 1.0) < 0.1, key
    assert abs(est[("theta", "BETA")] - ref[("theta", "BETA")]) < 0.15
    assert svi.idata.posterior["kappa"].shape == (1, 100, 40, 3, 1)
