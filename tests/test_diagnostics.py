"""calibration diagnostics: simulation, CWRES/NPDE, VPC/pcVPC, SBC and the plots.

Everything is checked on data simulated from a known model (truth known): the simulated
moments against closed forms, CWRES and NPDE against independent NumPy/SciPy computations and
against N(0, 1) under the true model, the failure of each diagnostic under a misspecified one,
and the coverage of the individual (Laplace) posteriors of 240 simulated twins.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.linalg
from scipy import stats

import calibration as C
import pkpd
from calibration._simulation import phi_from_natural, tile

#: A realistic oral design: dense absorption phase, 11 samples over 24 h (theophylline-like).
TIMES = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 24.0)
N_TWINS = 240


def _typical(theta, cov):
    """Allometric weight scaling of CL and V."""
    w = cov["WT"] / 70.0
    return {"KA": theta["KA"], "CL": theta["CL"] * w**0.75, "V": theta["V"] * w}


PM = C.PopulationModel(
    pkpd.OneCompartmentOral(),
    theta={"KA": 1.5, "CL": 2.8, "V": 32.0},
    omega={"KA": 0.4, "CL": 0.08, "V": 0.04},
    error=C.Combined(0.1, 0.1),
    typical=_typical,
)
TRUTH = jax.tree_util.tree_map(np.asarray, PM.natural(PM.initial()))


def _records(n: int) -> pd.DataFrame:
    """`n` subjects, 160 or 320 mg orally, weights from 50 to 100 kg."""
    rows = []
    for i in range(n):
        amt, wt = (320.0, 160.0)[i % 2], 50.0 + 50.0 * i / max(n - 1, 1)
        rows.append(dict(ID=i + 1, TIME=0.0, EVID=1, AMT=amt, CMT=1, DV=0.0, WT=wt))
        rows += [dict(ID=i + 1, TIME=t, EVID=0, AMT=0.0, CMT=2, DV=0.0, WT=wt) for t in TIMES]
    return pd.DataFrame(rows)


def _with(population, **changes):
    """A copy of natural-scale population values with some entries replaced."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in population.items()}
    for path, value in changes.items():
        part, _, name = path.partition("__")
        if name:
            out[part][name] = value
        else:
            out[part] = value
    return out


@pytest.fixture(scope="module")
def design() -> C.Dataset:
    return C.Dataset.from_records(_records(10), covariates=["WT"])


@pytest.fixture(scope="module")
def cohort(design) -> C.Dataset:
    return tile(design, N_TWINS)


@pytest.fixture(scope="module")
def data(cohort) -> C.Dataset:
    """240 subjects simulated from the true model."""
    return C.simulate_dataset(PM, None, cohort, key=jax.random.key(0)).dataset(0)


@pytest.fixture(scope="module")
def modes(data) -> C.IndividualFit:
    return C.individual_map(PM, data, estimator=C.FOCEI())


@pytest.fixture(scope="module")
def res(data, modes) -> pd.DataFrame:
    return C.residuals(PM, TRUTH, data, key=jax.random.key(1), individual=modes)


@pytest.fixture(scope="module")
def vpc_true(data) -> C.VPCResult:
    return C.vpc(PM, None, data, key=jax.random.key(2), n_rep=200, bins=len(TIMES))


@pytest.fixture(scope="module")
def sbc_result(design) -> C.SBCResult:
    return C.sbc(PM, design, key=jax.random.key(3), n_sims=N_TWINS)


# ----------------------------------------------------------------------------- simulation


