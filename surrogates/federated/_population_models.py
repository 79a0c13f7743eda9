"""Population models and hospital data sets for the federated population fits' demo,
example and tests.

A federated fit runs the same model in several processes (the ServerApp and each hospital's
ClientApp), so a model is named by a reference `"package.module:attribute"` that each
process imports (`load_model`), never sent as code. The references here:

- `THEOPHYLLINE` (`theophylline()`): one-compartment oral model of the theophylline data
  (nlmixr2's `theo_sd`), the model of the calibration tests.
- `TWO_COMPARTMENT` (`two_compartment()`): a two-compartment infusion model with
  covariates (clearance on creatinine clearance with an estimated exponent, central volume
  on weight), for the simulated hospitals of `simulate_hospitals`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

import calibration
import pkpd

THEOPHYLLINE = "surrogates.federated._population_models:theophylline"
TWO_COMPARTMENT = "surrogates.federated._population_models:two_compartment"

#: Covariates each model reads from the records (`Dataset.from_records(covariates=...)`).
COVARIATES: Mapping[str, tuple[str, ...]] = {
    THEOPHYLLINE: ("WT",),
    TWO_COMPARTMENT: ("WT", "CRCL"),
}


def theophylline() -> calibration.PopulationModel:
    """One-compartment oral model with additive error, at the starting values of the
    calibration tests (KA 1/h, CL 3 L/h, V 30 L; BSV variances 0.3, 0.1, 0.1)."""
    return calibration.PopulationModel(
        pkpd.OneCompartmentOral(),
        theta={"KA": 1.0, "CL": 3.0, "V": 30.0},
        omega={"KA": 0.3, "CL": 0.1, "V": 0.1},
        error=calibration.Additive(1.0),
    )


def _two_compartment_typical(theta: Mapping[str, Any], cov: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "CL": theta["CL"] * (cov["CRCL"] / 100.0) ** theta["CL_CRCL"],
        "V1": theta["V1"] * cov["WT"] / 70.0,
        "Q": theta["Q"],
        "V2": theta["V2"],
    }


#: The values `simulate_hospitals` draws from (natural scale).
TWO_COMPARTMENT_TRUTH = {
    "theta": {"CL": 4.0, "V1": 20.0, "Q": 6.0, "V2": 40.0, "CL_CRCL": 0.75},
    "omega": {"CL": 0.09, "V1": 0.04},
    "sigma": {"prop_sd": 0.1},
}


def two_compartment() -> calibration.PopulationModel:
    """Two-compartment IV infusion model: `CL = TVCL (CRCL/100)^CL_CRCL`, `V1 = TVV1 WT/70`,
    `Q`, `V2`; BSV on CL and V1; proportional error. Starting values away from
    `TWO_COMPARTMENT_TRUTH` (the fit has work to do)."""
    return calibration.PopulationModel(
        pkpd.TwoCompartment(),
        theta={"CL": 3.0, "V1": 15.0, "Q": 5.0, "V2": 50.0, "CL_CRCL": 0.5},
        omega={"CL": 0.2, "V1": 0.2},
        error=calibration.Proportional(0.2),
        typical=_two_compartment_typical,
        unconstrained=("CL_CRCL",),
    )


def load_model(reference: str) -> calibration.PopulationModel:
    """The `calibration.PopulationModel` named by `"package.module:attribute"`: the
    attribute is a model, or a function of no arguments returning one."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"a model reference is 'package.module:attribute', got {reference!r}.")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot load the model {reference!r}: {error}") from error
    model = (
        target()
        if callable(target) and not isinstance(target, calibration.PopulationModel)
        else target
    )
    if not isinstance(model, calibration.PopulationModel):
        raise TypeError(
            f"the model reference {reference!r} gave a {type(model).__name__}, expected a "
            "calibration.PopulationModel (or a function returning one)."
        )
    return model


def split_by_subject(records: pd.DataFrame, names: Sequence[str]) -> dict[str, pd.DataFrame]:
    """NONMEM records split into hospitals by subject: the subjects, in the order of the
    records, dealt into `len(names)` contiguous groups of sizes differing by at most one."""
    df: Any = records
    ids = np.asarray(list(dict.fromkeys(df["ID"].tolist())), dtype=object)
    groups = np.array_split(np.arange(len(ids)), len(names))
    return {
        name: df[df["ID"].isin(list(ids[g]))].reset_index(drop=True)
        for name, g in zip(names, groups, strict=True)
    }


