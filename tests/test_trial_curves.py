"""The output within the dosing periods (`Trial.band_points`): the recorded curve against
`pkpd.simulate` of the same patient's doses, its histograms (`bands/`) against numpy's
percentiles of the per-patient values, and a results folder written before the curves
existed (levels before each dose only) still rendered."""

from __future__ import annotations

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pkpd
import twins
from twins import drugs
from twins.app._report import band_figure
from twins.trials._run import run_trial, seed_keys, trial_spec
from twins.trials._summary import band_quantiles, read_results
from twins.trials._trial import population_rows, simulate_chunk


def _initial(loading, maintenance):
    """A `DosingArm.initial`: the same loading doses and maintenance for everyone (mg)."""

    def initial(cov):
        n = len(cov["ID"])
        return np.tile(np.asarray(loading, float), (n, 1)), np.full(n, float(maintenance))

    return initial


def _vancomycin(**kw):
    arm = twins.DosingArm("load", "2 g then 1 g", "", _initial([2000.0], 1000.0), visits=(1,))
    return twins.Trial(
        name="vanco_curve",
        drug=drugs.get("vancomycin_goti2018"),
        population=twins.Population.sample,
        arms=(arm,),
        endpoints=(twins.MeanDose("dose", "dose", 2),),
        days=5,
        interval=12.0,
        **kw,
    )


#: `pkpd.simulate`, compiled once per regimen shape (eager, it takes ~1 s a patient).
_simulate = eqx.filter_jit(pkpd.simulate)


def _reference(model, params, doses):
    """`pkpd.simulate` of a list of single-dose regimens (built here, not by the trial)."""
    return lambda times: np.asarray(
        _simulate(model, params, pkpd.concatenate(doses), jnp.asarray(times))
    )


def test_infusion_curve_matches_pkpd_simulate():
    trial = _vancomycin()
    pop = population_rows(trial, 0, 3, key=jax.random.key(1))
    _, courses = simulate_chunk(trial, pop, 0, key=jax.random.key(2))
    course = courses["load"]
    k, tau = trial.band_points, trial.interval
    times = course["curve_days"] * 24.0
    np.testing.assert_allclose(times, np.arange(trial.days * k + 1) * tau / k, rtol=0, atol=1e-12)
    assert course["curve"].shape == (3, trial.days * k + 1)
    assert np.array_equal(course["doses"][:, :2], [[2000.0, 1000.0]] * 3)  # the loading dose
    duration = trial.drug.dosing.duration
    for i in range(3):
        params = {name: jnp.asarray(v[i]) for name, v in course["params"].items()}
        doses = [
            pkpd.infusion(float(a), duration=duration, time=p * tau, cmt=1)
            for p, a in enumerate(course["doses"][i])
        ]
        ref = _reference(trial.drug.model.model, params, doses)(times)
        np.testing.assert_allclose(course["curve"][i], ref, rtol=1e-6, atol=1e-9)
        # The points before each dose are the course's levels, bit for bit.
        assert np.array_equal(course["curve"][i, ::k], course["level"][i])
        # The peak after each infusion (its end, 1 h after the dose) is a point of the grid.
        peaks = course["curve"][i, 1::k][: trial.days]
        assert np.all(peaks > course["curve"][i, : trial.days * k : k])
        assert np.all(peaks >= course["curve"][i, : trial.days * k].reshape(-1, k).max(axis=1))


def test_oral_curve_with_timed_doses_matches_pkpd_simulate():
    """An oral drug with each dose taken at its own time within its period (the engine's
    general path: entries inside the sub-windows) and doses missed (adherence)."""
    timing = twins.DoseTiming(1.5, 3.0, reference="illustrative")
    arm = twins.DosingArm("fixed", "320 mg", "", _initial([], 320.0), visits=(1,))
    trial = twins.Trial(
        name="theo_curve",
        drug=drugs.get("theophylline"),
        population=twins.Population.sample,
        arms=(arm,),
        endpoints=(twins.MeanDose("dose", "dose", 2),),
        days=6,
        interval=12.0,
        band_points=8,
        adherence=twins.Adherence(0.3, 0.5, timing=timing, reference="illustrative"),
    )
    pop = population_rows(trial, 0, 4, key=jax.random.key(3))
    _, courses = simulate_chunk(trial, pop, 0, key=jax.random.key(4))
    course = courses["fixed"]
    times = course["curve_days"] * 24.0
    offsets, taken = course["dose_offset_h"], course["taken"]
    assert (taken == 0).any() and (taken > 0).any()  # some doses missed: not vacuous
    assert np.ptp(offsets) > 0.5
    for i in range(4):
        params = {name: jnp.asarray(v[i]) for name, v in course["params"].items()}
        doses = [
            pkpd.oral(float(a), time=p * trial.interval + float(offsets[i, p]))
            for p, a in enumerate(taken[i])
        ]
        ref = _reference(trial.drug.model.model, params, doses)(times)
        np.testing.assert_allclose(course["curve"][i], ref, rtol=1e-6, atol=1e-9)
        assert np.array_equal(course["curve"][i, :: trial.band_points], course["level"][i])


