"""Plausibility ranges: the second tier of the checks on a patient's values.

A patient's numbers go through two tiers of checks:

1. **Hard limits** (`twins._patient.DEMOGRAPHIC_RANGES`, `twins.LABS`): values that are
   physically impossible or almost surely a unit mistake (a weight of 520 kg, a creatinine of
   88 mg/dL that is really µmol/L). Always refused, one `ValueError` at a time.
2. **Plausibility ranges** (`PLAUSIBLE_RANGES`, here): values inside the hard limits that real
   patients almost never have: a weight of 0.3 kg at 120 years, a creatinine of 25 mg/dL.
   Every value outside its range is reported at once, in one `ImplausiblePatientError`; the
   caller may lift the range of a field by saying why the value is right:
   `Patient(..., unusual={"weight": "extremely preterm neonate"})`.

The ranges are deliberately wide: they are not reference intervals and not percentiles, but
broad bounds, ours, chosen to lie well outside the extremes of the growth standards and
reference data cited with each range (where they exist), so that extreme but real patients
pass and data errors (a unit or a column mixed up, an age in months, a placeholder date of
birth) do not. Weight, height and BMI are banded by age; the labs are not (each range holds
for neonates and adults alike). Each `PlausibleRange` names its source.

This module knows nothing of `Patient` or `Population`; `twins._patient` and
`twins._population_table` call `find_implausible` and raise `ImplausiblePatientError`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

# --- sources ---------------------------------------------------------------------------------

_WHO_2006 = (
    "WHO Multicentre Growth Reference Study Group. WHO Child Growth Standards: length/height-"
    "for-age, weight-for-age, weight-for-length, weight-for-height and body mass index-for-age: "
    "methods and development. Geneva: World Health Organization; 2006"
)
_CDC_2000 = (
    "Kuczmarski RJ, Ogden CL, Guo SS, et al. 2000 CDC Growth Charts for the United States: "
    "methods and development. Vital Health Stat 11. 2002;(246):1-190"
)
_ICD10_LBW = (
    "World Health Organization. ICD-10, P07.0: extremely low birth weight (999 g or less); "
    "Fenton TR, Kim JH. A systematic review and meta-analysis to revise the Fenton growth chart "
    "for preterm infants. BMC Pediatr 2013;13:59"
)
_ADULT_HEIGHT = (
    "NCD Risk Factor Collaboration (NCD-RisC). A century of trends in adult human height. eLife "
    "2016;5:e13410 (national mean heights about 150 to 183 cm); Horton WA, Rotter JI, Rimoin "
    "DL, Scott CI, Hall JG. Standard growth curves for achondroplasia. J Pediatr "
    "1978;93(3):435-438 (mean adult heights about 131 cm, men, and 124 cm, women)"
)
_ADULT_BMI = (
    "WHO. Obesity: preventing and managing the global epidemic. WHO Technical Report Series "
    "894. Geneva: WHO; 2000 (obesity class III: BMI >= 40); American Psychiatric Association. "
    "DSM-5. 2013 (anorexia nervosa, extreme: BMI < 15)"
)
_AGE = (
    "Robine JM, Allard M. The oldest human. Science 1998;279(5358):1834-1835 (the longest "
    "verified life, 122 years); Maier H, Gampe J, Jeune B, Robine JM, Vaupel JW (eds). "
    "Supercentenarians. Demographic Research Monographs 7. Springer; 2010 (ages of 110 and "
    "over are validated person by person)"
)
_OURS = "ours (a broad bound, not a reference interval)"


@dataclass(frozen=True)
class PlausibleRange:
    """The plausibility range of one field in one age band.

    **Fields:**

    - `field`: `"age"`, `"weight"`, `"height"`, `"bmi"` (weight / height², derived) or a lab
      name of `twins.LABS`.
    - `unit`: the unit of `low` and `high` (the field's own unit).
    - `low`, `high`: the plausible values, inclusive.
    - `age_low`, `age_high`: the age band in years, `age_low <= age < age_high`
      (`age_high = inf` for the last band).
    - `band`: the band in words (`"under 1 year"`, `"18 years and over"`, `"all ages"`).
    - `source`: where the bound comes from: the references it was set against, and whether
      the bound itself is ours.
    - `hint`: what a value outside the range usually means, and the usual good reason.
    """

    field: str
    unit: str
    low: float
    high: float
    age_low: float
    age_high: float
    band: str
    source: str
    hint: str = ""

    def contains_age(self, age: float) -> bool:
        """`True` when `age` (years) lies in this band."""
        return self.age_low <= age < self.age_high


def _band(
    age_low: float,
    age_high: float,
    band: str,
    source: str,
    *,
    weight: tuple[float, float],
    height: tuple[float, float],
    bmi: tuple[float, float],
    weight_hint: str = "",
) -> tuple[PlausibleRange, ...]:
    return (
        PlausibleRange("weight", "kg", *weight, age_low, age_high, band, source, weight_hint),
        PlausibleRange("height", "cm", *height, age_low, age_high, band, source),
        PlausibleRange("bmi", "kg/m²", *bmi, age_low, age_high, band, source),
    )


_CHILD = f"{_OURS}, set well outside the -3 SD to +3 SD curves of {_WHO_2006}"
_CHILD_CDC = f"{_OURS}, set well outside the 3rd to 97th percentiles of {_CDC_2000}"

#: Every plausibility range, by field and age band (see the module docstring and
#: docs/patients.md). Weight, height and BMI have one range per age band; age and the labs
#: one range for all ages.
PLAUSIBLE_RANGES: tuple[PlausibleRange, ...] = (
    PlausibleRange(
        "age",
        "years",
        0.0,
        110.0,
        0.0,
        math.inf,
        "all ages",
        f"{_OURS}; {_AGE}",
        "an age above 110 is more often a placeholder date of birth than a supercentenarian",
    ),
    *_band(
        0.0,
        1.0,
        "under 1 year",
        f"{_CHILD}; the lower weight bound is the WHO threshold of extremely low birth weight, "
        f"{_ICD10_LBW}",
        weight=(1.0, 17.0),
        height=(32.0, 90.0),
        bmi=(4.0, 30.0),
        weight_hint="a neonate under 1 kg is of extremely low birth weight (ICD-10 P07.0): if "
        "so, say so",
    ),
    *_band(
        1.0, 2.0, "1 to 2 years", _CHILD, weight=(4.0, 22.0), height=(55.0, 105.0), bmi=(7.0, 30.0)
    ),
    *_band(
        2.0,
        5.0,
        "2 to 5 years",
        f"{_CHILD} and the 3rd to 97th percentiles of {_CDC_2000}",
        weight=(5.0, 45.0),
        height=(65.0, 135.0),
        bmi=(8.0, 45.0),
    ),
    *_band(
        5.0,
        10.0,
        "5 to 10 years",
        _CHILD_CDC,
        weight=(8.0, 110.0),
        height=(80.0, 170.0),
        bmi=(8.0, 60.0),
    ),
    *_band(
        10.0,
        15.0,
        "10 to 15 years",
        _CHILD_CDC,
        weight=(12.0, 220.0),
        height=(100.0, 210.0),
        bmi=(9.0, 100.0),
    ),
    *_band(
        15.0,
        18.0,
        "15 to 18 years",
        _CHILD_CDC,
        weight=(15.0, 300.0),
        height=(100.0, 225.0),
        bmi=(10.0, 100.0),
    ),
    *_band(
        18.0,
        math.inf,
        "18 years and over",
        f"{_OURS}; height: {_ADULT_HEIGHT}; BMI: {_ADULT_BMI}",
        weight=(15.0, 350.0),
        height=(100.0, 230.0),
        bmi=(10.0, 100.0),
    ),
    PlausibleRange(
        "serum_creatinine",
        "mg/dL",
        0.1,
        15.0,
        0.0,
        math.inf,
        "all ages",
        _OURS,
        "above 15 mg/dL is seen in kidney failure, on dialysis or awaiting it: if so, say so "
        "(unusual={'serum_creatinine': 'on haemodialysis'})",
    ),
    PlausibleRange(
        "albumin",
        "g/dL",
        1.0,
        6.0,
        0.0,
        math.inf,
        "all ages",
        _OURS,
        "below 1 g/dL is seen in congenital analbuminaemia and the most severe protein loss",
    ),
    PlausibleRange(
        "bilirubin",
        "mg/dL",
        0.01,
        50.0,
        0.0,
        math.inf,
        "all ages",
        f"{_OURS}; above the exchange-transfusion thresholds of neonates (under 30 mg/dL: "
        "American Academy of Pediatrics Subcommittee on Hyperbilirubinemia. Pediatrics "
        "2004;114(1):297-316) and the levels of liver failure",
    ),
    PlausibleRange(
        "inr",
        "ratio",
        0.7,
        15.0,
        0.0,
        math.inf,
        "all ages",
        f"{_OURS}; above the INR > 10 for which anticoagulation guidelines give advice "
        "(Holbrook A et al. Chest 2012;141(2 Suppl):e152S-e184S)",
    ),
)

#: The fields whose plausibility range `unusual` may lift, in the order they are checked.
UNUSUAL_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(r.field for r in PLAUSIBLE_RANGES))

_BY_FIELD: Mapping[str, tuple[PlausibleRange, ...]] = MappingProxyType(
    {f: tuple(r for r in PLAUSIBLE_RANGES if r.field == f) for f in UNUSUAL_FIELDS}
)

#: Fields of a patient that have no plausibility range (hard limits only), for messages.
_HARD_ONLY_LABS: tuple[str, ...] = (
    "cystatin_c",
    "alt",
    "ast",
    "alp",
    "bun",
    "hemoglobin",
    "platelets",
)


def plausible_range(field: str, age: float) -> PlausibleRange | None:
    """The plausibility range of `field` at `age` (years), or `None` if it has none.

    **Arguments:**

    - `field`: `"age"`, `"weight"`, `"height"`, `"bmi"` or a lab name.
    - `age`: years.

    **Returns:**

    The `PlausibleRange` of the band that holds `age`, or `None` for a field with hard limits
    only (`"alt"`, `"platelets"`, ...).
    """
    for candidate in _BY_FIELD.get(field, ()):
        if candidate.contains_age(age):
            return candidate
    return None


# --- findings and the error ---------------------------------------------------------------------


@dataclass(frozen=True)
class ImplausibleValue:
    """One value outside its plausibility range.

    **Fields:** `patient_id`; `field` (`"weight"`, `"bmi"`, `"serum_creatinine"`, ...);
    `value` (in the range's unit); `range` (the `PlausibleRange` that was applied, with its
    age band and source); `row` (the row of a table, counted from 0, or `None` for a
    `Patient`); `imputed` (the value, or for `bmi` the weight or height, was imputed).
    """

    patient_id: str
    field: str
    value: float
    range: PlausibleRange
    row: int | None = None
    imputed: bool = False

    def describe(self) -> str:
        """The finding in words (one line)."""
        who = "" if self.row is None else f"row {self.row} (id {self.patient_id!r}): "
        what = f"{self.field} = {self.value:.4g} {self.range.unit}"
        if self.field == "bmi":
            what += " (weight / height²)"
        text = (
            f"{who}{what} is outside the plausible {self.range.low:g} to {self.range.high:g} "
            f"{self.range.unit} ({self.range.band})"
        )
        if self.imputed:
            text += " (an imputed value: check the observed data that predict it)"
        elif self.range.hint:
            text += f"; {self.range.hint}"
        return text


#: How many findings an `ImplausiblePatientError` message lists (all are in `findings`).
LISTED = 10


class ImplausiblePatientError(ValueError):
    """Values inside the hard limits but outside the plausibility ranges (`PLAUSIBLE_RANGES`).

    Every field of every patient is checked before this is raised, and all findings are
    reported together. The message names the patient (and the row, for a table), each field,
    its value, the plausible range with its age band, and how to accept the value:
    `unusual={"<field>": "<reason>"}`.

    **Attributes:**

    - `findings`: a tuple of `ImplausibleValue`, in row and field order.
    - `patient_id`: the id of the first patient concerned.
    - `fields`: the fields concerned, each once, in the order checked.
    """

    def __init__(self, findings: Sequence[ImplausibleValue], subject: str, how: str):
        if not findings:
            raise ValueError("ImplausiblePatientError needs at least one finding.")
        self.findings = tuple(findings)
        self.patient_id = self.findings[0].patient_id
        self.fields = tuple(dict.fromkeys(f.field for f in self.findings))
        patients = len({f.patient_id for f in self.findings})
        if self.findings[0].row is None:
            head = f"{subject}: implausible values"
        else:
            plural = "s" if patients > 1 else ""
            head = f"{subject}: {patients} patient{plural} with implausible values"
        lines = [
            f"{head} (within the hard limits, but outside the ranges real patients have):",
            *(f"  - {f.describe()}" for f in self.findings[:LISTED]),
        ]
        if len(self.findings) > LISTED:
            lines.append(
                f"  - and {len(self.findings) - LISTED} more (the error's `findings` lists all)"
            )
        example = ", ".join(f"{name!r}: '<reason>'" for name in self.fields)
        lines.append(
            f"If a value is right, say why: {how.replace('{example}', '{' + example + '}')}; that "
            "lifts the plausibility range of each field named (the hard limits still apply). "
            "The ranges and their sources: twins.PLAUSIBLE_RANGES (docs/patients.md)."
        )
        super().__init__("\n".join(lines))


# --- checking --------------------------------------------------------------------------------


def find_implausible(
    values: Mapping[str, Any],
    ids: Sequence[str] | np.ndarray,
    *,
    lifted: Collection[str] = (),
    rows: bool = True,
) -> list[ImplausibleValue]:
    """Every value outside its plausibility range, in row and field order.

    **Arguments:**

    - `values`: field -> value or array of values (one per patient); must hold `age`;
      `bmi` is computed from `weight` and `height` when both are given. NaN (a missing value)
      is never a finding. Fields without a plausibility range are ignored.
    - `ids`: the patient ids, one per patient.
    - `lifted`: fields whose ranges are lifted (`unusual`).
    - `rows`: whether the findings carry the row number (tables) or not (one `Patient`).

    **Returns:** a list of `ImplausibleValue` (empty when everything is plausible).
    """
    age = np.atleast_1d(np.asarray(values["age"], dtype=float))
    arrays = {k: np.atleast_1d(np.asarray(v, dtype=float)) for k, v in values.items()}
    if "weight" in arrays and "height" in arrays:
        with np.errstate(divide="ignore", invalid="ignore"):
            arrays["bmi"] = arrays["weight"] / (arrays["height"] / 100.0) ** 2
    hits: list[tuple[int, int, ImplausibleValue]] = []
    for order, field in enumerate(UNUSUAL_FIELDS):
        if field in lifted or field not in arrays:
            continue
        column = arrays[field]
        for candidate in _BY_FIELD[field]:
            in_band = (age >= candidate.age_low) & (age < candidate.age_high)
            outside = in_band & ((column < candidate.low) | (column > candidate.high))
            for i in np.flatnonzero(outside).tolist():
                found = ImplausibleValue(
                    str(ids[i]), field, float(column[i]), candidate, i if rows else None
                )
                hits.append((i, order, found))
    hits.sort(key=lambda hit: (hit[0], hit[1]))
    return [found for _, _, found in hits]


def unusual_name_problem(name: Any) -> str | None:
    """Why `name` cannot be a key of `unusual`, or `None` if it can."""
    if not isinstance(name, str):
        return f"field names must be strings, got {name!r}"
    if name in UNUSUAL_FIELDS:
        return None
    if name in _HARD_ONLY_LABS:
        return (
            f"lab {name!r} has hard limits only, no plausibility range to lift; fields with "
            f"plausibility ranges: {', '.join(UNUSUAL_FIELDS)}"
        )
    close = [name.lower()] if name.lower() in UNUSUAL_FIELDS else []
    close = close or difflib.get_close_matches(name.lower(), UNUSUAL_FIELDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"unknown field {name!r}{hint}; fields with plausibility ranges: "
        f"{', '.join(UNUSUAL_FIELDS)}"
    )


def reason_problem(reason: Any) -> str | None:
    """Why `reason` cannot be the reason for an `unusual` value, or `None` if it can."""
    if not isinstance(reason, str) or not reason.strip():
        return (
            f"the reason must be a non-empty string saying why the value is right, got {reason!r}"
        )
    return None


def normalise_unusual(
    unusual: Any, where: str, available: Iterable[str], what: str
) -> Mapping[str, str]:
    """`unusual` checked: a read-only mapping field -> reason (stripped), sorted by field.

    **Arguments:**

    - `unusual`: the mapping given (field name -> reason).
    - `where`: the subject of error messages (`"Patient 'P1'"`, `"Population"`).
    - `available`: the fields that the subject has (its labs, or the table's columns).
    - `what`: who has `available`, in words, for the message (`"the patient has"`).

    **Raises:** `TypeError` for a value that is not a mapping; `ValueError` naming the entry for
    an unknown field, a field without a plausibility range, a lab the subject does not have,
    or a reason that is not a non-empty string.
    """
    if not isinstance(unusual, Mapping):
        raise TypeError(
            f"{where}: unusual must be a mapping field -> reason, e.g. "
            f"{{'weight': 'extremely preterm neonate'}}, got {unusual!r}."
        )
    have = set(available)
    out: dict[str, str] = {}
    for name, reason in unusual.items():
        problem = unusual_name_problem(name)
        if problem is not None:
            raise ValueError(f"{where}: unusual[{name!r}]: {problem}.")
        if name not in have:
            raise ValueError(
                f"{where}: unusual[{name!r}]: no {name!r} value to lift the range of ({what}: "
                f"{', '.join(f for f in UNUSUAL_FIELDS if f in have)})."
            )
        problem = reason_problem(reason)
        if problem is not None:
            raise ValueError(f"{where}: unusual[{name!r}]: {problem}.")
        out[name] = reason.strip()
    return MappingProxyType(dict(sorted(out.items(), key=lambda kv: UNUSUAL_FIELDS.index(kv[0]))))


__all__ = [
    "PLAUSIBLE_RANGES",
    "UNUSUAL_FIELDS",
    "ImplausiblePatientError",
    "ImplausibleValue",
    "PlausibleRange",
    "find_implausible",
    "normalise_unusual",
    "plausible_range",
]
