"""`TwinArm` with the trial's patient realism: adherence, within-patient variability, slipped
and missed visits, and curves within the periods.

The drug is citalopram (one-compartment oral, linear: its twin compiles in seconds). Each
option switched off gives the plain TwinArm course; switched on, the true course is checked
against scipy's solution of the model's ODEs under the doses *taken*, at their own times,
with each period's parameters written out; the twin's decisions against a twin rebuilt by
hand from the doses *prescribed* and the levels of the visits that happened, on their days;
and the draws (doses taken, factors, visit schedules) against those of a scanned
`DosingArm` of the same trial.
"""

from __future__ import annotations

import copy
import dataclasses

import jax
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import pkpd
import twins
from twins import drugs
from twins.trials._trial import (
    adherence_draws,
    population_rows,
    simulate_chunk,
    variability_factors,
    visit_schedule,
)

DRUG = drugs.get("citalopram_akil2016")
KEY = jax.random.key(2)
#: Visits (1-based days): no baseline on day 1 (a level of 0 has no proportional error).
VISITS = (2, 4, 6)
RECOMMEND = (4, 6)
VISITS_0 = tuple(d - 1 for d in VISITS)  # the same, 0-based periods
#: The twin arm's dose step (mg): fine, so that its doses show small differences of advice.
STEP = 1.0


def _fixed(dose):
    def initial(cov):
        n = len(cov["ID"])
        return np.zeros((n, 0)), np.full(n, dose)

    return initial


def _trial(**kw):
    twin = twins.TwinArm(
        "twin", "Twin-guided", "", _fixed(20.0), visits=VISITS, recommend_on=RECOMMEND,
        n_draws=50, dose_step=STEP,
    )  # fmt: skip
    fixed = twins.DosingArm("fixed", "20 mg", "", _fixed(20.0), visits=VISITS, dose_step=10.0)
    return twins.Trial(
        name="twin_arm",
        drug=DRUG,
        population=twins.Population.sample,
        arms=(fixed, twin),
        endpoints=(twins.MeanDose("dose", "dose", 7),),
        days=8,
        band_points=kw.pop("band_points", 1),
        **kw,
    )


def _run(trial, n=3):
    pop = population_rows(trial, 0, n, key=jax.random.key(1))
    return pop, simulate_chunk(trial, pop, 0, key=KEY)[1]


def _noise_key(i):
    return jax.random.fold_in(jax.random.split(KEY)[1], i)


def _visit_periods(trial, course):
    """`(period (n, V) int, attended (n, V) bool)` of a course."""
    day = course.get("visit_day", np.broadcast_to(course["visit_days"], course["measured"].shape))
    period = np.rint(np.asarray(day) * 24.0 / trial.interval).astype(int)
    return period, np.asarray(course.get("attended", np.ones(period.shape, dtype=bool)))


def _twin_dose(trial, pop, course, i, j, due_h=0.0, doses="doses"):
    """The dose (mg, rounded to the arm's `STEP`) of a twin rebuilt here for patient `i` at
    visit `j`: the doses prescribed (`course[doses]`) before the visit's day, each `due_h`
    after its period start, and the levels of the visits up to `j` that happened, at their
    days."""
    tau = trial.interval
    period, attended = _visit_periods(trial, course)
    v = int(period[i, j])
    patient = {k: x[i] for k, x in pop.covariates().items()}
    twin = twins.DigitalTwin(DRUG, patient)
    history = None
    for k in range(v):
        one = pkpd.oral(float(course[doses][i, k]), time=k * tau + due_h)
        history = one if history is None else history + one
    twin.give(history)
    seen = attended[i, : j + 1]
    twin.update(
        times=(period[i, : j + 1][seen] * tau).astype(float).tolist(),
        values=course["measured"][i, : j + 1][seen].tolist(),
    )
    rec = twin.recommend(
        interval=tau, start=v * tau + due_h, key=jax.random.fold_in(_noise_key(i), 1000 + j),
        n_draws=50,
    )  # fmt: skip
    return max(round(rec.dose / STEP), 1) * STEP


