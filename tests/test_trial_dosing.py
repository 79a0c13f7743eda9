"""One dosing engine: a trial arm doses through `pkpd`'s event engine (`pkpd.advance`), so
lag times, bioavailability, infusions that run into the next period and withheld doses give
exactly what `pkpd.simulate` gives for the same regimen."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import calibration
import pkpd
import twins
from twins import drugs as D
from twins.trials import population_rows, simulate_chunk

TIGHT = pkpd.ODESolver(rtol=1e-11, atol=1e-13, max_steps=100_000)


def _weight(patient):
    return {"WT": D.patient_number(patient, "WT", drug="test", what="kg")}


def _drug(structural, theta, route, *, cmt=1, interval=12.0, lag_shift=0.0):
    """A test drug whose typical parameters carry the NONMEM dosing parameters in `theta`."""

    def typical(th, cov):
        out = dict(th)
        for k in ("CL", "V", "V1"):
            if k in out:
                out[k] = out[k] * cov["WT"] / 70.0
        if "ALAG1" in out:
            out["ALAG1"] = out["ALAG1"] - lag_shift  # lag_shift > ALAG1: an impossible lag
        return out

    return D.Drug(
        name="test_drug",
        model=calibration.PopulationModel(
            structural,
            theta=theta,
            omega={"CL": 0.09, ("V1" if "V1" in theta else "V"): 0.04},
            error=calibration.Proportional(0.1),
            typical=typical,
        ),
        covariate_fn=_weight,
        units=D.Units(dose="mg", concentration="mg/L", observed="concentration, mg/L"),
        dosing=D.Dosing(route=route, amount=100.0, interval=interval, cmt=cmt),
        reference="a test drug",
    )


def _titrated(first):
    """First dose `first`, halved at the day-3 visit and withheld once (a varying regimen)."""
    rule = twins.Nomogram(bounds=(0.0,), change=(0.0, -0.5), hold=(0, 1))

    def initial(cov):
        n = len(cov["ID"])
        return np.zeros((n, 0)), np.full(n, first)

    return twins.DosingArm(
        "titrated", "t", "", initial, visits=(1, 3), rules=(((3,), rule),), dose_step=1.0
    )


def _reference(drug, params, doses, tau, times, output=0):
    """pkpd.simulate of the doses the trial gave, one record per period."""
    route, cmt = drug.dosing.route, drug.dosing.cmt
    records = [route.dose(float(a), time=k * tau, cmt=cmt) for k, a in enumerate(doses) if a > 0]
    y = pkpd.simulate(drug.model.model, params, pkpd.concatenate(records), times, solver=TIGHT)
    return np.asarray(y)[:, output] if np.ndim(y) == 2 else np.asarray(y)


def _run(drug, arm, days, endpoints=(), n=3, **kw):
    trial = twins.Trial(
        name="dosing",
        drug=drug,
        population=twins.Population.sample,
        arms=(arm,),
        endpoints=(twins.MeanDose("dose", "dose", 1), *endpoints),
        days=days,
        interval=drug.dosing.interval,
        **kw,
    )
    pop = population_rows(trial, 0, n, key=jax.random.key(1))
    endpoints_, courses = simulate_chunk(trial, pop, 0, key=jax.random.key(2))
    return trial, endpoints_["titrated"], courses["titrated"]


def _params(course, i):
    return {k: jnp.asarray(v[i]) for k, v in course["params"].items()}


def test_lag_time_and_bioavailability_equal_pkpd_simulate():
    # ALAG1 = 1.5 h, F1 = 0.6: the old trial runner gave the dose at the period start and
    # ignored the lag (a 1.5-h shift of every curve).
    drug = _drug(
        pkpd.OneCompartmentOral(),
        {"KA": 0.9, "CL": 4.0, "V": 40.0, "ALAG1": 1.5, "F1": 0.6},
        D.Oral(),
    )
    trial, _, course = _run(drug, _titrated(200.0), days=6, solver=pkpd.ODESolver())
    tau = trial.interval
    expected = [200.0, 200.0, 0.0, 100.0, 100.0, 100.0]  # the rule acted: a varying regimen
    np.testing.assert_array_equal(course["doses"][0], expected)
    times = np.arange(trial.days + 1) * tau
    for i in range(3):
        ref = _reference(drug, _params(course, i), course["doses"][i], tau, times)
        np.testing.assert_allclose(course["level"][i], ref, rtol=1e-9, atol=1e-12)
    # Not vacuous: without the lag the first trough would be different.
    no_lag = {**_params(course, 0), "ALAG1": jnp.asarray(0.0)}
    other = _reference(drug, no_lag, course["doses"][0], tau, times)
    assert abs(other[1] - course["level"][0, 1]) > 1e-3 * course["level"][0, 1]


def test_infusion_running_into_the_next_period_equals_pkpd_simulate():
    # q6h, a lag of 2 h and an infusion of 5 h: each dose ends in the next period (a window
    # of two periods of doses), where the old runner refused durations >= the interval.
    drug = _drug(
        pkpd.TwoCompartment(),
        {"CL": 4.0, "V1": 20.0, "Q": 3.0, "V2": 30.0, "ALAG1": 2.0},
        D.Infusion(duration=5.0),
        interval=6.0,
    )
    trial, ends, course = _run(
        drug,
        _titrated(500.0),
        days=8,
        endpoints=(twins.AUC("auc", "AUC", hours=12.0), twins.Cmax("cmax", "Cmax", hours=12.0)),
    )
    tau = trial.interval
    times = np.arange(trial.days + 1) * tau
    reg_params = [_params(course, i) for i in range(3)]
    for i, params in enumerate(reg_params):
        ref = _reference(drug, params, course["doses"][i], tau, times)
        np.testing.assert_allclose(course["level"][i], ref, rtol=1e-9, atol=1e-12)
        # The AUC and Cmax of the last 12 h against a dense reference of the same regimen.
        dense = np.linspace(36.0, 48.0, 24_001)
        y = _reference(drug, params, course["doses"][i], tau, dense)
        np.testing.assert_allclose(ends["auc"][i], np.trapezoid(y, dense), rtol=1e-6)
        np.testing.assert_allclose(ends["cmax"][i], y.max(), rtol=1e-6)


def test_a_bad_lag_time_names_the_patient():
    drug = _drug(
        pkpd.OneCompartmentOral(),
        {"KA": 0.9, "CL": 4.0, "V": 40.0, "ALAG1": 1.0},
        D.Oral(),
        lag_shift=2.0,
    )
    # A lag time < 0 is outside the model's domain: every patient is named with the value
    # (a FailedPatientsError, a ValueError, from simulate_chunk; run_trial records them).
    with pytest.raises(ValueError, match=r"V0000001: parameters outside the model's domain: "
                       r"ALAG1 = -1 \(expected >= 0 h"):  # fmt: skip
        _run(drug, _titrated(200.0), days=3)


def test_advance_window_by_window_equals_simulate():
    # The engine function itself: adjacent windows apply every entry once (lags and
    # infusion ends on window boundaries included).
    model = pkpd.OneCompartment()
    params = {"CL": 2.0, "V": 20.0, "ALAG1": 4.0}
    regimen = pkpd.repeat(pkpd.infusion(100.0, duration=20.0), ii=24.0, addl=3)
    times = np.arange(0.0, 97.0, 24.0)
    ref = np.asarray(pkpd.simulate_states(model, params, regimen, times, solver=TIGHT))
    x, rates, got = model.initial_state(params), None, [model.initial_state(params)]
    for k in range(4):
        out = pkpd.advance(model, params, x, regimen, 24.0 * k, 24.0 * (k + 1), solver=TIGHT,
                           rates=rates)  # fmt: skip
        x, rates = out.state, out.rates
        got.append(x)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-12, atol=1e-12)
    # The infusion of the first dose (4 h lag, 20 h) ends at 24 h: the rates at 24 h are
    # those before the entries at 24 h (which the window starting there applies).
    for t, rate in ((3.0, 0.0), (24.0, 5.0), (25.0, 0.0), (30.0, 5.0)):
        np.testing.assert_allclose(pkpd.running_rates(model, params, regimen, t), [rate])
    with pytest.raises(ValueError, match="steady-state"):
        pkpd.advance(model, params, x, pkpd.steady_state(pkpd.bolus(1.0), ii=12.0), 0.0, 1.0,
                     solver=TIGHT)  # fmt: skip


# Extended: the infusion-into-the-next-period test checks the same per-period simulation in
# make test.
@pytest.mark.extended
def test_interval_exposure_matches_a_dense_simulation():
    # A dose exactly at t0 is counted once (the state at t0 is taken before it).
    model = pkpd.TwoCompartmentOral()
    params = {"KA": 1.1, "CL": 3.0, "V1": 25.0, "Q": 2.0, "V2": 40.0, "ALAG1": 0.5}
    regimen = pkpd.repeat(pkpd.oral(100.0), ii=12.0, addl=4)
    dense = np.linspace(24.0, 36.0, 48_001)
    y = np.asarray(pkpd.simulate(model, params, regimen, dense, solver=TIGHT)).ravel()
    ref = np.trapezoid(y, dense)
    aucs = []
    for steps in (48, 192):
        auc, cmax = pkpd.interval_exposure(model, params, regimen, 24.0, 36.0, solver=TIGHT,
                                           steps=steps)  # fmt: skip
        aucs.append(float(auc))
        np.testing.assert_allclose(cmax, y.max(), rtol=2e-3)  # Cmax on the sub-step grid
    # A linear model's AUC is exact (not Simpson on the sub-steps): the same for any number
    # of sub-steps, and within the dense trapezoid's own error (about 9e-10) of it.
    assert abs(aucs[0] / ref - 1.0) < 2e-9
    assert aucs[1] == pytest.approx(aucs[0], rel=1e-12)
    assert y.max() > 2 * y[0]  # the dose at 24 h is in the window


def test_compiled_runners_live_as_long_as_their_trial():
    # No module-level identity cache keeps trials alive: the runners go with the trial.
    import gc
    import weakref

    from twins.trials import trial_runners

    drug = _drug(pkpd.OneCompartmentOral(), {"KA": 0.9, "CL": 4.0, "V": 40.0}, D.Oral())
    trial, _, _ = _run(drug, _titrated(100.0), days=3, n=2)
    assert trial_runners(trial)  # compiled once, reused by the later chunks of the trial
    ref = weakref.ref(trial)
    del trial
    gc.collect()
    assert ref() is None
