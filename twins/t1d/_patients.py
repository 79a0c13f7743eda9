"""The 30 virtual type 1 diabetes patients that simglucose ships, and meals and insulin."""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

import pkpd
from pkpd import Regimen

#: Minutes per hour, and picomoles of insulin per unit (simglucose's conversion).
_MIN_PER_H = 60.0
_PMOL_PER_U = 6000.0
#: How fast simglucose's patients eat (g of carbohydrate per minute).
EAT_RATE = 5.0

_NAME = re.compile(r"^(adolescent|adult|child)#\d{3}$")
_MODEL = pkpd.UVAPadova()
#: Fields that may be 0 (no such term); every other model parameter must be > 0.
_NONNEGATIVE = ("kp2", "kp3", "Fsnc", "ke1", "ke2")
#: Fields that are fractions of the meal (b, d) or absorbed (f).
_FRACTIONS = {"b": "in (0, 1)", "d": "in (0, 1)", "f": "in (0, 1]"}


class PatientDataError(ValueError):
    """A virtual-patient table with a missing, malformed or out-of-range value."""


@dataclasses.dataclass(frozen=True)
class VirtualPatient:
    """One virtual type 1 diabetes patient of the UVA/Padova simulator.

    **Fields:**

    - `name`: as simglucose names it, `adolescent#001` ... `child#010`.
    - `group`: `adolescent`, `adult` or `child`.
    - `params`: the `pkpd.UVAPadova` parameters by name (simglucose's units).
    - `u2ss`: the basal insulin that holds the basal steady state (pmol/kg/min).
    - `carb_ratio`: carbohydrate ratio (g per U), `correction_factor` (mg/dL per U), `age`
      (years), `total_daily_insulin` (U/day): the patient's quest data (simglucose's
      `Quest.csv`), for basal-bolus policies.
    """

    name: str
    group: str
    params: Mapping[str, float]
    u2ss: float
    carb_ratio: float
    correction_factor: float
    age: float
    total_daily_insulin: float

    @property
    def body_weight(self) -> float:
        """Body weight (kg)."""
        return self.params["BW"]

    @property
    def basal(self) -> float:
        """The basal insulin rate that holds the basal steady state (U/h): `basal_rate`."""
        return basal_rate(self.u2ss, self.body_weight)


def basal_rate(u2ss: float, body_weight: float) -> float:
    """The basal insulin rate (U/h) of a steady-state insulin flux `u2ss` (pmol/kg/min).

    `u2ss * BW * 60 / 6000`: 6000 pmol per U, as simglucose converts.

    **Arguments:** `u2ss` (pmol/kg/min), `body_weight` (kg).

    **Returns:** the rate in U/h.
    """
    return u2ss * body_weight * _MIN_PER_H / _PMOL_PER_U


def _data(name: str):
    return resources.files("twins") / "data" / "t1d" / name


def _read(path, label: str) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        fields = list(reader.fieldnames or [])
    if not rows:
        raise PatientDataError(f"{label}: expected a header and one row per patient, got none.")
    return fields, rows


def _number(label: str, row: int, who: str, field: str, text: str | None) -> float:
    where = f"{label} row {row} ({who}), field {field}"
    if text is None or text.strip() == "":
        raise PatientDataError(f"{where}: expected a number, got an empty value.")
    try:
        value = float(text)
    except ValueError:
        raise PatientDataError(f"{where}: expected a number, got {text!r}.") from None
    if not math.isfinite(value):
        raise PatientDataError(f"{where}: expected a finite number, got {text!r}.")
    return value


def _check_range(label: str, row: int, who: str, field: str, value: float) -> None:
    if field in _FRACTIONS:
        upper_ok = value <= 1 if field == "f" else value < 1
        ok, expect = (value > 0 and upper_ok), _FRACTIONS[field]
    elif field in _NONNEGATIVE:
        ok, expect = value >= 0, ">= 0"
    else:
        ok, expect = value > 0, "> 0"
    if not ok:
        raise PatientDataError(
            f"{label} row {row} ({who}), field {field}: expected a value {expect}, got {value:g}."
        )


