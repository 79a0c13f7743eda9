"""Readers of single resources: Patient, Observation (vitals, labs, levels, genotypes,
forecasts), Consent. Each returns plain values or raises `FhirError`."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from ..governance import Consent, Decision, Purpose
from ._codes import (
    GENE_STUDIED,
    HGNC,
    HGNC_SYSTEM,
    LOINC,
    LOINC_SYSTEM,
    PURPOSES,
    TWINS_EXTENSION,
    TWINS_SYSTEM,
    LoincCode,
)
from ._errors import FhirError
from ._source import Resource
from ._times import instant, moment
from ._units import convert, quantity_code, quantity_value

#: Observation statuses read; `preliminary` only with `read_fhir(..., preliminary=True)`.
OBSERVATION_READ = ("final", "amended", "corrected")
OBSERVATION_IGNORED = ("registered", "cancelled", "entered-in-error", "preliminary")


@dataclasses.dataclass(frozen=True)
class Value:
    """One observation read: `patient` (reference key), `loinc` (a `LoincCode`), `time`
    (aware), `value` (in `loinc.unit`; a diplotype string for genotypes), `censored` (a
    level given as `< limit`: `value` is the limit), `gene` (genotypes), `source`."""

    patient: str
    loinc: LoincCode
    time: dt.datetime
    value: Any
    censored: bool
    gene: str
    source: str


@dataclasses.dataclass(frozen=True)
class ForecastValue:
    """A forecast Observation written by `twins.io.forecast_observations`."""

    patient: str
    time: dt.datetime
    median: float
    lower: float
    upper: float
    level: float
    unit: str
    loinc: str
    derived_from: tuple[str, ...]
    source: str


def codings(concept: Any) -> list[Any]:
    """The codings of a CodeableConcept (none for a missing one)."""
    return list(concept.coding or []) if concept is not None else []


def loinc_code(concept: Any) -> tuple[LoincCode | None, list[str]]:
    """The first coding of `concept` in the LOINC table, and every LOINC code seen."""
    seen = []
    for c in (concept.coding if concept is not None else None) or ():
        if c.system == LOINC_SYSTEM and c.code:
            seen.append(str(c.code))
            if c.code in LOINC:
                return LOINC[c.code], seen
    return None, seen


def is_forecast(model: Any) -> bool:
    method = model.method
    return method is not None and any(
        c.system == TWINS_SYSTEM and c.code == "forecast" for c in method.coding or ()
    )


def observation_time(r: Resource, exact: bool) -> dt.datetime:
    m = r.model
    read = instant if exact else moment
    if m.effectiveDateTime is not None:
        return read(m.effectiveDateTime, r.at("effectiveDateTime"))
    if m.effectiveInstant is not None:
        return read(m.effectiveInstant, r.at("effectiveInstant"))
    if m.effectivePeriod is not None:
        return read(m.effectivePeriod.start, r.at("effectivePeriod.start"))
    raise FhirError(r.rtype, r.rid, "effective[x]", "expected when it was measured, got none.")


def _diplotype(r: Resource, gene: str | None) -> tuple[str, str]:
    m = r.model
    if m.valueString is not None:
        text, field = m.valueString, "valueString"
    elif m.valueCodeableConcept is not None:
        cc = m.valueCodeableConcept
        codings = [c for c in cc.coding or () if c.code or c.display]
        text = cc.text or (codings[0].display or codings[0].code if codings else None)
        field = "valueCodeableConcept"
    else:
        raise FhirError(
            r.rtype,
            r.rid,
            "value[x]",
            "expected the diplotype as valueCodeableConcept or valueString.",
        )
    text = (text or "").strip()
    for symbol in HGNC.values():
        if text.upper().startswith(symbol) and not text[len(symbol) :][:1].isalnum():
            if gene is not None and gene != symbol:
                raise FhirError(
                    r.rtype, r.rid, field, f"names {symbol} but the gene studied is {gene}."
                )
            gene, text = symbol, text[len(symbol) :].strip()
            break
    if gene is None:
        raise FhirError(
            r.rtype,
            r.rid,
            f"component[{GENE_STUDIED}]",
            f"expected the gene studied (LOINC {GENE_STUDIED}, HGNC code) or a diplotype "
            f"starting with one of {', '.join(HGNC.values())}.",
        )
    if not text:
        raise FhirError(r.rtype, r.rid, field, "expected a diplotype, got none.")
    return gene, text


def _gene_studied(r: Resource) -> str | None:
    for i, comp in enumerate(r.model.component or ()):
        codes = [c.code for c in codings(comp.code) if c.system == LOINC_SYSTEM]
        if GENE_STUDIED not in codes:
            continue
        cc = comp.valueCodeableConcept
        for c in (cc.coding if cc is not None else None) or ():
            if c.system == HGNC_SYSTEM and c.code in HGNC:
                return HGNC[c.code]
            if c.system == HGNC_SYSTEM and c.display in HGNC.values():
                return c.display
        raise FhirError(
            r.rtype,
            r.rid,
            f"component[{i}].valueCodeableConcept",
            f"expected an HGNC gene of {', '.join(f'{g} ({k})' for k, g in HGNC.items())}.",
        )
    return None


def observation_value(r: Resource, patient: str, loinc: LoincCode, time: dt.datetime) -> Value:
    m = r.model
    source = f"{r.rtype}/{r.rid}"
    if loinc.kind == "genotype":
        gene, diplotype = _diplotype(r, _gene_studied(r))
        return Value(patient, loinc, time, diplotype, False, gene, source)
    q = m.valueQuantity
    if q is None:
        raise FhirError(
            r.rtype,
            r.rid,
            "valueQuantity",
            f"expected a quantity for LOINC {loinc.code} ({loinc.name}).",
        )
    where = r.at("valueQuantity")
    censored = False
    if q.comparator is not None:
        if loinc.kind != "level" or q.comparator not in ("<", "<="):
            raise FhirError(
                r.rtype,
                r.rid,
                "valueQuantity.comparator",
                f"a value given as {q.comparator!r} a limit is not read "
                "(only drug levels below a limit of quantification, '<').",
            )
        censored = True
    value = convert(
        quantity_value(q, where),
        quantity_code(q, where),
        loinc.unit,
        where,
        molar_mass=loinc.molar_mass,
        enzyme=loinc.enzyme,
    )
    if loinc.kind == "level" and value < 0:
        raise FhirError(r.rtype, r.rid, "valueQuantity.value", f"expected >= 0, got {value:g}.")
    return Value(patient, loinc, time, value, censored, "", source)


def _extension(model: Any, name: str) -> Any:
    for e in model.extension or ():
        if e.url == TWINS_EXTENSION + name:
            return e
    return None


def forecast_value(r: Resource, patient: str) -> ForecastValue:
    m = r.model
    where = r.at("valueQuantity")
    if m.valueQuantity is None:
        raise FhirError(r.rtype, r.rid, "valueQuantity", "expected the forecast median.")
    unit = quantity_code(m.valueQuantity, where)
    median = float(quantity_value(m.valueQuantity, where))
    bands: dict[str, float] = {}
    for i, comp in enumerate(m.component or ()):
        codes = [c.code for c in codings(comp.code) if c.system == TWINS_SYSTEM]
        for name in ("lower", "upper"):
            if name in codes:
                w = r.at(f"component[{i}].valueQuantity")
                if comp.valueQuantity is None:
                    raise FhirError(*w, "expected a quantity.")
                bands[name] = convert(
                    quantity_value(comp.valueQuantity, w),
                    quantity_code(comp.valueQuantity, w),
                    unit,
                    w,
                )
    level = _extension(m, "band-level")
    for name in ("lower", "upper"):
        if name not in bands:
            raise FhirError(r.rtype, r.rid, "component", f"expected the {name} band.")
    if level is None or level.valueDecimal is None:
        raise FhirError(r.rtype, r.rid, "extension[band-level]", "expected the band's level.")
    loinc, _ = loinc_code(m.code)
    return ForecastValue(
        patient,
        instant(m.effectiveDateTime, r.at("effectiveDateTime")),
        median,
        bands["lower"],
        bands["upper"],
        float(level.valueDecimal),
        unit,
        loinc.code if loinc else "",
        tuple(d.reference for d in m.derivedFrom or () if d.reference),
        f"{r.rtype}/{r.rid}",
    )


def _purposes(r: Resource, provision: Any, field: str) -> list[Purpose]:
    codings = provision.purpose or []
    if not codings:
        return list(Purpose)  # FHIR: a provision without purpose applies to every purpose
    out = []
    for i, c in enumerate(codings):
        value = PURPOSES.get((c.system, c.code))
        if value is None:
            raise FhirError(
                r.rtype,
                r.rid,
                f"{field}.purpose[{i}]",
                "a purpose that is not read; expected ActReason TREAT, HRESCH or CLINTRCH, or "
                f"{TWINS_SYSTEM}#federated-training.",
            )
        out.append(Purpose(value))
    return out


def _period(r: Resource, period: Any, field: str, inherited: tuple) -> tuple:
    if period is None:
        return inherited
    start = None if period.start is None else moment(period.start, r.at(f"{field}.period.start"))
    end = None if period.end is None else moment(period.end, r.at(f"{field}.period.end"))
    return start, end


def consents(r: Resource, patient: str) -> list[Consent]:
    """The decisions of an active Consent: its provision and nested provisions (each
    `permit`/`deny` for its purposes over its period, inheriting the parent's)."""
    out: list[Consent] = []
    source = f"Consent/{r.rid}"

    def walk(provision: Any, field: str, inherited: tuple, parent: str | None) -> None:
        kind = provision.type or parent
        if kind not in ("permit", "deny"):
            raise FhirError(r.rtype, r.rid, f"{field}.type", "expected 'permit' or 'deny'.")
        start, end = _period(r, provision.period, field, inherited)
        for purpose in _purposes(r, provision, field):
            try:
                out.append(Consent(patient, purpose, Decision(kind), start, end, source))
            except ValueError as error:
                raise FhirError(r.rtype, r.rid, f"{field}.period", str(error)) from None
        for i, sub in enumerate(provision.provision or ()):
            walk(sub, f"{field}.provision[{i}]", (start, end), kind)

    if r.model.provision is None:
        raise FhirError(r.rtype, r.rid, "provision", "expected a provision (permit or deny).")
    walk(r.model.provision, "provision", (None, None), None)
    return out