def test_band_quantiles_agree_with_numpy_percentiles(tmp_path):
    trial = _vancomycin(bands_edges=tuple(np.geomspace(0.5, 120.0, 201).tolist()))
    n, seed = 400, 5
    out = run_trial(trial, tmp_path / "run", n=n, seed=seed, chunk_size=150, progress=False)
    results = read_results(out)
    assert results.spec["bands"]["points_per_period"] == trial.band_points
    # The per-patient values, from the same patients and keys as the run's chunks.
    pop_key, sim_key = seed_keys(seed)
    pop = population_rows(trial, 0, n, key=pop_key)
    _, courses = simulate_chunk(trial, pop, 0, key=sim_key)
    curve, days = courses["load"]["curve"], courses["load"]["curve_days"]
    probs = (0.05, 0.5, 0.95)
    quant = band_quantiles(results, probs)
    np.testing.assert_array_equal(quant["day"].to_numpy(), days)  # every recorded time
    assert (quant["n"] == n).all()  # the three parts' counts added up
    edges = np.asarray(trial.bands_edges)
    for p in probs:
        # numpy's inverse-CDF quantile lies in the bin the histogram's quantile is taken
        # from, so the two differ by at most that bin's width.
        value = np.quantile(curve, p, axis=0, method="inverted_cdf")
        b = np.clip(np.searchsorted(edges, value, side="right") - 1, 0, edges.size - 2)
        width = edges[b + 1] - edges[b]
        got = quant[f"q{p:g}"].to_numpy()
        inside = (value >= edges[0]) & (value < edges[-1])
        assert inside[1:].all()  # t = 0 (no drug yet) is below the edges, reported at edges[0]
        np.testing.assert_array_less(np.abs(got - value)[1:], width[1:] * (1 + 1e-12))
        assert got[0] == edges[0]
    # Peaks in the bands: the median 1 h after the second dose is above the troughs around.
    k = trial.band_points
    med = quant["q0.5"].to_numpy()
    assert med[k + 1] > 1.5 * max(med[k], med[2 * k])
    # The report's figure draws the median through every recorded time.
    (line,) = [ln for ln in band_figure(results).axes[0].lines if "median" in ln.get_label()]
    np.testing.assert_array_equal(line.get_xdata(), days)
    np.testing.assert_array_equal(line.get_ydata(), med)
    assert (
        f"at the {days.size} times the run recorded (12 per dosing period of 12 h, every 1 h"
        in (twins.write_report(out).read_text())
    )


def test_results_without_curves_still_render(tmp_path):
    """`band_points=1` writes what every run wrote before the field existed (the same
    spec, so the same hash: such an older unfinished run resumes with it), and its report
    draws the levels before each dose."""
    trial = _vancomycin(band_points=1)
    default = trial_spec(_vancomycin(), n=30, seed=0, chunk_size=30)
    spec = trial_spec(trial, n=30, seed=0, chunk_size=30)
    assert "points_per_period" not in spec["bands"]
    del default["bands"]["points_per_period"]
    assert spec == default
    out = run_trial(trial, tmp_path / "old", n=30, chunk_size=30, progress=False)
    stored = json.loads((out / "spec.json").read_text())
    assert "points_per_period" not in stored["bands"]
    results = read_results(out)
    np.testing.assert_array_equal(np.unique(results.bands["day"]), np.arange(trial.days + 1) * 0.5)
    page = twins.write_report(out).read_text()
    assert "the level before each dose only" in page
    assert page.count('<img src="data:image/png;base64,') >= 1


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_band_points_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="band_points must be an integer >= 1"):
        dataclasses.replace(_vancomycin(), band_points=bad)
