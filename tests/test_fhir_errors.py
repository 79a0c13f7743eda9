"""Every malformed or unusable resource is a FhirError naming its type, id and field; with
lenient=True it is listed in the report instead; a lab the model needs is named."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path

import pytest

import twins
import twins.io as tio

DATA = Path(__file__).parent / "data" / "fhir"
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
REF = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
BASE = json.loads((DATA / "units.json").read_text())


def _bundle(change=None, extra=()):
    b = copy.deepcopy(BASE)
    by_id = {e["resource"]["id"]: e["resource"] for e in b["entry"]}
    if change is not None:
        change(by_id)
    b["entry"] += [{"fullUrl": f"urn:uuid:x-{i}", "resource": r} for i, r in enumerate(extra)]
    return b


def _set(rid, path, value):
    def change(by_id):
        node = by_id[rid]
        *head, last = path.split(".")
        for key in head:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return change


_DELETE = object()

CASES = [
    # (id, resource type, change, field in the message, words in the message)
    ("naive time", "MedicationAdministration", "dose-1",
     _set("dose-1", "effectivePeriod.start", "2026-03-08T08:00:00"), "effectivePeriod.start",
     "time zone"),
    ("date only dose", "MedicationAdministration", "dose-1",
     _set("dose-1", "effectivePeriod.start", "2026-03-08"), "effectivePeriod.start",
     "time of day"),
    ("unknown unit", "Observation", "wt-lb", _set("wt-lb", "valueQuantity.code", "stone"),
     "valueQuantity", "not a UCUM unit"),
    ("not UCUM", "Observation", "wt-lb",
     _set("wt-lb", "valueQuantity.system", "http://example.org/units"), "valueQuantity.system",
     "UCUM"),
    ("no unit code", "Observation", "ht-in", _set("ht-in", "valueQuantity.code", _DELETE),
     "valueQuantity.code", "display only"),
    ("wrong dimension", "Observation", "scr-umol", _set("scr-umol", "valueQuantity.code", "kg"),
     "valueQuantity", "cannot be converted"),
    ("unknown status", "Observation", "alb-gl", _set("alb-gl", "status", "bogus"), "status",
     "cannot be used"),
    ("extra element", "Observation", "alb-gl", _set("alb-gl", "colour", "blue"), "colour",
     "does not define"),
    ("dangling subject", "Observation", "trough-1",
     _set("trough-1", "subject", {"reference": "Patient/nobody"}), "subject.reference",
     "Patient"),
    ("no weight", "Patient", "van-units", _set("wt-lb", "status", "entered-in-error"),
     "weight", "29463-7"),
    ("gender other", "Patient", "van-units", _set("van-units", "gender", "other"), "gender",
     "female"),
    ("partial birth date", "Patient", "van-units", _set("van-units", "birthDate", "1958"),
     "birthDate", "full date"),
    ("no dose", "MedicationAdministration", "dose-2", _set("dose-2", "dosage.dose", _DELETE),
     "dosage.dose", "amount"),
    ("rate and period disagree", "MedicationAdministration", "dose-1",
     _set("dose-1", "dosage.rateQuantity",
          {"value": 100, "unit": "mg/h", "system": "http://unitsofmeasure.org", "code": "mg/h"}),
     "dosage.rate[x]", "agree"),
    ("volume rate", "MedicationAdministration", "dose-2",
     _set("dose-2", "dosage.rateQuantity",
          {"value": 250, "unit": "mL/h", "system": "http://unitsofmeasure.org", "code": "mL/h"}),
     "dosage.rateQuantity", "cannot be converted"),
    ("lab comparator", "Observation", "scr-umol", _set("scr-umol", "valueQuantity.comparator", ">"),
     "valueQuantity.comparator", "not read"),
    ("in progress", "MedicationAdministration", "dose-3", _set("dose-3", "status", "in-progress"),
     "status", "cannot be used"),
    ("unknown route", "MedicationAdministration", "dose-3",
     _set("dose-3", "dosage.route",
          {"coding": [{"system": "http://snomed.info/sct", "code": "7842"}]}),
     "dosage.route", "route"),
    ("negative level", "Observation", "peak-1", _set("peak-1", "valueQuantity.value", -3),
     "valueQuantity.value", ">= 0"),
    ("no time", "Observation", "peak-1", _set("peak-1", "effectiveDateTime", _DELETE),
     "effective[x]", "measured"),
    ("duplicate conflict", "Observation", "alb-gl",
     lambda by_id: None, "meta.versionId", "same id and version"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_error_names_type_id_and_field(case):
    name, rtype, rid, change, field, words = case
    extra = ()
    if name == "duplicate conflict":
        other = next(
            copy.deepcopy(e["resource"]) for e in BASE["entry"] if e["resource"]["id"] == rid
        )
        other["valueQuantity"]["value"] = 30
        extra = (other,)
    with pytest.raises(tio.FhirError) as info:
        tio.read_fhir(_bundle(change, extra), reference_time=REF)
    error = info.value
    assert isinstance(error, ValueError)
    assert (error.resource_type, error.resource_id, error.field) == (rtype, rid, field)
    assert str(error).startswith(f"{rtype}/{rid} {field}: ")
    assert words in str(error)


REGIMEN = {
    "resourceType": "MedicationRequest", "id": "rx-1", "status": "active", "intent": "order",
    "medicationCodeableConcept": {"coding": [{"system": RX, "code": "11124"}]},
    "subject": {"reference": "Patient/van-units"},
    "dosageInstruction": [{
        "timing": {"repeat": {"boundsPeriod": {"start": "2026-03-08T08:00:00+01:00"}, "count": 3,
                              "period": 12, "periodUnit": "h", "timeOfDay": ["08:00:00"]}},
        "doseAndRate": [
            {"doseQuantity": {"value": 1000, "unit": "mg", "system": UCUM, "code": "mg"}}
        ],
    }],
}  # fmt: skip
CONSENT = {
    "resourceType": "Consent", "id": "c-1", "status": "active",
    "scope": {"coding": [{"system": SCOPE, "code": "research"}]},
    "category": [{"coding": [{"system": "http://loinc.org", "code": "57016-8"}]}],
    "patient": {"reference": "Patient/van-units"}, "policyRule": {"text": "x"},
    "provision": {"type": "deny",
                  "purpose": [{"system": "http://example.org", "code": "MARKETING"}]},
}  # fmt: skip
GENOTYPE = {
    "resourceType": "Observation", "id": "g-1", "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "84413-4"}]},
    "subject": {"reference": "Patient/van-units"}, "effectiveDateTime": "2025-01-01",
    "valueCodeableConcept": {"text": "*1/*3"},
}  # fmt: skip


@pytest.mark.parametrize(
    "resource, field, words",
    [
        (REGIMEN, "dosageInstruction[0].timing.repeat.timeOfDay", "timing.event"),
        (CONSENT, "provision.purpose[0]", "purpose"),
        (GENOTYPE, "component[48018-6]", "gene studied"),
        ({"resourceType": "Widget", "id": "w-1"}, "resourceType", "R4B"),
    ],
    ids=["timing", "consent purpose", "genotype gene", "resource type"],
)
def test_other_resources_name_type_id_and_field(resource, field, words):
    rtype = resource["resourceType"]
    with pytest.raises(tio.FhirError) as info:
        tio.read_fhir(_bundle(None, (resource,)), reference_time=REF)
    assert (info.value.resource_type, info.value.resource_id, info.value.field) == (
        rtype, resource["id"], field,
    )  # fmt: skip
    assert words in str(info.value)


def test_lenient_lists_every_error_and_reads_the_rest():
    def change(by_id):
        by_id["dose-2"]["dosage"]["dose"]["code"] = "stone"
        by_id["alb-gl"]["status"] = "bogus"

    result = tio.read_fhir(_bundle(change, (CONSENT, GENOTYPE)), reference_time=REF, lenient=True)
    errors = {(i.resource_type, i.resource_id, i.field) for i in result.report.errors}
    assert errors == {
        ("MedicationAdministration", "dose-2", "dosage.dose"),
        ("Observation", "alb-gl", "status"),
        ("Consent", "c-1", "provision.purpose[0]"),
        ("Observation", "g-1", "component[48018-6]"),
    }
    assert "albumin" not in result.patients["van-units"].labs
    assert "MedicationAdministration/dose-2" not in set(result.records["SOURCE"])
    assert len(result.records) == 4
    assert result.report.to_dict()["not_read"]["error"] == 4


def test_bad_bundle_wrapper_and_files(tmp_path):
    with pytest.raises(tio.FhirError, match=r"Bundle/bundle resourceType: expected a Bundle"):
        tio.read_fhir({"resourceType": "Patient", "id": "x"}, reference_time=REF)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(tio.FhirError, match=r"Bundle/bad.json \(file\): not JSON"):
        tio.read_fhir(bad, reference_time=REF)
    (tmp_path / "bulk").mkdir()
    (tmp_path / "bulk" / "Patient.ndjson").write_text(
        '{"resourceType": "Patient", "id": "a"}\n{oops\n'
    )
    with pytest.raises(tio.FhirError, match=r"NDJSON/Patient.ndjson:2 \(line\): not JSON"):
        tio.read_fhir(tmp_path / "bulk", reference_time=REF)
    with pytest.raises(tio.FhirError, match=r"NDJSON/empty \(folder\)"):
        (tmp_path / "empty").mkdir()
        tio.read_fhir(tmp_path / "empty", reference_time=REF)


def test_a_lab_the_model_needs_is_named():
    """Without a serum creatinine the Goti model's CrCL cannot be computed: the error names
    the patient and SCR, as for patients from DataFrames."""
    result = tio.read_fhir(_bundle(_set("scr-umol", "status", "cancelled")), reference_time=REF)
    patient = result.patients["van-units"]
    with pytest.raises(twins.MissingCovariateError, match=r"'van-units'.*serum_creatinine"):
        patient.covariates(required=["CRCL"])
    with pytest.raises(ValueError, match=r"van-units.*SCR"):
        twins.DigitalTwin(twins.drugs.get("vancomycin_goti2018"), patient)


def test_two_values_of_one_lab_at_one_time_are_refused():
    other = copy.deepcopy(
        next(e["resource"] for e in BASE["entry"] if e["resource"]["id"] == "alb-gl")
    )
    other["id"] = "alb-gl-2"
    other["valueQuantity"]["value"] = 28
    with pytest.raises(tio.FhirError) as info:
        tio.read_fhir(_bundle(None, (other,)), reference_time=REF)
    assert (info.value.resource_type, info.value.resource_id, info.value.field) == (
        "Observation", "alb-gl-2", "value[x]",
    )  # fmt: skip
    assert "different albumin at the same time" in str(info.value)
    other["valueQuantity"]["value"] = 35  # the same value twice is no conflict
    result = tio.read_fhir(_bundle(None, (other,)), reference_time=REF)
    assert result.patients["van-units"].labs["albumin"] == 3.5


def _paths(node, prefix=()):
    """Every (path, value) under a JSON node."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*prefix, k), v
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield (*prefix, i), v
            yield from _paths(v, (*prefix, i))


def test_random_damage_is_a_fhir_error_or_read_never_another_error():
    """A seeded fuzzer: 300 single edits (an element deleted, or replaced by a wrong type
    or a wrong value) anywhere in the units bundle's resources. Strict reading raises
    only FhirError (naming a type, id and field) or reads; lenient reading never raises."""
    import random

    rng = random.Random(16)
    paths = [p for p in _paths(BASE) if p[0][0] == "entry" and len(p[0]) > 3]
    replacements = [None, "", "x", -1, 0, 1e308, [], {}, True, "2026-13-45T25:00:00Z", "urn:x"]
    for _ in range(300):
        path, _value = rng.choice(paths)
        b = copy.deepcopy(BASE)
        node = b
        for key in path[:-1]:
            node = node[key]
        if rng.random() < 0.3 and isinstance(node, dict):
            del node[path[-1]]
        else:
            node[path[-1]] = rng.choice(replacements)
        try:
            tio.read_fhir(b, reference_time=REF)
        except tio.FhirError as error:
            assert error.resource_type and error.resource_id and error.field
            assert str(error).startswith(f"{error.resource_type}/{error.resource_id} ")
        tio.read_fhir(b, reference_time=REF, lenient=True)
