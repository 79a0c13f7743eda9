"""FHIR R4 out: a twin's dose recommendation and forecast, validated by fhir.resources."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..governance import Pseudonymizer
from ._codes import (
    RXNORM_SYSTEM,
    SNOMED_SYSTEM,
    SUBSTANCES,
    TWINS_EXTENSION,
    TWINS_SYSTEM,
)
from ._times import check_aware
from ._units import UCUM

_NAMESPACE = uuid.UUID("6b0f3f52-5d0e-4c55-9a43-4f1f7f2a9e31")  # ids of written resources


def reference_pseudonym(rtype: str, rid: str, pseudonymizer: Pseudonymizer) -> str:
    """The pseudonym of a resource: of the id itself for a Patient (the same as in the
    records, the audit log and consent refusals), of `Type/id` for any other resource."""
    return pseudonymizer.pseudonym(rid if rtype == "Patient" else f"{rtype}/{rid}")


def _ref(rtype: str, rid: str, pseudonymizer: Pseudonymizer | None) -> str:
    """A reference to `rtype` `rid`: `Type/id`, the `urn:uuid:` itself for a bundle's
    id-less resource, or `Type/<pseudonym>` when a pseudonymizer is given."""
    if pseudonymizer is not None:
        return f"{rtype}/{reference_pseudonym(rtype, rid, pseudonymizer)}"
    return rid if rid.startswith("urn:") else f"{rtype}/{rid}"


def _source_ref(source: str, pseudonymizer: Pseudonymizer | None) -> str:
    rtype, _, rid = source.partition("/")
    if not rtype or not rid:
        raise ValueError(f"expected a resource named as 'Type/id', got {source!r}.")
    return _ref(rtype, rid, pseudonymizer)


def _substance(name: str):
    if name not in SUBSTANCES:
        raise ValueError(f"expected a substance of {list(SUBSTANCES)}, got {name!r}.")
    return SUBSTANCES[name]


def _at(origin: dt.datetime, hours: float) -> str:
    return (origin + dt.timedelta(hours=float(hours))).isoformat()


def _id(*parts: Any) -> str:
    return str(uuid.uuid5(_NAMESPACE, "|".join(str(p) for p in parts)))


def _doses(regimen: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Times (h), amounts (mg) and infusion durations (h) of a regimen's real events."""
    mask = np.asarray(regimen.mask, dtype=bool)
    time = np.asarray(regimen.time, dtype=float)[mask]
    amount = np.asarray(regimen.amount, dtype=float)[mask]
    rate = np.asarray(regimen.rate, dtype=float)[mask]
    duration = np.asarray(regimen.duration, dtype=float)[mask]
    dur = np.where(rate > 0, amount / np.where(rate > 0, rate, 1.0), 0.0)
    dur = np.where(rate == -2, duration, dur)
    if np.any((rate < 0) & (rate != -2)):
        raise ValueError("a dose whose rate comes from the model (RATE=-1) has no duration.")
    return time, amount, dur


