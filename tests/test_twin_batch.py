"""Many twins at once (`twins.update_twins`, `recommend_twins`, `forecast_twins`): the numbers
of the one-twin calls, one failing twin isolated, twins of different population values kept
apart."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import calibration
import pkpd
import twins

jax.config.update("jax_enable_x64", True)

DRUG = twins.drugs.get("vancomycin_goti2018")


def _twin(i: int, *, population=None) -> twins.DigitalTwin:
    p = twins.Patient(
        id=f"p{i}",
        age=35 + 9 * i,
        sex="male" if i % 2 else "female",
        weight=58.0 + 7 * i,
        height=162.0 + 4 * i,
        labs={"serum_creatinine": 0.7 + 0.2 * i},
    )
    tw = twins.DigitalTwin(DRUG, p, population=population)
    tw.give(DRUG.regimen(3 + i % 3, amount=750.0 + 250.0 * (i % 2), interval=12.0))
    return tw


# levels at different times and numbers per twin (1 to 3), so buckets are shared, not equal
LEVELS = [
    ([11.5], [8.0]),
    ([11.5, 35.5], [10.5, 13.0]),
    ([23.5, 35.5, 47.5], [9.0, 11.0, 16.0]),
    ([35.5], [22.0]),
    ([11.5, 47.5], [6.0, 9.5]),
]


def _pairs(population=None):
    one = [_twin(i, population=population) for i in range(len(LEVELS))]
    many = [_twin(i, population=population) for i in range(len(LEVELS))]
    for a, b, (t, v) in zip(one, many, LEVELS, strict=True):
        a.update(times=t, values=v)
        b.observe(times=t, values=v)
    return one, many


def _same_posterior(a: twins.Posterior, b: twins.Posterior) -> None:
    # The conditional-mode search stops at the inner optimiser's tolerance; a vmapped batch
    # of 8 and a batch of 1 round differently, so modes agree to ~1e-9, not bit for bit.
    np.testing.assert_allclose(b.mode, a.mode, atol=1e-6)
    np.testing.assert_allclose(b.cov, a.cov, rtol=1e-5, atol=1e-9)
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-6)
    assert b.method == "map" and b.converged == a.converged
    assert b.n_observations == a.n_observations


def test_update_twins_is_update_one_by_one_and_isolates_a_twin_without_doses(monkeypatch):
    one, many = _pairs()
    calls = []
    real = calibration.individual_map

    def counted(pm, data, *args, **kwargs):
        calls.append(data.n_subjects)
        return real(pm, data, *args, **kwargs)

    monkeypatch.setattr(calibration, "individual_map", counted)
    no_doses = twins.DigitalTwin(DRUG, _twin(5).patient)
    no_doses.observe(times=[1.0], values=[5.0])
    errors = twins.update_twins([*many[:2], no_doses, *many[2:]])
    assert [e is None for e in errors] == [True, True, False, True, True, True]
    assert isinstance(errors[2], ValueError) and "p5" in str(errors[2])
    assert calls == [8]  # one vmapped call: 5 twins padded to a bucket of 8
    assert no_doses.posterior.method == "prior"  # unchanged
    for a, b in zip(one, many, strict=True):
        _same_posterior(a.posterior, b.posterior)
    # one level more each: the warm start (from the current modes) finds the cold modes
    for i, (a, b) in enumerate(zip(one, many, strict=True)):
        a.update(times=[59.5], values=[12.0 + i])
        b.observe(times=[59.5], values=[12.0 + i])
    before = [b.posterior.mode.copy() for b in many]
    assert twins.update_twins(many) == [None] * len(many)
    for a, b, old in zip(one, many, before, strict=True):
        _same_posterior(a.posterior, b.posterior)
        assert np.max(np.abs(b.posterior.mode - old)) > 1e-4  # it did move


def test_twins_of_different_population_values_are_fitted_apart():
    shifted = jax.tree_util.tree_map(lambda v: v, DRUG.population())
    name = next(iter(shifted["theta"]))
    shifted["theta"][name] = shifted["theta"][name] + 0.3
    one_a, many_a = _pairs()
    one_b, many_b = _pairs(population=shifted)
    mixed = [x for pair in zip(many_a, many_b, strict=True) for x in pair]
    assert twins.update_twins(mixed) == [None] * len(mixed)
    for a, b in zip(one_a + one_b, many_a + many_b, strict=True):
        _same_posterior(a.posterior, b.posterior)
    assert not np.allclose(many_a[0].posterior.mode, many_b[0].posterior.mode)


def test_recommend_and_forecast_twins_are_the_one_twin_calls():
    one, many = _pairs()
    assert twins.update_twins(many) == [None] * len(many)
    keys = [jax.random.key(40 + i) for i in range(len(one))]
    starts = [60.0, 60.0, 72.0, None, 66.0]
    n = 64
    solo = [
        tw.recommend(key=k, n_draws=n, start=s, intervals=(8.0, 12.0))
        for tw, k, s in zip(one, keys, starts, strict=True)
    ]
    batch = twins.recommend_twins(many, keys=keys, starts=starts, n_draws=n, intervals=(8.0, 12.0))
    for a, b in zip(solo, batch, strict=True):
        assert isinstance(b, twins.Recommendation)
        assert b.interval == a.interval and b.n_doses == a.n_doses
        np.testing.assert_allclose(b.dose, a.dose, rtol=1e-6)
        assert abs(b.probability - a.probability) <= 1.0 / n
        np.testing.assert_allclose(b.candidates["dose"], a.candidates["dose"], rtol=1e-6)
        np.testing.assert_allclose(b.metric_median, a.metric_median, rtol=1e-6)
    times = [np.linspace(60.0, 96.0, 7) + i for i in range(len(one))]
    solo_fc = [
        tw.forecast(t, rec.regimen, key=k, n_draws=n)
        for tw, t, rec, k in zip(one, times, solo, keys, strict=True)
    ]
    batch_fc = twins.forecast_twins(
        many, times, [rec.regimen for rec in solo], keys=keys, n_draws=n
    )
    for a, b in zip(solo_fc, batch_fc, strict=True):
        assert isinstance(b, twins.Forecast)
        np.testing.assert_array_equal(b.times, a.times)
        for field in ("median", "lower", "upper"):
            np.testing.assert_allclose(getattr(b, field), getattr(a, field), rtol=1e-6)


def test_batch_arguments_are_checked():
    _, many = _pairs()
    with pytest.raises(TypeError, match="one JAX PRNG key"):
        twins.recommend_twins(many, keys=jax.random.key(0))
    with pytest.raises(ValueError, match="3 keys for 5 twins"):
        twins.forecast_twins(many, [[1.0]] * 5, keys=[0, 1, 2])
    with pytest.raises(TypeError, match="DigitalTwin"):
        twins.update_twins([many[0], "p1"])
    bad = twins.recommend_twins(many[:2], keys=[0, 1], intervals=(-1.0,))
    assert all(isinstance(b, ValueError) and "intervals must be > 0" in str(b) for b in bad)


# Extended: the additive-metric batch test in this file checks recommend_twins against
# DigitalTwin.recommend in make test.
@pytest.mark.extended
def test_recommend_twins_non_additive_metric_is_the_one_twin_search():
    """A peak target is not additive in the dose, so the search takes the Newton steps of
    `optimise_dose` (simulated at every step) instead of superposition: batched, the same."""
    peak = twins.Target(
        metric=twins.Peak(), low=25.0, high=40.0, unit="mg/L", reference="a test window"
    )
    one, many = _pairs()
    one, many = one[:3], many[:3]
    assert twins.update_twins(many) == [None] * 3
    keys = [jax.random.key(7 + i) for i in range(3)]
    solo = [
        tw.recommend(peak, key=k, n_draws=16, start=60.0, steps=4)
        for tw, k in zip(one, keys, strict=True)
    ]
    batch = twins.recommend_twins(
        many, target=peak, keys=keys, n_draws=16, starts=[60.0] * 3, steps=4
    )
    for a, b in zip(solo, batch, strict=True):
        assert isinstance(b, twins.Recommendation)
        np.testing.assert_allclose(b.dose, a.dose, rtol=1e-6)
        assert abs(b.probability - a.probability) <= 1.0 / 16
        np.testing.assert_allclose(b.metric_median, a.metric_median, rtol=1e-6)


def test_join_many_is_concatenate_and_stack():
    """The host-side join of the batched paths gives what `Regimen.__add__` and
    `pkpd.stack` give, field by field and dtype by dtype, with its flags."""
    from twins._recommend import join_many

    inf = pkpd.infusion(1000.0, duration=1.0, time=0.0) + pkpd.infusion(750.0, rate=500.0, time=12)
    oral = pkpd.oral(5.0, time=24.0).pad(4)
    plans = [DRUG.regimen(3, amount=1.0, interval=12.0, start=36.0).pad(8), oral, None]
    firsts = [inf.pad(8), inf.pad(8), oral]
    joined, stacked = join_many(firsts, plans, 32)
    expect = [a if b is None else a + b for a, b in zip(firsts, plans, strict=True)]
    want = pkpd.stack(expect, 32)
    for got, ref in [*zip(joined, expect, strict=True), (stacked, want)]:
        assert got.n_events == ref.n_events
        for f in ("time", "amount", "cmt", "rate", "duration", "lag", "bioav", "evid", "ss"):
            np.testing.assert_array_equal(np.asarray(getattr(got, f)), np.asarray(getattr(ref, f)))
            assert np.asarray(getattr(got, f)).dtype == np.asarray(getattr(ref, f)).dtype
        for f in ("ii", "order", "mask"):
            np.testing.assert_array_equal(np.asarray(getattr(got, f)), np.asarray(getattr(ref, f)))
        flags = ("ss_intervals", "has_ss", "has_reset", "has_infusion")
        assert [getattr(got, f) for f in flags] == [getattr(ref, f) for f in flags]
    with pytest.raises(ValueError, match="shorter than the longest"):
        join_many(firsts, plans, 8)
