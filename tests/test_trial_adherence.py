"""Adherence in virtual trials (twins.trials.Adherence, Girard et al. 1998's two-state
Markov model): the chain's transition frequencies and stationary share, the model given
the doses taken (against pkpd.simulate of those doses), and a trial without adherence
unchanged (an always-taking chain gives the same bits)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_trial_dosing import _drug, _params, _reference, _titrated

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


def test_adherence_refused_with_host_driven_arms():
    drug = twins.drugs.get("warfarin_hamberg2007")

    def start(cov):
        n = len(cov["ID"])
        return np.zeros((n, 0)), np.full(n, 5.0)

    arm = twins.TwinArm("twin", "Twin-guided", "", start, visits=(1,))
    with pytest.raises(ValueError, match="host-driven"):
        twins.Trial(
            name="x", drug=drug, population=twins.Population.sample, arms=(arm,),
            endpoints=(), days=3, interval=24.0, adherence=twins.Adherence.independent(0.9),
        )  # fmt: skip
    with pytest.raises(TypeError, match="Adherence"):
        twins.Trial(
            name="x", drug=drug, population=twins.Population.sample,
            arms=(_titrated(100.0),), endpoints=(), days=3, interval=24.0, adherence=0.9,
        )  # fmt: skip
