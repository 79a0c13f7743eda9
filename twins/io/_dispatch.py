"""What each resource is read as: the status policies, and the readers of Observations,
Consents and medication resources (into values, doses, regimens, proposals)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import Any

from ..governance import Consent
from ._codes import TWINS_EXTENSION, Substance
from ._dosing import Dose, administration, medication_matches, regimen
from ._errors import Collector, FhirError
from ._resources import (
    OBSERVATION_IGNORED,
    OBSERVATION_READ,
    ForecastValue,
    Value,
    consents,
    forecast_value,
    is_forecast,
    loinc_code,
    observation_time,
    observation_value,
)
from ._source import Index, Resource

_STATUS = {
    "MedicationAdministration": (
        ("completed", "stopped"),
        ("not-done", "entered-in-error", "on-hold"),
    ),
    "MedicationRequest": (
        ("active", "completed"),
        ("draft", "cancelled", "entered-in-error", "on-hold", "stopped"),
    ),
    "MedicationStatement": (
        ("active", "completed"),
        ("intended", "not-taken", "entered-in-error", "on-hold", "stopped"),
    ),
    "Consent": (("active",), ("draft", "proposed", "rejected", "inactive", "entered-in-error")),
}
_REGIMEN_INTENTS = (
    "order",
    "original-order",
    "reflex-order",
    "filler-order",
    "instance-order",
    "plan",
)
_FAR = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True)
class Proposal:
    """A proposed regimen (a MedicationRequest of `intent = proposal`, as
    `twins.io.recommendation_request` writes): `patient`, `start` (aware) and `time` (h from
    the patient's origin, `nan` without one), `dose` (mg), `interval` (h), `n_doses`,
    `duration` (h, infusion), and when given: `metric`, `low`, `high`, `target_unit`,
    `probability`; `source`. A proposal with a loading dose (two Dosages, `sequence` 1 one
    dose, then `sequence` 2) has `loading_dose` (mg), `loading_start` (aware) and
    `loading_duration` (h); `dose`, `start`, ... are the maintenance doses'."""

    patient: str
    start: dt.datetime
    time: float
    dose: float
    interval: float
    n_doses: int
    duration: float
    metric: str | None
    low: float | None
    high: float | None
    target_unit: str | None
    probability: float | None
    source: str
    loading_dose: float | None = None
    loading_start: dt.datetime | None = None
    loading_duration: float | None = None


@dataclasses.dataclass
class Reading:
    """What `read_fhir` reads with (`index`, `col`, `drug`, `reference_time`,
    `preliminary`) and gathers, by patient key: `values` (Observations), `doses`
    (administrations), `planned` (regimens: resource, doses due, doses after), and
    `consents`, `proposals`, `forecasts`."""

    index: Index
    col: Collector
    drug: Substance
    reference_time: dt.datetime
    preliminary: bool
    values: dict[str, list[Value]] = dataclasses.field(default_factory=dict)
    doses: dict[str, list[Dose]] = dataclasses.field(default_factory=dict)
    planned: dict[str, list[tuple[Resource, list[Dose], int]]] = dataclasses.field(
        default_factory=dict
    )
    consents: list[Consent] = dataclasses.field(default_factory=list)
    proposals: list[Proposal] = dataclasses.field(default_factory=list)
    forecasts: list[ForecastValue] = dataclasses.field(default_factory=list)


def patient_key(r: Resource, index: Index, field: str) -> str:
    """The key of the Patient that `r.<field>` references, or `FhirError`."""
    ref = getattr(r.model, field)
    target = index.get(ref.reference if ref is not None else None)
    if target is None or target.rtype != "Patient":
        raise FhirError(
            r.rtype,
            r.rid,
            f"{field}.reference",
            "expected a reference to a Patient in the same bundle or export.",
        )
    return target.rid


def _status(r: Resource, col: Collector, policy: tuple[tuple[str, ...], tuple[str, ...]]) -> bool:
    status = r.model.status
    read, ignored = policy
    if status in read:
        return True
    if status in ignored:
        col.note("ignored", r.rtype, r.rid, "status", f"status {status!r} is not read")
        return False
    raise FhirError(
        r.rtype,
        r.rid,
        "status",
        f"status {status!r} cannot be used; expected one of {list(read + ignored)}.",
    )


def proposal(r: Resource, patient: str, substance: Any) -> Proposal:
    items = r.model.dosageInstruction or []
    load = None
    if len(items) == 2 and [i.sequence for i in items] == [1, 2]:  # a loading dose first
        first, _ = regimen(r, substance, "dosageInstruction", _FAR, index=0)
        if len(first) != 1 or first[0].addl != 0:
            raise FhirError(
                r.rtype,
                r.rid,
                "dosageInstruction[0].timing.repeat.count",
                "expected one loading dose (count 1) before the maintenance doses.",
            )
        load = first[0]
        doses, _ = regimen(r, substance, "dosageInstruction", _FAR, index=1)
    else:
        doses, _ = regimen(r, substance, "dosageInstruction", _FAR)
    d = doses[0]
    values: dict[str, Any] = {}
    for e in r.model.extension or ():
        if e.url.startswith(TWINS_EXTENSION):
            name = e.url[len(TWINS_EXTENSION) :]
            values[name] = e.valueDecimal if e.valueDecimal is not None else e.valueString
    num = {
        k: float(values[k]) if k in values else None
        for k in ("target-low", "target-high", "probability")
    }
    return Proposal(
        patient,
        d.start,
        math.nan,
        d.amount,
        d.ii,
        d.addl + 1,
        d.duration,
        values.get("target-metric"),
        num["target-low"],
        num["target-high"],
        values.get("target-unit"),
        num["probability"],
        f"{r.rtype}/{r.rid}",
        None if load is None else load.amount,
        None if load is None else load.start,
        None if load is None else load.duration,
    )


def read_resource(r: Resource, rd: Reading) -> None:
    """Read one resource into the collections (or note why not)."""
    rt = r.rtype
    if rt == "Patient":
        return  # built once its observations are known
    if rt == "Medication":
        rd.col.count(rt)  # read through the references of medication resources
        return
    if rt == "Observation":
        _observation(r, rd)
        return
    if rt == "Consent":
        if _status(r, rd.col, _STATUS[rt]):
            pid = patient_key(r, rd.index, "patient")
            rd.consents.extend(consents(r, pid))
            rd.col.count(rt)
        return
    if rt not in ("MedicationAdministration", "MedicationRequest", "MedicationStatement"):
        rd.col.note("ignored", rt, r.rid, "resourceType", "a resource type that is not read")
        return
    if rt == "MedicationRequest" and r.model.intent == "proposal":
        if r.model.status in ("cancelled", "entered-in-error"):
            rd.col.note("ignored", rt, r.rid, "status", f"a proposal of status {r.model.status!r}")
            return
        if not medication_matches(r, rd.index, rd.drug):
            rd.col.note("ignored", rt, r.rid, "medication[x]", f"not {rd.drug.name}")
            return
        rd.proposals.append(proposal(r, patient_key(r, rd.index, "subject"), rd.drug))
        rd.col.count(rt)
        return
    if not _status(r, rd.col, _STATUS[rt]):
        return
    if not medication_matches(r, rd.index, rd.drug):
        rd.col.note(
            "ignored", rt, r.rid, "medication[x]", f"not {rd.drug.name}: not in the records"
        )
        return
    pid = patient_key(r, rd.index, "subject")
    if rt == "MedicationAdministration":
        dose = administration(r, rd.drug)
        if dose.start > rd.reference_time:
            rd.col.note("ignored", rt, r.rid, "effective[x]", "after the reference time")
            return
        rd.doses.setdefault(pid, []).append(dose)
        rd.col.count(rt)
        return
    if rt == "MedicationRequest" and r.model.intent not in _REGIMEN_INTENTS:
        rd.col.note("ignored", rt, r.rid, "intent", f"intent {r.model.intent!r} is not read")
        return
    field = "dosageInstruction" if rt == "MedicationRequest" else "dosage"
    ds, future = regimen(r, rd.drug, field, rd.reference_time)
    if not ds:
        rd.col.note("ignored", rt, r.rid, field, "no dose due at or before the reference time")
        return
    rd.planned.setdefault(pid, []).append((r, ds, future))


def _observation(r: Resource, rd: Reading) -> None:
    m = r.model
    status = m.status
    if is_forecast(m):  # written by forecast_observations: read whatever its status
        if status in ("cancelled", "entered-in-error"):
            rd.col.note("ignored", r.rtype, r.rid, "status", f"a forecast of status {status!r}")
            return
        rd.forecasts.append(forecast_value(r, patient_key(r, rd.index, "subject")))
        rd.col.count(r.rtype)
        return
    if status not in OBSERVATION_READ and not (rd.preliminary and status == "preliminary"):
        if status in OBSERVATION_IGNORED:
            rd.col.note("ignored", r.rtype, r.rid, "status", f"status {status!r} is not read")
            return
        raise FhirError(
            r.rtype,
            r.rid,
            "status",
            f"status {status!r} cannot be used; expected one of "
            f"{list(OBSERVATION_READ + OBSERVATION_IGNORED)}.",
        )
    loinc, seen = loinc_code(m.code)
    if loinc is None:
        what = f"LOINC {', '.join(seen)}" if seen else "no LOINC code"
        rd.col.note("ignored", r.rtype, r.rid, "code", f"{what}: not in twins.io.LOINC")
        return
    if loinc.kind == "level" and loinc.code not in rd.drug.levels:
        rd.col.note("ignored", r.rtype, r.rid, "code", f"a {loinc.field} level: not {rd.drug.name}")
        return
    pid = patient_key(r, rd.index, "subject")
    if m.dataAbsentReason is not None and m.valueQuantity is None:
        rd.col.note("ignored", r.rtype, r.rid, "dataAbsentReason", "no value (data absent)")
        return
    time = observation_time(r, exact=loinc.code in rd.drug.levels)
    if time > rd.reference_time:
        rd.col.note("ignored", r.rtype, r.rid, "effective[x]", "after the reference time")
        return
    rd.values.setdefault(pid, []).append(observation_value(r, pid, loinc, time))
    rd.col.count(r.rtype)
