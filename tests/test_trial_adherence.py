"""Adherence in virtual trials (twins.trials.Adherence, Girard et al. 1998's two-state
Markov model): the chain's transition frequencies and stationary share, the model given
the doses taken (against pkpd.simulate of those doses), and a trial without adherence
unchanged (an always-taking chain gives the same bits)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_trial_dosing import TIGHT, _drug, _params, _reference, _titrated

import pkpd
import twins
from twins import drugs as D
from twins.trials import population_rows, simulate_chunk


def test_markov_chain_frequencies():
    a = twins.Adherence(p_miss_after_taken=0.1, p_take_after_missed=0.4)
    assert a.taken_share == pytest.approx(0.8)
    keys = jax.random.split(jax.random.key(0), 4000)
    x = np.asarray(jax.vmap(lambda k: a.draw(k, 60))(keys))
    assert set(np.unique(x)) <= {0.0, 1.0}
    n = x.size
    share = x.mean()
    assert abs(share - 0.8) < 4 * np.sqrt(0.8 * 0.2 / n) * 3  # (correlated draws: 3x the SE)
    before, after = x[:, :-1].ravel(), x[:, 1:].ravel()
    miss = 1.0 - after[before == 1.0]
    take = after[before == 0.0]
    for got, p in ((miss.mean(), 0.1), (take.mean(), 0.4)):
        m = miss.size if p == 0.1 else take.size
        assert abs(got - p) < 4 * np.sqrt(p * (1 - p) / m), (got, p)
    assert abs(x[:, 0].mean() - 0.8) < 4 * np.sqrt(0.16 / 4000)  # stationary from day 1
    ind = twins.Adherence.independent(0.7)
    y = np.asarray(jax.vmap(lambda k: ind.draw(k, 60))(keys))
    # independent: the next dose does not depend on this one
    b2, a2 = y[:, :-1].ravel(), y[:, 1:].ravel()
    assert abs(a2[b2 == 1].mean() - a2[b2 == 0].mean()) < 0.02
    with pytest.raises(ValueError, match="probability"):
        twins.Adherence(1.5, 0.2)
    with pytest.raises(ValueError, match="both 0"):
        twins.Adherence(0.0, 0.0)


def _trial(drug, days, adherence):
    return twins.Trial(
        name="adherence",
        drug=drug,
        population=twins.Population.sample,
        arms=(_titrated(200.0),),
        endpoints=(twins.MeanDose("dose", "dose", 1), twins.DosesTaken("taken", "Doses taken")),
        days=days,
        interval=drug.dosing.interval,
        solver=pkpd.ODESolver(),
        adherence=adherence,
    )


def test_the_model_is_given_the_doses_taken():
    drug = _drug(pkpd.OneCompartmentOral(), {"KA": 0.9, "CL": 4.0, "V": 40.0}, D.Oral())
    trial = _trial(drug, 10, twins.Adherence(0.3, 0.5))
    pop = population_rows(trial, 0, 6, key=jax.random.key(1))
    ends, courses = simulate_chunk(trial, pop, 0, key=jax.random.key(2))
    course = courses["titrated"]
    flags = course["adherence"]
    assert flags.shape == (6, 10) and 0 < flags.mean() < 1  # some doses missed
    np.testing.assert_array_equal(course["taken"], course["doses"] * flags)
    times = np.arange(trial.days + 1) * trial.interval
    for i in range(6):
        ref = _reference(drug, _params(course, i), course["taken"][i], trial.interval, times)
        np.testing.assert_allclose(course["level"][i], ref, rtol=1e-9, atol=1e-12)
    prescribed = course["doses"] > 0
    expected = 100.0 * (prescribed & (flags > 0.5)).sum(1) / prescribed.sum(1)
    np.testing.assert_allclose(ends["titrated"]["taken"], expected)
    assert trial.describe()["adherence"]["taken_share"] == pytest.approx(0.5 / 0.8)
    # an always-taking chain is the trial without adherence, to the bit
    plain = _trial(drug, 10, None)
    always = _trial(drug, 10, twins.Adherence(0.0, 1.0))
    e0, c0 = simulate_chunk(plain, pop, 0, key=jax.random.key(2))
    e1, c1 = simulate_chunk(always, pop, 0, key=jax.random.key(2))
    np.testing.assert_array_equal(c0["titrated"]["level"], c1["titrated"]["level"])
    np.testing.assert_array_equal(c0["titrated"]["measured"], c1["titrated"]["measured"])
    assert "adherence" not in plain.describe() and np.all(e0["titrated"]["taken"] == 100.0)
    np.testing.assert_array_equal(e0["titrated"]["dose"], e1["titrated"]["dose"])


def test_adherence_must_be_an_adherence():
    # TwinArm takes adherence too: tests/test_twin_arm.py.
    drug = twins.drugs.get("warfarin_hamberg2007")
    with pytest.raises(TypeError, match="Adherence"):
        twins.Trial(
            name="x", drug=drug, population=twins.Population.sample,
            arms=(_titrated(100.0),), endpoints=(), days=3, interval=24.0, adherence=0.9,
        )  # fmt: skip


def test_holidays_are_runs_of_missed_doses_at_their_rate():
    h = twins.Holidays(p_start=0.05, periods=4)
    assert h.holiday_share == pytest.approx(0.05 * 4 / (1 - 0.05 + 0.05 * 4))
    keys = jax.random.split(jax.random.key(3), 3000)
    x = np.asarray(jax.vmap(lambda k: h.draw(k, 200))(keys))
    assert set(np.unique(x)) <= {0.0, 1.0}
    # Read back as the process is defined: off holiday, a period starts one (or not); a
    # holiday is 4 periods of missed doses (cut by the end of the trial at most).
    starts = decisions = 0
    for row in x:
        i = 0
        while i < row.size:
            decisions += 1
            if row[i] == 1.0:
                starts += 1
                assert np.all(row[i : i + 4] == 1.0)
                i += 4
            else:
                i += 1
    p = starts / decisions
    assert abs(p - 0.05) < 4 * np.sqrt(0.05 * 0.95 / decisions)
    late = x[:, 100:].mean(1)  # near the long-run share (independent patients)
    assert abs(late.mean() - h.holiday_share) < 4 * late.std() / np.sqrt(late.size)
    with pytest.raises(ValueError, match="p_start"):
        twins.Holidays(1.0, 3)
    with pytest.raises(ValueError, match="periods"):
        twins.Holidays(0.1, 0)


def test_dose_times_are_a_truncated_normal_jitter():
    from scipy import stats

    t = twins.DoseTiming(sd_h=2.0, max_h=3.0, due_h=5.0)
    keys = jax.random.split(jax.random.key(4), 400)
    x = np.asarray(jax.vmap(lambda k: t.draw(k, 50))(keys)).ravel()
    assert x.min() >= 2.0 and x.max() <= 8.0
    ref = stats.truncnorm(-1.5, 1.5, loc=5.0, scale=2.0)
    assert stats.kstest(x, ref.cdf).pvalue > 1e-3
    assert twins.DoseTiming(1.0, 2.0).due_h == 2.0  # due by default at max_h
    with pytest.raises(ValueError, match="due_h"):
        twins.DoseTiming(1.0, 2.0, due_h=1.0)
    with pytest.raises(ValueError, match="sd_h"):
        twins.DoseTiming(-1.0, 2.0)


def _timed_reference(drug, params, amounts, offsets, tau, times):
    """pkpd.simulate of the doses taken, each at its own time in its period."""
    route, cmt = drug.dosing.route, drug.dosing.cmt
    records = [
        route.dose(float(a), time=k * tau + float(offsets[k]), cmt=cmt)
        for k, a in enumerate(amounts)
        if a > 0
    ]
    y = pkpd.simulate(drug.model.model, params, pkpd.concatenate(records), times, solver=TIGHT)
    return np.asarray(y)


def test_jittered_doses_and_holidays_equal_pkpd_simulate():
    # q12h with a 4-h lag and doses due 5 h into the period, +-4 h: a late dose arrives in
    # the next period (a window of two periods of doses), as pkpd.simulate has it.
    drug = _drug(
        pkpd.OneCompartmentOral(),
        {"KA": 0.9, "CL": 4.0, "V": 40.0, "ALAG1": 4.0, "F1": 0.6},
        D.Oral(),
        interval=12.0,
    )
    timing = twins.DoseTiming(sd_h=2.0, max_h=4.0, due_h=5.0)
    holidays = twins.Holidays(p_start=0.1, periods=3)
    full = twins.Adherence(0.1, 0.4, timing=timing, holidays=holidays)
    trial = _trial(drug, 12, full)
    pop = population_rows(trial, 0, 6, key=jax.random.key(1))
    ends, courses = simulate_chunk(trial, pop, 0, key=jax.random.key(2))
    course = courses["titrated"]
    offsets, on = course["dose_offset_h"], course["holiday"]
    assert offsets.shape == (6, 12) and np.ptp(offsets) > 1.0 and on.any()
    assert offsets.min() >= 1.0 and offsets.max() <= 9.0
    assert (offsets + 4.0 > trial.interval).any()  # some doses arrive in the next period
    np.testing.assert_array_equal(course["adherence"][on == 1.0], 0.0)  # holidays: missed
    # the chain is that of the same Adherence without timing and holidays (own streams)
    _, plain = simulate_chunk(_trial(drug, 12, twins.Adherence(0.1, 0.4)), pop, 0,
                              key=jax.random.key(2))  # fmt: skip
    chain = plain["titrated"]["adherence"]
    np.testing.assert_array_equal(course["adherence"], chain * (1.0 - on))
    times = np.arange(trial.days + 1) * trial.interval
    for i in range(6):
        ref = _timed_reference(drug, _params(course, i), course["taken"][i], offsets[i],
                               trial.interval, times)  # fmt: skip
        np.testing.assert_allclose(course["level"][i], ref, rtol=1e-9, atol=1e-12)
    # not vacuous: the same doses at the period starts give other levels
    other = _reference(drug, _params(course, 0), course["taken"][0], trial.interval, times)
    assert np.max(np.abs(other - course["level"][0])) > 1e-2 * np.max(course["level"][0])
    prescribed = course["doses"] > 0
    want = 100.0 * (prescribed & (course["adherence"] > 0.5)).sum(1) / prescribed.sum(1)
    np.testing.assert_allclose(ends["titrated"]["taken"], want)
    described = trial.describe()["adherence"]
    assert described["timing"]["due_h"] == 5.0 and described["holidays"]["periods"] == 3.0
    assert "timing" not in _trial(drug, 12, twins.Adherence(0.1, 0.4)).describe()["adherence"]
    with pytest.raises(ValueError, match=r"adherence\.timing"):
        _trial(drug, 12, twins.Adherence(timing=twins.DoseTiming(1.0, 4.0, due_h=8.0)))


def test_timed_chunks_run_in_sub_batches_and_draws_are_per_patient(monkeypatch):
    # A trial with dose timing runs its chunk as lax.map over sub-batches of TIMED_BATCH
    # patients (a whole-chunk vmap hung inside XLA at 1,000 EU-PACT patients): sub-batches
    # of 4 (4 + 2 patients) give each patient's course as one batch of 6 does.
    import twins.trials._trial as engine

    drug = _drug(pkpd.OneCompartmentOral(), {"KA": 0.9, "CL": 4.0, "V": 40.0}, D.Oral())
    full = twins.Adherence(
        0.1, 0.4, timing=twins.DoseTiming(1.0, 2.0, due_h=3.0), holidays=twins.Holidays(0.2, 2)
    )
    trial = _trial(drug, 8, full)
    pop = population_rows(trial, 0, 6, key=jax.random.key(1))
    _, whole = simulate_chunk(trial, pop, 0, key=jax.random.key(2))
    # per patient by key: a chunk of the last three draws their times and holidays
    _, last = simulate_chunk(trial, pop[np.arange(3, 6)], 3, key=jax.random.key(2))
    for k in ("dose_offset_h", "holiday", "adherence"):
        np.testing.assert_array_equal(last["titrated"][k], whole["titrated"][k][3:])
    monkeypatch.setattr(engine, "TIMED_BATCH", 4)
    _, parts = simulate_chunk(_trial(drug, 8, full), pop, 0, key=jax.random.key(2))
    for k in ("level", "measured", "doses"):
        np.testing.assert_allclose(parts["titrated"][k], whole["titrated"][k], rtol=1e-13)