def recommendation_request(
    recommendation: Any,
    *,
    patient: str,
    origin: dt.datetime,
    substance: str = "vancomycin",
    pseudonymizer: Pseudonymizer | None = None,
    authored: dt.datetime | None = None,
) -> Any:
    """A `twins.Recommendation` as a FHIR R4 MedicationRequest of `intent = proposal`.

    **Arguments:**

    - `recommendation`: from `DigitalTwin.recommend` (its `regimen` gives the absolute
      doses, their times and the infusion duration).
    - `patient`: the patient's id as read (`FhirImport.patients` key).
    - `origin`: the aware datetime of the patient's `TIME = 0` (`FhirImport.origins`).
    - `substance`: the drug (`twins.io.SUBSTANCES`), coded by RxNorm.
    - `pseudonymizer`: when given, `subject` is `Patient/<pseudonym of the id>`.
    - `authored`: `authoredOn` (an aware datetime; default none).

    **Returns:** a `fhir.resources.R4B.medicationrequest.MedicationRequest` (validated):
    `status = draft`, `dosageInstruction` with `timing.repeat` (`boundsPeriod.start`,
    `count`, `period`/`periodUnit = h`, `duration`/`durationUnit = h` for an infusion) and
    `doseAndRate.doseQuantity` in mg (UCUM); the target (metric, window, unit) and the
    posterior probability in extensions and in a note. A constrained recommendation
    (`recommend(constraints=...)`) adds the extensions `continuous-dose` (the optimum it was
    rounded from) and `bound` (the constraint that set it). With a loading dose
    (`recommend(loading=...)`) `dosageInstruction` has two Dosages, `sequence` 1 (the
    loading dose: `count = 1`, its own duration) and `sequence` 2 (the maintenance doses),
    and the extension `loading-dose` gives its amount: in FHIR R4B, Dosages of different
    `sequence` are sequential, of the same `sequence` concurrent (HL7 FHIR R4B, Dosage
    data type, `Dosage.sequence`). A loading dose equal to the maintenance dose, one
    interval before it, is simply one more dose of the single Dosage.
    """
    from fhir.resources.R4B.medicationrequest import MedicationRequest

    data = _recommendation_data(recommendation, patient, origin, substance, pseudonymizer, authored)
    return MedicationRequest.model_validate(data)


def _segments(times, amounts, durations) -> list[tuple[int, int]]:
    """`(first, stop)` index ranges of the runs of equal doses (amount and infusion
    duration) at one spacing: a loading dose and the maintenance doses after it are two."""
    n = times.size
    if (
        np.allclose(amounts, amounts[0])
        and np.allclose(durations, durations[0])
        and (n < 3 or np.allclose(np.diff(times), times[1] - times[0]))
    ):
        return [(0, n)]  # the common case, in three array comparisons
    out: list[tuple[int, int]] = []
    i = 0
    while i < n:
        j = i + 1
        while (
            j < n
            and np.isclose(amounts[j], amounts[i])
            and np.isclose(durations[j], durations[i])
            and (j == i + 1 or np.isclose(times[j] - times[j - 1], times[i + 1] - times[i]))
        ):
            j += 1
        out.append((i, j))
        i = j
    return out


def _dosage(times, amount, duration, interval, origin, sequence, first_of_many):
    """One Dosage: `times` (h) of equal doses of `amount` mg over `duration` h (0: a bolus)
    every `interval` h; `sequence` (1-based) when the regimen has several Dosages."""
    repeat: dict[str, Any] = {
        "boundsPeriod": {"start": _at(origin, times[0])},
        "count": int(times.size),
    }
    if times.size > 1 or not first_of_many:
        repeat |= {"frequency": 1, "period": interval, "periodUnit": "h"}
    if duration > 0:
        repeat["duration"] = float(duration)
        repeat["durationUnit"] = "h"
    if times.size == 1 and first_of_many:
        text = f"{amount:.6g} mg once (loading dose)"
    else:
        text = f"{amount:.6g} mg every {interval:g} h, {times.size} doses"
    dosage: dict[str, Any] = {}
    if sequence is not None:
        dosage["sequence"] = sequence
    dosage |= {
        "text": text,
        "timing": {"repeat": repeat},
        "doseAndRate": [
            {"doseQuantity": {"value": float(amount), "unit": "mg", "system": UCUM, "code": "mg"}}
        ],
    }
    if duration > 0:
        dosage["route"] = {
            "coding": [
                {"system": SNOMED_SYSTEM, "code": "47625008", "display": "Intravenous route"}
            ]
        }
    return dosage


