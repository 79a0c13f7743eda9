"""`read_fhir`: FHIR R4 (R4B models) in; patients, NONMEM records, consents out."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import types
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import pandas as pd

import pkpd

from .._patient import Patient
from .._population import Population
from ..governance import Consent, ConsentRegistry
from ._codes import SUBSTANCES
from ._dispatch import Proposal, Reading, read_resource
from ._errors import Collector, FhirError, ImportReport
from ._records import build_records
from ._resources import (
    Value,
)
from ._source import Index, Resource, load
from ._times import age_years, check_aware, hours


@dataclasses.dataclass(frozen=True)
class ForecastPoint:
    """A forecast read back (an Observation of method `forecast`): `patient`, `at`
    (aware), `time` (h from the patient's origin), `median`, `lower`, `upper`, `level`,
    `unit` (UCUM), `loinc`, `derived_from` (references), `source`."""

    patient: str
    at: dt.datetime
    time: float
    median: float
    lower: float
    upper: float
    level: float
    unit: str
    loinc: str
    derived_from: tuple[str, ...]
    source: str


@dataclasses.dataclass(frozen=True)
class FhirImport:
    """What `read_fhir` read.

    - `patients`: id -> `twins.Patient` (age at `reference_time`, sex, weight, height, the
      latest labs and genotypes at or before `reference_time`).
    - `records`: NONMEM records of every patient (`RECORD_COLUMNS`): doses (`EVID 1`) and
      levels of `substance` (`EVID 0`; `CENS 1` for a level below a limit, `DV` the limit),
      `TIME` in hours from the patient's origin, sorted by time (a level before a dose at
      the same time); `SOURCE` names the resource (`Type/id`).
    - `origins`: id -> the aware datetime that is `TIME = 0` for that patient.
    - `consents`: `twins.governance.Consent`s of the active Consent resources.
    - `proposals`, `forecasts`: regimens proposed and forecasts, as written by
      `twins.io.recommendation_request` and `forecast_observations`.
    - `report`: an `ImportReport` of everything not read.
    - `reference_time`, `substance`.
    """

    patients: Mapping[str, Patient]
    records: pd.DataFrame
    origins: Mapping[str, dt.datetime]
    consents: tuple[Consent, ...]
    proposals: tuple[Proposal, ...]
    forecasts: tuple[ForecastPoint, ...]
    report: ImportReport
    reference_time: dt.datetime
    substance: str

    def consent_registry(self) -> ConsentRegistry:
        """A `ConsentRegistry` of `consents`."""
        return ConsentRegistry(self.consents)

    def population(self) -> Population:
        """The patients as a `twins.Population` (in id order) carrying their consents: a
        trial or training set on it takes only those who consented to research
        (docs/governance.md, 'Where consent is enforced'). Every patient must have the
        same labs and genes (`Population.from_patients`)."""
        ordered = [self.patients[k] for k in sorted(self.patients)]
        return Population.from_patients(ordered, consents=self.consent_registry())

    def patient_records(self, patient: str) -> pd.DataFrame:
        """One patient's records (a copy), or `KeyError` naming the patients known."""
        if patient not in self.patients:
            raise KeyError(f"FhirImport: no patient {patient!r}; known: {sorted(self.patients)}.")
        mine = cast(pd.DataFrame, self.records.loc[self.records["ID"] == patient])
        return mine.reset_index(drop=True)

    def regimen(self, patient: str) -> pkpd.Regimen:
        """The patient's doses as a `pkpd.Regimen` (for `DigitalTwin.give`)."""
        rec = self.patient_records(patient)
        doses = cast(pd.DataFrame, rec.loc[rec["EVID"] == 1])
        if doses.empty:
            raise ValueError(f"FhirImport: patient {patient!r} has no doses of {self.substance}.")
        return pkpd.regimen_from_records(doses.drop(columns=["SOURCE"]))

    def observations(self, patient: str) -> pd.DataFrame:
        """The patient's levels as `TIME, DV, CENS` (for `DigitalTwin.update`)."""
        rec = self.patient_records(patient)
        obs = cast(pd.DataFrame, rec.loc[rec["EVID"] == 0, ["TIME", "DV", "CENS", "SOURCE"]])
        return obs.reset_index(drop=True)


def _gender(r: Resource) -> str:
    g = r.model.gender
    if g not in ("female", "male"):
        raise FhirError(
            r.rtype,
            r.rid,
            "gender",
            f"expected 'female' or 'male' (the models' covariate), got {g!r}.",
        )
    return g


