"""calibration.bootstrap and calibration.profile_likelihood against closed forms.

The reference model is a balanced one-way random-effects (random-intercept) model written as
a population PK model: an IV bolus observed at once (`C = DOSE / V_i`, clearance negligible),
`V_i = V exp(eta_i)`, `eta_i ~ N(0, omega^2)` and an exponential error, so that
`log DV_ij = log DOSE - log V - eta_i + eps_ij` is linear and Gaussian in the random effects.
The Laplace (and FOCE-I) likelihood is then exact, and its maximum-likelihood estimates
have closed forms (Searle, Casella & McCulloch 1992, Variance Components, Wiley, ch. 3):
with subject means `ybar_i`, `SSW = sum (y_ij - ybar_i)^2` and `S = sum (ybar_i - ybar)^2`
over `N` subjects of `n` observations, `log(DOSE / V) = ybar`, `sigma^2 = SSW / (N (n - 1))`,
`omega^2 = S / N - sigma^2 / n`. The bootstrap estimates of each resample are computed
here with numpy from the same subjects, and so are the profile likelihoods (closed form for
`V` and `sigma`, a one-dimensional scipy minimisation for `omega`).
"""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import scipy.stats

import calibration as C
import pkpd

DOSE = 100.0
N, NOBS = 16, 4
CHI2 = float(scipy.stats.chi2.ppf(0.95, 1))


def typical_ri(theta, cov):
    """Random intercept: clearance negligible, so C = DOSE / V at the observation times."""
    return {"CL": 1e-9, "V": theta["V"]}


def typical_z(theta, cov):
    """V shifted for subjects with Z = 1 (one subject here): `V (1 + B Z)`."""
    return {"CL": 1e-9, "V": theta["V"] * (1.0 + theta["B"] * cov["Z"])}


def _records(seed=0, V=20.0, om=0.09, sd=0.15) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(N):
        eta = rng.normal(0.0, math.sqrt(om))
        base = {"ID": i + 1, "CMT": 1, "STUDY": 1 + (i % 3 == 0), "Z": float(i == 2)}
        rows.append(base | {"TIME": 0.0, "EVID": 1, "AMT": DOSE, "DV": 0.0, "MDV": 1})
        for j in range(NOBS):
            y = math.log(DOSE / (V * math.exp(eta))) + rng.normal(0.0, sd)
            t = 1e-6 * (j + 1)
            rows.append(base | {"TIME": t, "EVID": 0, "AMT": 0.0, "DV": math.exp(y), "MDV": 0})
    return pd.DataFrame(rows)


def closed_form(y: np.ndarray) -> tuple[float, float, float]:
    """ML estimates (V, omega^2, sigma) of the balanced random-intercept model."""
    n_sub, n = y.shape
    yb = y.mean(axis=1)
    g = yb.mean()
    s2 = float(((y - yb[:, None]) ** 2).sum() / (n_sub * (n - 1)))
    om = float(((yb - g) ** 2).sum() / n_sub - s2 / n)
    return DOSE / math.exp(g), om, math.sqrt(s2)


def minus2ll(y: np.ndarray, mu: float, om: float, s2: float) -> float:
    """-2 log L of log DV up to a constant (balanced one-way random effects)."""
    n_sub, n = y.shape
    yb = y.mean(axis=1)
    ssw = ((y - yb[:, None]) ** 2).sum()
    tau = s2 + n * om
    return float(
        n_sub * (n - 1) * math.log(s2)
        + n_sub * math.log(tau)
        + ssw / s2
        + n * ((yb - mu) ** 2).sum() / tau
    )


@pytest.fixture(scope="module")
def ri():
    df = _records()
    data = C.Dataset.from_records(df, covariates=["STUDY", "Z"])
    pm = C.PopulationModel(
        pkpd.OneCompartment(),
        theta={"V": 15.0},
        omega={"V": 0.2},
        error=C.Exponential(0.3),
        typical=typical_ri,
    )
    fit = C.fit_population(pm, data)
    y = np.log(df.loc[df["EVID"] == 0, "DV"].to_numpy()).reshape(N, NOBS)
    return pm, data, fit, y


def _row(fit, kind, name):
    return float(fit.table.set_index(["kind", "parameter"]).loc[(kind, name), "estimate"])


def test_fit_is_the_closed_form(ri):
    _, _, fit, y = ri
    v, om, sd = closed_form(y)
    assert fit.converged
    assert _row(fit, "theta", "V") == pytest.approx(v, rel=1e-5)
    assert _row(fit, "omega", "V") == pytest.approx(om, rel=1e-3)
    assert _row(fit, "sigma", "exp_sd") == pytest.approx(sd, rel=1e-4)


