"""Dose constraints of `DigitalTwin.recommend` (issue 22, "Dosing advice a clinician can
give"): rounding to available strengths, minimum/maximum dose, maximum infusion rate, allowed
intervals, a loading dose, and the twin report showing the same recommendation.

References are written here, independently of `twins._recommend`: the admissible doses by
enumerating combinations of strengths, the concentrations of a one-compartment model with
zero-order infusions in closed form (superposition), the AUC24 by integrating that closed
form exactly, and the probability as the fraction of the same posterior draws in the window.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from html import escape

import jax
import numpy as np
import pytest

import calibration
import pkpd
import twins
from twins.drugs import AUCOver, DoseConstraints, Dosing, Drug, Infusion, Target, Trough, Units

STRENGTHS = (250.0, 500.0, 750.0, 1000.0)
MAX_RATE = 1000.0  # mg/h
N_DRAWS = 200


def _typical(theta, cov):
    return {"CL": theta["CL"] * cov["WT"] / 70.0, "V": theta["V"] * cov["WT"] / 70.0}


def _drug(constraints: DoseConstraints | None = None) -> Drug:
    return Drug(
        name="onecmt_test",
        model=calibration.PopulationModel(
            pkpd.OneCompartment(),
            theta={"CL": 4.0, "V": 50.0},
            omega={"CL": 0.09, "V": 0.04},
            error=calibration.Proportional(0.15),
            typical=_typical,
        ),
        covariate_fn=lambda p: {"WT": float(p["WT"])},
        units=Units(dose="mg", concentration="mg/L", observed="mg/L"),
        dosing=Dosing(route=Infusion(duration=1.0), amount=1000.0, interval=12.0,
                      constraints=constraints),
        reference="a test drug",
        targets=(
            Target(metric=AUCOver(24), low=400.0, high=600.0, unit="mg·h/L", reference="test"),
            Target(metric=Trough(), low=10.0, high=20.0, unit="mg/L", reference="test"),
        ),
    )  # fmt: skip


CONSTRAINTS = DoseConstraints(
    strengths=STRENGTHS, increment=250.0, max_units=4, max_rate=MAX_RATE,
    intervals=(8.0, 12.0, 24.0), loading_per_kg=(20.0, 35.0), max_loading=3000.0,
    reference="test",
)  # fmt: skip


@pytest.fixture(scope="module")
def twin():
    tw = twins.DigitalTwin(_drug(CONSTRAINTS), {"ID": "T1", "WT": 80.0})
    tw.give(tw.drug.regimen(2, amount=1000.0, interval=12.0))
    tw.update(times=[11.5, 23.5], values=[9.0, 14.0])
    return tw


def _admissible(lo=0.0, hi=np.inf, strengths=STRENGTHS, k=4, increment=250.0):
    sums = {
        round(sum(c), 9)
        for n in range(1, k + 1)
        for c in itertools.combinations_with_replacement(strengths, n)
    }
    out = [s for s in sums if lo <= s <= hi]
    if increment:
        out = [s for s in out if abs(s / increment - round(s / increment)) < 1e-9]
    return np.asarray(sorted(out))


def _conc(t, times, amounts, durations, cl, v):
    """Closed-form concentration of a one-compartment model after zero-order infusions
    (superposition): during an infusion R/CL (1 - e^{-k s}), afterwards decaying."""
    k = cl / v
    c = np.zeros(np.broadcast(t, cl).shape)
    for t0, a, d in zip(times, amounts, durations, strict=True):
        s = t - t0
        r = a / d
        during = (s > 0) & (s <= d)
        after = s > d
        c = c + np.where(during, r / cl * (1 - np.exp(-k * np.clip(s, 0, None))), 0.0)
        c = c + np.where(after, r / cl * (1 - np.exp(-k * d)) * np.exp(-k * (s - d)), 0.0)
    return c


def _auc(a, b, times, amounts, durations, cl, v):
    """Exact AUC over [a, b] of the closed form: piecewise exponentials integrated in closed
    form, by cutting [a, b] at every infusion start and end."""
    cuts = sorted(
        {
            a,
            b,
            *[x for t0, d in zip(times, durations, strict=True) for x in (t0, t0 + d) if a < x < b],
        }
    )
    total = 0.0
    k = cl / v
    for lo, hi in itertools.pairwise(cuts):
        # on (lo, hi) the concentration is c_inf + (c(lo) - c_inf) e^{-k (t - lo)}, with c_inf
        # the level the infusions running there tend to
        rate = sum(
            a_ / d_
            for t0, a_, d_ in zip(times, amounts, durations, strict=True)
            if t0 <= lo and lo < t0 + d_
        )
        c_inf = rate / cl
        c_lo = _conc(np.asarray(lo + 1e-12), times, amounts, durations, cl, v)
        total = total + c_inf * (hi - lo) + (c_lo - c_inf) * (1 - np.exp(-k * (hi - lo))) / k
    return total


def _draw_params(tw, eta):
    draws = jax.vmap(lambda e: tw.pm.individual_params(tw.theta, tw.covariate_arrays, e))(eta)
    return np.asarray(draws["CL"]), np.asarray(draws["V"])


def _events(reg):
    m = np.asarray(reg.mask, bool)
    t = np.asarray(reg.time)[m]
    a = np.asarray(reg.amount)[m]
    d = np.asarray(reg.duration)[m]
    return list(t), list(a), list(d)


def test_rounded_dose_is_the_most_probable_admissible_one(twin):
    key = jax.random.key(3)
    rec = twin.recommend("AUC24", key=key, n_draws=N_DRAWS, constraints=CONSTRAINTS)
    plain = twin.recommend("AUC24", key=key, n_draws=N_DRAWS, intervals=CONSTRAINTS.intervals)
    assert rec.interval == plain.interval or abs(rec.probability - plain.probability) < 0.05
    # a sum of available strengths, a multiple of the increment
    doses = _admissible()
    assert np.min(np.abs(doses - rec.dose)) < 1e-9
    # continuous optimum reported as the unconstrained search finds it
    same = plain.candidates.set_index("interval").loc[rec.interval, "dose"]
    np.testing.assert_allclose(rec.continuous_dose, same, rtol=1e-9)
    # brute force over every admissible dose and every allowed interval, same draws
    eta = np.asarray(twin.posterior.sample(N_DRAWS, key=key))
    cl, v = _draw_params(twin, eta)
    t_hist, a_hist, d_hist = _events(twin.history)
    best = None
    for tau in CONSTRAINTS.intervals:
        n = max(3, int(np.ceil(120.0 / tau)))
        first = max(t_hist) + tau
        end = first + n * tau
        probs = []
        for dose in doses:
            dur = max(1.0, dose / MAX_RATE)
            if dur >= tau:
                probs.append(-1.0)
                continue
            times = t_hist + [first + i * tau for i in range(n)]
            amounts = a_hist + [dose] * n
            durs = d_hist + [dur] * n
            auc = _auc(end - 24.0, end, times, amounts, durs, cl, v)
            probs.append(float(np.mean((auc >= 400.0) & (auc <= 600.0))))
        probs = np.asarray(probs)
        ties = np.flatnonzero(probs == probs.max())  # equally probable: nearest the optimum
        opt = plain.candidates.set_index("interval").loc[tau, "dose"]
        i = int(ties[np.argmin(np.abs(np.log(doses[ties] / opt)))])
        row = (probs[i], tau, doses[i])
        if (
            best is None
            or row[0] > best[0] + 0.005
            or (row[0] >= best[0] - 0.005 and tau > best[1])
        ):
            best = row
        if tau == rec.interval:
            assert rec.dose == pytest.approx(doses[i]), (tau, probs)
            assert rec.probability == pytest.approx(probs[i], abs=1e-12)
            # the metric reported is that of the rounded dose
            dur = max(1.0, doses[i] / MAX_RATE)
            times = t_hist + [first + j * tau for j in range(n)]
            auc = _auc(end - 24.0, end, times, a_hist + [doses[i]] * n, d_hist + [dur] * n, cl, v)
            np.testing.assert_allclose(rec.metric_median, np.median(auc), rtol=1e-8)
            np.testing.assert_allclose(rec.metric_values, auc, rtol=1e-8)
    assert rec.interval == best[1] and rec.dose == pytest.approx(best[2])
    assert rec.bound  # rounding moved the dose off the continuous optimum
    assert "continuous optimum" in str(rec)


def test_infusion_duration_is_dose_over_max_rate_when_it_binds(twin):
    slow = dataclasses.replace(CONSTRAINTS, max_rate=400.0, intervals=(24.0,))
    rec = twin.recommend("AUC24", key=jax.random.key(1), n_draws=N_DRAWS, constraints=slow)
    assert rec.dose / 400.0 > 1.0
    assert rec.duration == pytest.approx(rec.dose / 400.0, rel=1e-12)
    assert "max_rate" in rec.bound
    _, amounts, durs = _events(rec.regimen)
    np.testing.assert_allclose(np.asarray(durs), np.asarray(amounts) / 400.0, rtol=1e-12)


def test_bounds_and_default_unchanged(twin):
    key = jax.random.key(2)
    plain = twin.recommend("AUC24", key=key, n_draws=N_DRAWS)
    assert plain.continuous_dose is None and plain.bound == "" and plain.duration is None
    assert "continuous" not in str(plain)
    capped = dataclasses.replace(CONSTRAINTS, max_dose=500.0, intervals=(24.0,))
    rec = twin.recommend("AUC24", key=key, n_draws=N_DRAWS, constraints=capped)
    assert rec.dose == 500.0 and rec.bound == "max_dose" and rec.continuous_dose > 500.0
    floor = dataclasses.replace(CONSTRAINTS, min_dose=3000.0, intervals=(8.0,))
    rec = twin.recommend("AUC24", key=key, n_draws=N_DRAWS, constraints=floor)
    assert rec.dose == 3000.0 and rec.bound.startswith("min_dose")


def test_loading_dose_level_after_first_dose_closed_form(twin):
    key = jax.random.key(4)
    rec = twin.recommend(
        "AUC24", key=key, n_draws=N_DRAWS, constraints=CONSTRAINTS, loading=25.0, interval=12.0
    )
    # 25 mg/kg x 80 kg = 2000 mg: admissible (2 x 1000), under max_loading, over 2 h at 1 g/h
    assert rec.loading_dose == 2000.0
    times, amounts, durs = _events(rec.regimen)
    t0 = max(_events(twin.history)[0]) + 12.0
    assert times[0] == t0 and amounts[0] == 2000.0 and durs[0] == pytest.approx(2.0)
    assert times[1] == t0 + 12.0  # maintenance one interval later
    # the level just before the first maintenance dose, at typical (eta = 0) parameters
    p = twin._params(np.zeros(twin.pm.n_eta))
    cl, v = float(p["CL"]), float(p["V"])
    t_h, a_h, d_h = _events(twin.history)
    full = twin.history + rec.regimen
    got = np.asarray(pkpd.simulate(twin.pm.model, p, full, np.asarray([t0 + 11.9])))
    want = _conc(np.asarray([t0 + 11.9]), [*t_h, t0], [*a_h, 2000.0], [*d_h, 2.0], cl, v)
    np.testing.assert_allclose(got.ravel(), want, rtol=1e-9)
    with pytest.raises(ValueError, match="loading_per_kg"):
        twin.recommend("AUC24", key=key, constraints=CONSTRAINTS, loading=50.0)
    with pytest.raises(ValueError, match="needs constraints"):
        twin.recommend("AUC24", key=key, loading=25.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"strengths": ()}, "strengths is empty"),
        ({"strengths": (250.0, -1.0)}, r"strengths\[1\]"),
        ({"strengths": (0.0,)}, r"strengths\[0\]"),
        ({"min_dose": 2000.0, "max_dose": 1000.0}, "min_dose"),
        ({"max_rate": 0.0}, "max_rate"),
        ({"max_units": 0}, "max_units"),
        ({"intervals": ()}, "intervals is empty"),
        ({"loading_per_kg": (35.0, 20.0)}, "loading_per_kg"),
    ],
)
def test_bad_constraints_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DoseConstraints(**kwargs)


def test_max_rate_that_makes_the_interval_impossible(twin):
    impossible = dataclasses.replace(CONSTRAINTS, max_rate=10.0, intervals=(8.0,))
    with pytest.raises(ValueError, match=r"max_rate=10\.0.*interval 8 h"):
        twin.recommend("AUC24", key=jax.random.key(0), constraints=impossible)


def test_interval_outside_the_allowed_ones_is_refused(twin):
    with pytest.raises(ValueError, match=r"\[6\.0\] h are not in constraints.intervals"):
        twin.recommend("AUC24", key=jax.random.key(0), constraints=CONSTRAINTS, interval=6.0)


def test_library_defaults_carry_their_source():
    van = twins.drugs.get("vancomycin_goti2018").dosing.constraints
    assert van.strengths == STRENGTHS and van.max_rate == 1000.0 and "Rybak" in van.reference
    assert "2020;77" in van.reference and van.loading_per_kg == (20.0, 35.0)
    war = twins.drugs.get("warfarin_hamberg2007").dosing.constraints
    assert war.strengths == (1.0, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.5, 10.0)
    np.testing.assert_allclose(
        war.admissible(), _admissible(strengths=war.strengths, k=2, increment=0)
    )


def test_report_shows_the_same_recommendation(twin, tmp_path):
    key = jax.random.key(5)
    rec = twin.recommend("AUC24", key=key, n_draws=N_DRAWS, constraints=CONSTRAINTS)
    path = twins.write_twin_report(twin, tmp_path / "a.html", target=rec, key=key, n_draws=N_DRAWS)
    html = path.read_text()
    assert escape(str(rec)) in html
    assert "the target window 400–600" in html  # the histogram of the metric, window shaded
    assert f"<td>{rec.continuous_dose:.4g} mg</td>" in html or "Continuous optimum" in html
    # with a target name the report calls recommend with this key and n_draws: the same
    plain = twin.recommend("AUC24", key=key, n_draws=N_DRAWS)
    path = twins.write_twin_report(
        twin, tmp_path / "b.html", target="AUC24", key=key, n_draws=N_DRAWS
    )
    html = path.read_text()
    assert escape(str(plain)) in html
    # the posterior's parameters in a table with a unit column: CL in L/h, V in L
    assert re.search(r"<th[^>]*>Unit</th>", html)
    assert re.search(r"<td[^>]*>CL</td>\s*<td[^>]*>L/h</td>", html)
    assert re.search(r"<td[^>]*>V</td>\s*<td[^>]*>L</td>", html)
