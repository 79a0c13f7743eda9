"""What the live service may advise: per-drug dose constraints and a loading dose.

`DosingAdvice` is, for one substance of a `TwinService`, the `twins.DoseConstraints` its
recommendations respect (available strengths, minimum and maximum dose, maximum infusion
rate, allowed intervals; `twins.DigitalTwin.recommend(constraints=...)`) and whether a
loading dose is proposed (`recommend(loading=...)`, mg/kg). `read_dosing` reads them from a
TOML document (`twins serve --dosing FILE`), one table per substance:

```toml
[vancomycin]
base = "library"           # the drug library's DoseConstraints, fields below replacing
                           # its own ("none": only the fields given here)
strengths = [250, 500, 750, 1000]
max_dose = 2000
max_rate = 1000            # mg/h: the infusion lasts at least dose / max_rate hours
intervals = [8, 12]
loading = 25               # mg/kg: propose a loading dose first (absent: none)
loading_max_given = 1      # ... only while at most this many doses have been given
```

Every entry is checked when the service starts: an unknown key, a value of the wrong type
or range, constraints `twins.DoseConstraints` refuses, a loading dose outside the
constraints' `loading_per_kg` or without them, an interval of `--interval` that the
constraints do not allow: a `DosingConfigError` naming the document, the substance and the
field. The library's defaults and their sources are those of `twins.drugs` (vancomycin:
Rybak MJ et al., Am J Health Syst Pharm 2020;77:835-864).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..drugs import DoseConstraints, Drug

_FIELDS = (
    "strengths",
    "increment",
    "max_units",
    "min_dose",
    "max_dose",
    "max_rate",
    "intervals",
    "loading_per_kg",
    "max_loading",
    "reference",
)
_KEYS = ("base", *_FIELDS, "loading", "loading_max_given")


class DosingConfigError(ValueError):
    """A dosing configuration that cannot be used; the message names the document, the
    substance and the field, and what was expected."""


@dataclasses.dataclass(frozen=True)
class DosingAdvice:
    """The dosing advice of one substance's twins in a `TwinService`.

    **Fields:**

    - `constraints`: the `twins.DoseConstraints` every recommendation respects (its dose
      rounded to sums of `strengths`, bounded, the infusion lengthened by `max_rate`, the
      interval among `intervals`); `None`: the continuous optimum.
    - `loading`: a loading dose in mg per kg of body weight, given first (at the plan's
      start; the maintenance doses one interval later), as `recommend(loading=...)`; needs
      `constraints`. `None`: no loading dose.
    - `loading_max_given`: the loading dose is proposed only while the patient has been
      given at most this many doses of the drug (e.g. `1`: after the first dose only);
      `None`: on every recommendation.
    """

    constraints: DoseConstraints | None = None
    loading: float | None = None
    loading_max_given: int | None = None

    def __post_init__(self):
        if self.constraints is not None and not isinstance(self.constraints, DoseConstraints):
            raise TypeError(
                f"DosingAdvice: constraints must be a twins.DoseConstraints or None, got "
                f"{self.constraints!r:.80}."
            )
        if self.loading is not None:
            if not _is_number(self.loading) or not self.loading > 0:
                raise ValueError(
                    f"DosingAdvice: loading must be a number > 0 (mg/kg), got {self.loading!r}."
                )
            if self.constraints is None:
                raise ValueError(
                    "DosingAdvice: loading needs constraints (strengths, max_loading, "
                    "loading_per_kg)."
                )
            rng = self.constraints.loading_per_kg
            if rng is not None and not rng[0] <= self.loading <= rng[1]:
                raise ValueError(
                    f"DosingAdvice: loading={self.loading:g} mg/kg is outside the "
                    f"constraints' loading_per_kg {rng}; expected a loading dose in it."
                )
        if self.loading_max_given is not None:
            if self.loading is None:
                raise ValueError("DosingAdvice: loading_max_given needs a loading dose.")
            value = self.loading_max_given
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"DosingAdvice: loading_max_given must be an integer >= 0, got {value!r}."
                )

    def loading_for(self, doses_given: int) -> float | None:
        """The loading dose (mg/kg) to propose to a patient given `doses_given` doses."""
        if self.loading is None:
            return None
        if self.loading_max_given is not None and doses_given > self.loading_max_given:
            return None
        return float(self.loading)

    def check_intervals(self, intervals: Sequence[float] | None, who: str) -> None:
        """`ValueError` (starting with `who`) when `intervals` (the service's) are not all
        allowed by the constraints."""
        c = self.constraints
        if intervals is None or c is None or c.intervals is None:
            return
        refused = [t for t in intervals if float(t) not in c.intervals]
        if refused:
            raise ValueError(
                f"{who}: intervals {refused} h are not in the constraints' intervals "
                f"{list(c.intervals)}; expected allowed intervals."
            )


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def read_dosing(
    source: str | os.PathLike | Mapping[str, Any], drugs: Mapping[str, Drug]
) -> dict[str, DosingAdvice]:
    """The `DosingAdvice` of each substance of a TOML document (a path, or its parsed
    tables as a mapping) for a service whose `drugs` are given (substance -> `twins.Drug`;
    `base = "library"` starts from `drug.dosing.constraints`). See the module docstring
    for the keys.

    **Raises:** `DosingConfigError` naming the document, the substance and the field;
    `FileNotFoundError` for a path that does not exist.
    """
    if isinstance(source, Mapping):
        data, name = dict(source), "<dosing>"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"read_dosing: no dosing file {str(path)!r}.")
        name = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise DosingConfigError(f"{name}: not valid TOML: {error}.") from None
    out: dict[str, DosingAdvice] = {}
    for substance, table in data.items():
        if substance not in drugs:
            raise DosingConfigError(
                f"{name}: [{substance}]: not a substance of the service; expected one of "
                f"{sorted(drugs)}."
            )
        out[substance] = _advice(table, drugs[substance], name, str(substance))
    return out


def _advice(table: Any, drug: Drug, name: str, substance: str) -> DosingAdvice:
    def fail(field: str, message: str) -> DosingConfigError:
        return DosingConfigError(f"{name}: {substance}.{field}: {message}")

    if not isinstance(table, Mapping):
        raise DosingConfigError(
            f"{name}: {substance}: expected a table ([{substance}]), got {table!r:.60}."
        )
    for key in table:
        if key not in _KEYS:
            close = difflib.get_close_matches(str(key), _KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise fail(str(key), f"unknown key{hint}; expected one of {sorted(_KEYS)}.")
    base = table.get("base", "library")
    if base not in ("library", "none"):
        raise fail("base", f"expected 'library' or 'none', got {base!r}.")
    fields: dict[str, Any] = {}
    for key in _FIELDS:
        if key not in table:
            continue
        value = table[key]
        if key == "reference":
            if not isinstance(value, str):
                raise fail(key, f"expected a string, got {value!r:.60}.")
        elif key in ("strengths", "intervals", "loading_per_kg"):
            if not isinstance(value, list) or not all(_is_number(v) and v > 0 for v in value):
                raise fail(key, f"expected an array of numbers > 0, got {value!r:.60}.")
            if key == "loading_per_kg" and len(value) != 2:
                raise fail(key, f"expected [low, high] (mg/kg), got {value!r:.60}.")
            value = tuple(float(v) for v in value)
        elif key == "max_units":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise fail(key, f"expected an integer >= 1, got {value!r:.60}.")
        elif not (_is_number(value) and value > 0):
            raise fail(key, f"expected a number > 0, got {value!r:.60}.")
        else:
            value = float(value)
        fields[key] = value
    library = drug.dosing.constraints if base == "library" else None
    constraints: DoseConstraints | None
    try:
        if library is not None:
            constraints = dataclasses.replace(library, **fields)
        elif fields:
            constraints = DoseConstraints(**fields)
        else:
            constraints = None
    except (TypeError, ValueError) as error:
        field = next((f for f in _FIELDS if f in str(error)), "constraints")
        raise fail(field, str(error)) from None
    if constraints is not None and constraints.strengths is None:
        if constraints.increment is not None and constraints.max_dose is None:
            raise fail("increment", "an increment without strengths needs max_dose too.")
    if constraints is not None and constraints.max_rate is not None:
        if drug.dosing.route.duration is None:
            raise fail(
                "max_rate",
                f"{drug.name} is not given by infusion; expected no max_rate (or base = 'none').",
            )
    loading = table.get("loading")
    if loading is not None and not (_is_number(loading) and loading > 0):
        raise fail("loading", f"expected a number > 0 (mg/kg), got {loading!r:.60}.")
    if loading is not None and constraints is None:
        raise fail("loading", "a loading dose needs constraints (base = 'library', or strengths).")
    rng = None if constraints is None else constraints.loading_per_kg
    if loading is not None and rng is not None and not rng[0] <= loading <= rng[1]:
        raise fail(
            "loading",
            f"{loading:g} mg/kg is outside loading_per_kg {list(rng)} "
            f"({constraints.reference or 'the drug library'}); expected a dose in it.",
        )
    given = table.get("loading_max_given")
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int) or given < 0:
            raise fail("loading_max_given", f"expected an integer >= 0, got {given!r:.60}.")
        if loading is None:
            raise fail("loading_max_given", "given without loading; expected loading too.")
    try:
        return DosingAdvice(constraints, None if loading is None else float(loading), given)
    except (TypeError, ValueError) as error:  # checked above; a last guard
        raise DosingConfigError(f"{name}: {substance}: {error}") from None
