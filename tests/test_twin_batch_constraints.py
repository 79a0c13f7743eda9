"""`twins.recommend_twins(..., constraints=, loading=)` (issue 22, "Dosing advice a
clinician can give", batched): the same admissible doses as `DigitalTwin.recommend` twin by
twin, one twin whose constraints cannot be met reported for that twin alone, and errors that
name the twin and the field.

The reference is the one-twin call with the same key and draws; it is itself checked against
a brute-force search over every admissible dose with closed-form concentrations in
tests/test_recommend_constraints.py.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import calibration
import pkpd
import twins
from twins.drugs import AUCOver, DoseConstraints, Dosing, Drug, Infusion, Target, Units

jax.config.update("jax_enable_x64", True)

N_DRAWS = 64
LIMITS = DoseConstraints(
    strengths=(250.0, 500.0, 750.0, 1000.0), increment=250.0, max_units=4, max_rate=1000.0,
    intervals=(8.0, 12.0, 24.0), loading_per_kg=(20.0, 35.0), max_loading=3000.0,
    reference="test",
)  # fmt: skip


def _drug() -> Drug:
    return Drug(
        name="onecmt_batch_test",
        model=calibration.PopulationModel(
            pkpd.OneCompartment(),
            theta={"CL": 4.0, "V": 50.0},
            omega={"CL": 0.09, "V": 0.04},
            error=calibration.Proportional(0.15),
            typical=lambda th, c: {"CL": th["CL"] * c["WT"] / 70.0, "V": th["V"] * c["WT"] / 70.0},
        ),
        covariate_fn=lambda p: {"WT": float(p["WT"])},
        units=Units(dose="mg", concentration="mg/L", observed="mg/L"),
        dosing=Dosing(route=Infusion(duration=1.0), amount=1000.0, interval=12.0),
        reference="a test drug",
        targets=(
            Target(metric=AUCOver(24), low=400.0, high=600.0, unit="mg·h/L", reference="test"),
        ),
    )


# per twin: (constraints, loading); each twin has its own weight and levels (its posterior)
CASES = [
    (LIMITS, None),  # vial rounding, the allowed intervals 8/12/24 h
    (dataclasses.replace(LIMITS, max_rate=400.0, intervals=(24.0,)), None),  # infusion lengthened
    (None, None),  # unconstrained in the same call
    (DoseConstraints(min_dose=10.0, max_dose=1e5), None),  # bounds that do not bind
    (dataclasses.replace(LIMITS, max_dose=500.0, intervals=(24.0,)), None),  # max_dose binds
    (dataclasses.replace(LIMITS, intervals=(12.0,)), 25.0),  # a loading dose
    (dataclasses.replace(LIMITS, max_rate=10.0, intervals=(8.0,)), None),  # cannot be met
    (LIMITS, 50.0),  # loading outside loading_per_kg
]


@pytest.fixture(scope="module")
def cohort():
    drug = _drug()
    out = []
    for i in range(len(CASES)):
        tw = twins.DigitalTwin(drug, {"ID": f"B{i}", "WT": 55.0 + 9.0 * i})
        tw.give(drug.regimen(2, amount=1000.0, interval=12.0))
        tw.update(times=[11.5, 23.5], values=[7.0 + 1.5 * i, 12.0 + 2.0 * (i % 3)])
        out.append(tw)
    return out


# Extended: every twin's recommend compiled one by one (about a minute);
# tests/test_recommend_constraints.py checks the constraints on DigitalTwin.recommend, and the
# bad-constraint test in this file the batch path, in make test.
@pytest.mark.extended
def test_recommend_twins_with_constraints_is_recommend_twin_by_twin(cohort):
    keys = [jax.random.key(100 + i) for i in range(len(cohort))]
    batch = twins.recommend_twins(
        cohort,
        keys=keys,
        n_draws=N_DRAWS,
        constraints=[c for c, _ in CASES],
        loading=[ld for _, ld in CASES],
    )
    assert len({tuple(tw.posterior.mode) for tw in cohort}) == len(cohort)  # distinct posteriors
    for i, (tw, key, (limit, load), b) in enumerate(zip(cohort, keys, CASES, batch, strict=True)):
        if i >= 6:
            continue  # the failing twins: below
        a = tw.recommend(key=key, n_draws=N_DRAWS, constraints=limit, loading=load)
        assert isinstance(b, twins.Recommendation), (i, b)
        # the admissible dose is discrete: the same, exactly; so are the interval, the
        # binding constraint, the infusion duration and the loading dose
        assert (b.dose, b.interval, b.n_doses, b.bound) == (a.dose, a.interval, a.n_doses, a.bound)
        assert (b.duration, b.loading_dose) == (a.duration, a.loading_dose)
        # the same dose on the same draws (the draws of one key, vmapped): the metric of
        # every draw to floating-point rounding, so the same fraction in the window
        np.testing.assert_allclose(b.metric_values, a.metric_values, rtol=1e-10)
        assert b.probability == a.probability
        np.testing.assert_allclose(b.metric_median, a.metric_median, rtol=1e-10)
        # the continuous optimum: the vmapped search, to its rounding (tests/test_twin_batch.py)
        if a.continuous_dose is None:
            assert b.continuous_dose is None
        else:
            np.testing.assert_allclose(b.continuous_dose, a.continuous_dose, rtol=1e-6)
        np.testing.assert_allclose(b.candidates["dose"], a.candidates["dose"], rtol=1e-6)
        for field in ("time", "amount", "duration", "mask"):
            np.testing.assert_array_equal(
                np.asarray(getattr(b.regimen, field)), np.asarray(getattr(a.regimen, field))
            )
    # each case did what it says
    assert batch[0].bound and batch[0].dose in LIMITS.admissible()
    assert "max_rate" in batch[1].bound and batch[1].duration == pytest.approx(batch[1].dose / 400)
    assert batch[2].continuous_dose is None and batch[2].bound == ""
    assert batch[3].bound == "" and batch[3].dose == pytest.approx(batch[3].continuous_dose)
    assert batch[4].dose == 500.0 and batch[4].bound == "max_dose"
    assert batch[5].loading_dose == 250.0 * round((55.0 + 45.0) * 25.0 / 250.0)
    assert float(batch[5].regimen.amount[0]) == batch[5].loading_dose
    # the twin whose max_rate makes every dose too long, alone, with the twin and field named
    assert isinstance(batch[6], ValueError)
    assert "patient B6" in str(batch[6]) and "max_rate=10.0" in str(batch[6])
    with pytest.raises(ValueError, match="max_rate=10"):
        cohort[6].recommend(key=keys[6], n_draws=N_DRAWS, constraints=CASES[6][0])
    assert isinstance(batch[7], ValueError)
    assert "patient B7" in str(batch[7]) and "loading_per_kg" in str(batch[7])


def test_bad_constraints_name_the_twin_and_the_field(cohort):
    few = cohort[:3]
    out = twins.recommend_twins(
        few, keys=[0, 1, 2], n_draws=8, constraints=[LIMITS, "vials", None], loading=[None] * 3
    )
    assert isinstance(out[1], TypeError) and "patient B1" in str(out[1])
    assert "constraints[1]" in str(out[1])
    assert isinstance(out[0], twins.Recommendation) and isinstance(out[2], twins.Recommendation)
    out = twins.recommend_twins(few, keys=[0, 1, 2], n_draws=8, loading=[None, 25.0, None])
    assert isinstance(out[1], ValueError) and "loading[1] needs constraints" in str(out[1])
    out = twins.recommend_twins(
        few, keys=[0, 1, 2], n_draws=8, constraints=LIMITS, intervals=(6.0,)
    )
    assert all("patient B" in str(e) and "constraints.intervals" in str(e) for e in out)
    with pytest.raises(ValueError, match="2 constraints for 3 twins"):
        twins.recommend_twins(few, keys=[0, 1, 2], constraints=[LIMITS, None])
    with pytest.raises(TypeError, match="constraints must be one value"):
        twins.recommend_twins(few, keys=[0, 1, 2], constraints="vials")