def _ode_reference(params, factors, taken, offsets, tau, days, points):
    """Citalopram's one-compartment oral model solved by scipy period by period: period
    `k`'s KA and CL are the base values times `factors[name][k]`, its dose `taken[k]` goes
    into the depot `offsets[k]` hours after the period start (times `F1`, the S-fraction);
    the concentration at `points` times per period (the first before the dose) and at the
    end, and its AUC over each period (mg.h/L, a third state)."""
    ka0, cl0, v = (float(params[k]) for k in ("KA", "CL", "V"))
    taken = np.asarray(taken) * float(params["F1"])
    x = np.zeros(3)
    out, auc = [], []
    h = tau / points
    for k in range(days):
        ka, cl = ka0 * factors["KA"][k], cl0 * factors["CL"][k]

        def f(t, y, ka=ka, cl=cl):
            return [-ka * y[0], ka * y[0] - cl / v * y[1], y[1] / v]

        def to(x, t0, t1, f=f):
            if t1 <= t0:
                return x
            return solve_ivp(f, (t0, t1), x, rtol=1e-11, atol=1e-14, method="LSODA").y[:, -1]

        t = 0.0
        dosed = False
        for m in range(points):
            if not dosed and offsets[k] < m * h:
                x = to(x, t, offsets[k]) + np.array([taken[k], 0.0, 0.0])
                t, dosed = offsets[k], True
            x = to(x, t, m * h)
            t = m * h
            out.append(x[1] / v)
        if not dosed:
            x = to(x, t, offsets[k]) + np.array([taken[k], 0.0, 0.0])
            t = offsets[k]
        x = to(x, t, tau)
        auc.append(x[2])
        x[2] = 0.0
    out.append(x[1] / v)
    return np.array(out), np.array(auc)


#: The dose-time offset after each period start at which doses are due (h).
DUE = 8.0


def _realism():
    """Missed doses with dose-time jitter, IOV on CL by visit and an OU process on KA,
    slipped and missed visits (day 2 fixed: slipped to day 1 it would measure 0, which a
    proportional error cannot explain at the twin's prior prediction of 0)."""
    return {
        "adherence": twins.Adherence(
            0.3, 0.5, timing=twins.DoseTiming(sd_h=2.0, max_h=4.0, due_h=DUE)
        ),
        "variability": twins.Variability(
            (twins.IOV("CL", 0.3), twins.OrnsteinUhlenbeck("KA", 0.4, 1.5))
        ),
        "visits": twins.Visits(slip_sd_days=1.0, slip_max_days=1, p_missed=0.3, fixed_days=(2,)),
        "band_points": 4,
    }


def _check_true_course(trial, course):
    """`course`'s curve against scipy under the doses taken, at their times, with each
    period's parameters, and its measured values: the true level on the day each visit
    happened with that visit's assay noise."""
    error = DRUG.model.error
    sigma = {k: float(getattr(error, k)) for k in error.names}
    period, attended = _visit_periods(trial, course)
    points = trial.band_points
    for i in range(course["level"].shape[0]):
        ref, auc = _ode_reference(
            {k: v[i] for k, v in course["params"].items()},
            {k: v[i] for k, v in course["factors"].items()},
            course["taken"][i],
            course["dose_offset_h"][i],
            trial.interval,
            trial.days,
            points,
        )
        np.testing.assert_allclose(course["curve"][i], ref, rtol=1e-8, atol=1e-12)
        np.testing.assert_array_equal(course["level"][i], course["curve"][i, ::points])
        if "auc" in course:  # Simpson on `exposure_steps` points between dosing entries
            np.testing.assert_allclose(course["auc"][i], auc, rtol=1e-6, atol=1e-12)
        eps = jax.random.normal(_noise_key(i), (len(VISITS),))
        for j in np.flatnonzero(attended[i]):
            y = error.observe(course["level"][i, period[i, j]], sigma, eps[j])
            np.testing.assert_allclose(course["measured"][i, j], float(y), rtol=1e-12)