def test_simulated_moments_match_closed_form():
    """IV bolus, eta on CL only, exponential error: log DV has closed-form moments.

    `log C(t) = log(D / V) - CL_i t / V + eps`, `CL_i = CL exp(eta)`, so
    `E = log(D / V) - (CL t / V) exp(omega / 2)` and
    `Var = (CL t / V)^2 exp(omega) (exp(omega) - 1) + sigma^2` (log-normal moments).
    """
    dose, cl, v, omega, sd = 100.0, 2.0, 10.0, 0.09, 0.15
    pm = C.PopulationModel(
        pkpd.OneCompartment(), {"CL": cl, "V": v}, {"CL": omega}, C.Exponential(sd)
    )
    times = (1.0, 4.0, 8.0)
    rec = pd.DataFrame(
        {
            "ID": [1] * 4,
            "TIME": [0.0, *times],
            "EVID": [1, 0, 0, 0],
            "AMT": [dose, 0, 0, 0],
            "CMT": [1] * 4,
            "DV": [0.0] * 4,
        }
    )
    n = 4000
    sim = C.simulate_dataset(pm, None, C.Dataset.from_records(rec), key=jax.random.key(10), n_rep=n)
    assert sim.dv.shape == (n, 1, 3) and sim.eta.shape == (n, 1, 1)
    eta = sim.eta[:, 0, 0]
    assert abs(eta.mean()) < 4 * math.sqrt(omega / n)
    assert eta.var() == pytest.approx(omega, rel=4 * math.sqrt(2 / n))
    np.testing.assert_allclose(sim.params["CL"][:, 0], cl * np.exp(eta), rtol=1e-12)
    assert np.log(sim.params["CL"]).mean() == pytest.approx(math.log(cl), abs=0.02)
    eps = np.log(sim.dv[:, 0, :] / sim.ipred[:, 0, :])
    assert eps.std() == pytest.approx(sd, rel=0.03)
    assert abs(np.corrcoef(eps[:, 2], eta)[0, 1]) < 4 / math.sqrt(n)
    for j, t in enumerate(times):
        k = cl * t / v
        mean = math.log(dose / v) - k * math.exp(omega / 2)
        var = k**2 * math.exp(omega) * math.expm1(omega) + sd**2
        y = np.log(sim.dv[:, 0, j])
        assert abs(y.mean() - mean) < 4 * math.sqrt(var / n), t
        assert y.var() == pytest.approx(var, rel=0.1), t
    # The same key gives the same replicates; another key others.
    again = C.simulate_dataset(
        pm, None, C.Dataset.from_records(rec), key=jax.random.key(10), n_rep=n
    )
    np.testing.assert_array_equal(again.dv, sim.dv)
    other = C.simulate_dataset(
        pm, None, C.Dataset.from_records(rec), key=jax.random.key(11), n_rep=n
    )
    assert not np.allclose(other.dv, sim.dv)


def test_simulated_residual_error_and_covariates(cohort):
    """Combined error: (DV - IPRED) / sqrt(add^2 + (prop IPRED)^2) ~ N(0, 1); CL follows WT."""
    sim = C.simulate_dataset(PM, None, cohort, key=jax.random.key(0))
    f, y = sim.ipred[0][cohort.observed], sim.dv[0][cohort.observed]
    z = (y - f) / np.sqrt(0.1**2 + (0.1 * f) ** 2)
    assert abs(z.mean()) < 4 / math.sqrt(z.size) and z.std() == pytest.approx(1.0, abs=0.05)
    wt = cohort.covariates["WT"]
    expected = 2.8 * (wt / 70.0) ** 0.75 * np.exp(sim.eta[0, :, 1])
    np.testing.assert_allclose(sim.params["CL"][0], expected, rtol=1e-12)


def test_censoring_and_dataset_round_trip(cohort):
    """Values below the LLOQ are flagged and hold the LLOQ; records carry DV and CENS."""
    raw = C.simulate_dataset(PM, None, cohort, key=jax.random.key(0))
    cens = C.simulate_dataset(PM, None, cohort, key=jax.random.key(0), lloq=1.0)
    m = cohort.observed
    below = raw.dv[0] < 1.0
    assert 0.02 < below[m].mean() < 0.5
    np.testing.assert_array_equal(cens.blq[0], below & m)
    np.testing.assert_array_equal(cens.dv[0], np.where(below, 1.0, raw.dv[0]))
    ds = cens.dataset(0)
    back = C.Dataset.from_records(ds.records, covariates=["WT"])
    for name in ("dv", "blq", "lloq", "observed", "time"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ds, name), err_msg=name)
    # The default LLOQ of censored data is the data's own.
    again = C.simulate_dataset(PM, None, ds, key=jax.random.key(5))
    np.testing.assert_array_equal(again.lloq[m], 1.0)
    assert np.all(again.dv[0][again.blq[0]] == 1.0) and again.blq[0].any()


