"""UCUM quantities of FHIR resources in the project's units, through `ucumvert` and `pint`.

A FHIR `Quantity` names its unit by a UCUM code (`system = "http://unitsofmeasure.org"`,
`code = "mg/dL"`); `ucumvert` parses the code (the UCUM grammar) into a `pint` unit, and
`pint` converts. No conversion factor is written here by hand, with two stated exceptions:

- amount-of-substance to mass concentrations (creatinine in µmol/L to mg/dL) multiply by the
  analyte's molar mass, stated in the code table (`twins.io.LOINC`);
- UCUM's `[IU]` (an arbitrary unit, not convertible) is read as the enzyme unit `U` for the
  enzyme activities ALT and AST, where laboratories use "IU/L" and "U/L" for the same
  thing (1 µmol/min of substrate).

A unit that `ucumvert` cannot parse, a quantity without a UCUM code, or a unit of another
dimension than the one wanted is a `FhirError` naming the resource, its id and the field.

References: Schadow G, McDonald CJ. The Unified Code for Units of Measure (UCUM), version
2.1, Regenstrief Institute 2017. ucumvert (MIT), pint (BSD).
"""

from __future__ import annotations

import functools
import math
import re
import threading
from decimal import Decimal
from typing import Any

from ._errors import FhirError

UCUM = "http://unitsofmeasure.org"

_ANNOTATION_ONLY = re.compile(r"\{[^{}]*\}")

#: ucumvert's parser (lark) and pint's unit arithmetic are not thread-safe: four threads
#: converting at once got wrong or failed conversions (2,815 of 12,000). Every conversion
#: (parsing included) holds this lock, so `read_fhir` may run in several threads.
_LOCK = threading.RLock()


@functools.cache
def registry() -> Any:
    """The `ucumvert.PintUcumRegistry` (built once; about 0.7 s)."""
    from ucumvert import PintUcumRegistry

    return PintUcumRegistry()


@functools.lru_cache(maxsize=512)
def _unit(code: str) -> Any:
    """The pint quantity of one UCUM unit code (`ValueError` if it is not UCUM); cached, as
    a bulk export repeats a few codes many times."""
    from ucumvert import InvalidUcumError

    text = code.strip()
    if _ANNOTATION_ONLY.fullmatch(text):
        text = "1"  # UCUM: an annotation alone is the unity ({INR}, {ratio}, {score})
    try:
        q = registry().from_ucum(text)
        q.dimensionality  # noqa: B018 (a bare token has none: refuse it here)
    except (InvalidUcumError, AttributeError, KeyError, ValueError, TypeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"{code!r} is not a UCUM unit code that can be converted ({first})"
        ) from None
    return q


def convert(
    value: Any,
    code: str,
    to: str,
    where: tuple[str, str, str],
    *,
    molar_mass: float | None = None,
    enzyme: bool = False,
) -> float:
    """`value` in UCUM unit `code`, converted to the UCUM unit `to`.

    **Arguments:**

    - `value`: the number (a `Decimal`, `float` or `int`).
    - `code`: the UCUM code it is given in.
    - `to`: the UCUM code wanted (`"mg/dL"`, `"kg"`, `"mg/L"`, `"1"`).
    - `where`: `(resource_type, resource_id, field)` for errors.
    - `molar_mass`: g/mol, to read a substance concentration (mol/L) as a mass
      concentration (g/L), or the reverse.
    - `enzyme`: read `[IU]` as `U` (enzyme activities).

    **Returns:** a float in `to`.

    **Raises:** `FhirError` for a code that is not UCUM or cannot be converted to `to`.
    Thread-safe (one conversion at a time).
    """
    with _LOCK:
        return _convert(value, code, to, where, molar_mass=molar_mass, enzyme=enzyme)


def _convert(
    value: Any,
    code: str,
    to: str,
    where: tuple[str, str, str],
    *,
    molar_mass: float | None,
    enzyme: bool,
) -> float:
    rtype, rid, field = where
    if enzyme:
        code = code.replace("[IU]", "U")
    try:
        given = _unit(code)
        wanted = _unit(to)
    except ValueError as error:
        raise FhirError(
            rtype, rid, field, f"{error}; expected a unit convertible to {to!r}."
        ) from None
    number = float(value) if isinstance(value, Decimal) else value
    q = number * given
    ureg = registry()
    if molar_mass is not None and q.dimensionality != wanted.dimensionality:
        mm = molar_mass * ureg.from_ucum("g/mol")
        for candidate in (q * mm, q / mm):
            if candidate.dimensionality == wanted.dimensionality:
                q = candidate
                break
    if q.dimensionality != wanted.dimensionality:
        raise FhirError(
            rtype,
            rid,
            field,
            f"the unit {code!r} ({q.dimensionality}) cannot be converted to {to!r} "
            f"({wanted.dimensionality}).",
        )
    out = float(q.to(wanted.units).magnitude / wanted.magnitude)
    if not math.isfinite(out):
        raise FhirError(rtype, rid, field, f"expected a finite value, got {value!r} {code}.")
    return out


def quantity_code(quantity: Any, where: tuple[str, str, str]) -> str:
    """The UCUM code of a FHIR `Quantity` model, checked: `system` UCUM (or absent with a
    code), `code` present. `unit` (display text) is never read as the unit."""
    rtype, rid, field = where
    if quantity.system is not None and quantity.system != UCUM:
        raise FhirError(
            rtype,
            rid,
            f"{field}.system",
            f"expected a UCUM quantity (system {UCUM!r}), got system {quantity.system!r}.",
        )
    if not quantity.code:
        shown = f" (unit text {quantity.unit!r} is display only)" if quantity.unit else ""
        raise FhirError(rtype, rid, f"{field}.code", f"expected a UCUM unit code, got none{shown}.")
    return str(quantity.code)


def quantity_value(quantity: Any, where: tuple[str, str, str]) -> Decimal:
    rtype, rid, field = where
    if quantity.value is None:
        raise FhirError(rtype, rid, f"{field}.value", "expected a number, got none.")
    return quantity.value
