"""Seeded synthetic FHIR R4 bundles for the twins.io tests, and checks of them.

The base of each patient (Patient, vital signs, a comprehensive metabolic panel) comes from
`carebundle` (seeded, US Core; PyPI `carebundle`, Apache-2.0). It has no drug
administrations or drug levels, so `synthetic_bundle` adds vancomycin infusions
(MedicationAdministration) and levels (Observation) built with the `fhir.resources` R4B
models, and returns beside the bundle the records they must give, computed here from the
generator's own draws (hours added up from the draws, not through datetimes).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

import carebundle
import numpy as np
import pandas as pd
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.medicationadministration import (
    MedicationAdministration,
    MedicationAdministrationDosage,
)
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.period import Period
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference

import twins.io as tio

UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
#: Doses start here (a zone east of UTC, so that local and UTC dates differ at night).
START = dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
REFERENCE = dt.datetime(2026, 1, 10, tzinfo=dt.UTC)
_NS = uuid.UUID("0f7c9a4e-6a51-4f1e-9c53-2b1d8f1f4b11")


def _q(value: float, code: str) -> Quantity:
    return Quantity(value=value, unit=code, system=UCUM, code=code)


def _entry(resource) -> dict:
    data = json.loads(resource.model_dump_json(exclude_none=True))
    return {
        "fullUrl": f"urn:uuid:{data['id']}",
        "resource": data,
        "request": {"method": "POST", "url": data["resourceType"]},
    }


def synthetic_bundle(seed: int, n_patients: int = 3) -> tuple[dict, pd.DataFrame]:
    """A transaction Bundle of `n_patients` carebundle patients with vancomycin doses and
    levels, and the records expected from it (`ID, TIME, EVID, AMT, RATE, DV`)."""
    rng = np.random.default_rng(seed)
    entries: list[dict] = []
    expected = []
    for bundle in carebundle.generate_cohort(count=n_patients, seed=seed, panels=("cmp",)):
        base = json.loads(carebundle.to_json(bundle))["entry"]
        entries += base
        pid = next(e["fullUrl"] for e in base if e["resource"]["resourceType"] == "Patient")
        subject = Reference(reference=pid)
        n_doses = int(rng.integers(2, 5))
        amount = float(rng.choice([750.0, 1000.0, 1250.0]))
        duration = float(rng.choice([1.0, 1.5, 2.0]))
        interval = 12.0
        for k in range(n_doses):
            t = k * interval
            ma = MedicationAdministration(
                id=str(uuid.uuid5(_NS, f"{seed}|{pid}|dose|{k}")),
                status="completed",
                medicationCodeableConcept=CodeableConcept(
                    coding=[Coding(system=RXNORM, code="11124", display="vancomycin")]
                ),
                subject=subject,
                effectivePeriod=Period(
                    start=(START + dt.timedelta(hours=t)).isoformat(),
                    end=(START + dt.timedelta(hours=t + duration)).isoformat(),
                ),
                dosage=MedicationAdministrationDosage(dose=_q(amount / 1000.0, "g")),
            )
            entries.append(_entry(ma))
            expected.append((pid, t, 1, amount, amount / duration, 0.0))
        t_level = (n_doses - 1) * interval - 0.5  # a trough before the last dose
        level = round(float(rng.uniform(5.0, 25.0)), 1)
        ob = Observation(
            id=str(uuid.uuid5(_NS, f"{seed}|{pid}|level")),
            status="final",
            code=CodeableConcept(coding=[Coding(system="http://loinc.org", code="4092-3")]),
            subject=subject,
            effectiveDateTime=(START + dt.timedelta(hours=t_level)).astimezone(dt.UTC).isoformat(),
            valueQuantity=_q(level, "ug/mL"),
        )
        entries.append(_entry(ob))
        expected.append((pid, t_level, 0, 0.0, 0.0, level))
    frame = pd.DataFrame(expected, columns=["ID", "TIME", "EVID", "AMT", "RATE", "DV"])
    frame = frame.sort_values(["ID", "TIME", "EVID"], kind="stable")
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}, frame


def _sorted(records: pd.DataFrame) -> pd.DataFrame:
    cols = ["ID", "TIME", "EVID", "AMT", "RATE", "DV"]
    return records[cols].sort_values(["ID", "TIME", "EVID"], kind="stable").reset_index(drop=True)


def test_synthetic_bundles_are_seeded():
    a, _ = synthetic_bundle(7, n_patients=2)
    b, _ = synthetic_bundle(7, n_patients=2)
    c, _ = synthetic_bundle(8, n_patients=2)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert json.dumps(a, sort_keys=True) != json.dumps(c, sort_keys=True)


def test_synthetic_cohort_reads_into_the_expected_records():
    bundle, expected = synthetic_bundle(3, n_patients=3)
    result = tio.read_fhir(bundle, reference_time=REFERENCE)
    assert len(result.patients) == 3
    got = _sorted(result.records)
    want = expected.reset_index(drop=True)
    assert list(got["ID"]) == list(want["ID"])
    cols = ["TIME", "AMT", "RATE", "DV"]
    np.testing.assert_allclose(got[cols], want[cols], rtol=1e-12)
    assert list(got["EVID"]) == list(want["EVID"])
    assert set(result.origins.values()) == {START}  # each patient's first dose
    # carebundle's own labs and vitals are read; what is not read is listed, nothing lost
    for p in result.patients.values():
        assert {"serum_creatinine", "albumin", "alt", "ast"} <= set(p.labs)
    n_entries = len(bundle["entry"])
    listed = len(result.report.issues)
    assert sum(result.report.read.values()) + listed == n_entries
    assert not result.report.errors


def test_bulk_export_of_the_cohort_reads_the_same(tmp_path):
    """carebundle's own bulk export of the cohort, with the added resources (subjects as
    `Patient/<uuid>`), reads as the transaction bundle does."""
    bundle, _ = synthetic_bundle(5, n_patients=2)
    cohort = carebundle.generate_cohort(count=2, seed=5, panels=("cmp",))
    files = dict(carebundle.to_ndjson(cohort))
    for e in bundle["entry"]:
        r = e["resource"]
        if "id" in r:  # added here (carebundle's transaction resources have none)
            r = {
                **r,
                "subject": {
                    "reference": r["subject"]["reference"].replace("urn:uuid:", "Patient/")
                },
            }
            files[r["resourceType"]] = files.get(r["resourceType"], "") + json.dumps(r) + "\n"
    for rtype, lines in files.items():
        (tmp_path / f"{rtype}.ndjson").write_text(lines, encoding="utf-8")
    from_bundle = tio.read_fhir(bundle, reference_time=REFERENCE)
    from_bulk = tio.read_fhir(tmp_path, reference_time=REFERENCE)
    # bulk ids are the uuids of the bundle's fullUrls
    renamed = from_bundle.records.assign(ID=from_bundle.records["ID"].str.removeprefix("urn:uuid:"))
    pd.testing.assert_frame_equal(_sorted(renamed), _sorted(from_bulk.records))
    for pid, p in from_bulk.patients.items():
        q = from_bundle.patients[f"urn:uuid:{pid}"]
        assert (p.age, p.sex, p.weight, p.height, dict(p.labs)) == (
            q.age,
            q.sex,
            q.weight,
            q.height,
            dict(q.labs),
        )