def check_patient(r: Resource) -> dt.date:
    """What a Patient resource alone must give (`gender` female/male, a full `birthDate`):
    its birth date, or `FhirError` naming the field."""
    birth = r.model.birthDate
    if not isinstance(birth, dt.date):
        detail = "a partial date (year or month only)" if birth is not None else "none"
        raise FhirError(r.rtype, r.rid, "birthDate", f"expected a full date, got {detail}.")
    _gender(r)
    return birth


def _build_patient(r: Resource, values: list[Value], reference_time: dt.datetime) -> Patient:
    birth = r.model.birthDate
    if not isinstance(birth, dt.date):
        detail = "a partial date (year or month only)" if birth is not None else "none"
        raise FhirError(r.rtype, r.rid, "birthDate", f"expected a full date, got {detail}.")
    latest: dict[tuple[str, str], Value] = {}
    for v in sorted(values, key=lambda v: v.time):
        if v.loinc.kind in ("weight", "height", "lab", "genotype"):
            key = (v.loinc.kind, v.gene or v.loinc.field)
            old = latest.get(key)
            if old is not None and old.time == v.time and old.value != v.value:
                rtype, _, rid = v.source.partition("/")
                raise FhirError(
                    rtype,
                    rid,
                    "value[x]",
                    f"another Observation gives a different {key[1]} at the same time "
                    f"({old.value!r} and {v.value!r}); expected one value (mark the wrong "
                    "one entered-in-error, or correct it as a new version).",
                )
            latest[key] = v
    for kind, code in (("weight", "29463-7"), ("height", "8302-2")):
        if (kind, kind) not in latest:
            raise FhirError(
                r.rtype,
                r.rid,
                kind,
                f"no {kind} Observation (LOINC {code}) at or before the reference "
                "time; the patient's covariates need it.",
            )
    labs = {f: v.value for (k, f), v in latest.items() if k == "lab"}
    genotypes = {f: v.value for (k, f), v in latest.items() if k == "genotype"}
    sex = _gender(r)
    try:
        return Patient(
            id=r.rid,
            age=age_years(birth, reference_time),
            sex=sex,
            weight=latest[("weight", "weight")].value,
            height=latest[("height", "height")].value,
            labs=labs,
            genotypes=genotypes,
        )
    except (TypeError, ValueError) as error:
        raise FhirError(r.rtype, r.rid, "(patient)", str(error)) from None


def read_fhir(
    source: Any,
    *,
    reference_time: dt.datetime,
    substance: str = "vancomycin",
    origin: dt.datetime | Mapping[str, dt.datetime] | None = None,
    cmt: int = 1,
    preliminary: bool = False,
    lenient: bool = False,
) -> FhirImport:
    """Read FHIR R4 resources into patients, NONMEM records and consents.

    **Arguments:**

    - `source`: a Bundle as a dict, a JSON file of one, an NDJSON file, or a folder of
      NDJSON files (a bulk-data export). Every resource is validated by its
      `fhir.resources` R4B model.
    - `reference_time`: an aware datetime: ages are computed at it, the labs and vitals in
      force are the latest at or before it, and nothing dated after it is read (listed).
    - `substance`: the drug whose doses and levels make the records (`twins.io.SUBSTANCES`:
      `"vancomycin"`, `"warfarin"` (levels: INR), `"theophylline"`).
    - `origin`: `TIME = 0`: one aware datetime for every patient, a mapping patient id ->
      datetime, or None (default): each patient's earliest dose or level.
    - `cmt`: the dosing compartment written to `CMT` (1-based, the drug's `dosing.cmt`).
    - `preliminary`: read Observations of status `preliminary` (default: listed, not read).
    - `lenient`: list malformed or unusable resources in `report` instead of raising (an
      input that is not a Bundle, not JSON, or an empty folder still raises).

    **Returns:** a `FhirImport`.

    **Raises:** `FhirError` (a `ValueError`) naming the resource type, id and field of the
    first malformed or unusable resource (unless `lenient`); `TypeError`/`ValueError` for
    bad arguments (a naive `reference_time` or `origin`).
    """
    reference_time = check_aware(reference_time, "read_fhir: reference_time")
    if substance not in SUBSTANCES:
        raise ValueError(
            f"read_fhir: substance must be one of {list(SUBSTANCES)}, got {substance!r}."
        )
    drug = SUBSTANCES[substance]
    if isinstance(origin, dt.datetime):
        check_aware(origin, "read_fhir: origin")
    elif isinstance(origin, Mapping):
        for k, v in origin.items():
            check_aware(v, f"read_fhir: origin[{k!r}]")
    elif origin is not None:
        raise TypeError(f"read_fhir: origin must be a datetime, a mapping or None, got {origin!r}.")
    col = Collector(lenient)
    resources = load(source, col)
    index = Index(resources)
    patients: dict[str, Resource] = {r.rid: r for r in resources if r.rtype == "Patient"}
    rd = Reading(index, col, drug, reference_time, preliminary)
    for r in resources:
        try:
            read_resource(r, rd)
        except FhirError as error:
            col.fail(error)
    values, doses, planned = rd.values, rd.doses, rd.planned
    administered = {pid for pid, ds in doses.items() if ds}
    for pid, items in planned.items():
        for r, ds, future in items:
            if pid in administered:
                col.note(
                    "superseded",
                    r.rtype,
                    r.rid,
                    "(resource)",
                    "the patient has MedicationAdministrations of the substance: they "
                    "are the doses given",
                )
                continue
            if future:
                col.note(
                    "ignored",
                    r.rtype,
                    r.rid,
                    "dosage",
                    f"{future} dose(s) due after the reference time are not read",
                )
            doses.setdefault(pid, []).extend(ds)
            col.count(r.rtype)
    out_patients: dict[str, Patient] = {}
    for pid, r in patients.items():
        try:
            out_patients[pid] = _build_patient(r, values.get(pid, []), reference_time)
            col.count("Patient")
        except FhirError as error:
            col.fail(error)
    for pid in sorted(set(doses) | set(values)):
        if pid not in out_patients and (doses.get(pid) or values.get(pid)):
            col.note(
                "ignored",
                "Patient",
                pid,
                "(patient)",
                "its observations and doses are not read: the patient was not read",
            )
    records, origins = build_records(out_patients, values, doses, origin, cmt, drug)
    return FhirImport(
        patients=types.MappingProxyType(out_patients),
        records=records,
        origins=types.MappingProxyType(origins),
        consents=tuple(rd.consents),
        proposals=tuple(
            dataclasses.replace(p, time=_rel(p.start, origins.get(p.patient))) for p in rd.proposals
        ),
        forecasts=tuple(
            ForecastPoint(
                f.patient,
                f.time,
                _rel(f.time, origins.get(f.patient)),
                f.median,
                f.lower,
                f.upper,
                f.level,
                f.unit,
                f.loinc,
                f.derived_from,
                f.source,
            )
            for f in rd.forecasts
        ),
        report=col.report(),
        reference_time=reference_time,
        substance=drug.name,
    )