def _check_same_draws(trial, courses, n):
    """Every arm's doses taken, dose times, factors and visit schedule are the trial's
    draws for those patients (by key), and they are not vacuous."""
    index = np.arange(n)
    drawn = adherence_draws(trial, KEY, index)
    logf = variability_factors(trial, KEY, index, VISITS_0)
    period, attended = visit_schedule(trial, KEY, index, trial.arms[1])
    for course in courses.values():
        np.testing.assert_array_equal(course["adherence"], drawn["taken"])
        np.testing.assert_array_equal(course["dose_offset_h"], drawn["offset_h"])
        np.testing.assert_array_equal(course["factors"]["CL"], np.exp(logf[:, :, 0]))
        np.testing.assert_array_equal(course["factors"]["KA"], np.exp(logf[:, :, 1]))
        np.testing.assert_array_equal(course["visit_day"], period * 1.0)  # 24-h periods
        np.testing.assert_array_equal(course["attended"], attended)
        np.testing.assert_array_equal(course["taken"], course["doses"] * course["adherence"])
        assert np.isnan(course["measured"][~attended]).all()
        assert np.isfinite(course["measured"][attended]).all()
    missed = drawn["taken"] == 0.0
    assert missed.any() and not missed.all()
    slipped = attended & (period != np.asarray(VISITS_0))
    assert slipped[:, 1:].any() and (~attended[:, 1:]).any()


def test_a_twin_arm_course_is_the_engines_under_realism():
    """With no recommendation (`recommend_on=()`) a TwinArm's course under adherence,
    variability, slipped and missed visits and curves is the scanned `DosingArm`'s of the
    same doses to the bit (the same engine, the same draws by key), and that course is the
    model under the doses taken with each period's parameters (scipy)."""
    trial = _trial(**_realism())
    idle = twins.TwinArm(
        "twin", "Twin, no advice", "", _fixed(20.0), visits=VISITS, recommend_on=()
    )
    trial = dataclasses.replace(trial, arms=(trial.arms[0], idle))
    n = 5
    _, courses = _run(trial, n)
    _check_same_draws(trial, courses, n)
    for k in ("level", "measured", "doses", "taken", "curve", "dose_offset_h"):
        np.testing.assert_array_equal(courses["twin"][k], courses["fixed"][k], err_msg=k)
    _check_true_course(trial, courses["twin"])


# Extended: three trials' engines and the twin compile (about 50 s of CPU from a cold cache);
# test_a_twin_arm_course_is_the_engines_under_realism keeps the TwinArm's course in make
# test, and tests/test_trial_visits.py, test_trial_adherence.py show the engine's switched-off
# options to the bit.
@pytest.mark.extended
def test_options_switched_off_give_the_plain_twin_arm_course():
    """All doses taken (`Adherence()`), no slip nor missed visit (`Visits()`): the same bits
    as the trial without them; variability terms at zero: the same doses, and levels to
    rounding (the varying engine multiplies by exp(0) = 1 in a differently fused program,
    tests/test_trial_variability.py::test_terms_at_zero_give_the_trial_without_variability)."""
    _, plain = _run(_trial())
    _, off = _run(_trial(adherence=twins.Adherence(), visits=twins.Visits()))
    _, zero = _run(_trial(variability=twins.Variability((twins.IOV("CL", 0.0),))))
    a, b, c = plain["twin"], off["twin"], zero["twin"]
    assert not np.array_equal(a["doses"], plain["fixed"]["doses"])  # the twin re-dosed
    for k in ("level", "measured", "doses", "curve"):
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    np.testing.assert_array_equal(b["taken"], a["doses"])
    np.testing.assert_array_equal(c["doses"], a["doses"])
    for k in ("level", "measured"):
        np.testing.assert_allclose(c[k], a[k], rtol=1e-13, atol=0, err_msg=k)


