"""Target metrics (`twins.drugs.AUCOver`, `Trough`, `Peak`) against closed forms, and the
steady-state histories they read through `pkpd.state_before` / `pkpd.interval_exposure`."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pkpd
import twins
from twins import drugs as D

TIGHT = pkpd.ODESolver(rtol=1e-11, atol=1e-13, max_steps=100_000)
ONE = pkpd.OneCompartment()
P1 = {"CL": 4.0, "V": 50.0}
K = P1["CL"] / P1["V"]


def _bolus_level(t: float, times: list[float], dose: float) -> float:
    """1-compartment IV bolus by superposition (closed form)."""
    return sum(dose / P1["V"] * math.exp(-K * (t - ti)) for ti in times if ti <= t)


def _bolus_auc(a: float, b: float, times: list[float], dose: float) -> float:
    """Its integral over [a, b], dose by dose."""
    total = 0.0
    for ti in times:
        lo = max(a, ti)
        if lo < b:
            total += dose / (P1["V"] * K) * (math.exp(-K * (lo - ti)) - math.exp(-K * (b - ti)))
    return total


def test_auc_and_trough_of_a_bolus_plan_match_the_closed_form():
    times = [0.0, 12.0, 24.0, 36.0, 48.0]  # doses; the plan ends at 60 h
    regimen = pkpd.repeat(pkpd.bolus(500.0), ii=12.0, addl=4)
    end = 60.0
    auc = D.AUCOver(24).read(ONE, P1, regimen, end, 12.0, solver=TIGHT)
    assert float(auc) == pytest.approx(_bolus_auc(36.0, 60.0, times, 500.0), rel=1e-6)
    auc12 = D.AUCOver(12).read(ONE, P1, regimen, end, 12.0, solver=TIGHT)
    assert float(auc12) == pytest.approx(_bolus_auc(48.0, 60.0, times, 500.0), rel=1e-6)
    trough = D.Trough().read(ONE, P1, regimen, end, 12.0, solver=TIGHT)
    assert float(trough) == pytest.approx(_bolus_level(end, times, 500.0), rel=1e-9)
    # The peak of a bolus plan is the level just after the last dose (the interval's start).
    peak = D.Peak().read(ONE, P1, regimen, end, 12.0, solver=TIGHT)
    assert float(peak) == pytest.approx(_bolus_level(48.0, times, 500.0), rel=1e-9)


def test_peak_of_an_infusion_is_at_its_end():
    """Cmax of a 1-h infusion plan: the end of the last infusion falls on a segment end, so
    the sub-step maximum is the true one (closed form of a 1-compartment infusion)."""
    rate, dur, ii = 1000.0, 1.0, 12.0
    regimen = pkpd.repeat(pkpd.infusion(1000.0, duration=dur), ii=ii, addl=3)
    peak = D.Peak().read(ONE, P1, regimen, 48.0, ii, solver=TIGHT)

    def level(t):  # superposed infusions started at 0, 12, 24, 36 h
        total = 0.0
        for ti in (0.0, 12.0, 24.0, 36.0):
            if t > ti:
                on = min(t - ti, dur)
                total += rate / P1["CL"] * (1 - math.exp(-K * on)) * math.exp(-K * (t - ti - on))
        return total

    assert float(peak) == pytest.approx(level(37.0), rel=1e-9)


def test_steady_state_history_matches_the_closed_form():
    """A steady-state record (SS=1) before the plan: the AUC over one interval at steady
    state is dose / CL, the trough dose/V e^{-k tau} / (1 - e^{-k tau})."""
    tau, dose = 12.0, 500.0
    regimen = pkpd.concatenate(
        [
            pkpd.steady_state(pkpd.bolus(dose), ii=tau),
            pkpd.repeat(pkpd.bolus(dose, time=tau), ii=tau, addl=1),  # 12 and 24 h
        ]
    )
    auc = D.AUCOver(12).read(ONE, P1, regimen, 36.0, tau, solver=TIGHT)
    assert float(auc) == pytest.approx(dose / P1["CL"], rel=1e-6)
    trough = D.Trough().read(ONE, P1, regimen, 36.0, tau, solver=TIGHT)
    expected = dose / P1["V"] * math.exp(-K * tau) / (1 - math.exp(-K * tau))
    assert float(trough) == pytest.approx(expected, rel=1e-9)
    # pkpd.state_before: the amount just before the dose at 24 h is the steady-state trough.
    state, rates = pkpd.state_before(ONE, P1, regimen, 24.0, solver=TIGHT)
    assert float(state[0]) == pytest.approx(expected * P1["V"], rel=1e-9)
    np.testing.assert_array_equal(np.asarray(rates), [0.0])


@pytest.mark.parametrize("duration", [2.0, 18.0])  # shorter and longer than the interval
def test_steady_state_infusions_match_a_dense_simulation(duration):
    """SS infusions on a 2-compartment model, a duration longer than the interval included
    (overlapping implied infusions, running at the window's start): the exposure from
    `pkpd.interval_exposure` equals a dense trapezoid of `pkpd.simulate`, and the AUC over
    an interval at steady state equals dose / CL."""
    model = pkpd.TwoCompartment()
    params = {"CL": 3.0, "V1": 25.0, "Q": 2.0, "V2": 40.0}
    tau, dose = 12.0, 600.0
    regimen = pkpd.concatenate(
        [
            pkpd.steady_state(pkpd.infusion(dose, duration=duration), ii=tau),
            pkpd.repeat(pkpd.infusion(dose, duration=duration, time=tau), ii=tau, addl=4),
        ]
    )
    a, b = 24.0, 36.0
    dense = np.linspace(a, b, 6_001)
    y = np.asarray(jax.jit(pkpd.simulate, static_argnums=0)(model, params, regimen, dense)).ravel()
    exposure = jax.jit(pkpd.interval_exposure, static_argnums=(0, 3, 4), static_argnames="solver")
    auc, cmax = exposure(model, params, regimen, a, b, solver=TIGHT)
    assert float(auc) == pytest.approx(np.trapezoid(y, dense), rel=1e-6)
    assert float(auc) == pytest.approx(dose / params["CL"], rel=1e-6)
    assert float(cmax) == pytest.approx(y.max(), rel=1e-6)


def test_a_steady_state_record_inside_the_window_is_refused():
    regimen = pkpd.steady_state(pkpd.bolus(500.0, time=24.0), ii=12.0)
    x = jnp.zeros(1)
    with pytest.raises(ValueError, match=r"steady-state record.*\[24\.0\]"):
        pkpd.advance(ONE, P1, x, regimen, 12.0, 36.0, solver=TIGHT)
    # Before the window it is fine (the state comes from state_before).
    state, rates = pkpd.state_before(ONE, P1, regimen, 30.0, solver=TIGHT)
    out = pkpd.advance(ONE, P1, state, regimen, 30.0, 36.0, solver=TIGHT, rates=rates)
    ref = pkpd.simulate(ONE, P1, regimen, jnp.array([36.0]), solver=TIGHT)
    assert float(out.state[0] / P1["V"]) == pytest.approx(float(ref[0]), rel=1e-9)


def test_metric_names_and_plans():
    assert D.AUCOver(24).name == "AUC24" and str(D.AUCOver(12.5)) == "AUC12.5"
    assert D.Trough().name == "trough" and D.Trough("INR").name == "INR"
    assert D.Peak().name == "Cmax"
    assert D.metric_from_name("AUC24") == D.AUCOver(24.0)
    assert D.metric_from_name("auc12") == D.AUCOver(12.0)
    assert D.metric_from_name("Cmax") == D.Peak() == D.metric_from_name("peak")
    assert D.metric_from_name("INR") == D.Trough("INR")
    with pytest.raises(ValueError, match="unknown target metric 'AUCx'"):
        D.metric_from_name("AUCx")
    with pytest.raises(ValueError, match="hours must be a finite number > 0"):
        D.AUCOver(0)
    with pytest.raises(ValueError, match="covers 12 h, less than the 24 h"):
        D.AUCOver(24).check_plan(6.0, 2)
    D.AUCOver(24).check_plan(12.0, 2)  # exactly 24 h: fine
    # Frozen and hashable (static under jit), equal by value.
    assert hash(D.AUCOver(24)) == hash(D.AUCOver(24.0))
    assert not D.AUCOver(24).on_level and D.Trough().on_level
    assert D.AUCOver(24).additive and not D.Peak().additive


def test_target_metric_is_typed():
    with pytest.warns(DeprecationWarning, match=r"metric=twins.drugs.AUCOver\(hours=24.0\)"):
        old = D.Target("AUC24", 400.0, 600.0, "mg·h/L", "ref")
    assert old.metric == D.AUCOver(24)
    with pytest.raises(TypeError, match=r"must be a twins\.drugs\.Metric"):
        D.Target(24, 400.0, 600.0, "mg·h/L", "ref")  # type: ignore[arg-type]
    vanco = D.get("vancomycin_goti2018")
    assert [t.metric for t in vanco.targets] == [D.AUCOver(24), D.Trough()]


def test_recommend_for_a_peak_target_matches_a_dense_search():
    """A Cmax target (not additive: the optimiser simulates every step, no superposition):
    the dose found reaches the best probability on a grid, each dose's peak taken from a
    dense simulation of the last interval (independent of the sub-step maximum)."""
    drug = D.get("vancomycin_goti2018")
    patient = twins.Patient(id="PEAK", age=60, sex="male", weight=75.0, height=178.0,
                            labs={"serum_creatinine": 1.0})  # fmt: skip
    twin = twins.DigitalTwin(drug, patient)
    target = D.Target(D.Peak(), 30.0, 40.0, "mg/L", "test window")
    key = jax.random.key(3)
    rec = twin.recommend(target, interval=12.0, n_doses=3, key=key, n_draws=40, steps=4)
    assert rec.target.metric == D.Peak() and rec.n_doses == 3
    eta = twin.posterior.sample(40, key=key)
    n, start = rec.n_doses, 0.0
    last = jnp.linspace(start + (n - 1) * 12.0, start + n * 12.0, 2401)

    @jax.jit
    def peaks(reg):
        def one(e):
            params = twin.pm.individual_params(twin.theta, twin.covariate_arrays, e)
            return drug.model.predict(params, reg, last).max()

        return jax.vmap(one)(eta)

    def probability(dose):
        reg = drug.regimen(n, amount=float(dose), interval=12.0, start=start)
        p = np.asarray(peaks(reg))
        return np.mean((p >= 30.0) & (p <= 40.0)), np.median(p)

    grid = np.linspace(0.6, 1.6, 41) * rec.dose
    best = max(probability(d)[0] for d in grid)
    assert rec.probability >= best - 0.03
    p_rec, median = probability(rec.dose)
    assert p_rec == pytest.approx(rec.probability, abs=1.0 / 40 + 1e-9)
    assert median == pytest.approx(rec.metric_median, rel=2e-3)