def _rel(t: dt.datetime, origin: dt.datetime | None) -> float:
    return math.nan if origin is None else hours(t, origin)


@dataclasses.dataclass(frozen=True)
class NewLevels:
    """What `read_new_levels` read: `levels` (`TIME, DV, CENS, SOURCE`, h from the given
    origin, in time order), `other` (how many values that are not levels of the substance,
    e.g. a lab, were among them: they change the patient, not only the data), and `errors`
    (the `ImportReport` errors)."""

    levels: pd.DataFrame
    other: int
    errors: tuple[Any, ...]


def read_new_levels(
    patient_resource: Mapping[str, Any],
    observations: list[Mapping[str, Any]],
    *,
    patient: str,
    origin: dt.datetime,
    reference_time: dt.datetime,
    substance: str,
    cmt: int = 1,
) -> NewLevels:
    """Read Observations of one patient as `read_fhir` reads them, without the rest of the
    patient's resources: the levels they give on the clock of `origin`. The live twin
    service uses it to add a new level to a twin without replaying the patient's history
    (`twins.io.TwinService`); whatever else the Observations give (a lab, an error) is
    reported, for the caller to fall back to `read_fhir`.

    The rows are those `read_fhir` would give for these Observations with the same origin
    and reference time (the same readers, unit conversions and record builder)."""
    drug = SUBSTANCES[substance]
    col = Collector(True)
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in (patient_resource, *observations)],
    }
    resources = load(bundle, col)
    rd = Reading(Index(resources), col, drug, reference_time, False)
    for r in resources:
        if r.rtype == "Observation":
            try:
                read_resource(r, rd)
            except FhirError as error:
                col.fail(error)
    mine = rd.values.get(patient, [])
    levels = [v for v in mine if v.loinc.code in drug.levels]
    other = len(mine) - len(levels) + sum(len(v) for k, v in rd.values.items() if k != patient)
    # the level rows of `build_records` (in time order; stable for equal times), without
    # building the records of every column
    rows = sorted(((hours(v.time, origin), v) for v in levels), key=lambda item: item[0])
    frame = pd.DataFrame(
        {
            "TIME": np.asarray([t for t, _ in rows], dtype=float),
            "DV": np.asarray([v.value for _, v in rows], dtype=float),
            "CENS": np.asarray([int(v.censored) for _, v in rows], dtype=int),
            "SOURCE": [str(v.source) for _, v in rows],
        }
    )
    return NewLevels(frame, other, col.report().errors)