# Extended: the twin's update and recommend compile (about 25 s of CPU from a cold cache);
# test_a_twin_arm_course_is_the_engines_under_realism keeps the TwinArm's course under the
# same options in make test.
@pytest.mark.extended
def test_twin_arm_takes_adherence_variability_visits_and_curves():
    """Missed doses with dose-time jitter, IOV and OU terms, slipped and missed visits, and
    curves within the periods, all at once: the twin arm sees the scanned arm's draws; its
    true course (the curve too) is the model under the doses taken, at their times, with
    each period's parameters; it measures at the visits that happened, on their days; and
    its doses are those of a twin told the doses prescribed at their due time and those
    levels, changed only at the recommendation visits that happened; and an AUC endpoint
    (refused with a TwinArm before) is the model's AUC of each period under those doses."""
    trial = _trial(**_realism())
    auc = twins.AUC("auc24", "AUC24", hours=24.0)
    trial = dataclasses.replace(trial, endpoints=(*trial.endpoints, auc))
    n = 5
    pop, courses = _run(trial, n)
    twin, fixed = courses["twin"], courses["fixed"]
    _check_same_draws(trial, courses, n)
    _check_true_course(trial, twin)  # the AUC of each period too
    assert twin["auc"].shape == (n, trial.days)
    assert not np.array_equal(twin["doses"], fixed["doses"])  # the twin re-dosed
    period, attended = _visit_periods(trial, twin)
    told_taken, told_at_start = [], []
    for i in range(n):
        # Decisions: at the recommendation visits (days 4 and 6) that happened, from their
        # own day on, by a twin told the prescribed doses at their due time.
        happened = [j for j in (1, 2) if attended[i, j]]
        starts = [int(period[i, j]) for j in happened]
        changed = np.flatnonzero(np.diff(twin["doses"][i]) != 0) + 1
        assert set(changed.tolist()) <= set(starts), (i, changed, starts)
        for j, start, end in zip(happened, starts, [*starts[1:], trial.days], strict=True):
            dose = _twin_dose(trial, pop, twin, i, j, due_h=DUE)
            np.testing.assert_array_equal(twin["doses"][i, start:end], dose)
            told_at_start.append((dose, _twin_dose(trial, pop, twin, i, j)))
            if twin["adherence"][i, 0] == 1.0:  # else told "taken" it predicts 0 on day 2
                told_taken.append((dose, _twin_dose(trial, pop, twin, i, j, DUE, "taken")))
        np.testing.assert_array_equal(twin["doses"][i, : starts[0] if starts else None], 20.0)
    # The check tells them apart: told the doses taken, or at the period starts, the twin
    # would have advised otherwise.
    for pairs in (told_taken, told_at_start):
        assert pairs and any(a != b for a, b in pairs), pairs


def test_a_twin_arm_spec_takes_adherence_visits_and_variability():
    """The TOML spec path: a spec with a twin arm and `[adherence]`, `[visits]`,
    `[variability]` builds the trial (they were refused with host-driven arms)."""
    from test_trial_spec import BASE

    from twins.app._spec import trial_from_dict

    spec = copy.deepcopy(BASE)
    spec["arms"].append(
        {
            "name": "twin",
            "visits": [1, 4, 8],
            "initial": {"loading": [10, 5, 5], "maintenance": 5.0},
            "twin": {"target": "INR", "recommend_on": [4, 8], "n_draws": 100},
        }
    )
    spec["adherence"] = {"p_miss_after_taken": 0.1, "p_take_after_missed": 0.5}
    spec["visits"] = {"slip_sd_days": 1.0, "slip_max_days": 1, "p_missed": 0.1}
    spec["variability"] = {"iov": [{"parameter": "EC50", "sd": 0.1}]}
    trial, _ = trial_from_dict(spec)
    assert isinstance(trial.arms[-1], twins.TwinArm)
    assert trial.adherence is not None and trial.visits is not None
    assert trial.variability is not None and trial.variability.parameters == ("EC50",)
