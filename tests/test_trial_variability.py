"""Within-patient variability in virtual trials (twins.IOV, twins.OrnsteinUhlenbeck): the
sampled processes against their closed forms (OU: variance sd^2, correlation
exp(-dt/tau); IOV: variance omega^2, one value per occasion, independent occasions), a
course with time-varying parameters against an independent solution of the model's ODEs
with each period's parameters written out (scipy solve_ivp), gradients in the SDs, and a
trial with the terms at zero equal to the trial without them (to rounding; the trial without
terms runs the plain trial's code)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from test_trial_dosing import _drug, _titrated

import pkpd
import twins
from twins import drugs as D
from twins.trials import population_rows, simulate_chunk


def _factors(variability, n, periods, interval=24.0, visits=(0,)):
    keys = jax.random.split(jax.random.key(3), n)
    draw = jax.vmap(lambda k: variability.log_factors(k, periods, interval, visits))
    return np.asarray(draw(keys))


def test_ou_variance_and_autocorrelation_match_the_closed_form():
    sd, tau = 0.3, 3.0  # tau in days; interval 12 h: dt = 0.5 day
    v = twins.Variability((twins.OrnsteinUhlenbeck("CL", sd, tau),))
    n = 20000
    x = _factors(v, n, 20, interval=12.0)[:, :, 0]
    for k in (0, 9, 19):  # stationary: the same variance on every period
        se = sd**2 * np.sqrt(2.0 / n)
        assert abs(x[:, k].var() - sd**2) < 4 * se, (k, x[:, k].var())
        assert abs(x[:, k].mean()) < 4 * sd / np.sqrt(n)
    for lag in (1, 2, 6):
        rho = np.exp(-lag * 0.5 / tau)
        r = np.corrcoef(x[:, 5], x[:, 5 + lag])[0, 1]
        assert abs(r - rho) < 4 * (1 - rho**2) / np.sqrt(n), (lag, r, rho)


def test_iov_one_value_per_occasion_independent_between():
    sd = 0.25
    by_window = twins.IOV("CL", sd, every=7.0)
    by_visit = twins.IOV("CL", sd)
    visits = (0, 3, 5, 10)
    np.testing.assert_array_equal(
        by_visit.occasions(12, 24.0, visits), [0, 0, 0, 1, 1, 2] + [2] * 4 + [3, 3]
    )
    np.testing.assert_array_equal(by_window.occasions(15, 24.0, ()), [0] * 7 + [1] * 7 + [2])
    np.testing.assert_array_equal(
        twins.IOV("CL", sd, every=1.0).occasions(4, 12.0, ()), [0, 0, 1, 1]
    )
    n = 20000
    x = _factors(twins.Variability((by_window,)), n, 21)[:, :, 0]
    np.testing.assert_array_equal(x[:, 0:7], np.repeat(x[:, :1], 7, axis=1))
    np.testing.assert_array_equal(x[:, 14:21], np.repeat(x[:, 14:15], 7, axis=1))
    for k in (0, 7, 14):
        assert abs(x[:, k].var() - sd**2) < 4 * sd**2 * np.sqrt(2.0 / n)
    for a, b in ((0, 7), (7, 14), (0, 14)):
        assert abs(np.corrcoef(x[:, a], x[:, b])[0, 1]) < 4 / np.sqrt(n)
    # two terms on one parameter add on the log scale; another parameter has its own column
    both = twins.Variability(
        (by_window, twins.OrnsteinUhlenbeck("CL", 0.1, 5.0), twins.IOV("V", 0.2, every=2.0))
    )
    assert both.parameters == ("CL", "V")
    y = _factors(both, 2000, 21)
    assert y.shape == (2000, 21, 2)
    total = y[:, :, 0].var(axis=0).mean()
    assert abs(total - (sd**2 + 0.1**2)) < 0.1 * (sd**2 + 0.1**2)


def test_draws_are_differentiable_in_the_sds():
    v = twins.Variability((twins.IOV("CL", 0.2, every=2.0), twins.OrnsteinUhlenbeck("V", 0.3, 4.0)))
    key = jax.random.key(5)

    def total(sds):
        return v.log_factors(key, 10, 24.0, (0,), sds=sds).sum()

    sds = (jnp.asarray(0.2), jnp.asarray(0.3))
    grads = jax.grad(total)(sds)
    x = np.asarray(v.log_factors(key, 10, 24.0, (0,)))
    # the draws are sd * (standard normal): d(sum)/d(sd) = sum / sd
    np.testing.assert_allclose(float(grads[0]), x[:, 0].sum() / 0.2, rtol=1e-12)
    np.testing.assert_allclose(float(grads[1]), x[:, 1].sum() / 0.3, rtol=1e-12)


def _trial(drug, days, variability, **kw):
    return twins.Trial(
        name="variability",
        drug=drug,
        population=twins.Population.sample,
        arms=(_titrated(200.0),),
        endpoints=(twins.MeanDose("dose", "dose", 1),),
        days=days,
        interval=drug.dosing.interval,
        variability=variability,
        **kw,
    )


def _ode_reference(params, factors, doses, tau, days):
    """The one-compartment oral model solved by scipy, period by period, with period k's KA
    and CL (the base values times `factors[name][k]`): concentration at each period start
    (with that period's V, which does not vary here) and at the end."""
    ka0, cl0, v = (float(params[k]) for k in ("KA", "CL", "V"))
    x = np.zeros(2)
    out = []
    for k in range(days):
        ka = ka0 * factors["KA"][k]
        cl = cl0 * factors["CL"][k]
        out.append(x[1] / v)
        x = x + np.array([doses[k], 0.0])

        def f(t, y, ka=ka, cl=cl):
            return [-ka * y[0], ka * y[0] - cl / v * y[1]]

        x = solve_ivp(f, (0.0, tau), x, rtol=1e-11, atol=1e-13, method="LSODA").y[:, -1]
    out.append(x[1] / v)
    return np.array(out)


def test_a_varying_course_equals_the_model_solved_with_each_periods_parameters():
    drug = _drug(pkpd.OneCompartmentOral(), {"KA": 0.9, "CL": 4.0, "V": 40.0}, D.Oral())
    variability = twins.Variability(
        (twins.IOV("CL", 0.3), twins.OrnsteinUhlenbeck("KA", 0.4, 1.5))  # CL by visit
    )
    trial = _trial(drug, 8, variability)
    pop = population_rows(trial, 0, 4, key=jax.random.key(1))
    _, courses = simulate_chunk(trial, pop, 0, key=jax.random.key(2))
    course = courses["titrated"]
    f = course["factors"]
    assert set(f) == {"CL", "KA"} and f["CL"].shape == (4, 8)
    # CL changes only at the arm's visits (days 1 and 3: periods 0 and 2)
    np.testing.assert_array_equal(f["CL"][:, 0], f["CL"][:, 1])
    np.testing.assert_array_equal(f["CL"][:, 2:], np.repeat(f["CL"][:, 2:3], 6, axis=1))
    assert np.all(f["CL"][:, 0] != f["CL"][:, 2]) and np.all(np.diff(f["KA"], axis=1) != 0)
    for i in range(4):
        ref = _ode_reference(
            {k: v[i] for k, v in course["params"].items()},
            {k: v[i] for k, v in f.items()},
            course["doses"][i],
            trial.interval,
            trial.days,
        )
        np.testing.assert_allclose(course["level"][i], ref, rtol=1e-8, atol=1e-12)
    assert trial.describe()["variability"][0]["occasions"] == "by visit"
    # the same patient, the same factors, whatever the chunk
    sub = population_rows(trial, 2, 4, key=jax.random.key(1))
    _, c2 = simulate_chunk(trial, sub, 2, key=jax.random.key(2))
    np.testing.assert_array_equal(c2["titrated"]["factors"]["KA"], f["KA"][2:])
    np.testing.assert_array_equal(c2["titrated"]["level"], course["level"][2:])


def test_terms_at_zero_give_the_trial_without_variability():
    drug = _drug(pkpd.OneCompartmentOral(), {"KA": 0.9, "CL": 4.0, "V": 40.0}, D.Oral())
    zero = twins.Variability(
        (twins.IOV("CL", 0.0, every=2.0), twins.OrnsteinUhlenbeck("KA", 0.0, 3.0))
    )
    adherence = twins.Adherence(0.2, 0.5)
    plain = _trial(drug, 10, None, adherence=adherence)
    off = _trial(drug, 10, zero, adherence=adherence)
    on = _trial(
        drug, 10, twins.Variability((twins.IOV("CL", 0.3, every=2.0),)), adherence=adherence
    )
    pop = population_rows(plain, 0, 5, key=jax.random.key(1))
    e0, c0 = simulate_chunk(plain, pop, 0, key=jax.random.key(2))
    e1, c1 = simulate_chunk(off, pop, 0, key=jax.random.key(2))
    _, c2 = simulate_chunk(on, pop, 0, key=jax.random.key(2))
    # Terms at zero run the varying code path (parameters times exp(0) = 1 exactly), which
    # XLA fuses differently: equal to rounding (a few ulp), not to the bit. Without terms
    # (variability=None) the runner is the code of the plain trial, unchanged.
    for k in ("level", "measured", "doses", "taken"):
        np.testing.assert_allclose(c0["titrated"][k], c1["titrated"][k], rtol=1e-14, atol=1e-300)
    np.testing.assert_array_equal(e0["titrated"]["dose"], e1["titrated"]["dose"])
    assert "variability" not in plain.describe() and "factors" not in c0["titrated"]
    # switched on: the etas and the adherence are unchanged, the course is not
    for k, v in c0["titrated"]["params"].items():
        np.testing.assert_array_equal(c2["titrated"]["params"][k], v)
    np.testing.assert_array_equal(c0["titrated"]["adherence"], c2["titrated"]["adherence"])
    assert not np.array_equal(c0["titrated"]["level"], c2["titrated"]["level"])


def test_bad_terms_are_refused_naming_the_field():
    drug = _drug(pkpd.OneCompartmentOral(), {"KA": 0.9, "CL": 4.0, "V": 40.0}, D.Oral())
    with pytest.raises(ValueError, match=r"'CLX'.*no parameter"):
        _trial(drug, 3, twins.Variability((twins.IOV("CLX", 0.1),)))
    with pytest.raises(ValueError, match="sd must be >= 0"):
        twins.IOV("CL", -0.1)
    with pytest.raises(ValueError, match="every must be"):
        twins.IOV("CL", 0.1, every=0.0)
    with pytest.raises(ValueError, match="correlation_days"):
        twins.OrnsteinUhlenbeck("CL", 0.1, 0.0)
    with pytest.raises(TypeError, match="term 0"):
        twins.Variability((0.1,))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Variability"):
        _trial(drug, 3, 0.1)
