"""twins.io.read_fhir on the hand-written bundles of tests/data/fhir: records against
hand-written tables, units against hand-computed values, times against datetime arithmetic,
statuses, duplicates, several patients, genotypes, consents, NDJSON."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import calibration
import twins.io as tio
from twins.governance import Decision, Purpose

DATA = Path(__file__).parent / "data" / "fhir"
CET = dt.timezone(dt.timedelta(hours=1))
REF_UNITS = dt.datetime(2026, 3, 10, 12, 0, tzinfo=CET)

# Stated constants for hand computations.
KG_PER_LB = 0.45359237  # international avoirdupois pound (exact, 1959)
CM_PER_IN = 2.54  # international inch (exact, 1959)
CREATININE_G_PER_MOL = 113.12  # C4H7N3O, IUPAC 2021 atomic weights


def test_units_bundle_gives_the_hand_written_records():
    result = tio.read_fhir(DATA / "units.json", reference_time=REF_UNITS)
    expected = pd.DataFrame(
        # ID, TIME, EVID, AMT, RATE, DV, MDV, SOURCE
        [
            ("van-units", 0.0, 1, 1000.0, 1000.0, 0.0, 1, "MedicationAdministration/dose-1"),
            ("van-units", 12.0, 1, 1000.0, 500.0, 0.0, 1, "MedicationAdministration/dose-2"),
            ("van-units", 23.5, 0, 0.0, 0.0, 8.9, 0, "Observation/trough-1"),
            ("van-units", 24.0, 1, 1000.0, 1000.0 / 1.5, 0.0, 1, "MedicationAdministration/dose-3"),
            ("van-units", 26.0, 0, 0.0, 0.0, 27.5, 0, "Observation/peak-1"),
        ],
        columns=["ID", "TIME", "EVID", "AMT", "RATE", "DV", "MDV", "SOURCE"],
    )
    got = result.records
    assert list(got.columns) == list(tio.RECORD_COLUMNS)
    for col in ("ID", "EVID", "MDV", "SOURCE"):
        assert list(got[col]) == list(expected[col]), col
    for col in ("TIME", "AMT", "RATE", "DV"):
        np.testing.assert_allclose(got[col], expected[col], rtol=1e-12, err_msg=col)
    assert (got["CMT"] == 1).all() and (got["II"] == 0).all() and (got["ADDL"] == 0).all()
    assert result.origins == {"van-units": dt.datetime(2026, 3, 8, 8, 0, tzinfo=CET)}


def test_units_are_converted_as_computed_by_hand():
    p = tio.read_fhir(DATA / "units.json", reference_time=REF_UNITS).patients["van-units"]
    assert p.weight == pytest.approx(181 * KG_PER_LB, rel=1e-12)
    assert p.height == pytest.approx(70 * CM_PER_IN, rel=1e-12)
    # 115 umol/L x 113.12 g/mol = 13.0088 mg/L = 1.30088 mg/dL
    assert p.labs["serum_creatinine"] == pytest.approx(
        115e-6 * CREATININE_G_PER_MOL * 100, rel=1e-12
    )
    assert p.labs["albumin"] == pytest.approx(3.5, rel=1e-12)  # 35 g/L
    assert p.labs["alt"] == pytest.approx(40.0)  # [IU]/L read as U/L for enzymes
    assert p.labs["cystatin_c"] == pytest.approx(1.1, rel=1e-12)  # 0.11 mg/dL
    # 1 g -> 1000 mg; 8.9 ug/mL -> 8.9 mg/L; 2750 ug/dL -> 27.5 mg/L (see the records test)


def test_age_from_birth_date_at_the_reference_time():
    p = tio.read_fhir(DATA / "units.json", reference_time=REF_UNITS).patients["van-units"]
    at = REF_UNITS.date()  # born 1958-03-14
    last = dt.date(2025, 3, 14)
    assert p.age == pytest.approx(67 + (at - last).days / (dt.date(2026, 3, 14) - last).days)
    # a day before and on the 68th birthday
    on = tio.read_fhir(DATA / "units.json", reference_time=dt.datetime(2026, 3, 14, 1, tzinfo=CET))
    assert on.patients["van-units"].age == 68.0


def test_time_zones_are_respected():
    ref = dt.datetime(2026, 3, 31, tzinfo=dt.UTC)
    result = tio.read_fhir(DATA / "timezones.json", reference_time=ref)
    t0 = dt.datetime.fromisoformat("2026-03-28T20:00:00+01:00")
    expected = [
        dt.datetime.fromisoformat("2026-03-28T20:00:00+01:00"),
        dt.datetime.fromisoformat("2026-03-29T08:00:00+02:00"),  # after the change to CEST
        dt.datetime.fromisoformat("2026-03-29T13:00:00-05:00"),
        dt.datetime.fromisoformat("2026-03-30T00:45:00+05:45"),
    ]
    hours = [(t - t0).total_seconds() / 3600.0 for t in expected]
    np.testing.assert_allclose(result.records["TIME"], hours, rtol=0, atol=1e-12)
    assert hours == [0.0, 11.0, 23.0, 24.0]
    assert result.origins["van-tz"] == t0


def test_origin_can_be_given():
    ref = dt.datetime(2026, 3, 31, tzinfo=dt.UTC)
    origin = dt.datetime(2026, 3, 28, 0, 0, tzinfo=dt.UTC)
    result = tio.read_fhir(DATA / "timezones.json", reference_time=ref, origin=origin)
    assert result.records["TIME"].iloc[0] == pytest.approx(19.0)  # 20:00+01:00 = 19:00Z
    assert result.origins["van-tz"] == origin
    by_patient = tio.read_fhir(
        DATA / "timezones.json", reference_time=ref, origin={"van-tz": origin}
    )
    pd.testing.assert_frame_equal(by_patient.records, result.records)
    with pytest.raises(ValueError, match="origin"):
        tio.read_fhir(DATA / "timezones.json", reference_time=ref, origin=dt.datetime(2026, 3, 28))


def test_naive_reference_time_is_refused():
    with pytest.raises(ValueError, match=r"reference_time.*time zone"):
        tio.read_fhir(DATA / "units.json", reference_time=dt.datetime(2026, 3, 10))


def test_duplicates_and_versions():
    ref = dt.datetime(2026, 1, 6, tzinfo=dt.UTC)
    result = tio.read_fhir(DATA / "duplicates.json", reference_time=ref)
    assert len(result.records) == 2  # one dose, one level: the copies read once
    assert result.patients["van-dup"].labs["serum_creatinine"] == 1.1  # version 2 (corrected)
    kinds = {(i.kind, i.resource_type, i.resource_id) for i in result.report.issues}
    assert kinds == {
        ("duplicate", "Observation", "lvl"),
        ("duplicate", "MedicationAdministration", "d1"),
        ("superseded", "Observation", "scr"),
    }


def test_statuses_that_must_not_be_read_are_listed():
    ref = dt.datetime(2026, 2, 5, tzinfo=dt.UTC)
    result = tio.read_fhir(DATA / "statuses.json", reference_time=ref)
    p = result.patients["van-st"]
    assert p.weight == 58.0  # not the entered-in-error 5.8
    assert p.labs["serum_creatinine"] == 1.0  # not the preliminary 2.0
    rec = result.records
    assert list(rec["SOURCE"]) == [
        "MedicationAdministration/d1",
        "Observation/lvl",
        "MedicationAdministration/d2",
        "Observation/lvl-blq",
    ]
    blq = rec[rec["SOURCE"] == "Observation/lvl-blq"].iloc[0]
    assert (blq["CENS"], blq["DV"]) == (1, 2.0)  # "< 2 mg/L": censored at the limit
    ignored = {i.resource_id: (i.kind, i.field) for i in result.report.issues}
    assert ignored == {
        "wt-err": ("ignored", "status"),
        "scr-prelim": ("ignored", "status"),
        "lvl-cancel": ("ignored", "status"),
        "lvl-reg": ("ignored", "status"),
        "lvl-future": ("ignored", "effective[x]"),
        "d-notdone": ("ignored", "status"),
        "d-err": ("ignored", "status"),
        "rx-draft": ("ignored", "status"),
        "ms-intended": ("ignored", "status"),
        "c-inactive": ("ignored", "status"),
        "enc": ("ignored", "resourceType"),
        "rx-superseded": ("superseded", "(resource)"),
    }
    assert not result.consents
    # every resource of the bundle is read or listed
    assert sum(result.report.read.values()) + len(result.report.issues) == 20


def test_preliminary_results_by_policy():
    ref = dt.datetime(2026, 2, 5, tzinfo=dt.UTC)
    result = tio.read_fhir(DATA / "statuses.json", reference_time=ref, preliminary=True)
    assert result.patients["van-st"].labs["serum_creatinine"] == 2.0  # the later, preliminary


def test_several_patients_genotypes_regimens_and_consents():
    ref = dt.datetime(2026, 4, 5, tzinfo=dt.UTC)
    result = tio.read_fhir(DATA / "several_patients.json", reference_time=ref, substance="warfarin")
    assert list(result.patients) == ["w-1", "w-2", "w-3"]
    assert dict(result.patients["w-1"].genotypes) == {"CYP2C9": "*1/*3", "VKORC1": "-1639 GA"}
    assert dict(result.patients["w-3"].genotypes) == {"CYP2C9": "*2/*3", "VKORC1": "-1639 GG"}
    assert result.patients["w-1"].phenotype("CYP2C9").activity_score == 1.0
    # 5 mg daily from 2026-04-01 18:00+02:00 (16:00Z): 4 doses by 2026-04-05 00:00Z
    # (16:00Z on 1, 2, 3 and 4 April), as II/ADDL; the INR of 04-01 09:00+02:00 is TIME 0
    rec = result.patient_records("w-2")
    dose = rec[rec["EVID"] == 1].iloc[0]
    assert (dose["TIME"], dose["AMT"], dose["II"], dose["ADDL"], dose["RATE"]) == (
        9.0,
        5.0,
        24.0,
        3,
        0.0,
    )
    assert list(rec.loc[rec["EVID"] == 0, "DV"]) == [1.1, 1.5]
    assert list(rec.loc[rec["EVID"] == 0, "TIME"]) == [0.0, 72.0]
    regimen = result.regimen("w-2")
    assert np.asarray(regimen.time)[np.asarray(regimen.mask)].tolist() == [9.0, 33.0, 57.0, 81.0]
    future = [i for i in result.report.issues if i.resource_id == "w-2-rx"]
    assert future[0].detail.startswith("6 dose(s) due after the reference time")
    # consents: w-1 permits research; w-2 permits all but research, and federated training
    # only outside March-May 2026; w-3 permits treatment only (research: the default, deny)
    reg = result.consent_registry()
    at = dt.datetime(2026, 4, 5, tzinfo=dt.UTC)
    assert reg.allows("w-1", Purpose.RESEARCH, at)
    assert not reg.allows("w-2", Purpose.RESEARCH, at)
    assert reg.allows("w-2", Purpose.TREATMENT, at)
    assert not reg.allows("w-2", Purpose.FEDERATED_TRAINING, at)
    assert reg.allows("w-2", Purpose.FEDERATED_TRAINING, dt.datetime(2026, 7, 1, tzinfo=dt.UTC))
    assert not reg.allows("w-3", Purpose.RESEARCH, at)
    assert {c.decision for c in result.consents if c.patient == "w-2"} == {
        Decision.PERMIT,
        Decision.DENY,
    }
    allowed, refused = reg.split(list(result.patients), Purpose.RESEARCH, at)
    assert allowed == ["w-1"] and [r.patient for r in refused] == ["w-2", "w-3"]


def test_records_feed_calibration_dataset():
    ref = dt.datetime(2026, 4, 5, tzinfo=dt.UTC)
    result = tio.read_fhir(DATA / "several_patients.json", reference_time=ref, substance="warfarin")
    data = calibration.Dataset.from_records(result.records.drop(columns=["SOURCE"]))
    assert list(data.ids) == ["w-1", "w-2", "w-3"]
    np.testing.assert_array_equal(data.time[:, :2], [[0.0, 72.0]] * 3)
    np.testing.assert_array_equal(data.dv[1, :2], [1.1, 1.5])


def test_bulk_folder_reads_as_the_bundle():
    a = tio.read_fhir(DATA / "units.json", reference_time=REF_UNITS)
    b = tio.read_fhir(DATA / "bulk", reference_time=REF_UNITS)
    pd.testing.assert_frame_equal(a.records, b.records)
    assert a.patients == b.patients
    one = tio.read_fhir(DATA / "bulk" / "Patient.ndjson", reference_time=REF_UNITS, lenient=True)
    assert one.records.empty and one.report.errors  # no weight: listed, not raised


def test_docs_list_every_code_read():
    text = (Path(__file__).parents[1] / "docs" / "fhir.md").read_text()
    for code in tio.LOINC:
        assert f"`{code}`" in text, code
    for name, substance in tio.SUBSTANCES.items():
        assert f"`{name}`" in text and f"`{substance.rxnorm[0]}`" in text


def _genotype(gid, value, gene=None):
    r = {
        "resourceType": "Observation", "id": gid, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "84413-4"}]},
        "subject": {"reference": "Patient/van-units"}, "effectiveDateTime": "2025-06-01",
        **value,
    }  # fmt: skip
    if gene is not None:
        r["component"] = [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "48018-6"}]},
                "valueCodeableConcept": {
                    "coding": [{"system": "http://www.genenames.org", "code": gene}]
                },
            }
        ]
    return r


def test_genotypes_as_codes_strings_and_gene_prefixes():
    import json

    bundle = json.loads((DATA / "units.json").read_text())

    def coded(**coding):
        return {
            "valueCodeableConcept": {"coding": [{"system": "https://www.pharmvar.org", **coding}]}
        }

    extra = [
        _genotype("g-2c19", coded(code="*2/*17"), "HGNC:2621"),  # gene from the component
        _genotype("g-2d6", {"valueString": "CYP2D6 *1/*4"}),  # gene from the prefix
        _genotype("g-2c9", coded(display="CYP2C9*1/*2")),
    ]
    bundle["entry"] += [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in extra]
    p = tio.read_fhir(bundle, reference_time=REF_UNITS).patients["van-units"]
    assert dict(p.genotypes) == {"CYP2C19": "*2/*17", "CYP2C9": "*1/*2", "CYP2D6": "*1/*4"}
    assert p.phenotype("CYP2D6").phenotype.startswith("Intermediate")