#: How the simulated hospitals differ (non-IID): weight and renal function of their
#: patients (mean, SD), the dose and infusion length they give, and when they sample.
HOSPITAL_PROFILES: tuple[dict[str, Any], ...] = (
    {"name": "north", "wt": (85.0, 12.0), "crcl": (110.0, 20.0), "dose": 1000.0, "dur": 1.0,
     "times": (1.0, 2.0, 4.0, 8.0, 12.0, 24.0)},
    {"name": "south", "wt": (62.0, 8.0), "crcl": (70.0, 15.0), "dose": 500.0, "dur": 0.5,
     "times": (0.5, 1.5, 3.0, 6.0, 12.0)},
    {"name": "east", "wt": (75.0, 15.0), "crcl": (45.0, 12.0), "dose": 750.0, "dur": 2.0,
     "times": (2.0, 3.0, 5.0, 10.0, 24.0, 36.0)},
    {"name": "west", "wt": (95.0, 18.0), "crcl": (130.0, 25.0), "dose": 1500.0, "dur": 1.0,
     "times": (1.0, 1.5, 2.5, 6.0, 18.0)},
    {"name": "central", "wt": (70.0, 10.0), "crcl": (95.0, 30.0), "dose": 1000.0, "dur": 4.0,
     "times": (4.0, 5.0, 8.0, 12.0, 16.0, 24.0, 48.0)},
)  # fmt: skip


def simulate_hospitals(
    n_hospitals: int = 5, subjects: int = 10, *, key: int = 0
) -> dict[str, pd.DataFrame]:
    """Simulated NONMEM records of `n_hospitals` hospitals (at most 5) of the
    `two_compartment` model at `TWO_COMPARTMENT_TRUTH`, non-IID by construction: each
    hospital's patients have their own weight and creatinine-clearance distribution
    (`HOSPITAL_PROFILES`), dose, infusion length and sampling times. IDs are unique across
    hospitals (`<hospital>-<k>`). The same `key` gives the same records.

    **Returns:** hospital name -> records (`ID, TIME, EVID, AMT, RATE, CMT, DV, MDV, WT,
    CRCL`).
    """
    if not 1 <= n_hospitals <= len(HOSPITAL_PROFILES):
        raise ValueError(
            f"simulate_hospitals: n_hospitals must be 1 to {len(HOSPITAL_PROFILES)}, "
            f"got {n_hospitals}."
        )
    if subjects < 1:
        raise ValueError(f"simulate_hospitals: subjects must be >= 1, got {subjects}.")
    rng = np.random.default_rng(key)
    pm = two_compartment()
    out = {}
    for h, prof in enumerate(HOSPITAL_PROFILES[:n_hospitals]):
        rows = []
        for k in range(subjects):
            sid = f"{prof['name']}-{k + 1}"
            wt = float(np.clip(rng.normal(*prof["wt"]), 40.0, 160.0))
            crcl = float(np.clip(rng.normal(*prof["crcl"]), 15.0, 200.0))
            base = {"ID": sid, "WT": round(wt, 1), "CRCL": round(crcl, 1), "CMT": 1}
            dose = {"EVID": 1, "AMT": prof["dose"], "RATE": prof["dose"] / prof["dur"]}
            rows.append(base | dose | {"TIME": 0.0, "DV": 0.0, "MDV": 1})
            for t in prof["times"]:
                obs = {"EVID": 0, "AMT": 0.0, "RATE": 0.0, "DV": 0.0, "MDV": 0}
                rows.append(base | obs | {"TIME": float(t)})
        records = pd.DataFrame(rows)
        design = calibration.Dataset.from_records(records, covariates=COVARIATES[TWO_COMPARTMENT])
        truth = {
            "theta": TWO_COMPARTMENT_TRUTH["theta"],
            "omega": np.diag(list(TWO_COMPARTMENT_TRUTH["omega"].values())),
            "sigma": TWO_COMPARTMENT_TRUTH["sigma"],
        }
        sim = calibration.simulate_dataset(pm, truth, design, key=int(key) * 101 + h)
        dv = np.asarray(sim.dv[0])
        is_obs = (records["EVID"] == 0) & (records["MDV"] == 0)
        values = []
        assert design.ids is not None
        for i, sid in enumerate(design.ids):
            n = int(np.sum(is_obs & (records["ID"] == sid)))
            values.extend(np.round(dv[i, :n], 6).tolist())
        records.loc[is_obs, "DV"] = values
        out[prof["name"]] = records
    return out
