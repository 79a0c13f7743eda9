"""Doses from MedicationAdministration, MedicationRequest and MedicationStatement.

Each dose becomes a NONMEM dose record (`EVID 1, AMT, CMT, RATE, II, ADDL`) with its time
kept as an aware datetime until the patient's origin is known (`_read`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import Any

from ._codes import ATC_SYSTEM, ROUTES, RXNORM_SYSTEM, SNOMED_SYSTEM, Substance
from ._errors import FhirError
from ._source import Index, Resource
from ._times import hours, instant
from ._units import convert, quantity_code, quantity_value

_PERIOD_HOURS = {"min": 1.0 / 60.0, "h": 1.0, "d": 24.0, "wk": 168.0}
_UNSUPPORTED_REPEAT = (
    "timeOfDay",
    "dayOfWeek",
    "when",
    "offset",
    "frequencyMax",
    "periodMax",
    "durationMax",
    "countMax",
    "boundsRange",
    "boundsDuration",
)


@dataclasses.dataclass(frozen=True)
class Dose:
    """One dose record before times become hours: `start` (aware), `amount` (mg),
    `duration` (h, 0 for a bolus or oral dose), `ii` (h) and `addl` (further doses),
    `source` (`Type/id` of the resource)."""

    start: dt.datetime
    amount: float
    duration: float
    ii: float
    addl: int
    source: str


def medication_matches(r: Resource, index: Index, substance: Substance) -> bool:
    """Whether a medication resource is for `substance` (RxNorm ingredient or ATC code, in
    `medicationCodeableConcept` or in the `Medication` that `medicationReference` names)."""
    m = r.model
    concept = m.medicationCodeableConcept
    if concept is None and m.medicationReference is not None:
        med = index.get(m.medicationReference.reference)
        if med is None or med.rtype != "Medication":
            raise FhirError(
                r.rtype,
                r.rid,
                "medicationReference",
                "expected a reference to a Medication in the same bundle or export.",
            )
        concept = med.model.code
    if concept is None:
        raise FhirError(r.rtype, r.rid, "medication[x]", "expected the medication's code.")
    for c in concept.coding or ():
        if c.system == RXNORM_SYSTEM and c.code in substance.rxnorm:
            return True
        if c.system == ATC_SYSTEM and c.code in substance.atc:
            return True
    return False


def _route(r: Resource, route: Any, field: str) -> str | None:
    if route is None:
        return None
    for c in route.coding or ():
        if c.system == SNOMED_SYSTEM and c.code in ROUTES:
            return ROUTES[c.code]
    raise FhirError(
        r.rtype,
        r.rid,
        field,
        f"a route that is not read; expected SNOMED CT {', '.join(ROUTES)} "
        f"({', '.join(ROUTES.values())}).",
    )


def _amount(r: Resource, quantity: Any, field: str, substance: Substance) -> float:
    where = r.at(field)
    value = convert(
        quantity_value(quantity, where), quantity_code(quantity, where), substance.dose_unit, where
    )
    if not value > 0:
        raise FhirError(r.rtype, r.rid, f"{field}.value", f"expected a dose > 0, got {value:g}.")
    return value


def _rate(r: Resource, dosage: Any, field: str) -> float | None:
    """mg/h from `rateQuantity` or `rateRatio` (a volume rate cannot be read)."""
    if dosage.rateQuantity is not None:
        where = r.at(f"{field}.rateQuantity")
        q = dosage.rateQuantity
        return convert(quantity_value(q, where), quantity_code(q, where), "mg/h", where)
    if dosage.rateRatio is not None:
        ratio = dosage.rateRatio
        num = r.at(f"{field}.rateRatio.numerator")
        den = r.at(f"{field}.rateRatio.denominator")
        if ratio.numerator is None or ratio.denominator is None:
            raise FhirError(r.rtype, r.rid, f"{field}.rateRatio", "expected both terms.")
        mg = convert(
            quantity_value(ratio.numerator, num), quantity_code(ratio.numerator, num), "mg", num
        )
        h = convert(
            quantity_value(ratio.denominator, den), quantity_code(ratio.denominator, den), "h", den
        )
        return mg / h
    return None


def administration(r: Resource, substance: Substance) -> Dose:
    """The dose of a completed (or stopped) MedicationAdministration."""
    m = r.model
    if m.dosage is None or m.dosage.dose is None:
        raise FhirError(r.rtype, r.rid, "dosage.dose", "expected the amount given, got none.")
    amount = _amount(r, m.dosage.dose, "dosage.dose", substance)
    if m.effectiveDateTime is not None:
        start, end = instant(m.effectiveDateTime, r.at("effectiveDateTime")), None
    else:
        period = m.effectivePeriod
        start = instant(period.start if period else None, r.at("effectivePeriod.start"))
        end = None
        if period is not None and period.end is not None:
            end = instant(period.end, r.at("effectivePeriod.end"))
            if end < start:
                raise FhirError(r.rtype, r.rid, "effectivePeriod.end", "expected end >= start.")
    rate = _rate(r, m.dosage, "dosage")
    duration = 0.0 if end is None else hours(end, start)
    if rate is not None:
        if not rate > 0:
            raise FhirError(r.rtype, r.rid, "dosage.rate[x]", f"expected > 0, got {rate:g} mg/h.")
        by_rate = amount / rate
        if end is not None and abs(by_rate - duration) > 1.0 / 60.0:
            raise FhirError(
                r.rtype,
                r.rid,
                "dosage.rate[x]",
                f"the rate gives {by_rate:.4g} h for the dose but effectivePeriod lasts "
                f"{duration:.4g} h; expected them to agree within a minute.",
            )
        if end is None:
            duration = by_rate
    route = _route(r, m.dosage.route, "dosage.route")
    if route == "oral" and duration > 0:
        raise FhirError(r.rtype, r.rid, "dosage.route", "an oral dose given over a period.")
    return Dose(start, amount, duration, 0.0, 0, f"{r.rtype}/{r.rid}")


def _one_dosage(r: Resource, field: str) -> Any:
    items = getattr(r.model, field) or []
    if len(items) != 1:
        raise FhirError(
            r.rtype,
            r.rid,
            field,
            f"expected exactly one Dosage, got {len(items)} (split a changing regimen into "
            "one resource per regimen).",
        )
    return items[0]


def regimen(
    r: Resource, substance: Substance, field: str, until: dt.datetime, *, index: int | None = None
) -> tuple[list[Dose], int]:
    """The doses of a MedicationRequest (`field="dosageInstruction"`) or MedicationStatement
    (`"dosage"`) due at or before `until`, and how many more were due after it. `index`:
    read that Dosage of several (a proposal's loading dose and maintenance doses); `None`:
    the resource must have exactly one."""
    if index is None:
        d = _one_dosage(r, field)
        f = f"{field}[0]"
    else:
        d = (getattr(r.model, field) or [])[index]
        f = f"{field}[{index}]"
    if d.asNeededBoolean or d.asNeededCodeableConcept is not None:
        raise FhirError(
            r.rtype,
            r.rid,
            f"{f}.asNeeded[x]",
            "an as-needed regimen: when doses were taken is not known.",
        )
    dar = d.doseAndRate or []
    if len(dar) != 1 or dar[0].doseQuantity is None:
        raise FhirError(
            r.rtype,
            r.rid,
            f"{f}.doseAndRate[0].doseQuantity",
            "expected one dose quantity (a dose range is not read).",
        )
    amount = _amount(r, dar[0].doseQuantity, f"{f}.doseAndRate[0].doseQuantity", substance)
    rate = _rate(r, dar[0], f"{f}.doseAndRate[0]")
    if d.timing is None:
        raise FhirError(r.rtype, r.rid, f"{f}.timing", "expected the timing of the doses.")
    route = _route(r, d.route, f"{f}.route")
    source = f"{r.rtype}/{r.rid}"
    duration = 0.0
    rep = d.timing.repeat
    if rep is not None and rep.duration is not None:
        unit = rep.durationUnit
        if unit not in _PERIOD_HOURS:
            raise FhirError(
                r.rtype,
                r.rid,
                f"{f}.timing.repeat.durationUnit",
                f"expected one of {list(_PERIOD_HOURS)}, got {unit!r}.",
            )
        duration = float(rep.duration) * _PERIOD_HOURS[unit]
    elif rate is not None:
        duration = amount / rate
    if route == "oral" and duration > 0:
        raise FhirError(r.rtype, r.rid, f"{f}.route", "an oral dose given over a period.")
    if d.timing.event:
        if rep is not None:
            raise FhirError(
                r.rtype, r.rid, f"{f}.timing", "expected timing.event or timing.repeat, not both."
            )
        times = [instant(t, r.at(f"{f}.timing.event[{i}]")) for i, t in enumerate(d.timing.event)]
        due = [t for t in sorted(times) if t <= until]
        doses = [Dose(t, amount, duration, 0.0, 0, source) for t in due]
        return doses, len(times) - len(due)
    if rep is None:
        raise FhirError(r.rtype, r.rid, f"{f}.timing", "expected timing.event or timing.repeat.")
    for name in _UNSUPPORTED_REPEAT:
        if getattr(rep, name) not in (None, []):
            raise FhirError(
                r.rtype,
                r.rid,
                f"{f}.timing.repeat.{name}",
                "not read: give the dose times as timing.event instead.",
            )
    if rep.boundsPeriod is None:
        raise FhirError(
            r.rtype,
            r.rid,
            f"{f}.timing.repeat.boundsPeriod.start",
            "expected when the regimen starts.",
        )
    start = instant(rep.boundsPeriod.start, r.at(f"{f}.timing.repeat.boundsPeriod.start"))
    if rep.period is None and rep.count is not None and int(rep.count) == 1:
        # one dose (a proposal's loading dose): no period needed
        due = hours(until, start) >= 0
        return ([Dose(start, amount, duration, 0.0, 0, source)], 0) if due else ([], 1)
    if rep.period is None or rep.periodUnit not in _PERIOD_HOURS:
        raise FhirError(
            r.rtype,
            r.rid,
            f"{f}.timing.repeat.period",
            f"expected a period with periodUnit in {list(_PERIOD_HOURS)}.",
        )
    frequency = int(rep.frequency or 1)
    ii = float(rep.period) * _PERIOD_HOURS[rep.periodUnit] / frequency
    if not ii > 0:
        raise FhirError(r.rtype, r.rid, f"{f}.timing.repeat.period", "expected a period > 0.")
    if rep.count is not None:
        n = int(rep.count)
    elif rep.boundsPeriod.end is not None:
        end = instant(rep.boundsPeriod.end, r.at(f"{f}.timing.repeat.boundsPeriod.end"))
        n = 0
        while hours(end, start) > n * ii + 1e-9:
            n += 1
    else:
        raise FhirError(
            r.rtype,
            r.rid,
            f"{f}.timing.repeat.count",
            "expected count or boundsPeriod.end: the number of doses.",
        )
    if n < 1:
        raise FhirError(r.rtype, r.rid, f"{f}.timing.repeat.count", "expected >= 1 dose.")
    elapsed = hours(until, start)
    past = 0 if elapsed < 0 else min(n, math.floor(elapsed / ii + 1e-9) + 1)
    if past == 0:
        return [], n
    return [Dose(start, amount, duration, ii, past - 1, source)], n - past