def test_bootstrap_matches_the_closed_form_bootstrap(ri):
    pm, data, fit, y = ri
    derived = {"C0": lambda p: DOSE / p["theta"]["V"]}
    res = C.bootstrap(pm, data, fit, n=30, key=jax.random.key(7), derived=derived)
    assert (res.n, res.n_converged, res.n_failed, res.n_not_converged) == (30, 30, 0, 0)
    # the resamples: 16 subjects drawn with replacement (IDs 1..16), not all the same set
    pos = np.array([[s - 1 for s in subj] for subj in res.resamples["subjects"]])
    assert pos.shape == (30, N) and pos.min() >= 0 and pos.max() < N
    assert len({tuple(sorted(p)) for p in pos}) == 30
    ref = np.array([closed_form(y[p]) for p in pos])
    wide = res.samples()
    np.testing.assert_allclose(wide["theta[V]"], ref[:, 0], rtol=1e-5)
    np.testing.assert_allclose(wide["omega[V]"], ref[:, 1], rtol=2e-3)
    np.testing.assert_allclose(wide["sigma[exp_sd]"], ref[:, 2], rtol=1e-4)
    np.testing.assert_allclose(wide["derived[C0]"], DOSE / ref[:, 0], rtol=1e-5)
    t = res.intervals.set_index("label")
    for col, lab in enumerate(["theta[V]", "omega[V]", "sigma[exp_sd]"]):
        lo, hi = np.quantile(ref[:, col], [0.025, 0.975])
        rtol = 2e-3 if lab == "omega[V]" else 1e-4
        assert t.loc[lab, "ci_low"] == pytest.approx(lo, rel=rtol), lab
        assert t.loc[lab, "ci_high"] == pytest.approx(hi, rel=rtol), lab
        assert t.loc[lab, "se"] == pytest.approx(np.std(ref[:, col], ddof=1), rel=1e-2), lab
        assert t.loc[lab, "n_used"] == 30
    assert t.loc["theta[V]", "estimate"] == pytest.approx(_row(fit, "theta", "V"), rel=1e-12)
    # the same key draws the same resamples; another key others
    again = C.bootstrap(pm, data, fit, n=3, key=jax.random.key(7))
    assert again.resamples["subjects"].tolist() == res.resamples["subjects"].tolist()[:3]
    other = C.bootstrap(pm, data, fit, n=3, key=jax.random.key(8))
    assert other.resamples["subjects"].tolist() != again.resamples["subjects"].tolist()
    assert "30 converged" in repr(res) and "theta[V]" in str(res)
    fig = res.plot()
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == list(t.index)


def test_stratified_resamples_keep_the_strata(ri):
    pm, data, fit, y = ri
    study = np.asarray(data.covariates["STUDY"])
    res = C.bootstrap(pm, data, fit, n=8, key=jax.random.key(3), stratify="STUDY")
    pos = np.array([[s - 1 for s in subj] for subj in res.resamples["subjects"]])
    for p in pos:
        # each stratum keeps its size and is drawn from its own subjects only
        assert sorted(study[p].tolist()) == sorted(study.tolist())
        for s in (1, 2):
            assert set(p[study[p] == s]) <= set(np.flatnonzero(study == s))
    ref = np.array([closed_form(y[p]) for p in pos])
    np.testing.assert_allclose(res.samples()["theta[V]"], ref[:, 0], rtol=1e-5)
    assert res.stratify == "STUDY" and "stratified by STUDY" in repr(res)
    with pytest.raises(ValueError, match="stratify='SITE' is not a covariate"):
        C.bootstrap(pm, data, fit, n=2, key=jax.random.key(0), stratify="SITE")


def test_bca_matches_an_independent_computation(ri):
    pm, data, fit, y = ri
    res = C.bootstrap(pm, data, fit, n=40, key=jax.random.key(11), bca=True)
    pos = np.array([[s - 1 for s in subj] for subj in res.resamples["subjects"]])
    boot = np.array([closed_form(y[p])[0] for p in pos])
    jack = np.array([closed_form(np.delete(y, i, axis=0))[0] for i in range(N)])
    est = closed_form(y)[0]
    # Efron & Tibshirani 1993, eqs. 14.14-14.15
    z0 = scipy.stats.norm.ppf(np.mean(boot < est))
    d = jack.mean() - jack
    acc = np.sum(d**3) / (6.0 * np.sum(d**2) ** 1.5)
    z = scipy.stats.norm.ppf([0.025, 0.975])
    a = scipy.stats.norm.cdf(z0 + (z0 + z) / (1 - acc * (z0 + z)))
    lo, hi = np.quantile(boot, a)
    t = res.intervals.set_index("label")
    assert t.loc["theta[V]", "bca_low"] == pytest.approx(lo, rel=1e-4)
    assert t.loc["theta[V]", "bca_high"] == pytest.approx(hi, rel=1e-4)
    assert res.jackknife is not None and len(res.jackknife) == N
    np.testing.assert_allclose(res.jackknife["theta[V]"], jack, rtol=1e-5)