def test_population_value_forms():
    """Natural-scale values (block Omega too) map back to the unconstrained form exactly."""
    pm = C.PopulationModel(
        pkpd.OneCompartmentOral(),
        {"KA": 1.0, "CL": 3.0, "V": 30.0},
        {"KA": 0.3, "CL": 0.1, "V": 0.05},
        C.Proportional(0.2),
        omega_block=True,
    )
    phi = pm.initial()
    phi["omega"]["corr"] = jnp.asarray([0.4, -0.3, 0.7])
    nat = pm.natural(phi)
    back = phi_from_natural(pm, jax.tree_util.tree_map(np.asarray, nat))
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(phi), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    diag = dataclasses.replace(pm, omega_block=False)
    with pytest.raises(ValueError, match="off-diagonal"):
        phi_from_natural(diag, nat)
    with pytest.raises(ValueError, match="'sigma' is missing"):
        phi_from_natural(pm, {"theta": nat["theta"], "omega": nat["omega"]})


# ----------------------------------------------------------------------------- residuals


def test_residuals_match_reference_computation(data, modes, res):
    """PRED/IPRED/IWRES/CWRES/NPDE of three subjects recomputed with NumPy and SciPy.

    CWRES: Jacobian by central differences, `Cov^-1/2` by `scipy.linalg.sqrtm`; NPDE: the same
    replicates, decorrelated with NumPy's Cholesky factor, normal quantiles from SciPy.
    """
    th, om, sg = TRUTH["theta"], TRUTH["omega"], TRUTH["sigma"]
    reps = C.simulate_dataset(PM, TRUTH, data, key=jax.random.key(1), n_rep=1000, lloq=-np.inf)
    predict = jax.jit(lambda e, c, r, t: PM.predict(PM.individual_params(th, c, e), r, t))
    for i in (0, 7, 123):
        sub = res[res["ID"] == data.ids[i]]
        cov = {"WT": jnp.asarray(data.covariates["WT"][i])}
        reg = jax.tree_util.tree_map(lambda a, i=i: a[i], data.regimen)
        t, y = data.time[i], data.dv[i]

        def f(e, cov=cov, reg=reg, t=t):
            return np.asarray(predict(jnp.asarray(e), cov, reg, jnp.asarray(t)))

        e = modes.eta[i]
        ipred, pred = f(e), f(np.zeros(3))
        np.testing.assert_allclose(sub["PRED"], pred, rtol=1e-12)
        np.testing.assert_allclose(sub["IPRED"], ipred, rtol=1e-12)
        sd = np.sqrt(sg["add_sd"] ** 2 + (sg["prop_sd"] * ipred) ** 2)
        np.testing.assert_allclose(sub["IWRES"], (y - ipred) / sd, rtol=1e-10)
        h = 1e-6
        g = np.stack([(f(e + h * u) - f(e - h * u)) / (2 * h) for u in np.eye(3)], axis=1)
        cmat = g @ om @ g.T + np.diag(sd**2)
        cwres = np.linalg.solve(np.real(scipy.linalg.sqrtm(cmat)), y - (ipred - g @ e))
        np.testing.assert_allclose(sub["CWRES"], cwres, rtol=1e-5, atol=1e-6)
        ysim = reps.dv[:, i, :]
        mean = ysim.mean(axis=0)
        low = np.linalg.cholesky(np.cov(ysim, rowvar=False))
        z_obs = np.linalg.solve(low, y - mean)
        z_sim = np.linalg.solve(low, (ysim - mean).T).T
        pde = np.clip((z_sim < z_obs).mean(axis=0), 1e-3, 1 - 1e-3)
        np.testing.assert_allclose(sub["NPDE"], stats.norm.ppf(pde), rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(sub["EPRED"], mean, rtol=1e-10)


def test_cwres_and_npde_are_standard_normal_under_the_true_model(res):
    """2640 observations of 240 subjects simulated from the model itself.

    NPDE are exact under the model (up to the 1000 replicates): mean within 4 standard errors
    of 0 and SD within 0.06 of 1. CWRES rest on a first-order linearisation around the modes,
    which is biased where the model is nonlinear in the etas (absorption, omega_KA = 0.4): the
    bias measured with 22,000 observations (this model without weight scaling) is -0.056, so
    the tolerance on the mean is 0.1.
    """
    n = len(res)
    assert n == N_TWINS * len(TIMES) and not res["BLQ"].any()
    npde, cwres = res["NPDE"].to_numpy(), res["CWRES"].to_numpy()
    assert np.isfinite(npde).all() and np.isfinite(cwres).all()
    print(
        f"\nCWRES mean {cwres.mean():+.3f} SD {cwres.std():.3f}; "
        f"NPDE mean {npde.mean():+.3f} SD {npde.std():.3f} (n={n})"
    )
    assert abs(npde.mean()) < 4 / math.sqrt(n)
    assert npde.std() == pytest.approx(1.0, abs=0.06)
    assert stats.kstest(npde, "norm").pvalue > 1e-3
    assert 0.03 < np.mean(np.abs(npde) > 1.96) < 0.07
    assert abs(cwres.mean()) < 0.1
    assert cwres.std() == pytest.approx(1.0, abs=0.08)
    iwres = res["IWRES"].to_numpy()
    assert abs(iwres.mean()) < 0.1


def test_cwres_and_npde_detect_misspecification(data, res):
    """Wrong typical CL (x2): NPDE and late CWRES biased upwards (the data are higher than the
    model predicts); residual error too small (x0.4): their SDs well above 1."""
    cl2 = C.residuals(PM, _with(TRUTH, theta__CL=2 * 2.8), data, key=jax.random.key(1))
    late = cl2["TIME"] >= 8.0
    print(
        f"\nCL x2: NPDE mean {cl2['NPDE'].mean():+.3f}, CWRES mean (t >= 8 h) "
        f"{cl2.loc[late, 'CWRES'].mean():+.3f} (true model: {res.loc[late, 'CWRES'].mean():+.3f})"
    )
    assert cl2["NPDE"].mean() > 0.5
    assert cl2.loc[late, "CWRES"].mean() > 0.7
    sig = {k: 0.4 * v for k, v in TRUTH["sigma"].items()}
    small = C.residuals(PM, _with(TRUTH, sigma=sig), data, key=jax.random.key(1))
    print(f"sigma x0.4: CWRES SD {small['CWRES'].std():.3f}, NPDE SD {small['NPDE'].std():.3f}")
    assert small["CWRES"].std() > 1.5 and small["NPDE"].std() > 1.4


# ----------------------------------------------------------------------------- VPC


def test_vpc_true_model_within_intervals(vpc_true, data):
    v = vpc_true
    assert v.observed.shape == (len(TIMES), 3) and v.simulated.shape == (len(TIMES), 3, 3)
    np.testing.assert_allclose(v.time, TIMES)
    assert v.n.sum() == data.n_observations and v.n_excluded == 0
    assert np.all(v.simulated[..., 0] <= v.simulated[..., 2])
    # Under the model each observed percentile lies in its 95% interval with probability 0.95.
    print(f"\nVPC, true model: {v.inside.sum()} of {v.inside.size} percentiles inside")
    assert v.inside.mean() >= 0.85, v.inside
    # Observed percentiles are those of the data in each bin.
    first = data.dv[:, 0]
    np.testing.assert_allclose(v.observed[0], np.quantile(first, [0.05, 0.5, 0.95]))


def test_vpc_misspecified_model_outside_intervals(data):
    bad = C.vpc(PM, _with(TRUTH, theta__CL=2 * 2.8), data, key=jax.random.key(2), n_rep=200)
    print(f"\nVPC, CL x2: {bad.inside.sum()} of {bad.inside.size} percentiles inside")
    assert bad.inside.mean() < 0.5, bad.inside


def test_pcvpc(vpc_true, data, res):
    """pcDV = DV * median(PRED in bin) / PRED; the correction removes the dose and weight
    spread, so the simulated percentiles are closer together than in the plain VPC."""
    pc = C.vpc(
        PM, None, data, key=jax.random.key(2), n_rep=200, bins=len(TIMES), pred_corrected=True
    )
    print(f"\npcVPC, true model: {pc.inside.sum()} of {pc.inside.size} percentiles inside")
    assert pc.pred_corrected and pc.inside.mean() >= 0.85, pc.inside
    obs = pc.observations
    np.testing.assert_allclose(obs["PRED"], res["PRED"], rtol=1e-12)
    med = res.groupby("TIME")["PRED"].transform("median")
    np.testing.assert_allclose(obs["DV"], res["DV"] * med / res["PRED"], rtol=1e-12)

    def spread(v):
        s = v.simulated[:, :, 1]
        return np.median((s[:, 2] - s[:, 0]) / s[:, 1])

    assert spread(pc) < 0.85 * spread(vpc_true), (spread(pc), spread(vpc_true))


def test_vpc_with_blq_and_bins(data):
    blq = C.simulate_dataset(PM, None, data, key=jax.random.key(4), lloq=1.0).dataset(0)
    v = C.vpc(PM, None, blq, key=jax.random.key(2), n_rep=200, bins=[0.0, 1.2, 3.5, 10.0, 24.0])
    assert v.frac_blq is not None and v.frac_blq_simulated is not None
    assert v.frac_blq.shape == (4,) and v.frac_blq[-1] > 0.05
    lo, hi = v.frac_blq_simulated[:, 0], v.frac_blq_simulated[:, 2]
    assert np.mean((v.frac_blq >= lo) & (v.frac_blq <= hi)) >= 0.75
    q = np.asarray(v.quantiles)
    np.testing.assert_array_equal(np.isnan(v.observed), q[None, :] <= v.frac_blq[:, None])
    assert len(v.plot().axes) == 2
    with pytest.raises(ValueError, match="do not cover"):
        C.vpc(PM, None, blq, key=jax.random.key(2), n_rep=2, bins=[0.5, 30.0])


# ----------------------------------------------------------------------------- SBC


# Extended: 200 simulated twins' Laplace posteriors (about a minute on 2 cores). make test keeps
# the residual, VPC and pcVPC checks of the same fits; the SBC machinery runs here.
@pytest.mark.extended
def test_sbc_coverage_of_individual_posteriors(sbc_result):
    """Issue 3: 90% credible intervals of individual posteriors cover the true parameters in
    85-95% of at least 200 simulated twins (Laplace posteriors given the true population)."""
    s = sbc_result
    print(f"\nSBC coverage ({s.n_sims} twins, Laplace):\n{s.coverage.round(3)}")
    print("rank uniformity p-values:", s.uniformity_pvalue())
    assert s.n_sims >= 200 and s.ranks.shape == (s.n_sims, 3)
    assert s.ranks.min() >= 0 and s.ranks.max() <= s.n_draws
    for name in PM.eta_names:
        assert 0.85 <= s.coverage.loc[name, 0.9] <= 0.95, name
        assert 0.40 <= s.coverage.loc[name, 0.5] <= 0.60, name
        assert 0.90 <= s.coverage.loc[name, 0.95] <= 0.99, name
    # The data inform the posteriors: they are much narrower than the prior.
    assert np.all(np.median(s.sd, axis=0) < 0.7 * np.sqrt(np.diag(TRUTH["omega"])))


@pytest.mark.extended  # with the SBC coverage test above
def test_sbc_detects_overconfident_posterior(design, sbc_result):
    """The same twins with posteriors half as wide as the Laplace ones: coverage collapses and
    the ranks pile up at the ends (a chi-square test rejects uniformity)."""

    def overconfident(pm, phi, data, *, key, n_draws):
        z = jax.random.normal(key, (data.n_subjects, n_draws, pm.n_eta))
        return sbc_result.mean[:, None, :] + 0.5 * sbc_result.sd[:, None, :] * np.asarray(z)

    bad = C.sbc(PM, design, key=jax.random.key(3), n_sims=N_TWINS, posterior=overconfident)
    np.testing.assert_array_equal(bad.truth, sbc_result.truth)
    assert np.all(bad.coverage[0.9] < 0.7), bad.coverage
    assert max(bad.uniformity_pvalue().values()) < 1e-6


# ----------------------------------------------------------------------------- plots


def _saved(fig, path) -> bool:
    fig.savefig(path, dpi=50)
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots(tmp_path, res, data, modes, vpc_true):
    fig = C.gof_plots(res)
    assert len(fig.axes) == 6 and _saved(fig, tmp_path / "gof.png")
    assert len(C.gof_plots(res, log=True).axes) == 6
    fig = C.individual_plots(PM, TRUTH, data, ids=[1, 2, 3, 4, 5, 6], ncols=3, individual=modes)
    assert len(fig.axes) == 6 and _saved(fig, tmp_path / "ind.png")
    with pytest.raises(ValueError, match="max_panels"):
        C.individual_plots(PM, TRUTH, data, individual=modes)
    fig = vpc_true.plot(log=True)
    assert len(fig.axes) == 1 and _saved(fig, tmp_path / "vpc.png")


@pytest.mark.extended  # with the SBC coverage test above
def test_sbc_plot(tmp_path, sbc_result):
    fig = sbc_result.plot()
    assert len(fig.axes) == 3 and _saved(fig, tmp_path / "sbc.png")


def test_argument_errors(data, modes):
    with pytest.raises(ValueError, match="n_sim > 11"):
        C.residuals(PM, TRUTH, data, key=jax.random.key(0), n_sim=11, individual=modes)
    with pytest.raises(ValueError, match="do not match the data"):
        C.residuals(PM, TRUTH, data.subset([0, 1]), key=jax.random.key(0), individual=modes)
    with pytest.raises(ValueError, match="n_rep >= 1"):
        C.simulate_dataset(PM, None, data, key=jax.random.key(0), n_rep=0)
    with pytest.raises(ValueError, match=r"quantiles must lie in \(0, 1\)"):
        C.vpc(PM, None, data, key=jax.random.key(0), quantiles=(5, 50, 95))
    with pytest.raises(ValueError, match="no subject with ID"):
        C.individual_plots(PM, TRUTH, data, ids=[9999], individual=modes)


def test_simulation_is_compiled_once_per_model_value(design, monkeypatch):
    """Replicates of an equal model (a new object) on new data of the same shapes reuse the
    compiled simulation (the identity-keyed cache compiled it again per model object)."""
    traces = []
    predict_random = C.PopulationModel.predict_random

    def counted(self, *args):
        traces.append(1)
        return predict_random(self, *args)

    monkeypatch.setattr(C.PopulationModel, "predict_random", counted)
    key = jax.random.key(11)
    first = C.simulate_dataset(PM, None, design, key=key, n_rep=3)
    n = len(traces)
    same = dataclasses.replace(PM)
    again = C.simulate_dataset(same, None, design.subset(np.arange(10)), key=key, n_rep=3)
    assert same is not PM and len(traces) == n
    np.testing.assert_array_equal(first.dv, again.dv)


def test_keys_of_the_diagnostics(design):
    """An int key is `jax.random.key(int)`; no key or a wrong one is a TypeError that says
    to pass key=."""
    by_int = C.simulate_dataset(PM, None, design, key=5, n_rep=2)
    by_key = C.simulate_dataset(PM, None, design, key=jax.random.key(5), n_rep=2)
    np.testing.assert_array_equal(by_int.dv, by_key.dv)
    with pytest.raises(TypeError, match=r"simulate_dataset draws random numbers: pass key="):
        C.simulate_dataset(PM, None, design, key=None, n_rep=2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        C.vpc(PM, None, design)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"sbc: key must be a JAX PRNG key.*got str"):
        C.sbc(PM, design, key="3", n_sims=4, n_draws=9)  # type: ignore[arg-type]