def _recommendation_data(recommendation, patient, origin, substance, pseudonymizer, authored):
    check_aware(origin, "recommendation_request: origin")
    drug = _substance(substance)
    times, amounts, durations = _doses(recommendation.regimen)
    if times.size == 0:
        raise ValueError("recommendation_request: the recommendation's regimen has no dose.")
    order = np.argsort(times, kind="stable")
    times, amounts, durations = times[order], amounts[order], durations[order]
    interval = float(recommendation.interval)
    runs = _segments(times, amounts, durations)
    loading = getattr(recommendation, "loading_dose", None)
    if len(runs) == 2 and runs[0] == (0, 1) and loading is not None:
        pass  # a loading dose, then the maintenance doses: two sequenced Dosages
    elif len(runs) != 1:
        raise ValueError(
            "recommendation_request: expected equal doses in the regimen (or one loading "
            f"dose, then equal doses), got {len(runs)} runs of different doses or spacings."
        )
    many = len(runs) > 1
    dosages = []
    for k, (a, b) in enumerate(runs):
        sequence = k + 1 if many else None
        dosages.append(
            _dosage(
                times[a:b], amounts[a], durations[a], interval, origin, sequence, many and k == 0
            )
        )
    target = recommendation.target
    ext = [
        {"url": TWINS_EXTENSION + "target-metric", "valueString": str(target.metric)},
        {"url": TWINS_EXTENSION + "target-low", "valueDecimal": float(target.low)},
        {"url": TWINS_EXTENSION + "target-high", "valueDecimal": float(target.high)},
        {"url": TWINS_EXTENSION + "target-unit", "valueString": str(target.unit)},
        {"url": TWINS_EXTENSION + "probability", "valueDecimal": float(recommendation.probability)},
    ]
    continuous = getattr(recommendation, "continuous_dose", None)
    if continuous is not None:  # a constrained recommendation: what it was rounded from
        ext.append({"url": TWINS_EXTENSION + "continuous-dose", "valueDecimal": float(continuous)})
        bound = getattr(recommendation, "bound", "")
        if bound:
            ext.append({"url": TWINS_EXTENSION + "bound", "valueString": str(bound)})
    if loading is not None:
        ext.append({"url": TWINS_EXTENSION + "loading-dose", "valueDecimal": float(loading)})
    maintenance = runs[-1][0]
    ident: list[Any] = [
        "recommendation",
        _ref("Patient", patient, pseudonymizer),
        origin.isoformat(),
        times[0],
        amounts[0],
        interval,
    ]
    if many:  # the maintenance doses too (a single run keeps the ids it always had)
        ident += [times[maintenance], amounts[maintenance], durations[0], durations[maintenance]]
    data: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": _id(*ident),
        "extension": ext,
        "status": "draft",
        "intent": "proposal",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM_SYSTEM, "code": drug.rxnorm[0], "display": drug.name}]
        },
        "subject": {"reference": _ref("Patient", patient, pseudonymizer)},
        "dosageInstruction": dosages,
        "note": [{"text": f"pkpd-twins recommendation: {recommendation}"}],
    }
    if authored is not None:
        data["authoredOn"] = check_aware(authored, "recommendation_request: authored").isoformat()
    return data


def forecast_observations(
    forecast: Any,
    *,
    patient: str,
    origin: dt.datetime,
    derived_from: Sequence[str],
    unit: str = "mg/L",
    pseudonymizer: Pseudonymizer | None = None,
) -> list[Any]:
    """A `twins.Forecast` as FHIR R4 Observations, one per forecast time.

    **Arguments:**

    - `forecast`: from `DigitalTwin.forecast` (`times` in h from the origin, `median`,
      `lower`, `upper`, `level`).
    - `patient`, `origin`: as for `recommendation_request`.
    - `derived_from`: the levels the twin was calibrated on, as `Type/id`
      (`FhirImport.observations(patient)["SOURCE"]`): each Observation's `derivedFrom`.
    - `unit`: the UCUM code of the forecast values (the drug's observed unit).
    - `pseudonymizer`: when given, `subject` and `derivedFrom` are pseudonyms.

    **Returns:** validated `fhir.resources.R4B.observation.Observation`s of `status =
    preliminary`, code and method the project's `forecast` code (not a LOINC code: a
    forecast is not a measurement), `valueQuantity` the median, components `lower` and
    `upper` the band, and its level in the extension `band-level`.
    """
    from fhir.resources.R4B.observation import Observation

    items = _forecast_data(forecast, patient, origin, derived_from, unit, pseudonymizer)
    return [Observation.model_validate(data) for data in items]