def test_failing_resamples_are_counted_and_listed(ri):
    _, data, _, _ = ri
    pm = C.PopulationModel(
        pkpd.OneCompartment(),
        theta={"V": 15.0, "B": 0.1},
        omega={"V": 0.2},
        error=C.Exponential(0.3),
        typical=typical_z,
        unconstrained=("B",),
    )
    fit = C.fit_population(pm, data)
    # From B = -2 subject 3 (Z = 1) has V < 0: every resample that draws it cannot start.
    start = {**fit.phi, "theta": {**fit.phi["theta"], "B": jax.numpy.asarray(-2.0)}}
    res = C.bootstrap(pm, data, fit, n=12, key=jax.random.key(5), start=start)
    has3 = np.array([3 in subj for subj in res.resamples["subjects"]])
    assert 0 < has3.sum() < 12  # the key draws both kinds
    assert res.n_failed == int(has3.sum())
    assert res.n == 12 and len(res.resamples) == 12
    assert res.resamples["raised"].tolist() == has3.tolist()
    for b in np.flatnonzero(has3):
        why = res.failures[int(b)]
        assert why.startswith("SubjectError") and "ID=3" in why
    assert set(res.failures) == set(np.flatnonzero(has3).tolist())
    t = res.intervals.set_index("label")
    assert int(t.loc["theta[V]", "n_used"]) == 12 - int(has3.sum())
    assert f"{int(has3.sum())} failed" in repr(res) and "Resamples not used" in str(res)
    # Refits stopped after one step: not converged, counted, kept out of the intervals.
    short = C.bootstrap(pm, data, fit, n=4, key=jax.random.key(5), max_steps=1)
    assert short.n_not_converged == 4 and short.n_failed == 0
    assert short.intervals["n_used"].tolist() == [0] * len(short.intervals)
    assert np.isnan(short.intervals["ci_low"]).all()
    assert all("did not converge" in why for why in short.failures.values())
    assert len(short.samples().dropna(subset=["theta[V]"])) == 4  # their estimates are kept


def test_results_file_continues_an_interrupted_run(ri, tmp_path):
    pm, data, fit, _ = ri
    path = tmp_path / "boot.jsonl"
    whole = C.bootstrap(pm, data, fit, n=6, key=jax.random.key(1), results_file=path)
    lines = path.read_text().splitlines()
    assert len(lines) == 7 and "header" in json.loads(lines[0])
    # an interruption during resample 4: three written, the fourth cut in the middle
    path.write_text("\n".join(lines[:4]) + "\n" + lines[4][:25])
    resumed = C.bootstrap(pm, data, fit, n=6, key=jax.random.key(1), results_file=path)
    assert len(path.read_text().splitlines()) == 7
    pd.testing.assert_frame_equal(resumed.intervals, whole.intervals, rtol=1e-10)
    with pytest.raises(ValueError, match=r"another run \(first_resample"):
        C.bootstrap(pm, data, fit, n=6, key=jax.random.key(2), results_file=path)
    with pytest.raises(ValueError, match="written for another run"):
        C.bootstrap(pm, data, fit, n=6, key=jax.random.key(1), results_file=path, gtol=1e-2)


def _profile_root(f, lo, hi):
    return scipy.optimize.brentq(f, lo, hi, xtol=1e-12)


