"""Visit-schedule realism in virtual trials (twins.Visits): the slip distribution against the
discretised truncated normal's closed form, missed visits at their rate, the realised
schedule against a loop written here from the same draws, dose decisions made only at the
visits that happened (on the day they happened, by the rule of the scheduled visit), the
endpoints on each patient's own visits against the same endpoints on those visits written
out, and a trial without slips or missed visits identical, to the bit, to the trial
without `visits` (and independent of the chunk size)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from scipy.stats import norm
from test_trial_dosing import _drug, _titrated

import pkpd
import twins
from twins import drugs as D
from twins.trials import population_rows, simulate_chunk


def _loop_schedule(visits, key, scheduled, last):
    """The realised schedule written out: the same uniforms as `Visits.draw`, the slip by
    inverting the closed-form CDF of the discretised truncated normal, then the rules of
    the module docstring applied visit by visit."""
    v = len(scheduled)
    u = np.asarray(jax.random.uniform(key, (2, max(v, 1))))[:, :v]
    k, sd = visits.slip_max_days, visits.slip_sd_days
    s = np.arange(-k, k + 1)
    mass = norm.cdf((s + 0.5) / sd) - norm.cdf((s - 0.5) / sd)
    cdf = np.cumsum(mass / mass.sum())
    period, attended, prev = [], [], -1
    for j, sched in enumerate(scheduled):
        fixed = sched + 1 in visits.fixed_days
        slip = 0 if fixed else int(s[np.searchsorted(cdf, u[0, j], side="right")])
        missed = (u[1, j] < visits.p_missed) and not fixed
        at = max(min(max(sched + slip, 0), last), prev + 1)
        if missed or at > last:
            period.append(sched)
            attended.append(False)
        else:
            period.append(at)
            attended.append(True)
            prev = at
    return np.array(period), np.array(attended)


def test_slips_and_missed_visits_follow_their_distributions():
    visits = twins.Visits(slip_sd_days=1.5, slip_max_days=3, p_missed=0.2)
    scheduled = np.array([0, 20, 40, 60, 80])  # far apart: no collision, no clipping
    n = 20000
    keys = jax.random.split(jax.random.key(0), n)
    period, attended = (
        np.asarray(x) for x in jax.vmap(lambda k: visits.draw(k, scheduled, 100))(keys)
    )
    assert (period[:, 0] == 0).all() and attended[:, 0].all()  # day 1 fixed
    slips = (period - scheduled)[:, 1:][attended[:, 1:]]
    s = np.arange(-3, 4)
    want = norm.cdf((s + 0.5) / 1.5) - norm.cdf((s - 0.5) / 1.5)
    want = want / want.sum()
    got = np.array([(slips == j).mean() for j in s])
    se = np.sqrt(want * (1 - want) / slips.size)
    assert np.all(np.abs(got - want) < 4 * se), (got, want)
    assert set(np.unique(slips)) <= set(s.tolist())
    miss = ~attended[:, 1:]
    assert abs(miss.mean() - 0.2) < 4 * np.sqrt(0.16 / miss.size)
    # independent misses: a visit's miss does not depend on the previous one's
    a, b = miss[:, :-1].ravel(), miss[:, 1:].ravel()
    assert abs(b[a].mean() - b[~a].mean()) < 0.02
    np.testing.assert_allclose(visits.slip_probabilities(), want, rtol=1e-12)


def test_the_realised_schedule_equals_the_rules_written_out():
    # visits two days apart with slips of up to 3 days: collisions, pushes, visits that no
    # longer fit before the end (day 12 morning = period 11)
    visits = twins.Visits(slip_sd_days=2.0, slip_max_days=3, p_missed=0.15)
    scheduled = [0, 3, 5, 7, 9, 11]
    keys = jax.random.split(jax.random.key(1), 200)
    draw = jax.jit(jax.vmap(lambda k: visits.draw(k, np.array(scheduled), 11)))
    periods, attendeds = (np.asarray(x) for x in draw(keys))
    for key, period, attended in zip(keys, periods, attendeds, strict=True):
        want_p, want_a = _loop_schedule(visits, key, scheduled, 11)
        np.testing.assert_array_equal(period, want_p)
        np.testing.assert_array_equal(attended, want_a)
        held = period[attended]
        assert np.all(np.diff(held) > 0) and held.min() >= 0 and held.max() <= 11
    with pytest.raises(ValueError, match="p_missed"):
        twins.Visits(p_missed=1.0)
    with pytest.raises(ValueError, match="slip_max_days"):
        twins.Visits(slip_sd_days=1.0, slip_max_days=1.5)
    with pytest.raises(ValueError, match="slip_sd_days"):
        twins.Visits(slip_sd_days=-1.0)


def _oral():
    return _drug(pkpd.OneCompartmentOral(), {"KA": 0.9, "CL": 4.0, "V": 40.0}, D.Oral(),
                 interval=24.0)  # fmt: skip


def _trial(drug, visits, dropout=None, endpoints=()):
    return twins.Trial(
        name="visits",
        drug=drug,
        population=twins.Population.sample,
        arms=(_titrated(200.0),),
        endpoints=(twins.MeanDose("dose", "dose", 1), *endpoints),
        days=8,
        interval=24.0,
        visits=visits,
        dropout=dropout,
    )


def test_decisions_only_at_the_visits_that_happened():
    drug = _oral()
    endpoints = (
        twins.FinalLevel("last", "Last measured", "measured"),
        twins.AnyAbove("high", "High", 1e9),
    )
    plain = _trial(drug, None, endpoints=endpoints)
    moving = _trial(drug, twins.Visits(slip_sd_days=1.0, slip_max_days=1, p_missed=0.3),
                    endpoints=endpoints)  # fmt: skip
    n = 60
    pop = population_rows(plain, 0, n, key=jax.random.key(1))
    _, c0 = simulate_chunk(plain, pop, 0, key=jax.random.key(2))
    e1, c1 = simulate_chunk(moving, pop, 0, key=jax.random.key(2))
    c0, c1 = c0["titrated"], c1["titrated"]
    day, attended = c1["visit_day"], c1["attended"]
    # the arm's visits are days 1 (fixed) and 3 (the rule: halve and withhold one dose)
    assert attended[:, 0].all() and (day[:, 0] == 0).all()
    rule = attended[:, 1]
    assert 0 < rule.sum() < n and len(np.unique(day[rule, 1])) == 3  # slipped, and missed
    for i in range(n):
        expected = np.full(8, 200.0)
        if rule[i]:  # decided on the day the visit happened, applied from then
            a = int(day[i, 1])
            expected[a] = 0.0
            expected[a + 1 :] = 100.0
        np.testing.assert_array_equal(c1["doses"][i], expected, err_msg=f"patient {i}")
    # measured on the day it happened, with the visit's own assay noise (that of the plain
    # trial's same visit: Proportional, measured / true = 1 + sigma * eps)
    # (the day-3 visit; the baseline measures 0 before any dose)
    at = day[rule, 1].astype(int)
    ratio = c1["measured"][rule, 1] / c1["level"][rule, at]
    plain_ratio = c0["measured"][rule, 1] / c0["level"][rule, 2]
    np.testing.assert_allclose(ratio, plain_ratio, rtol=1e-12)
    assert np.isnan(c1["measured"][~attended]).all()
    assert not np.isnan(c1["measured"][attended]).any()
    # the last measured value is that of the last visit that happened
    last = np.where(rule, c1["measured"][:, 1], c1["measured"][:, 0])
    np.testing.assert_array_equal(e1["titrated"]["last"], last)
    assert moving.describe()["visits"]["p_missed"] == 0.3 and "visits" not in plain.describe()


def test_without_slips_or_misses_the_trial_is_unchanged_to_the_bit():
    drug = _oral()
    endpoints = (
        twins.TimeToRange("ttt", "t", 0.5, 4.0, consecutive=2),
        twins.TimeInRange("ttr", "t", 0.5, 4.0),  # Rosendaal: the same bits too
    )
    plain = _trial(drug, None, endpoints=endpoints)
    still = _trial(drug, twins.Visits(), endpoints=endpoints)
    pop = population_rows(plain, 0, 10, key=jax.random.key(3))
    e0, c0 = simulate_chunk(plain, pop, 0, key=jax.random.key(4))
    e1, c1 = simulate_chunk(still, pop, 0, key=jax.random.key(4))
    for k in ("level", "measured", "doses"):
        np.testing.assert_array_equal(c0["titrated"][k], c1["titrated"][k])
    for k, v in e0["titrated"].items():
        np.testing.assert_array_equal(v, e1["titrated"][k])
    # per patient by key: two chunks give the one chunk's numbers
    moving = _trial(drug, twins.Visits(1.0, 1, 0.3), endpoints=endpoints)
    _, whole = simulate_chunk(moving, pop, 0, key=jax.random.key(4))
    for start, stop in ((0, 4), (4, 10)):
        _, part = simulate_chunk(moving, pop[np.arange(start, stop)], start,
                                 key=jax.random.key(4))  # fmt: skip
        for k in ("visit_day", "attended", "doses", "level"):
            np.testing.assert_array_equal(part["titrated"][k], whole["titrated"][k][start:stop])


def _own(endpoint, course, i):
    """`endpoint` on patient i's visits that happened (and were observed), written out as a
    course of its own with no mask."""
    m = course["observed"][i]
    one = {
        "visit_days": course["visit_day"][i][m],
        "measured": course["measured"][i : i + 1][:, m],
        "days": course["days"],
        "level": course["level"][i : i + 1],
    }
    return {c: float(np.asarray(v)[0]) for c, v in endpoint(one).items()}


def test_endpoints_use_the_visits_that_happened():
    rng = np.random.default_rng(0)
    n, v = 100, 9
    scheduled = np.array([0.0, 3, 5, 7, 10, 14, 21, 28, 35])
    slip = rng.integers(-1, 2, (n, v))
    slip[:, 0] = 0
    day = scheduled[None, :] + slip
    attended = rng.uniform(size=(n, v)) > 0.25
    attended[:, 0] = True
    attended[:5, 1:] = False  # only the baseline
    measured = np.where(attended, rng.uniform(1.0, 4.5, (n, v)), np.nan)
    left = rng.choice([4.0, 12.0, np.inf], size=n)
    course = {
        "days": np.arange(36.0),
        "level": rng.uniform(1.0, 4.5, (n, 36)),
        "visit_days": scheduled,
        "visit_day": day,
        "attended": attended,
        "measured": measured,
        "observed": attended & (day <= left[:, None]),
    }
    endpoints = [
        twins.TimeInRange("ttr", "t", 2.0, 3.0),
        twins.AnyAbove("ge4", "g", 4.0),
        twins.TimeToRange("ttt", "t", 2.0, 3.0),
        twins.TimeToRange("ttt2", "t", 2.0, 3.0, consecutive=2),
        twins.FinalLevel("last", "l", "measured"),
        twins.EventRisk("bleed", "b", (3.0,), (1.0, 20.0), source="measured"),
    ]
    for e in endpoints:
        got = {c: np.asarray(v, dtype=float) for c, v in e(course).items()}
        for i in range(n):
            k = int(course["observed"][i].sum())
            if e.name == "ttr" and k < 2:
                assert np.isnan(got["ttr"][i])  # one measured value: not evaluable
                continue
            for c, want in _own(e, course, i).items():
                np.testing.assert_allclose(got[c][i], want, rtol=1e-12, err_msg=f"{c} {i}")


def test_visits_with_informative_dropout_and_refusals():
    drug = _oral()
    # The baseline (before any dose) measures 0; every later value is above 1e-9: each
    # patient leaves right after its day-3 visit, on the day that visit happened, and one
    # whose day-3 visit was missed never measures a value that makes it leave.
    leaving = _trial(drug, twins.Visits(1.0, 1, 0.3), dropout=twins.Dropout(above=1e-9),
                     endpoints=(twins.FinalLevel("last", "l", "measured"),))  # fmt: skip
    pop = population_rows(leaving, 0, 40, key=jax.random.key(5))
    e, c = simulate_chunk(leaving, pop, 0, key=jax.random.key(6))
    c = c["titrated"]
    held = c["attended"][:, 1]
    assert 0 < held.sum() < 40
    np.testing.assert_array_equal(c["dropout_day"], np.where(held, c["visit_day"][:, 1], np.inf))
    np.testing.assert_array_equal(c["observed"], c["attended"])
    last = np.where(held, c["measured"][:, 1], c["measured"][:, 0])
    np.testing.assert_array_equal(e["titrated"]["last"], last)
    with pytest.raises(TypeError, match="Visits"):
        _trial(drug, 0.3)
    with pytest.raises(ValueError, match="does not divide a day"):
        dataclasses.replace(_trial(drug, twins.Visits(1.0, 1)), interval=36.0)
    plain = _trial(drug, None)
    with pytest.raises(ValueError, match="step_at"):  # an arm that cannot take a moved visit
        dataclasses.replace(plain, arms=(_Unmovable(),), visits=twins.Visits(1.0, 1))
    dataclasses.replace(plain, arms=(_Unmovable(),), visits=twins.Visits(p_missed=0.1))
    with pytest.raises(ValueError, match="visit_aware"):  # measured values, schedule-blind
        dataclasses.replace(plain, endpoints=(_Blind("b", "b"),), visits=twins.Visits(p_missed=0.1))
    coag = twins.coag_trial()  # COAG's arms and window TTR take slipped and missed visits
    assert dataclasses.replace(coag, visits=twins.Visits(1.0, 1, 0.1)).visits.slips


class _Unmovable(twins.Arm):
    """An arm without `step_at`: 100 mg every period."""

    name, label, description, visits = "unmovable", "u", "u", (0, 2)

    def start(self, covariates):
        return {"dose": np.full(len(covariates["ID"]), 100.0)}

    def step(self, period, measured, is_visit, state):
        return state["dose"], state


@dataclasses.dataclass(frozen=True)
class _Blind(twins.Endpoint):
    """The last measured value at the scheduled visits (does not know the realised ones)."""

    source: str = "measured"

    def __call__(self, course):
        return {self.name: np.asarray(course["measured"])[:, -1]}


def test_spec_keys_and_their_refusals():
    from twins.app import SpecError, trial_from_dict

    trial, _ = trial_from_dict({
        "preset": "eupact",
        "visits": {"slip_sd_days": 1.0, "slip_max_days": 2, "p_missed": 0.1,
                   "reference": "assumed"},
        "adherence": {
            "p_taken": 0.9,
            "timing": {"sd_h": 2.0, "max_h": 4.0, "due_h": 10.0},
            "holidays": {"p_start": 0.01, "periods": 3, "reference": "assumed"},
        },
    })  # fmt: skip
    assert trial.visits == twins.Visits(1.0, 2, 0.1, (1,), "assumed")
    assert trial.adherence.timing == twins.DoseTiming(2.0, 4.0, 10.0)
    assert trial.adherence.holidays == twins.Holidays(0.01, 3, "assumed")
    assert trial.adherence.taken_share == pytest.approx(0.9)
    only, _ = trial_from_dict({"preset": "eupact", "adherence": {"holidays": {
        "p_start": 0.02, "periods": 4}}})  # fmt: skip
    assert only.adherence.taken_share == 1.0 and only.adherence.holidays.periods == 4
    bad = [
        ({"visits": {"p_missed": 1.0}}, "visits.p_missed"),
        ({"visits": {"slip_sd_days": 1.0}}, "visits.slip_max_days"),
        ({"visits": {"slip_sd_days": 1.0, "slip_max_days": 1.5}}, "visits.slip_max_days"),
        ({"visits": {"fixed_days": [0]}}, r"visits.fixed_days\[0\]"),
        ({"visits": {"slip": 1}}, "visits.slip"),
        ({"adherence": {"timing": {"sd_h": 1.0, "max_h": 4.0, "due_h": 22.0}}},
         "adherence.timing"),
        ({"adherence": {"timing": {"sd_h": 1.0, "max_h": 4.0, "due_h": 2.0}}},
         "adherence.timing.due_h"),
        ({"adherence": {"timing": {"sd_h": -1.0, "max_h": 4.0}}}, "adherence.timing.sd_h"),
        ({"adherence": {"holidays": {"p_start": 1.0, "periods": 3}}},
         "adherence.holidays.p_start"),
        ({"adherence": {"holidays": {"p_start": 0.1, "periods": 0}}},
         "adherence.holidays.periods"),
    ]  # fmt: skip
    for extra, where in bad:
        with pytest.raises(SpecError, match=where):
            trial_from_dict({"preset": "eupact", **extra})
