"""Shared test helpers: tree comparison, the list of all linear models with typical values."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np

import pkpd

DATA = pathlib.Path(__file__).parent / "data"


#: The event-array fields of `pkpd.Regimen`, in order.
REGIMEN_FIELDS = (
    "time",
    "amount",
    "cmt",
    "rate",
    "duration",
    "lag",
    "bioav",
    "evid",
    "ss",
    "ii",
    "order",
    "mask",
)


def tree_allclose(x: Any, y: Any, *, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
    """True when two pytrees have the same structure and allclose leaves (NaNs equal)."""
    x_leaves, x_def = jax.tree_util.tree_flatten(x)
    y_leaves, y_def = jax.tree_util.tree_flatten(y)
    if x_def != y_def:
        return False
    for a, b in zip(x_leaves, y_leaves, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if not np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
            return False
    return True


def max_rel_err(actual: Any, expected: Any, *, floor: float = 0.0) -> float:
    """Largest |actual - expected| / max(|expected|, floor) (0 for empty input)."""
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    if actual.size == 0:
        return 0.0
    scale = np.maximum(np.abs(expected), floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.where(scale > 0, np.abs(actual - expected) / scale, np.abs(actual - expected))
    return float(np.max(err))


@dataclasses.dataclass(frozen=True)
class ModelCase:
    """A model with typical parameter values.

    `central` and `depot` are the 1-based compartment numbers (NONMEM `CMT`) of the central
    compartment and of the depot (`None` for intravenous models); `volume` names the
    parameter dividing the central amount into the output concentration.
    """

    model: pkpd.AbstractLinearModel
    params: dict[str, float]
    central: int
    depot: int | None
    volume: str

    @property
    def name(self) -> str:
        return type(self.model).__name__

    @property
    def oral_cmt(self) -> int:
        """The compartment of an extravascular dose (the central one for IV models)."""
        return self.depot if self.depot is not None else self.central

    def matrix(self) -> np.ndarray:
        """The rate-constant matrix K, built here from the parameters (not by the model)."""
        return _reference_matrix(self.name, self.params)


_TWO = {"CL": 5.0, "V1": 20.0, "Q": 8.0, "V2": 60.0}
_THREE = {"CL": 6.0, "V1": 15.0, "Q2": 10.0, "V2": 30.0, "Q3": 3.0, "V3": 45.0}

#: Every linear model of `pkpd`, with typical values (L/h, L, 1/h).
LINEAR_MODELS: list[ModelCase] = [
    ModelCase(pkpd.OneCompartment(), {"CL": 5.0, "V": 50.0}, 1, None, "V"),
    ModelCase(pkpd.OneCompartmentOral(), {"KA": 1.2, "CL": 5.0, "V": 50.0}, 2, 1, "V"),
    ModelCase(pkpd.TwoCompartment(), dict(_TWO), 1, None, "V1"),
    ModelCase(pkpd.TwoCompartmentOral(), {"KA": 1.0, **_TWO}, 2, 1, "V1"),
    ModelCase(pkpd.ThreeCompartment(), dict(_THREE), 1, None, "V1"),
    ModelCase(pkpd.ThreeCompartmentOral(), {"KA": 0.9, **_THREE}, 2, 1, "V1"),
]
LINEAR_MODEL_IDS = [case.name for case in LINEAR_MODELS]


def _reference_matrix(name: str, p: dict[str, float]) -> np.ndarray:
    """K of `dx/dt = K x` written out from the textbook equations (Gibaldi & Perrier)."""
    if name.startswith("One"):
        k = np.array([[-p["CL"] / p["V"]]])
    elif name.startswith("Two"):
        k10, k12, k21 = p["CL"] / p["V1"], p["Q"] / p["V1"], p["Q"] / p["V2"]
        k = np.array([[-(k10 + k12), k21], [k12, -k21]])
    else:
        k10, k12, k21 = p["CL"] / p["V1"], p["Q2"] / p["V1"], p["Q2"] / p["V2"]
        k13, k31 = p["Q3"] / p["V1"], p["Q3"] / p["V3"]
        k = np.array([[-(k10 + k12 + k13), k21, k31], [k12, -k21, 0.0], [k13, 0.0, -k31]])
    if name.endswith("Oral"):
        n = k.shape[0]
        full = np.zeros((n + 1, n + 1))
        full[1:, 1:] = k
        full[0, 0] = -p["KA"]
        full[1, 0] = p["KA"]
        k = full
    return k


# --- a drug with one patient outside the domain (the failed-patient tests) ----------------


def _shift_covariates(patient):
    from twins import drugs as D

    return {
        "WT": D.patient_number(patient, "WT", drug="test", what="kg"),
        "SHIFT": float(patient["SHIFT"]),
    }


def _shift_typical(theta, cov):
    # SHIFT is subtracted from the clearance: SHIFT = 100 L/h gives CL < 0.
    return {
        "KA": theta["KA"],
        "CL": theta["CL"] * cov["WT"] / 70.0 - cov["SHIFT"],
        "V": theta["V"] * cov["WT"] / 70.0,
    }


def shifted_clearance_drug():
    """A 1-compartment oral test drug whose clearance is the typical one minus the patient's
    `SHIFT` (an extra column): a patient with SHIFT = 100 has CL < 0, outside the domain."""
    import calibration
    from twins import drugs as D

    return D.Drug(
        name="test_drug",
        model=calibration.PopulationModel(
            pkpd.OneCompartmentOral(),
            theta={"KA": 1.0, "CL": 5.0, "V": 50.0},
            omega={"CL": 0.09, "V": 0.04},
            error=calibration.Proportional(0.1),
            typical=_shift_typical,
        ),
        covariate_fn=_shift_covariates,
        units=D.Units(dose="mg", concentration="mg/L", observed="concentration, mg/L"),
        dosing=D.Dosing(route=D.Oral(), amount=100.0, interval=24.0),
        reference="a test drug",
    )
