"""Impossible parameters are refused, named; one bad patient never sinks a cohort (issue 14)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pkpd

MM = pkpd.OneCompartmentOralMM()
N = 16
BASE = {"KA": 1.0, "VMAX": 20.0, "KM": 2.0, "V": 30.0}
REGIMEN = pkpd.repeat(pkpd.oral(200.0), ii=12.0, addl=3)
TIMES = jnp.arange(0.0, 49.0, 4.0)


def _cohort(**bad):
    params = {k: np.full(N, v) for k, v in BASE.items()}
    params["KA"] = np.linspace(0.5, 2.0, N)  # patients differ
    for name, value in bad.items():
        params[name][5] = value
    return params


@pytest.mark.parametrize(
    "params, message",
    [
        ({"CL": -2.0, "V": 20.0}, r"CL = -2 \(expected > 0\)"),
        ({"CL": 2.0, "V": 0.0}, r"V = 0 \(expected > 0\)"),
        ({"CL": 2.0, "V": 20.0, "F1": -1.0}, r"F1 = -1 \(expected >= 0"),
        ({"CL": 2.0, "V": 20.0, "ALAG1": -5.0}, r"ALAG1 = -5 \(expected >= 0 h"),
        ({"CL": 2.0, "V": 20.0, "D1": 0.0}, r"D1 = 0 \(expected > 0 h"),
        ({"CL": 2.0, "V": 20.0, "R1": -3.0}, r"R1 = -3 \(expected > 0"),
        ({"CL": float("nan"), "V": 20.0}, r"CL = nan \(expected finite\)"),
    ],
)
def test_simulate_refuses_a_parameter_outside_its_domain(params, message):
    # Before: negative CL gave rising concentrations, F1=-1 dropped the dose, ALAG1=-5 gave
    # the dose 5 h early, all without a word.
    with pytest.raises(ValueError, match=message):
        pkpd.simulate(pkpd.OneCompartment(), params, pkpd.bolus(100.0), jnp.array([1.0, 2.0]))


def test_parameters_the_model_leaves_free_may_be_negative():
    # An Emax model's E0 and EMAX may be negative (an inhibitory effect); EC50 may not.
    model = pkpd.PKPD(pkpd.OneCompartment(), pkpd.Emax())
    params = {"CL": 2.0, "V": 20.0, "E0": -1.0, "EMAX": -5.0, "EC50": 1.0}
    y = pkpd.simulate(model, params, pkpd.bolus(100.0), jnp.array([1.0]))
    assert float(y[0, 1]) < -1.0  # the effect went down from the baseline
    with pytest.raises(ValueError, match=r"EC50 = -1"):
        pkpd.simulate(model, {**params, "EC50": -1.0}, pkpd.bolus(100.0), jnp.array([1.0]))
    # A user's ODE model says which of its parameters must be positive.
    user = pkpd.ODEModel(
        lambda t, x, p: -p["K"] * x + p["S"], state_names=("a",), param_names=("K", "S"),
        positive=("K",),
    )  # fmt: skip
    pkpd.simulate(user, {"K": 1.0, "S": -0.5}, pkpd.bolus(1.0), jnp.array([1.0]))
    with pytest.raises(ValueError, match=r"K = -1"):
        pkpd.simulate(user, {"K": -1.0, "S": 0.5}, pkpd.bolus(1.0), jnp.array([1.0]))


@pytest.mark.parametrize(
    "bad, reason",
    [
        ({"KM": 0.0}, "KM = 0 (expected > 0)"),
        ({"V": 0.0}, "V = 0 (expected > 0)"),
        ({"VMAX": float("nan")}, "VMAX = nan (expected finite)"),
        ({"VMAX": -10.0}, "VMAX = -10 (expected > 0)"),
        ({"KA": 1e7}, "step limit"),
    ],
)
def test_one_bad_patient_does_not_sink_the_cohort(bad, reason):
    # Before: "maximum number of solver steps" for all patients, none named, all lost; and a
    # VMAX=-10 patient moved the others' values by up to 6.4e-8.
    solver = pkpd.ODESolver(rtol=1e-9, atol=1e-12, max_steps=4096)
    ref = np.asarray(pkpd.simulate_cohort(MM, _cohort(), REGIMEN, TIMES, solver=solver))
    with pytest.raises(pkpd.CohortError) as info:
        pkpd.simulate_cohort(MM, _cohort(**bad), REGIMEN, TIMES, solver=solver)
    error = info.value
    assert list(error.failures) == [5]
    assert reason in error.failures[5]
    assert "patient 5" in str(error)
    out = np.asarray(error.outputs)
    assert np.isnan(out[5]).all()
    others = np.delete(out, 5, axis=0)
    # The other patients' results are returned, equal to those of the cohort without the bad
    # patient to the solver's tolerance (the stack's shared steps differ, nothing else).
    np.testing.assert_allclose(others, np.delete(ref, 5, axis=0), rtol=1e-7, atol=1e-10)
    assert np.isfinite(others).all()


@pytest.mark.parametrize("rate, params", [(-2.0, {"D1": 2.0}), (-1.0, {"R1": 50.0})])
def test_modelled_rate_and_duration_records_work_from_records(rate, params):
    # Before: refused by regimen_from_records and Dataset.from_records ("needs the parameter
    # D1") although the parameters come only when the regimen is simulated.
    import pandas as pd

    import calibration

    records = pd.DataFrame(
        {
            "ID": [1, 1, 1],
            "TIME": [0.0, 1.0, 6.0],
            "EVID": [1, 0, 0],
            "AMT": [100.0, 0.0, 0.0],
            "CMT": [1, 1, 1],
            "RATE": [rate, 0.0, 0.0],
            "DV": [0.0, 3.0, 2.0],
        }
    )
    model = pkpd.OneCompartment()
    p = {"CL": 2.0, "V": 20.0, **params}
    reg = pkpd.regimen_from_records(records)
    got = pkpd.simulate(model, p, reg, jnp.array([1.0, 6.0]))
    # The same infusion written with its duration (2 h: 100 mg at 50 mg/h).
    ref = pkpd.simulate(model, {"CL": 2.0, "V": 20.0}, pkpd.infusion(100.0, duration=2.0),
                        jnp.array([1.0, 6.0]))  # fmt: skip
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    data = calibration.Dataset.from_records(records)
    assert data.n_subjects == 1


@pytest.mark.parametrize("ii", [0.01, 1e-6])
def test_a_steady_state_infusion_over_too_many_intervals_is_refused(ii):
    # Before: II=0.01 took 71 s and 1.6 GB, II=1e-6 hung. The work is known beforehand.
    import pandas as pd

    with pytest.raises(ValueError, match=r"spans .* dosing intervals of II = .*MAX_SS_INTERVALS"):
        pkpd.steady_state(pkpd.infusion(10.0, rate=10.0), ii=ii)
    records = pd.DataFrame(
        {"ID": [1, 1], "TIME": [0.0, 1.0], "EVID": [1, 0], "AMT": [10.0, 0.0], "CMT": [1, 1],
         "RATE": [10.0, 0.0], "SS": [1, 0], "II": [ii, 0.0], "DV": [0.0, 1.0]}
    )  # fmt: skip
    with pytest.raises(pkpd.RecordError, match=r"subject ID=1, row 0: .*MAX_SS_INTERVALS"):
        pkpd.simulate_records(pkpd.OneCompartment(), {"CL": 2.0, "V": 20.0}, records)
    # Within the limit it runs (an infusion of 1 h every 0.5 h: two overlapping).
    reg = pkpd.steady_state(pkpd.infusion(10.0, rate=10.0), ii=0.5)
    assert reg.ss_intervals <= pkpd.MAX_SS_INTERVALS


# ----------------------------------------------------------------------------- under jax.jit

ONE = pkpd.OneCompartment()
T2 = jnp.array([1.0, 2.0])


def _runtime(message):
    # A runtime check surfaces as jax's runtime error (a `RuntimeError`, or a `ValueError`
    # from jax's fast dispatch path), carrying equinox's message.
    return pytest.raises((RuntimeError, ValueError), match=message)


@pytest.mark.parametrize(
    "params, message",
    [
        (
            {"CL": -2.0, "V": 20.0},
            r"OneCompartment: parameter CL is outside its domain: expected CL finite and > 0",
        ),
        ({"CL": 2.0, "V": float("nan")}, r"parameter V is outside .* expected V finite and > 0"),
        ({"CL": 2.0, "V": 20.0, "F1": -1.0}, r"parameter F1 .* finite and >= 0 \(a bioavailable"),
        ({"CL": 2.0, "V": 20.0, "ALAG1": -5.0}, r"parameter ALAG1 .* finite and >= 0 h"),
    ],
)
def test_a_traced_parameter_outside_its_domain_is_refused_by_name(params, message):
    # Before: jax.jit(pkpd.simulate) skipped the domain check of traced values and simulated
    # CL = -2 (rising concentrations) without a word.
    run = jax.jit(lambda p: pkpd.simulate(ONE, p, pkpd.bolus(100.0), T2))
    good = {"CL": 2.0, "V": 20.0, **{k: 0.5 for k in params if k not in ("CL", "V")}}
    expected = pkpd.simulate(ONE, good, pkpd.bolus(100.0), T2)
    np.testing.assert_allclose(run(good), expected, rtol=1e-12)  # jit and eager agree
    with _runtime(message):
        run(params)


def test_traced_checks_keep_what_the_model_leaves_free_and_can_be_turned_off():
    model = pkpd.PKPD(ONE, pkpd.Emax())
    run = jax.jit(lambda p: pkpd.simulate(model, p, pkpd.bolus(100.0), T2))
    params = {"CL": 2.0, "V": 20.0, "E0": -1.0, "EMAX": -5.0, "EC50": 1.0}
    assert float(run(params)[0, 1]) < -1.0  # negative baseline and maximal effect: allowed
    with _runtime(r"parameter EC50 is outside .* expected EC50 finite and > 0"):
        run({**params, "EC50": -1.0})
    # checks=False: for a caller that rejects such points itself (calibration's objectives
    # give +inf outside the domain, `in_domain`): the value is simulated.
    loose = jax.jit(lambda p: pkpd.simulate(ONE, p, pkpd.bolus(100.0), T2, checks=False))
    assert np.isfinite(np.asarray(loose({"CL": -2.0, "V": 20.0}))).all()


def test_traced_cohorts_and_occasions_are_checked():
    # The stacked ODE path and the time-major linear path compute their own doses: both check.
    stacked = jax.jit(lambda p: pkpd.simulate_cohort(MM, p, pkpd.oral(100.0), T2))
    cohort = {k: jnp.full(3, v) for k, v in BASE.items()}
    assert np.isfinite(np.asarray(stacked(cohort))).all()
    with _runtime(r"OneCompartmentOralMM: parameter VMAX is outside its domain"):
        stacked({**cohort, "VMAX": cohort["VMAX"].at[1].set(-10.0)})
    time_major = jax.jit(lambda p: pkpd.simulate_cohort(ONE, p, pkpd.bolus(100.0), T2))
    with _runtime(r"OneCompartment: parameter CL is outside its domain"):
        time_major({"CL": jnp.array([2.0, -1.0]), "V": jnp.full(2, 20.0)})
    # Occasions: every segment's parameters, concrete (named with the segment) or traced.
    seg = {"CL": jnp.array([2.0, -1.0]), "V": jnp.full(2, 20.0)}
    change = jnp.array([1.5])
    with pytest.raises(ValueError, match=r"CL = -1 at index \(1,\) \(expected > 0\)"):
        pkpd.simulate_piecewise(ONE, seg, change, pkpd.bolus(100.0), T2)
    piecewise = jax.jit(lambda p: pkpd.simulate_piecewise(ONE, p, change, pkpd.bolus(100.0), T2))
    with _runtime(r"parameter CL is outside its domain"):
        piecewise(seg)