def load_patients(
    params_file: str | Path | None = None, quest_file: str | Path | None = None
) -> dict[str, VirtualPatient]:
    """The virtual patients, by name, validated.

    By default the 30 patients of simglucose 0.2.11 (10 adolescents, 10 adults, 10
    children; `twins/data/t1d/README.md` gives the source and licence), in the file's order.

    **Arguments:**

    - `params_file`: a table in the layout of simglucose's `vpatient_params.csv` (one row
      per patient, a `Name` column and one column per parameter); by default the vendored
      copy.
    - `quest_file`: the patients' quest data in the layout of simglucose's `Quest.csv`
      (`Name`, `CR`, `CF`, `Age`, `TDI`); by default the vendored copy.

    **Raises:** `PatientDataError` naming the file, row, patient and field for a missing
    column, a malformed or duplicated name, a value that is not a finite number or is out of
    its range (`b`, `d` in (0, 1), `f` in (0, 1], `kp2`, `kp3`, `Fsnc`, `ke1`, `ke2` >= 0,
    every other parameter > 0), or a patient without quest data.

    **Returns:** `{name: VirtualPatient}`.
    """
    pfile = _data("vpatient_params.csv") if params_file is None else Path(params_file)
    qfile = _data("Quest.csv") if quest_file is None else Path(quest_file)
    plabel, qlabel = Path(str(pfile)).name, Path(str(qfile)).name
    fields, rows = _read(pfile, plabel)
    needed = ("Name", "u2ss", *_MODEL.param_names)
    missing = [f for f in needed if f not in fields]
    if missing:
        raise PatientDataError(f"{plabel}: missing column(s) {missing}; got columns {fields}.")
    qfields, qrows = _read(qfile, qlabel)
    qmissing = [f for f in ("Name", "CR", "CF", "Age", "TDI") if f not in qfields]
    if qmissing:
        raise PatientDataError(f"{qlabel}: missing column(s) {qmissing}; got columns {qfields}.")
    quest: dict[str, tuple[int, dict[str, str]]] = {}
    for i, q in enumerate(qrows, start=2):
        quest.setdefault(q["Name"], (i, q))
    patients: dict[str, VirtualPatient] = {}
    for i, row in enumerate(rows, start=2):  # row 1 is the header
        name = row["Name"]
        if not _NAME.match(name or ""):
            raise PatientDataError(
                f"{plabel} row {i}, field Name: expected a name like adult#001 (adolescent, "
                f"adult or child, '#', three digits), got {name!r}."
            )
        if name in patients:
            raise PatientDataError(f"{plabel} row {i} ({name}), field Name: duplicated name.")
        params = {}
        for field in (*_MODEL.param_names, "u2ss"):
            value = _number(plabel, i, name, field, row[field])
            _check_range(plabel, i, name, field, value)
            params[field] = value
        u2ss = params.pop("u2ss")
        if name not in quest:
            raise PatientDataError(f"{qlabel}: no row for patient {name} (of {plabel} row {i}).")
        j, q = quest[name]
        cr, cf, age, tdi = (_number(qlabel, j, name, f, q[f]) for f in ("CR", "CF", "Age", "TDI"))
        for field, value in (("CR", cr), ("CF", cf), ("Age", age), ("TDI", tdi)):
            _check_range(qlabel, j, name, field, value)
        patients[name] = VirtualPatient(
            name=name,
            group=name.split("#")[0],
            params=params,
            u2ss=u2ss,
            carb_ratio=cr,
            correction_factor=cf,
            age=age,
            total_daily_insulin=tdi,
        )
    return patients


def stack_params(patients: Sequence[VirtualPatient]) -> dict[str, np.ndarray]:
    """The patients' parameters as one array per name (one entry per patient), for `jax.vmap`.

    **Arguments:** `patients`, a sequence of `VirtualPatient`.

    **Returns:** `{name: array of shape (patients,)}`.
    """
    if not patients:
        raise ValueError("stack_params: expected at least one patient, got none.")
    return {k: np.array([p.params[k] for p in patients]) for k in _MODEL.param_names}


def meal(carbs: float, *, time: float, rate: float = EAT_RATE) -> Regimen:
    """A meal: `carbs` g of carbohydrate into the stomach, eaten at `rate` g/min.

    A zero-order input into `pkpd.UVAPadova.meal_cmt` of duration `carbs / rate` minutes
    (simglucose's patients eat at 5 g/min), and the dose of 1 into the model's meal-start
    marker (`meal_start_cmt`) that starts the meal's gastric emptying afresh.

    **Arguments:**

    - `carbs`: carbohydrate (g), > 0.
    - `time`: when the meal starts (h).
    - `rate`: eating rate (g/min), > 0.

    **Returns:** a two-event `pkpd.Regimen`.
    """
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"meal: expected an eating rate > 0 (g/min), got rate={rate!r}.")
    if not (math.isfinite(carbs) and carbs > 0):
        raise ValueError(f"meal: expected carbs > 0 (g), got carbs={carbs!r}.")
    food = pkpd.infusion(carbs, rate=rate * _MIN_PER_H, time=time, cmt=_MODEL.meal_cmt)
    return food + pkpd.bolus(1.0, time=time, cmt=_MODEL.meal_start_cmt)


def insulin_bolus(units: float, *, time: float, duration: float | None = None) -> Regimen:
    """An insulin bolus of `units` U into the subcutaneous depot (`UVAPadova.insulin_cmt`).

    **Arguments:**

    - `units`: insulin (U), > 0.
    - `time`: when it is given (h).
    - `duration`: `None` for an instantaneous dose; a duration (h) to deliver it at a
      constant rate, as a pump does over its sample time (simglucose's pumps over 1 min).

    **Returns:** a one-event `pkpd.Regimen`.
    """
    if duration is None:
        return pkpd.bolus(units, time=time, cmt=_MODEL.insulin_cmt)
    return pkpd.infusion(units, duration=duration, time=time, cmt=_MODEL.insulin_cmt)


def basal_insulin(rate: float, *, start: float = 0.0, stop: float) -> Regimen:
    """Basal insulin at `rate` U/h from `start` to `stop` (h): a zero-order infusion.

    **Returns:** a one-event `pkpd.Regimen`.
    """
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"basal_insulin: expected a rate > 0 (U/h), got rate={rate!r}.")
    if not stop > start:
        raise ValueError(f"basal_insulin: expected stop > start (h), got {start=}, {stop=}.")
    return pkpd.infusion(rate * (stop - start), rate=rate, time=start, cmt=_MODEL.insulin_cmt)
