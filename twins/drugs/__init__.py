"""twins.drugs: the drug library.

Each drug is a `Drug`: a published population model (`calibration.PopulationModel` at the
published values) with the clinical facts needed to use it (covariate translation from the
standard patient dict, units, targets, dosing, reference). `get(name)` returns one,
`available()` lists them:

| name | model | covariates |
| --- | --- | --- |
| `warfarin_hamberg2007` | S-warfarin 2-cmt oral PK + INR (transit chains) | age, CYP2C9, VKORC1 |
| `warfarin_iwpc_recalibrated` | Hamberg 2007, refit on IWPC doses | + WT, race, co-medication |
| `vancomycin_goti2018` | 2-cmt IV | CrCL (capped Cockcroft-Gault), weight, dialysis |
| `vancomycin_buelga2005` | 1-cmt IV, correlated CL-V variability | CrCL, weight |
| `theophylline` | 1-cmt oral (nlmixr2's theo_sd fit) | none |
| `citalopram_akil2016` | S-citalopram 1-cmt oral | age, weight, CYP2C19 phenotype |
| `vernakalant_mao2012` | 2-cmt IV, per kg | age, creatinine, weight, CYP2D6 phenotype |

A new drug is a `Drug(...)` built in a few lines (see `Drug` and
`examples/define_a_drug.py`).
"""

from __future__ import annotations

from collections.abc import Callable

from . import citalopram as citalopram
from . import theophylline as theophylline
from . import vancomycin as vancomycin
from . import vernakalant as vernakalant
from . import warfarin as warfarin
from . import warfarin_iwpc as warfarin_iwpc
from ._drug import CovariateError as CovariateError
from ._drug import DoseConstraints as DoseConstraints
from ._drug import Dosing as Dosing
from ._drug import Drug as Drug
from ._drug import Target as Target
from ._drug import Units as Units
from ._drug import patient_flag as patient_flag
from ._drug import patient_number as patient_number
from ._drug import patient_sex as patient_sex
from ._drug import patient_text as patient_text
from ._metrics import AUCOver as AUCOver
from ._metrics import Metric as Metric
from ._metrics import Peak as Peak
from ._metrics import Trough as Trough
from ._metrics import metric_from_name as metric_from_name
from ._routes import Bolus as Bolus
from ._routes import Infusion as Infusion
from ._routes import Oral as Oral
from ._routes import Route as Route

_FACTORIES: dict[str, Callable[[], Drug]] = {
    citalopram.NAME: citalopram.drug,
    theophylline.NAME: theophylline.drug,
    vancomycin.BUELGA: vancomycin.buelga2005,
    vancomycin.GOTI: vancomycin.goti2018,
    vernakalant.NAME: vernakalant.drug,
    warfarin.NAME: warfarin.drug,
    warfarin_iwpc.NAME: warfarin_iwpc.drug,
}

#: The model a bare drug name selects when the library has several of it: the published
#: one (a recalibration or other variant is always named in full).
_PUBLISHED: dict[str, str] = {"warfarin": warfarin.NAME}
_CACHE: dict[str, Drug] = {}


def available() -> tuple[str, ...]:
    """Names of the drugs in the library, sorted."""
    return tuple(sorted(_FACTORIES))


def _resolve(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"twins.drugs.get: expected a drug name (str), got {name!r}.")
    key = name.strip().lower()
    if key in _FACTORIES:
        return key
    # A bare drug name selects its model when the library has only one for it, or its
    # published model (`_PUBLISHED`) when the others are variants of it.
    if key in _PUBLISHED:
        return _PUBLISHED[key]
    matches = [n for n in _FACTORIES if n.split("_")[0] == key]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise KeyError(
            f"twins.drugs.get: {name!r} has several models, {sorted(matches)}; name one."
        )
    raise KeyError(f"twins.drugs.get: no drug {name!r}; available: {list(available())}.")


def get(name: str) -> Drug:
    """A drug of the library by name (case-insensitive).

    **Arguments:**

    - `name`: one of `available()`, e.g. `"vancomycin_goti2018"`; a bare drug name
      (`"warfarin"`) is accepted when the library has one model of that drug, or one
      published model and variants of it (`"warfarin"` is `warfarin_hamberg2007`, not
      `warfarin_iwpc_recalibrated`).

    **Returns:** the `Drug` (built once, then cached; drugs are immutable).

    **Raises:** `KeyError` listing the available names for an unknown or ambiguous name.
    """
    key = _resolve(name)
    if key not in _CACHE:
        _CACHE[key] = _FACTORIES[key]()
    return _CACHE[key]


__all__ = [
    "AUCOver",
    "Bolus",
    "CovariateError",
    "DoseConstraints",
    "Dosing",
    "Drug",
    "Infusion",
    "Metric",
    "Oral",
    "Peak",
    "Route",
    "Target",
    "Trough",
    "Units",
    "available",
    "citalopram",
    "get",
    "metric_from_name",
    "patient_flag",
    "patient_number",
    "patient_sex",
    "patient_text",
    "theophylline",
    "vancomycin",
    "vernakalant",
    "warfarin",
    "warfarin_iwpc",
]
