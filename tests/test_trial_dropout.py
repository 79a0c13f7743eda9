"""Dropout in virtual trials (twins.Dropout): random dropout times against the exponential
distribution's closed forms, informative dropout after the first measured value above a
threshold, the endpoints over each patient's follow-up against the same endpoints computed
on the truncated series (written out here), and a trial with dropout that simulates the
same courses as without it."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_trial_dosing import _drug, _titrated

import pkpd
import twins
from twins import drugs as D
from twins.trials import population_rows, simulate_chunk


def test_random_dropout_is_exponential():
    d = twins.Dropout(rate_per_year=2.0)
    n = 20000
    keys = jax.random.split(jax.random.key(0), n)
    visit_days = np.array([0.0, 10.0])
    t = d.times(keys, visit_days, np.zeros((n, 2)))
    mean = 365.25 / 2.0
    assert abs(t.mean() - mean) < 4 * mean / np.sqrt(n)
    for q in (30.0, 100.0, 300.0):  # survival exp(-rate t)
        p = np.exp(-2.0 * q / 365.25)
        assert abs((t > q).mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    assert np.isinf(twins.Dropout().times(keys[:5], visit_days, np.zeros((5, 2)))).all()


def test_informative_dropout_after_the_first_high_value():
    visit_days = np.array([0.0, 3.0, 5.0, 7.0])
    measured = np.array([[1.0, 2.0, 5.5, 6.0], [1.0, 4.9, 2.0, 2.0], [6.0, 1.0, 1.0, 1.0]])
    keys = jax.random.split(jax.random.key(1), 3)
    t = twins.Dropout(above=5.0).times(keys, visit_days, measured)
    np.testing.assert_array_equal(t, [5.0, np.inf, 0.0])
    n = 20000
    keys = jax.random.split(jax.random.key(2), n)
    high = np.tile([1.0, 6.0, 1.0, 1.0], (n, 1))
    half = twins.Dropout(above=5.0, p_after_above=0.3).times(keys, visit_days, high)
    assert set(np.unique(half)) == {3.0, np.inf}
    assert abs((half == 3.0).mean() - 0.3) < 4 * np.sqrt(0.21 / n)
    with pytest.raises(ValueError, match="rate_per_year"):
        twins.Dropout(rate_per_year=-1.0)
    with pytest.raises(ValueError, match="p_after_above"):
        twins.Dropout(above=4.0, p_after_above=1.5)


def _truncated(endpoint, course, i, k, kt):
    """`endpoint` on patient i's first k visits and first kt days (no mask)."""
    one = {
        "visit_days": course["visit_days"][:k],
        "measured": course["measured"][i : i + 1, :k],
        "days": course["days"][:kt],
        "level": course["level"][i : i + 1, :kt],
    }
    return {c: float(np.asarray(v)[0]) for c, v in endpoint(one).items()}


def test_endpoints_count_each_patient_over_its_follow_up():
    rng = np.random.default_rng(0)
    n, days = 300, 30
    visit_days = np.array([0.0, 3, 5, 7, 10, 14, 21, 28])
    course = {
        "days": np.arange(days + 1.0),
        "level": rng.uniform(1.0, 4.5, (n, days + 1)),
        "visit_days": visit_days,
        "measured": rng.uniform(1.0, 4.5, (n, visit_days.size)),
    }
    left = rng.choice([0.5, 4.0, 9.0, 20.0, np.inf], size=n)
    course["observed"] = visit_days[None, :] <= left[:, None]
    course["observed_days"] = course["days"][None, :] <= left[:, None]
    endpoints = [
        twins.TimeInRange("ttr", "t", 2.0, 3.0),
        twins.TimeInRange("ttr_true", "t", 2.0, 3.0, "true"),
        twins.AnyAbove("ge4", "g", 4.0),
        twins.TimeToRange("ttt", "t", 2.0, 3.0, consecutive=2),
        twins.FinalLevel("last", "l", "measured"),
    ]
    for e in endpoints:
        got = {c: np.asarray(v, dtype=float) for c, v in e(course).items()}
        for i in range(n):
            k = int(course["observed"][i].sum())
            kt = int(course["observed_days"][i].sum())
            if e.name.startswith("ttr") and (k if e.name == "ttr" else kt) < 2:
                assert np.isnan(got[e.name][i])  # one observed value: not evaluable
                continue
            want = _truncated(e, course, i, k, kt)
            for c, v in want.items():
                np.testing.assert_allclose(got[c][i], v, rtol=1e-12, err_msg=f"{c} {i}")


def test_a_trial_with_dropout_simulates_the_same_courses():
    drug = _drug(pkpd.OneCompartmentOral(), {"KA": 0.9, "CL": 4.0, "V": 40.0}, D.Oral())

    def trial(dropout):
        return twins.Trial(
            name="dropout", drug=drug, population=twins.Population.sample,
            arms=(_titrated(200.0),),
            endpoints=(twins.FinalLevel("last", "l", "measured"), twins.Dropped("left", "Left")),
            days=10, interval=drug.dosing.interval, dropout=dropout,
        )  # fmt: skip

    plain, leaving = trial(None), trial(twins.Dropout(rate_per_year=200.0, above=10.0))
    pop = population_rows(plain, 0, 40, key=jax.random.key(1))
    e0, c0 = simulate_chunk(plain, pop, 0, key=jax.random.key(2))
    e1, c1 = simulate_chunk(leaving, pop, 0, key=jax.random.key(2))
    for k in ("level", "measured", "doses"):
        np.testing.assert_array_equal(c0["titrated"][k], c1["titrated"][k])
    day = c1["titrated"]["dropout_day"]
    end = c1["titrated"]["days"][-1]
    assert 0 < (day < end).sum() < 40  # some left, some stayed
    np.testing.assert_array_equal(e1["titrated"]["left_event"], day < end)
    np.testing.assert_array_equal(e1["titrated"]["left"], np.where(day < end, day, end))
    assert not e0["titrated"]["left_event"].any()
    assert leaving.describe()["dropout"]["rate_per_year"] == 200.0
    with pytest.raises(TypeError, match="Dropout"):
        trial(0.1)
