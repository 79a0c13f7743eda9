"""Write `fhir_vancomycin.json`, the synthetic FHIR R4 bundle of `examples/fhir_twin.py`.

Two invented patients (names, identifiers and birth dates are made up; the domain is
`hospital.example`, reserved for examples by RFC 2606) on vancomycin, built with the
`fhir.resources` R4B models so that every resource is valid:

- `syn-van-0001`: a man of 67, 82 kg, 178 cm, serum creatinine 115 umol/L (1.3 mg/dL);
  1,000 mg over 1 h every 12 h from 2026-03-08 08:00 (+01:00), four doses; a trough before
  the third dose, a peak an hour after the fourth infusion ended and a trough before the
  fifth dose would have been due. A Consent permits treatment.
- `syn-van-0002`: a woman of 54, 141 lb, 65 in, serum creatinine 0.8 mg/dL; 1,250 mg over
  1.5 h every 12 h from 2026-03-08 20:00 (+01:00), three doses; a trough before the third
  dose and a random level 3 h after it started. A Consent denies research; treatment is
  still permitted (the default of that purpose, docs/governance.md).

Run `python examples/data/make_fhir_vancomycin.py` to write the file again (the output is
the same each time).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.medicationadministration import MedicationAdministration
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

OUT = Path(__file__).with_name("fhir_vancomycin.json")
BASE = "https://hospital.example/fhir"
CET = dt.timezone(dt.timedelta(hours=1))
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

PATIENTS = [
    {
        "id": "syn-van-0001",
        "mrn": "SYN-MRN-000101",
        "family": "Testpatient-Synthetic",
        "given": ["Almandine", "Quartzley"],
        "gender": "male",
        "birthDate": "1958-06-14",
        "vitals": [("29463-7", "Body weight", 82.0, "kg"), ("8302-2", "Body height", 178.0, "cm")],
        "creatinine": ("14682-9", 115.0, "umol/L"),
        "start": dt.datetime(2026, 3, 8, 8, 0, tzinfo=CET),
        "amount_g": 1.0,
        "duration_h": 1.0,
        "n_doses": 4,
        # (LOINC, label, hours after the first dose, mg/L)
        "levels": [
            ("4092-3", "trough", 23.5, 8.9),
            ("4089-9", "peak", 38.0, 27.5),
            ("4092-3", "trough", 47.5, 10.4),
        ],
        "consent": ("permit", "TREAT", "treatment"),
    },
    {
        "id": "syn-van-0002",
        "mrn": "SYN-MRN-000202",
        "family": "Examplova-Synthetic",
        "given": ["Brunella", "Zirconia"],
        "gender": "female",
        "birthDate": "1971-09-03",
        "vitals": [
            ("29463-7", "Body weight", 141.0, "[lb_av]"),
            ("8302-2", "Body height", 65.0, "[in_i]"),
        ],
        "creatinine": ("2160-0", 0.8, "mg/dL"),
        "start": dt.datetime(2026, 3, 8, 20, 0, tzinfo=CET),
        "amount_g": 1.25,
        "duration_h": 1.5,
        "n_doses": 3,
        "levels": [("4092-3", "trough", 23.5, 9.6), ("20578-1", "random", 27.0, 24.1)],
        "consent": ("deny", "HRESCH", "research"),
    },
]


def _q(value: float, code: str) -> dict:
    return {"value": value, "unit": code, "system": UCUM, "code": code}


def _observation(rid: str, pid: str, loinc: str, display: str, at: dt.datetime, value: dict,
                 category: str) -> Observation:  # fmt: skip
    return Observation.model_validate(
        {
            "resourceType": "Observation",
            "id": rid,
            "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": category}]}],
            "code": {"coding": [{"system": LOINC, "code": loinc, "display": display}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": at.isoformat(),
            "valueQuantity": value,
        }
    )


def _resources(p: dict) -> list:
    pid, start = p["id"], p["start"]
    out: list = [
        Patient.model_validate(
            {
                "resourceType": "Patient",
                "id": pid,
                "identifier": [{"system": "https://hospital.example/mrn", "value": p["mrn"]}],
                "name": [{"use": "official", "family": p["family"], "given": p["given"]}],
                "gender": p["gender"],
                "birthDate": p["birthDate"],
            }
        )
    ]
    admitted = start - dt.timedelta(hours=2)
    for loinc, display, value, unit in p["vitals"]:
        kind = "weight" if loinc == "29463-7" else "height"
        out.append(_observation(f"{pid}-{kind}", pid, loinc, display, admitted, _q(value, unit),
                                "vital-signs"))  # fmt: skip
    loinc, value, unit = p["creatinine"]
    out.append(_observation(f"{pid}-scr", pid, loinc, "Creatinine [Moles/volume] in Serum or Plasma"
                            if unit == "umol/L" else "Creatinine [Mass/volume] in Serum or Plasma",
                            admitted, _q(value, unit), "laboratory"))  # fmt: skip
    for k in range(p["n_doses"]):
        begin = start + dt.timedelta(hours=12.0 * k)
        end = begin + dt.timedelta(hours=p["duration_h"])
        out.append(
            MedicationAdministration.model_validate(
                {
                    "resourceType": "MedicationAdministration",
                    "id": f"{pid}-dose-{k + 1}",
                    "status": "completed",
                    "medicationCodeableConcept": {
                        "coding": [{"system": RXNORM, "code": "11124", "display": "vancomycin"}]
                    },
                    "subject": {"reference": f"Patient/{pid}"},
                    "effectivePeriod": {"start": begin.isoformat(), "end": end.isoformat()},
                    "dosage": {
                        "route": {"coding": [{"system": SNOMED, "code": "47625008",
                                              "display": "Intravenous route"}]},
                        "dose": _q(p["amount_g"], "g"),
                    },
                }
            )
        )  # fmt: skip
    for i, (loinc, label, hours, value) in enumerate(p["levels"], start=1):
        at = start + dt.timedelta(hours=hours)
        out.append(_observation(f"{pid}-level-{i}", pid, loinc, f"Vancomycin --{label}", at,
                                _q(value, "mg/L"), "laboratory"))  # fmt: skip
    decision, purpose, scope = p["consent"]
    out.append(
        Consent.model_validate(
            {
                "resourceType": "Consent",
                "id": f"{pid}-consent-{scope}",
                "status": "active",
                "scope": {"coding": [{"system": CONSENT_SCOPE, "code": scope}]},
                "category": [{"coding": [{"system": LOINC, "code": "57016-8"}]}],
                "patient": {"reference": f"Patient/{pid}"},
                "dateTime": (start - dt.timedelta(days=1)).isoformat(),
                "policyRule": {"text": "hospital.example consent policy (synthetic)"},
                "provision": {
                    "type": decision,
                    "period": {"start": (start - dt.timedelta(days=1)).isoformat()},
                    "purpose": [{"system": ACT_REASON, "code": purpose}],
                },
            }
        )
    )
    return out


def bundle() -> dict:
    """The bundle as JSON (a dict), validated as an R4B Bundle."""
    entries = []
    for p in PATIENTS:
        for r in _resources(p):
            data = json.loads(r.model_dump_json(exclude_none=True))
            entries.append({"fullUrl": f"{BASE}/{data['resourceType']}/{data['id']}",
                            "resource": data})  # fmt: skip
    data = {
        "resourceType": "Bundle",
        "id": "fhir-twin-example",
        "type": "collection",
        "entry": entries,
    }
    return json.loads(Bundle.model_validate(data).model_dump_json(exclude_none=True))


if __name__ == "__main__":
    OUT.write_text(json.dumps(bundle(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")
