"""A subject that cannot be evaluated is named with its reason; it never turns the population
objective into NaN (issue 14).

Before: a subject with an impossible observation made the OFV `inf` and the finite-difference
gradient NaN, and the fit stopped after 0 steps at the initial values with an unnamed
warning; a lag time beyond one subject's first sample at a trial point gave that subject a
NaN term that ended the fit in an `OverflowError`; a covariate model giving one subject a negative
clearance was fitted (and MAP-estimated) as if nothing were wrong; DV <= 0 with an
exponential error was silently read as DV = 1.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from jax.flatten_util import ravel_pytree

import calibration as C
import pkpd
from calibration._model import in_domain

ORAL = pkpd.OneCompartmentOral()
TIMES = np.array([0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0])
TRUE_LAG = 0.25
EARLY = 0.3  # subject 3's extra sample, before anything else


def _lag_records() -> pd.DataFrame:
    """12 subjects, one oral dose with a lag time of 0.25 h (truth), BSV on CL and V, 10%
    proportional error. Subject 3 has an extra early sample at 0.3 h: a lag time beyond it
    predicts 0 there, where a proportional error has zero variance."""
    rng = np.random.default_rng(7)
    n = 12
    eta = rng.normal(0.0, 1.0, (n, 2)) * np.array([0.3, 0.2])
    params = {
        "KA": jnp.full(n, 1.5),
        "CL": jnp.asarray(5.0 * np.exp(eta[:, 0])),
        "V": jnp.asarray(30.0 * np.exp(eta[:, 1])),
        "ALAG1": jnp.full(n, TRUE_LAG),
    }
    t_all = np.concatenate([[EARLY], TIMES])
    at = jnp.asarray(t_all)
    simulate = jax.jit(jax.vmap(lambda p: pkpd.simulate(ORAL, p, pkpd.bolus(100.0), at)))
    pred = np.asarray(simulate(params))
    dv = pred * (1.0 + 0.1 * rng.standard_normal(pred.shape))
    rows = []
    for i in range(n):
        rows.append({"ID": i + 1, "TIME": 0.0, "EVID": 1, "AMT": 100.0, "CMT": 1, "DV": 0.0})
        for k, t in enumerate(t_all):
            if t == EARLY and i != 2:
                continue
            rows.append({"ID": i + 1, "TIME": t, "EVID": 0, "AMT": 0.0, "CMT": 2, "DV": dv[i, k]})
    return pd.DataFrame(rows)


def _lag_model(lag: float) -> C.PopulationModel:
    return C.PopulationModel(
        ORAL,
        theta={"KA": 1.0, "CL": 4.0, "V": 25.0, "ALAG1": lag},
        omega={"CL": 0.1, "V": 0.1},
        error=C.Proportional(0.2),
    )


def _row_of(df: pd.DataFrame, sid: int, time: float) -> int:
    return int(df.index[(df["ID"] == sid) & (df["EVID"] == 0) & (df["TIME"] == time)][0])


@pytest.fixture(scope="module")
def lag_data():
    df = _lag_records()
    return df, C.Dataset.from_records(df)


@pytest.fixture(scope="module")
def trial_fit(lag_data):
    """From ALAG1 = 0.18 h the search tries a lag beyond 0.3 h, subject 3's first sample (and
    no other subject's). Which start does depends on the search's path (the test below checks
    that this one does: `rejected_evaluations > 0`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", C.ConvergenceWarning)
        return C.fit_population(_lag_model(0.18), lag_data[1], standard_errors=False)


@pytest.fixture(scope="module")
def reference_fit(lag_data):
    """From ALAG1 = 0.25 h the search never goes past 0.3 h: no point is rejected."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", C.ConvergenceWarning)
        return C.fit_population(_lag_model(0.25), lag_data[1], standard_errors=False)


def _moved(df: pd.DataFrame, sid: int, time: float, new_time: float) -> pd.DataFrame:
    out = df.copy()
    out.loc[(out["ID"] == sid) & (out["EVID"] == 0) & (out["TIME"] == time), "TIME"] = new_time
    return out.sort_values(["ID", "TIME"], kind="stable")


# ----------------------------------------------------------------------------- at the start


def test_a_subject_that_fails_at_the_initial_estimates_is_named_with_its_reason(lag_data):
    df, _ = lag_data
    # Subject 3's early sample at 0.1 h, before the initial lag of 0.2 h: prediction 0.
    early = _moved(df, 3, EARLY, 0.1)
    with pytest.raises(C.SubjectError) as info:
        C.fit_population(_lag_model(0.2), C.Dataset.from_records(early), standard_errors=False)
    assert list(info.value.failures) == [3]  # only subject 3; the others are fine
    reason = info.value.failures[3]
    assert f"row {_row_of(early, 3, 0.1)}" in reason and "TIME=0.1 h" in reason
    assert "residual SD is 0" in reason and "prediction 0" in reason
    assert "subject ID=3" in str(info.value) and "cannot start" in str(info.value)

    # An absurd DV (a unit slip by 1e200) has zero likelihood for every eta: named, not NaN.
    absurd = df.copy()
    absurd.loc[(absurd["ID"] == 7) & (absurd["TIME"] == 4.0), "DV"] = 1e200
    with pytest.raises(C.SubjectError) as info:
        C.fit_population(_lag_model(0.2), C.Dataset.from_records(absurd), standard_errors=False)
    assert list(info.value.failures) == [7]
    assert f"row {_row_of(absurd, 7, 4.0)}" in info.value.failures[7]
    assert "DV=1e+200" in info.value.failures[7] and "-inf" in info.value.failures[7]


def test_exponential_error_refuses_a_dv_it_cannot_explain(lag_data):
    # Before: DV=0 and DV=-1 were both read as DV=1 (the same OFV, -19.7089...).
    df, _ = lag_data
    pm = C.PopulationModel(
        ORAL,
        theta={"KA": 1.0, "CL": 4.0, "V": 25.0},
        omega={"CL": 0.1},
        error=C.Exponential(0.2),
    )
    for value in (0.0, -1.0):
        bad = df.copy()
        bad.loc[(bad["ID"] == 5) & (bad["TIME"] == 2.0), "DV"] = value
        data = C.Dataset.from_records(bad)
        row = _row_of(bad, 5, 2.0)
        for call in (C.fit_population, C.individual_map):
            with pytest.raises(pkpd.RecordError, match=rf"subject ID=5, row {row}: .*DV={value:g}"):
                call(pm, data)


# ----------------------------------------------------------------------------- during the search


def test_a_subject_failing_only_at_trial_points_never_poisons_the_fit(trial_fit, reference_fit):
    """The point beyond subject 3's first sample is rejected, the fit goes on and ends where
    the fit that never went there ends, near the true lag (before: subject 3's NaN term made
    the objective NaN, and the fit ended in an OverflowError)."""
    fit = trial_fit
    assert reference_fit.diagnostics["rejected_evaluations"] == 0
    assert fit.diagnostics["rejected_evaluations"] > 0
    assert list(fit.diagnostics["rejected_subjects"]) == [3]
    assert "residual SD is 0" in fit.diagnostics["rejected_subjects"][3]
    assert f"TIME={EARLY:g} h" in fit.diagnostics["rejected_subjects"][3]
    assert fit.converged and math.isfinite(fit.ofv)
    assert fit.ofv == pytest.approx(reference_fit.ofv, abs=1e-4)
    x, _ = ravel_pytree(fit.phi)
    x_ref, _ = ravel_pytree(reference_fit.phi)
    np.testing.assert_allclose(np.asarray(x), np.asarray(x_ref), atol=2e-3)  # log scale
    assert fit.population["theta"]["ALAG1"] == pytest.approx(TRUE_LAG, rel=0.05)


def test_individual_map_names_the_failed_subject_and_keeps_the_others(lag_data, trial_fit):
    """At a lag of 0.4 h only subject 3 (sampled at 0.3 h) cannot be evaluated: it is named;
    the other subjects' modes are those found when subject 3's early sample is at 0.6 h."""
    df, data = lag_data
    phi = jax.tree_util.tree_map(lambda v: v, trial_fit.phi)
    phi["theta"] = dict(phi["theta"]) | {"ALAG1": jnp.log(jnp.asarray(0.4))}
    with pytest.raises(C.SubjectError) as info:
        C.individual_map(trial_fit.model, data, phi, estimator=C.FOCEI())
    assert list(info.value.failures) == [3]
    assert f"TIME={EARLY:g} h" in info.value.failures[3]
    partial = info.value.result
    assert np.all(np.isnan(partial.eta[2])) and not partial.converged[2]
    others = np.flatnonzero(data.ids != 3)
    assert np.all(np.isfinite(partial.eta[others])) and partial.converged[others].all()
    fixed = C.Dataset.from_records(_moved(df, 3, EARLY, 0.6))  # same shapes: same compilation
    without = C.individual_map(trial_fit.model, fixed, phi, estimator=C.FOCEI())
    assert without.converged.all()
    np.testing.assert_allclose(partial.eta[others], without.eta[others], rtol=1e-10)
    np.testing.assert_allclose(partial.params["CL"][others], without.params["CL"][others])


# ----------------------------------------------------------------------------- domains


def _crcl_records() -> tuple[pd.DataFrame, C.Dataset]:
    rng = np.random.default_rng(3)
    crcl = np.linspace(30.0, 120.0, 8)
    crcl[4] = 10.0
    model = pkpd.OneCompartment()
    params = {"CL": jnp.asarray(5.0 * (1 + 0.8 * (crcl / 60 - 1))), "V": jnp.full(8, 30.0)}
    at = jnp.asarray(TIMES)
    simulate = jax.jit(jax.vmap(lambda p: pkpd.simulate(model, p, pkpd.bolus(100.0), at)))
    pred = np.asarray(simulate(params))
    dvs = pred * (1.0 + 0.1 * rng.standard_normal(pred.shape))
    rows = []
    for i, (c, dv) in enumerate(zip(crcl, dvs, strict=True)):
        rows.append({"ID": 101 + i, "TIME": 0.0, "EVID": 1, "AMT": 100.0, "CMT": 1, "DV": 0.0,
                     "CRCL": c})  # fmt: skip
        for t, y in zip(TIMES, dv, strict=True):
            rows.append({"ID": 101 + i, "TIME": t, "EVID": 0, "AMT": 0.0, "CMT": 1, "DV": y,
                         "CRCL": c})  # fmt: skip
    df = pd.DataFrame(rows)
    return df, C.Dataset.from_records(df, covariates=["CRCL"])


def _crcl_model(slope: float) -> C.PopulationModel:
    """A linear creatinine-clearance model: CL < 0 for CRCL < 60 (1 - 1 / slope)."""
    return C.PopulationModel(
        pkpd.OneCompartment(),
        theta={"CL": 4.0, "V": 25.0, "CL_CRCL": slope},
        omega={"CL": 0.1, "V": 0.1},
        error=C.Proportional(0.2),
        typical=lambda th, c: {
            "CL": th["CL"] * (1 + th["CL_CRCL"] * (c["CRCL"] / 60 - 1)),
            "V": th["V"],
        },
        unconstrained=("CL_CRCL",),
    )


def test_a_parameter_outside_its_domain_names_subject_parameter_and_row():
    """Slope 1.5: subject 105 (CRCL 10) has CL = 4 (1 - 1.5 * 5/6) = -1 at every eta.
    Before: fitted and MAP-estimated with CL = -0.76 'converged', no word."""
    df, data = _crcl_records()
    pm = _crcl_model(1.5)
    row = int(df.index[df["ID"] == 105][0])
    expected = rf"CL = -1 \(expected > 0\) \(covariates CRCL=10, from row {row}\)"
    calls = [
        lambda: C.fit_population(pm, data, standard_errors=False),
        lambda: C.individual_map(pm, data, estimator=C.FOCEI()),
        lambda: C.fit_population_nuts(pm, data, num_warmup=10, num_samples=10, key=0),
        lambda: C.fit_population_svi(pm, data, num_steps=10, num_draws=10, key=0),
        lambda: C.fit_individual_nuts(pm, data, num_warmup=10, num_samples=10, key=0),
    ]
    for call in calls:
        with pytest.raises(C.SubjectError, match=expected) as info:
            call()
        assert list(info.value.failures) == [105]
        assert "subject ID=105" in str(info.value)


def test_the_log_density_is_minus_infinity_outside_the_domain_also_under_jit():
    """Samplers see -inf (a rejected point, a divergence), never a likelihood computed from a
    negative clearance; and the gradient is finite."""
    _, data = _crcl_records()
    pm = _crcl_model(1.5)
    nat = pm.natural(pm.initial())
    cov = {k: jnp.asarray(v) for k, v in data.covariates.items()}
    obs = data.arrays()

    @jax.jit
    def loglik(theta):
        n = {"theta": theta, "sigma": nat["sigma"]}
        return jax.vmap(lambda c, r, o: pm.subject_loglik(n, c, r, o, jnp.zeros(2)))(
            cov, data.regimen, obs
        )

    ll = np.asarray(loglik(nat["theta"]))
    assert ll[4] == -np.inf and np.all(np.isfinite(np.delete(ll, 4)))
    ok = dict(nat["theta"]) | {"CL_CRCL": jnp.asarray(0.8)}
    assert np.all(np.isfinite(np.asarray(loglik(ok))))

    from calibration._bayes import _loglik

    theta = dict(nat["theta"])
    eta = jnp.zeros((data.n_subjects, 2))
    total = lambda th: jnp.sum(_loglik(pm)(th, nat["sigma"], eta, cov, data.regimen, obs))
    assert float(total(theta)) == -np.inf
    grads = jax.grad(total)(theta)
    assert all(np.isfinite(float(g)) for g in grads.values())


CASES = [
    (pkpd.OneCompartment(), {"CL": 2.0, "V": 20.0}),
    (pkpd.OneCompartmentOral(), {"KA": 1.0, "CL": 2.0, "V": 20.0, "F1": 0.8, "ALAG1": 0.5}),
    (pkpd.TwoCompartment(), {"CL": 5.0, "V1": 20.0, "Q": 8.0, "V2": 60.0, "D1": 1.0}),
    (pkpd.OneCompartmentOralMM(), {"KA": 1.0, "VMAX": 20.0, "KM": 2.0, "V": 30.0, "R1": 5.0}),
    (
        pkpd.PKPD(pkpd.OneCompartment(), pkpd.Emax()),
        {"CL": 2.0, "V": 20.0, "E0": -1.0, "EMAX": -5.0, "EC50": 1.0},
    ),
]


@pytest.mark.parametrize("model, params", CASES, ids=lambda c: type(c).__name__)
def test_the_traced_domain_check_agrees_with_pkpd(model, params):
    """`in_domain` (traced, used inside the objectives) says what `domain_errors` (concrete,
    pkpd's own rules) says, for each parameter set to -1, 0, NaN and inf."""
    check = jax.jit(lambda p: in_domain(model, p))
    assert bool(check(params)) and not model.domain_errors(params)
    for name in params:
        for value in (-1.0, 0.0, math.nan, math.inf):
            p = dict(params) | {name: value}
            assert bool(check(p)) == (not model.domain_errors(p)), (name, value)