def test_profile_of_a_theta_is_the_closed_form_interval(ri):
    pm, data, fit, y = ri
    pr = C.profile_likelihood(pm, data, "V", fit)
    yb = y.mean(axis=1)
    g, s = yb.mean(), ((yb - yb.mean()) ** 2).sum()
    # -2 log L_p(mu) - min = N log(1 + N (mu - ybar)^2 / S) (sigma^2, tau profiled out)
    half = math.sqrt(s / N * math.expm1(CHI2 / N))
    assert pr.ci_low == pytest.approx(DOSE / math.exp(g + half), rel=1e-4)
    assert pr.ci_high == pytest.approx(DOSE / math.exp(g - half), rel=1e-4)
    prof = pr.profile
    ref = N * np.log1p(N * (np.log(DOSE / prof["value"]) - g) ** 2 / s)
    np.testing.assert_allclose(prof["delta"], ref, atol=2e-4)
    # the profile's minimum is the fit's -2LL, at the estimate
    at = prof.loc[np.isclose(prof["value"], pr.estimate, rtol=1e-12)]
    assert len(at) == 1 and float(at["minus2ll"].iloc[0]) == pytest.approx(fit.ofv, abs=1e-6)
    assert np.min(prof["delta"].to_numpy()) >= -1e-6
    assert not pr.notes and bool(prof["converged"].all())
    assert pr.estimate == pytest.approx(_row(fit, "theta", "V"), rel=1e-12)
    assert "profile interval" in repr(pr) and "-2LL of the fit" in str(pr)
    ax = pr.plot().axes[0]
    assert ax.get_xlabel() == "theta[V]" and len(ax.lines) == 5  # profile, 3.84, ends, estimate
    # the interpolated ends, without the root-finding refits
    quick = C.profile_likelihood(pm, data, "theta[V]", fit, refine=False)
    assert quick.ci_low == pytest.approx(pr.ci_low, rel=2e-3)
    assert quick.ci_high == pytest.approx(pr.ci_high, rel=2e-3)
    assert bool(quick.profile["on_grid"].all()) and not bool(pr.profile["on_grid"].all())


def test_profile_of_sigma_and_omega_against_references(ri):
    pm, data, fit, y = ri
    _, om_hat, sd_hat = closed_form(y)
    nn = N * (NOBS - 1)
    # sigma: -2 log L_p - min = N (n-1) (log(s2 / s2hat) + s2hat / s2 - 1) while omega^2 > 0
    pr = C.profile_likelihood(pm, data, "sigma[exp_sd]", fit)

    def dsig(sd):
        r = (sd_hat / sd) ** 2
        return nn * (-math.log(r) + r - 1) - CHI2

    assert pr.ci_low == pytest.approx(_profile_root(dsig, 0.5 * sd_hat, sd_hat), rel=1e-4)
    assert pr.ci_high == pytest.approx(_profile_root(dsig, sd_hat, 2 * sd_hat), rel=1e-4)
    # omega^2: the profile by a one-dimensional minimisation over sigma^2 (mu = ybar)
    g = y.mean()
    best = minus2ll(y, g, om_hat, sd_hat**2)

    def dom(om):
        res = scipy.optimize.minimize_scalar(
            lambda ls: minus2ll(y, g, om, math.exp(ls)),
            bracket=(math.log(sd_hat**2) - 0.5, math.log(sd_hat**2) + 0.5),
            tol=1e-12,
        )
        return res.fun - best - CHI2

    po = C.profile_likelihood(pm, data, ("omega", "V"), fit)
    assert po.ci_low == pytest.approx(_profile_root(dom, om_hat / 20, om_hat), rel=2e-3)
    assert po.ci_high == pytest.approx(_profile_root(dom, om_hat, 10 * om_hat), rel=2e-3)
    # the variance's profile interval is skewed: wider above than the Wald interval
    assert po.ci_high > po.wald_high and po.ci_low < po.estimate < po.ci_high


def test_profile_errors_and_unreached_bounds(ri):
    pm, data, fit, _ = ri
    with pytest.raises(ValueError, match=r"no parameter theta\[CL\].*expected one of"):
        C.profile_likelihood(pm, data, "CL", fit)
    with pytest.raises(ValueError, match=r"values of theta\[V\] must be > 0"):
        C.profile_likelihood(pm, data, "V", fit, values=[-1.0, 20.0])
    with pytest.raises(ValueError, match="level must be in"):
        C.profile_likelihood(pm, data, "V", fit, level=95)
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        C.bootstrap(pm, data, fit, n=1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="give the data that was fitted"):
        C.bootstrap(pm, data.subset(np.arange(N - 1)), fit, n=2, key=jax.random.key(0))
    # a grid that does not reach the rise: the bound is NaN and the note says why
    pr = C.profile_likelihood(pm, data, "V", fit, values=[17.0, 18.5])
    assert math.isnan(pr.ci_low) and math.isnan(pr.ci_high)
    assert len(pr.notes) == 2 and "did not rise by 3.841 on the lower side" in pr.notes[0]


@pytest.mark.extended
def test_workers_give_the_sequential_result(ri):
    """Two spawned processes (each compiles its own objective: ~30 s on 2 cores)."""
    pm, data, fit, _ = ri
    seq = C.bootstrap(pm, data, fit, n=6, key=jax.random.key(4))
    par = C.bootstrap(pm, data, fit, n=6, key=jax.random.key(4), workers=2)
    assert par.resamples["subjects"].tolist() == seq.resamples["subjects"].tolist()
    pd.testing.assert_frame_equal(par.intervals, seq.intervals, rtol=1e-9)
