"""FHIR out: a recommendation (MedicationRequest, intent = proposal) and a forecast
(Observations with derivedFrom), validated by fhir.resources and read back by read_fhir
with the same numbers; subjects pseudonymised; a twin calibrated from FHIR records equals
one calibrated from the hand-written records."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.observation import Observation

import pkpd
import twins
import twins.io as tio
from twins.governance import MasterKey

DATA = Path(__file__).parent / "data" / "fhir"
CET = dt.timezone(dt.timedelta(hours=1))
REF = dt.datetime(2026, 3, 10, 12, 0, tzinfo=CET)
PID = "van-units"
DRUG = twins.drugs.get("vancomycin_goti2018")


def _read(extra=()):
    bundle = json.loads((DATA / "units.json").read_text())
    bundle["entry"] += extra
    return tio.read_fhir(bundle, reference_time=REF)


def _recommendation() -> twins.Recommendation:
    # padded, as recommend's plans are (the writer must read the real doses only)
    regimen = DRUG.regimen(6, amount=1250.0, interval=8.0, duration=1.5, start=36.0).pad(16)
    return twins.Recommendation(
        dose=1250.0, interval=8.0, n_doses=6, regimen=regimen, target=DRUG.targets[0],
        metric_median=512.3, metric_lower=402.0, metric_upper=650.1, probability=0.6137,
        required_probability=None, achieved=True, unit="mg vancomycin",
        candidates=pd.DataFrame(),
    )  # fmt: skip


def _forecast() -> twins.Forecast:
    times = np.array([30.0, 37.25, 48.0, 60.5])
    median = np.array([16.25, 30.125, 9.0 + 1e-12, 12.0])
    return twins.Forecast(
        times=times, median=median, lower=median * 0.7, upper=median * 1.4, draws=median[None],
        level=0.9, prediction_interval=False, observations=pd.DataFrame(),
        regimen=pkpd.bolus(1.0), unit="vancomycin serum concentration, mg/L", drug=DRUG.name,
    )  # fmt: skip


def _entries(resources):
    return json.loads(tio.fhir_bundle(resources).model_dump_json())["entry"]


def test_recommendation_round_trip():
    first = _read()
    origin = first.origins[PID]
    rec = _recommendation()
    mr = tio.recommendation_request(rec, patient=PID, origin=origin)
    data = json.loads(mr.model_dump_json())
    MedicationRequest.model_validate(data)  # valid R4B
    assert (data["status"], data["intent"]) == ("draft", "proposal")
    assert data["subject"] == {"reference": "Patient/van-units"}
    repeat = data["dosageInstruction"][0]["timing"]["repeat"]
    assert repeat["boundsPeriod"]["start"] == "2026-03-09T20:00:00+01:00"  # origin + 36 h
    assert (repeat["count"], repeat["period"], repeat["periodUnit"]) == (6, 8.0, "h")
    assert (repeat["duration"], repeat["durationUnit"]) == (1.5, "h")
    assert "61%" in data["note"][0]["text"]
    back = _read(_entries([mr]))
    (p,) = back.proposals
    assert (p.patient, p.dose, p.interval, p.n_doses, p.duration, p.time) == (
        PID,
        1250.0,
        8.0,
        6,
        1.5,
        36.0,
    )
    assert (p.metric, p.low, p.high, p.probability) == ("AUC24", 400.0, 600.0, 0.6137)
    assert p.target_unit == "mg·h/L"
    # a proposal is not a dose given: the records are unchanged
    pd.testing.assert_frame_equal(back.records, first.records)


def test_forecast_round_trip_with_derived_from():
    first = _read()
    levels = list(first.observations(PID)["SOURCE"])
    fc = _forecast()
    obs = tio.forecast_observations(fc, patient=PID, origin=first.origins[PID], derived_from=levels)
    assert len(obs) == 4
    for o in obs:
        Observation.model_validate(json.loads(o.model_dump_json()))
    back = _read(_entries(obs))
    points = sorted(back.forecasts, key=lambda f: f.time)
    np.testing.assert_array_equal([f.time for f in points], fc.times)
    np.testing.assert_array_equal([f.median for f in points], fc.median)
    np.testing.assert_array_equal([f.lower for f in points], fc.lower)
    np.testing.assert_array_equal([f.upper for f in points], fc.upper)
    assert {f.level for f in points} == {0.9} and {f.unit for f in points} == {"mg/L"}
    assert {f.derived_from for f in points} == {("Observation/trough-1", "Observation/peak-1")}
    assert points[1].at == dt.datetime(2026, 3, 9, 21, 15, tzinfo=CET)  # origin + 37.25 h
    pd.testing.assert_frame_equal(back.records, first.records)  # not read as levels


def test_subjects_are_pseudonyms_with_a_pseudonymizer():
    psn = MasterKey(bytes(range(32))).pseudonymizer("results")
    first = _read()
    origin = first.origins[PID]
    mr = tio.recommendation_request(
        _recommendation(), patient=PID, origin=origin, pseudonymizer=psn
    )
    obs = tio.forecast_observations(
        _forecast(), patient=PID, origin=origin, pseudonymizer=psn,
        derived_from=list(first.observations(PID)["SOURCE"]),
    )  # fmt: skip
    text = tio.fhir_bundle([mr, *obs]).model_dump_json()
    Bundle.model_validate_json(text)
    assert PID not in text and "trough-1" not in text
    assert mr.subject.reference == f"Patient/{psn.pseudonym(PID)}"  # as in the records
    assert obs[0].derivedFrom[0].reference == f"Observation/{psn.pseudonym('Observation/trough-1')}"


def test_writers_refuse_naive_origins():
    with pytest.raises(ValueError, match="origin"):
        tio.recommendation_request(_recommendation(), patient=PID, origin=dt.datetime(2026, 3, 8))


def _hand_written_twin():
    """The same patient and records as units.json, written by hand."""
    patient = twins.Patient(
        id=PID, age=67 + 361 / 365, sex="male", weight=181 * 0.45359237, height=70 * 2.54,
        labs={"serum_creatinine": 115e-6 * 113.12 * 100, "albumin": 3.5, "alt": 40.0,
              "cystatin_c": 1.1},
    )  # fmt: skip
    records = pd.DataFrame(
        {
            "ID": PID, "TIME": [0.0, 12.0, 24.0], "EVID": 1, "AMT": 1000.0, "CMT": 1,
            "RATE": [1000.0, 500.0, 1000.0 / 1.5],
        }
    )  # fmt: skip
    twin = twins.DigitalTwin(DRUG, patient).give(pkpd.regimen_from_records(records))
    return twin.update(times=[23.5, 26.0], values=[8.9, 27.5])


def test_twin_from_fhir_equals_twin_from_hand_written_records():
    result = _read()
    twin = twins.DigitalTwin(DRUG, result.patients[PID]).give(result.regimen(PID))
    twin.update(result.observations(PID))
    hand = _hand_written_twin()
    assert twin.covariates == pytest.approx(hand.covariates, rel=1e-12)
    np.testing.assert_allclose(twin.posterior.mode, hand.posterior.mode, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(twin.posterior.cov, hand.posterior.cov, rtol=1e-9)


# About 10 s of compilation (recommend, forecast). What make test covers of its ground: the
# writers on a padded constructed Recommendation and on a Forecast (round trips above) and a
# twin calibrated from FHIR records (test_twin_from_fhir_equals_...); this adds the twin's
# own recommend and forecast outputs.
@pytest.mark.extended
def test_twin_recommendation_and_forecast_end_to_end():
    result = _read()
    twin = twins.DigitalTwin(DRUG, result.patients[PID]).give(result.regimen(PID))
    twin.update(result.observations(PID))
    rec = twin.recommend("AUC24", key=jax.random.key(1), n_draws=200)
    fc = twin.forecast(np.array([30.0, 48.0]), key=jax.random.key(0), n_draws=200)
    origin = result.origins[PID]
    levels = list(result.observations(PID)["SOURCE"])
    mr = tio.recommendation_request(rec, patient=PID, origin=origin)
    obs = tio.forecast_observations(fc, patient=PID, origin=origin, derived_from=levels)
    back = _read(_entries([mr, *obs]))
    (p,) = back.proposals
    assert (p.dose, p.interval, p.n_doses, p.probability) == (
        pytest.approx(float(np.asarray(rec.regimen.amount)[0])), rec.interval, rec.n_doses,
        rec.probability,
    )  # fmt: skip
    np.testing.assert_array_equal(sorted(f.median for f in back.forecasts), sorted(fc.median))