def _forecast_data(forecast, patient, origin, derived_from, unit, pseudonymizer):
    check_aware(origin, "forecast_observations: origin")
    forecast_code = {
        "coding": [
            {"system": TWINS_SYSTEM, "code": "forecast", "display": "pkpd-twins model forecast"}
        ]
    }
    derived = [{"reference": _source_ref(s, pseudonymizer)} for s in derived_from]
    out = []
    for t, med, lo, hi in zip(
        np.asarray(forecast.times, dtype=float),
        np.asarray(forecast.median, dtype=float),
        np.asarray(forecast.lower, dtype=float),
        np.asarray(forecast.upper, dtype=float),
        strict=True,
    ):

        def q(v: float) -> dict[str, Any]:
            return {"value": float(v), "unit": unit, "system": UCUM, "code": unit}

        data = {
            "resourceType": "Observation",
            "id": _id(
                "forecast", _ref("Patient", patient, pseudonymizer), origin.isoformat(), t, med
            ),
            "extension": [
                {"url": TWINS_EXTENSION + "band-level", "valueDecimal": float(forecast.level)}
            ],
            "status": "preliminary",
            "code": {**forecast_code, "text": f"{forecast.drug}: forecast of {forecast.unit}"},
            "method": forecast_code,
            "subject": {"reference": _ref("Patient", patient, pseudonymizer)},
            "effectiveDateTime": _at(origin, t),
            "valueQuantity": q(med),
            "component": [
                {
                    "code": {"coding": [{"system": TWINS_SYSTEM, "code": name}]},
                    "valueQuantity": q(v),
                }
                for name, v in (("lower", lo), ("upper", hi))
            ],
            "derivedFrom": derived or None,
        }
        out.append({k: v for k, v in data.items() if v is not None})
    return out


def fhir_bundle(resources: Sequence[Any], *, kind: str = "collection") -> Any:
    """A Bundle (`type = kind`) of fhir.resources models, each entry's `fullUrl` its
    `Type/id`; validated. Write it with `.model_dump_json()`."""
    from fhir.resources.R4B.bundle import Bundle

    entries = []
    for r in resources:
        data = r.model_dump(mode="json", exclude_none=True)
        entries.append({"fullUrl": f"urn:uuid:{data['id']}", "resource": data})
    return Bundle.model_validate({"resourceType": "Bundle", "type": kind, "entry": entries})


def update_json(
    recommendation: Any,
    forecast: Any,
    *,
    patient: str,
    origin: dt.datetime,
    derived_from: Sequence[str],
    substance: str = "vancomycin",
    unit: str = "mg/L",
    pseudonymizer: Pseudonymizer | None = None,
    authored: dt.datetime | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`recommendation_request` and `fhir_bundle(forecast_observations(...))` as JSON, for
    a service that publishes them: each validated once by fhir.resources (the
    MedicationRequest, and the Bundle with its Observations), then the JSON itself returned
    (no serialisation of the models). Arguments as those two functions'.

    **Returns:** `(medication_request, bundle)`, JSON objects.
    """
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.medicationrequest import MedicationRequest

    request = _recommendation_data(
        recommendation, patient, origin, substance, pseudonymizer, authored
    )
    MedicationRequest.model_validate(request)
    items = _forecast_data(forecast, patient, origin, derived_from, unit, pseudonymizer)
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": f"urn:uuid:{d['id']}", "resource": d} for d in items],
    }
    Bundle.model_validate(bundle)
    return request, bundle
