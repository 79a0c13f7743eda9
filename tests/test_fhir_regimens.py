"""Regimens from MedicationRequest and MedicationStatement (timing.repeat -> II/ADDL,
timing.event -> explicit doses), medications by reference, against hand-written records."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

import twins.io as tio

DATA = Path(__file__).parent / "data" / "fhir"
CET = dt.timezone(dt.timedelta(hours=1))
REF = dt.datetime(2026, 3, 10, 12, 0, tzinfo=CET)
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
VANCO = {"coding": [{"system": RX, "code": "11124"}]}


def _without_administrations(*extra):
    b = json.loads((DATA / "units.json").read_text())
    b["entry"] = [
        e for e in b["entry"] if e["resource"]["resourceType"] != "MedicationAdministration"
    ]
    b["entry"] += [{"fullUrl": f"urn:uuid:r-{i}", "resource": r} for i, r in enumerate(extra)]
    return b


def _dosage(timing, mg=1000, rate=None):
    dar = {"doseQuantity": {"value": mg, "unit": "mg", "system": UCUM, "code": "mg"}}
    if rate is not None:
        dar["rateQuantity"] = {"value": rate, "unit": "mg/h", "system": UCUM, "code": "mg/h"}
    return {"timing": timing, "doseAndRate": [dar]}


def _request(rid, timing, **kw):
    return {
        "resourceType": "MedicationRequest", "id": rid, "status": "active", "intent": "order",
        "medicationCodeableConcept": VANCO, "subject": {"reference": "Patient/van-units"},
        "dosageInstruction": [_dosage(timing, **kw)],
    }  # fmt: skip


def _doses(result):
    rec = result.records
    return rec[rec["EVID"] == 1][["TIME", "AMT", "RATE", "II", "ADDL"]].to_numpy().tolist()


def test_repeat_with_bounds_frequency_and_duration():
    # twice a day from 2026-03-08 08:00+01:00 to 2026-03-10 08:00+01:00 (end exclusive),
    # each over 1 h: 4 doses at 0, 12, 24, 36 h; the trough (23.5 h) is TIME 23.5 again
    timing = {"repeat": {"boundsPeriod": {"start": "2026-03-08T08:00:00+01:00",
                                          "end": "2026-03-10T08:00:00+01:00"},
                         "frequency": 2, "period": 1, "periodUnit": "d",
                         "duration": 60, "durationUnit": "min"}}  # fmt: skip
    result = tio.read_fhir(_without_administrations(_request("rx", timing)), reference_time=REF)
    assert _doses(result) == [[0.0, 1000.0, 1000.0, 12.0, 3]]
    regimen = result.regimen("van-units")
    mask = np.asarray(regimen.mask)
    assert np.asarray(regimen.time)[mask].tolist() == [0.0, 12.0, 24.0, 36.0]
    levels = result.observations("van-units")
    assert levels["TIME"].tolist() == [23.5, 26.0]


def test_count_cut_at_the_reference_time():
    timing = {"repeat": {"boundsPeriod": {"start": "2026-03-08T08:00:00+01:00"}, "count": 10,
                         "period": 8, "periodUnit": "h"}}  # fmt: skip
    result = tio.read_fhir(
        _without_administrations(_request("rx", timing, mg=500)), reference_time=REF
    )
    # REF is 52 h after the start: doses at 0, 8, ..., 48 (7 doses) are due
    assert _doses(result) == [[0.0, 500.0, 0.0, 8.0, 6]]
    (issue,) = [i for i in result.report.issues if i.resource_id == "rx"]
    assert issue.kind == "ignored" and issue.detail.startswith("3 dose(s) due after")


def test_statement_with_explicit_events_and_a_rate():
    statement = {
        "resourceType": "MedicationStatement", "id": "ms", "status": "completed",
        "medicationCodeableConcept": VANCO, "subject": {"reference": "Patient/van-units"},
        "dosage": [_dosage({"event": ["2026-03-08T08:00:00+01:00", "2026-03-08T19:30:00Z",
                                      "2026-03-11T08:00:00+01:00"]}, rate=500)],
    }  # fmt: skip
    result = tio.read_fhir(_without_administrations(statement), reference_time=REF)
    # the third event is after the reference time: listed, not read
    assert _doses(result) == [[0.0, 1000.0, 500.0, 0.0, 0], [12.5, 1000.0, 500.0, 0.0, 0]]
    assert any(i.resource_id == "ms" and "1 dose(s)" in i.detail for i in result.report.issues)


def test_medication_by_reference():
    med = {"resourceType": "Medication", "id": "med-v", "code": VANCO}
    timing = {"event": ["2026-03-08T08:00:00+01:00"]}
    rx = _request("rx", timing)
    del rx["medicationCodeableConcept"]
    rx["medicationReference"] = {"reference": "Medication/med-v"}
    other = copy.deepcopy(rx)
    other["id"] = "rx-other"
    other["medicationReference"] = {"reference": "Medication/med-o"}
    med_o = {"resourceType": "Medication", "id": "med-o",
             "code": {"coding": [{"system": RX, "code": "6809"}]}}  # fmt: skip
    result = tio.read_fhir(_without_administrations(med, med_o, rx, other), reference_time=REF)
    assert _doses(result) == [[0.0, 1000.0, 0.0, 0.0, 0]]
    assert [(i.resource_id, i.field) for i in result.report.issues] == [
        ("rx-other", "medication[x]")
    ]


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda t: t["repeat"].pop("period"), "dosageInstruction[0].timing.repeat.period"),
        (lambda t: t["repeat"].pop("count"), "dosageInstruction[0].timing.repeat.count"),
        (
            lambda t: t["repeat"].pop("boundsPeriod"),
            "dosageInstruction[0].timing.repeat.boundsPeriod.start",
        ),
        (
            lambda t: t["repeat"].update(periodUnit="mo"),
            "dosageInstruction[0].timing.repeat.period",
        ),
        (
            lambda t: t["repeat"].update(dayOfWeek=["mon"]),
            "dosageInstruction[0].timing.repeat.dayOfWeek",
        ),
    ],
    ids=["no period", "no count", "no start", "months", "day of week"],
)
def test_unsupported_timings_are_named(change, field):
    timing = {"repeat": {"boundsPeriod": {"start": "2026-03-08T08:00:00+01:00"}, "count": 3,
                         "period": 12, "periodUnit": "h"}}  # fmt: skip
    change(timing)
    with pytest.raises(tio.FhirError) as info:
        tio.read_fhir(_without_administrations(_request("rx", timing)), reference_time=REF)
    assert (info.value.resource_type, info.value.resource_id, info.value.field) == (
        "MedicationRequest", "rx", field,
    )  # fmt: skip
