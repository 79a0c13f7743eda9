"""One patient never sinks a training set: a patient that cannot be simulated is left out of
`surrogates.training_set`, named with its reason, and the other rows are unchanged."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest
from helpers import shifted_clearance_drug

import surrogates
import twins
from surrogates import FailedPatientsWarning, training_set
from twins.trials import TooManyFailuresError

N, CHUNK = 24, 10
BAD = 13  # the patient (index) whose clearance is <= 0, in the second chunk


DRUG = shifted_clearance_drug()


def _initial(cov):
    n = len(cov["ID"])
    return np.zeros((n, 0)), np.full(n, 100.0)


def _trial(shift: dict[int, float]) -> twins.Trial:
    """The same patients (ids, covariates) whatever `shift`, but for SHIFT at those rows."""
    frame = twins.Population.sample(N, key=jax.random.key(0)).to_dataframe()
    frame["extra_SHIFT"] = 0.0
    for i, value in shift.items():
        frame.loc[i, "extra_SHIFT"] = value
    return twins.Trial(
        name="failures",
        drug=DRUG,
        population=twins.Population.from_dataframe(frame),
        arms=(twins.DosingArm("low", "100 mg", "", _initial, visits=(1, 3)),),
        endpoints=(
            twins.FinalLevel("trough", "trough"),
            twins.AnyAbove("high_level", "level >= 0.5", 0.5, "true"),
        ),
        days=5,
    )


def _build(shift, **kwargs) -> surrogates.TrainingSet:
    return training_set(
        _trial(shift), N, seed=2, chunk_size=CHUNK, observe=2, parameters=True, **kwargs
    )


def test_a_failed_patient_is_left_out_named_and_the_others_are_unchanged():
    with pytest.warns(FailedPatientsWarning, match=r"1 of the 24 patients \(4\.17%\)") as info:
        ts = _build({BAD: 100.0})
    assert len(info) == 1
    bad_id = str(_trial({}).population.ids[BAD])
    assert bad_id in str(info[0].message)
    assert len(ts) == N - 1 and bad_id not in ts.patients
    assert list(ts.failures) == [bad_id]
    reason = ts.failures[bad_id]
    assert "parameters outside the model's domain: CL = -" in reason
    assert "(expected > 0)" in reason
    # The reference: the bad patient replaced by a good one at the same index (its etas
    # and noise come from its index: the other rows must be the same bits).
    good = _build({})  # no warning: the suite turns warnings into errors
    assert len(good) == N and good.failures == {}
    keep = np.flatnonzero(np.arange(N) != BAD)
    expected = good.take(keep)
    np.testing.assert_array_equal(ts.patients, expected.patients)
    pd.testing.assert_frame_equal(ts.inputs.static, expected.inputs.static, check_exact=True)
    assert "param_CL" in ts.inputs.static.columns
    assert bool((ts.inputs.static["param_CL"] > 0).all())  # not the failed CL < 0
    pd.testing.assert_frame_equal(ts.targets, expected.targets, check_exact=True)
    assert ts.targets["high_level"].dtype == bool  # a flag, not a float with a NaN
    np.testing.assert_array_equal(ts.inputs.sequence, expected.inputs.sequence)
    np.testing.assert_array_equal(ts.trajectory, expected.trajectory)
    np.testing.assert_array_equal(ts.trajectory_days, expected.trajectory_days)
    assert np.isfinite(ts.trajectory).all()
    # The record goes with the set's parts.
    train, test = ts.split(0.25, key=1)
    assert train.failures == test.failures == {bad_id: reason}


def test_past_max_failed_fraction_the_build_stops_naming_the_patients():
    ids = _trial({}).population.ids.astype(str)
    # 2 of 24 (8.3%) is more than the default 5%: the second chunk stops the build.
    message = (
        r"training_set: trial 'failures', arm 'low': 2 of the first 20 of the 24 patients "
        r"could not be simulated \(8\.33% of 24\), more than max_failed_fraction=0\.05 "
        r"allows \(1 patients\); the build stops\. First: "
        rf"{ids[3]}: parameters outside the model's domain: CL = -.*; {ids[BAD]}: "
    )
    with pytest.raises(TooManyFailuresError, match=message) as info:
        _build({3: 100.0, BAD: 100.0})
    assert isinstance(info.value, ValueError)
    assert "(at least 0.0833; 1 never stops)" in str(info.value)
    # 0: any failure stops, at the first chunk that has one.
    with pytest.raises(TooManyFailuresError, match=r"1 of the first 10 of the 24 patients"):
        _build({3: 100.0}, max_failed_fraction=0.0)
    for bad in (-0.1, 1.5, True, "0.1", float("nan")):
        with pytest.raises(ValueError, match="max_failed_fraction must be a number from 0"):
            _build({}, max_failed_fraction=bad)


def test_a_set_without_any_patient_is_refused():
    with pytest.raises(TooManyFailuresError, match="none of the 24 patients could be simulated"):
        _build(dict.fromkeys(range(N), 100.0), max_failed_fraction=1.0)
