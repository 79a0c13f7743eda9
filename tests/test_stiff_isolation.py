"""One stiff patient neither changes nor slows the others of a cohort (issue 14).

A stacked ODE solve shares its step sizes between the patients of a stack: a patient who
needs tiny steps makes every other patient take them too (the cohort of 64 below was 9.6x
slower with one `KM = 1e-3` patient) and moves their values within the tolerance. With
concrete parameters `simulate_cohort` solves such a patient alone (`isolate_above`), so the
others are bit for bit the cohort without it; a patient that reaches the step limit is named
and the others are kept, bit for bit too. About 25 s.
"""

from __future__ import annotations

import diffrax
import numpy as np
import pytest
import scipy.integrate
from helpers import max_rel_err

import pkpd

MM = pkpd.OneCompartmentOralMM()
N = 12
STIFF = 5
DOSE, II, N_DOSES = 200.0, 12.0, 4
REGIMEN = pkpd.repeat(pkpd.oral(DOSE), ii=II, addl=N_DOSES - 1)
TIMES = np.arange(0.0, 49.0, 4.0)
SOLVER = pkpd.ODESolver(rtol=1e-9, atol=1e-12, max_steps=4096)


def _cohort(**stiff) -> dict[str, np.ndarray]:
    params = {
        "KA": np.linspace(0.5, 2.0, N),
        "VMAX": np.full(N, 20.0),
        "KM": np.full(N, 2.0),
        "V": np.linspace(20.0, 40.0, N),
    }
    for name, value in stiff.items():
        params[name][STIFF] = value
    return params


def _without(params, i):
    return {k: np.delete(v, i) for k, v in params.items()}


def _simulate(params, **kwargs):
    return np.asarray(pkpd.simulate_cohort(MM, params, REGIMEN, TIMES, solver=SOLVER, **kwargs))


def _scipy(p) -> np.ndarray:
    """The concentrations of one patient by `solve_ivp` (LSODA, rtol 1e-11), dose by dose;
    at a dose time after the dose, as `pkpd.simulate`."""

    def rhs(t, x):
        c = x[1] / p["V"]
        absorbed = p["KA"] * x[0]
        return [-absorbed, absorbed - p["VMAX"] * c / (p["KM"] + c)]

    def jac(t, x):
        c = x[1] / p["V"]
        return [[-p["KA"], 0.0], [p["KA"], -p["VMAX"] * p["KM"] / (p["KM"] + c) ** 2 / p["V"]]]

    x = np.zeros(2)
    out = np.empty(TIMES.size)
    for k in range(N_DOSES):
        last = k == N_DOSES - 1
        t0, t1 = k * II, TIMES[-1] if last else (k + 1) * II
        x = x + np.array([DOSE, 0.0])
        sel = (TIMES >= t0) & ((TIMES <= t1) if last else (TIMES < t1))
        t_eval = np.union1d(TIMES[sel], [t1])
        sol = scipy.integrate.solve_ivp(
            rhs, (t0, t1), x, method="LSODA", jac=jac, rtol=1e-11, atol=1e-14, t_eval=t_eval
        )
        out[sel] = sol.y[1, : sel.sum()] / p["V"]
        x = sol.y[:, -1]
    return out


def test_a_stiff_patient_is_solved_alone_and_the_others_are_bitwise_unchanged():
    # KM = 1e-3 mg/L against 2 for the others: at low concentrations the elimination rate
    # constant VMAX / (KM V) is 670/h instead of 0.3/h. Valid, and stiff.
    params = _cohort(KM=1e-3)
    y = _simulate(params)
    without = _simulate(_without(params, STIFF))
    # Bitwise: the others are solved as the cohort without the stiff patient is.
    np.testing.assert_array_equal(np.delete(y, STIFF, axis=0), without)
    # The stiff patient is computed, to the solver's tolerance.
    p = {k: float(v[STIFF]) for k, v in params.items()}
    assert max_rel_err(y[STIFF], _scipy(p), floor=1e-3) < 1e-6
    # Stacked with the others (isolate_above=None) it moves them: within the tolerance,
    # through the smaller steps the stack takes, but not bit for bit.
    shared = np.delete(_simulate(params, isolate_above=None), STIFF, axis=0)
    assert not np.array_equal(shared, without)
    assert max_rel_err(shared, without, floor=1e-3) < 1e-7


@pytest.mark.parametrize("options", [{}, {"isolate_above": None}], ids=["isolated", "stacked"])
def test_a_patient_at_the_step_limit_is_named_and_the_others_are_kept(options):
    # The patient (VMAX = 1e9, KM = 1e-9): before, "maximum number of solver steps"
    # for the whole cohort, nobody named, every result lost. Isolated, its own solve fails;
    # stacked, the cohort's solve fails, each patient is tried alone, and the others are
    # solved together again: either way they equal the cohort without it, bit for bit.
    params = _cohort(VMAX=1e9, KM=1e-9)
    with pytest.raises(pkpd.CohortError) as info:
        _simulate(params, **options)
    error = info.value
    assert list(error.failures) == [STIFF]
    assert "step limit" in error.failures[STIFF]
    out = np.asarray(error.outputs)
    assert np.isnan(out[STIFF]).all()
    without = _simulate(_without(params, STIFF))
    np.testing.assert_array_equal(np.delete(out, STIFF, axis=0), without)
    assert np.isnan(np.asarray(error.exposure.auc)[STIFF])


def test_a_tiny_km_is_named_not_simulated_negative():
    # KM = 1e-6 mg/L: with the textbook rate VMAX C / (KM + C) a step that overshot below
    # zero kept eliminating past the pole at C = -KM: -7 mg/L after 48 h, no error. With
    # VMAX C / (KM + |C|) the explicit solver meets the stiffness and the patient is named.
    params = _cohort(KM=1e-6)
    with pytest.raises(pkpd.CohortError) as info:
        _simulate(params)
    assert list(info.value.failures) == [STIFF]
    assert "step limit" in info.value.failures[STIFF]
    out = np.delete(np.asarray(info.value.outputs), STIFF, axis=0)
    np.testing.assert_array_equal(out, _simulate(_without(params, STIFF)))


@pytest.mark.extended  # compiles an implicit solver (about 10 s)
def test_a_tiny_km_is_computed_by_an_implicit_solver():
    p = {k: float(v[STIFF]) for k, v in _cohort(KM=1e-6).items()}
    implicit = pkpd.ODESolver(solver=diffrax.Kvaerno5(), rtol=1e-9, atol=1e-12)
    y = np.asarray(pkpd.simulate(MM, p, REGIMEN, TIMES, solver=implicit))
    assert (y >= 0).all()
    assert max_rel_err(y, _scipy(p), floor=1e-6) < 1e-6


def test_an_ordinary_cohort_isolates_nobody():
    # Log-normal variability of 50% on every parameter: nobody is 10x faster than the median,
    # so the result is that of one stack (isolate_above=None), bit for bit.
    rng = np.random.default_rng(3)
    base = {"KA": 1.0, "VMAX": 20.0, "KM": 2.0, "V": 30.0}
    params = {k: v * np.exp(0.5 * rng.standard_normal(N)) for k, v in base.items()}
    np.testing.assert_array_equal(_simulate(params), _simulate(params, isolate_above=None))


def test_isolate_above_must_be_a_ratio_above_one():
    with pytest.raises(ValueError, match=r"isolate_above > 1"):
        _simulate(_cohort(), isolate_above=0.5)
