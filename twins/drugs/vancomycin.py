r"""Vancomycin: Goti 2018 (two compartments, CrCL, haemodialysis) and Buelga 2005 (one).

**Goti 2018** (1,812 hospitalised adults, 18.5% on intermittent haemodialysis), intravenous,
two compartments:

$$CL = 4.5 \left(\frac{CrCL}{120}\right)^{0.8} 0.7^{DIAL}, \quad
  V_c = 58.4 \frac{WT}{70} 0.5^{DIAL}, \quad V_p = 38.4 \frac{WT}{70}, \quad Q = 6.5$$

(L/h and L), with $CrCL$ the Cockcroft-Gault creatinine clearance (mL/min) from total body
weight, computed with the paper's rules: serum creatinine below 1 mg/dL set to 1 mg/dL when
age > 60 years, and CrCL capped at 150 mL/min. $DIAL$ = 1 for a patient on intermittent
haemodialysis. Between-subject variability (CV) CL 39.8%, Vc 81.6%, Vp 57.1%; residual
error combined, additive 3.4 mg/L and proportional 22.7%.

**Buelga 2005** (215 adults with haematological malignancies), intravenous, one
compartment:

$$CL\,(\text{L/h}) = 1.08 \cdot CrCL\,(\text{L/h}), \quad V\,(\text{L}) = 0.98 \cdot WT$$

with $CrCL$ Cockcroft-Gault (the standard covariate `"CRCL"`, mL/min, converted to L/h by
x 0.06). Between-subject variability CL 28.16%, V 37.15% (CV), correlation 0.2312; additive
residual error 3.52 mg/L.

**Target**: AUC over 24 h at steady state 400-600 mg·h/L (assuming MIC 1 mg/L), the
consensus guideline's target; troughs of 10-20 mg/L (15-20 for complicated infections) are
the older, trough-based target.

References: Goti V, Chaturvedula A, Fossler MJ, Mok S, Jacob JT. Hospitalized patients with
and without hemodialysis have markedly different vancomycin pharmacokinetics: a population
pharmacokinetic model-based analysis. Ther Drug Monit 2018;40(2):212-221.
doi:10.1097/FTD.0000000000000490. Buelga DS, del Mar Fernandez de Gatta M, Herrera EV,
Dominguez-Gil A, Garcia MJ. Population pharmacokinetic analysis of vancomycin in patients
with hematological malignancies. Antimicrob Agents Chemother 2005;49(12):4934-4941.
doi:10.1128/AAC.49.12.4934-4941.2005. Rybak MJ et al. Therapeutic monitoring of vancomycin
for serious methicillin-resistant Staphylococcus aureus infections: a revised consensus
guideline. Am J Health Syst Pharm 2020;77(11):835-864. Rybak M et al. Therapeutic monitoring
of vancomycin in adult patients: a consensus review. Am J Health Syst Pharm
2009;66(1):82-98. Cockcroft DW, Gault MH. Nephron 1976;16(1):31-41.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import calibration
import pkpd

from .._covariates import cockcroft_gault
from ._drug import (
    CovariateError,
    DoseConstraints,
    Dosing,
    Drug,
    PatientCovariates,
    Target,
    Units,
    patient_flag,
    patient_number,
    patient_sex,
)
from ._metrics import AUCOver, Trough
from ._routes import Infusion

GOTI = "vancomycin_goti2018"
BUELGA = "vancomycin_buelga2005"
GOTI_REFERENCE = (
    "Goti V, Chaturvedula A, Fossler MJ, Mok S, Jacob JT. Hospitalized patients with and "
    "without hemodialysis have markedly different vancomycin pharmacokinetics: a population "
    "pharmacokinetic model-based analysis. Ther Drug Monit 2018;40(2):212-221. "
    "doi:10.1097/FTD.0000000000000490"
)
BUELGA_REFERENCE = (
    "Buelga DS, del Mar Fernandez de Gatta M, Herrera EV, Dominguez-Gil A, Garcia MJ. "
    "Population pharmacokinetic analysis of vancomycin in patients with hematological "
    "malignancies. Antimicrob Agents Chemother 2005;49(12):4934-4941. "
    "doi:10.1128/AAC.49.12.4934-4941.2005"
)

TARGETS = (
    Target(
        metric=AUCOver(24),
        low=400.0,
        high=600.0,
        unit="mg·h/L",
        reference="Rybak MJ et al. Am J Health Syst Pharm 2020;77(11):835-864.",
        note="AUC over 24 h at steady state, serious MRSA infections, MIC 1 mg/L",
    ),
    Target(
        metric=Trough(),
        low=10.0,
        high=20.0,
        unit="mg/L",
        reference="Rybak M et al. Am J Health Syst Pharm 2009;66(1):82-98.",
        note="older trough-based monitoring; 15-20 mg/L for complicated infections",
    ),
)
_UNITS = Units(
    dose="mg vancomycin", concentration="mg/L", observed="vancomycin serum concentration, mg/L"
)
_DOSING = Dosing(
    route=Infusion(duration=1.0),
    amount=1000.0,
    interval=12.0,
    reference="1 g every 12 h over 1 h: a usual adult regimen (Rybak 2009).",
    constraints=DoseConstraints(
        strengths=(250.0, 500.0, 750.0, 1000.0),
        increment=250.0,
        max_units=4,
        max_rate=1000.0,
        intervals=(8.0, 12.0, 24.0),
        loading_per_kg=(20.0, 35.0),
        max_loading=3000.0,
        reference="Vials of 250, 500, 750 and 1000 mg, doses rounded to 250 mg; infusion at "
        "most 1 g per hour (10-15 mg/min), loading dose 20-35 mg/kg of actual body weight, "
        "at most 3000 mg; intervals 8, 12 or 24 h: Rybak MJ et al. Therapeutic monitoring "
        "of vancomycin for serious methicillin-resistant Staphylococcus aureus infections: "
        "a revised consensus guideline and review by ASHP, IDSA, PIDS and SIDP. Am J Health "
        "Syst Pharm 2020;77(11):835-864; vancomycin hydrochloride for injection, US "
        "prescribing information (infusion over at least 60 min, at most 10 mg/min).",
    ),
)

# ----------------------------------------------------------------------------- Goti 2018

GOTI_THETA: Mapping[str, float] = {
    "CL": 4.5,  # L/h at CrCL 120 mL/min, no dialysis
    "CRCL_CL": 0.8,  # exponent on CrCL/120
    "DIAL_CL": 0.7,  # factor on CL under haemodialysis
    "V1": 58.4,  # L at 70 kg, no dialysis (Vc)
    "DIAL_V1": 0.5,  # factor on Vc under haemodialysis
    "V2": 38.4,  # L at 70 kg (Vp)
    "Q": 6.5,  # L/h
}
GOTI_IIV_CV: Mapping[str, float] = {"CL": 0.398, "V1": 0.816, "V2": 0.571}
GOTI_CRCL_CAP = 150.0  # mL/min
GOTI_SCR_FLOOR = 1.0  # mg/dL, applied above GOTI_SCR_FLOOR_AGE
GOTI_SCR_FLOOR_AGE = 60.0  # years


def goti_crcl(age: float, weight: float, scr: float, female: float) -> float:
    """Cockcroft-Gault CrCL (mL/min) with Goti 2018's rules.

    Serum creatinine below 1 mg/dL is set to 1 mg/dL for patients older than 60 years, and
    the result is capped at 150 mL/min (Goti 2018, Methods); total body weight.
    """
    if age > GOTI_SCR_FLOOR_AGE:
        scr = max(scr, GOTI_SCR_FLOOR)
    return min(float(cockcroft_gault(age, weight, scr, female=female)), GOTI_CRCL_CAP)


def goti_covariates(patient: PatientCovariates) -> dict[str, float]:
    """`CRCL` (Goti's capped Cockcroft-Gault, recomputed from AGE, WT, SCR, SEX), `WT`,
    `DIAL` (a missing `"DIAL"` field means no dialysis)."""
    age = patient_number(patient, "AGE", drug=GOTI, what="age, years")
    wt = patient_number(patient, "WT", drug=GOTI, what="total body weight, kg")
    scr = patient_number(patient, "SCR", drug=GOTI, what="serum creatinine, mg/dL")
    sex = patient_sex(patient, drug=GOTI)
    if age >= 140.0:
        raise CovariateError(
            f"{GOTI}: patient AGE is {age}; the Cockcroft-Gault equation needs age < 140 years."
        )
    dial = patient_flag(patient, "DIAL", drug=GOTI, what="intermittent haemodialysis, 1/0")
    return {"CRCL": goti_crcl(age, wt, scr, sex), "WT": wt, "DIAL": dial}


def goti_typical(theta: Mapping[str, Any], cov: Mapping[str, Any]) -> dict[str, Any]:
    """Goti 2018 typical values from `CRCL` (mL/min), `WT` (kg) and `DIAL` (0/1)."""
    dial = cov["DIAL"]
    return {
        "CL": theta["CL"] * (cov["CRCL"] / 120.0) ** theta["CRCL_CL"] * theta["DIAL_CL"] ** dial,
        "V1": theta["V1"] * (cov["WT"] / 70.0) * theta["DIAL_V1"] ** dial,
        "Q": theta["Q"],
        "V2": theta["V2"] * (cov["WT"] / 70.0),
    }


def goti2018() -> Drug:
    """Vancomycin, Goti 2018 (`twins.drugs.get("vancomycin_goti2018")`)."""
    pm = calibration.PopulationModel(
        pkpd.TwoCompartment(),
        theta=dict(GOTI_THETA),
        omega={k: math.log1p(cv**2) for k, cv in GOTI_IIV_CV.items()},
        error=calibration.Combined(add_sd=3.4, prop_sd=0.227),
        typical=goti_typical,
    )
    return Drug(
        name=GOTI,
        model=pm,
        covariate_fn=goti_covariates,
        units=_UNITS,
        dosing=_DOSING,
        reference=GOTI_REFERENCE,
        targets=TARGETS,
        description=__doc__ or "",
    )


# ----------------------------------------------------------------------------- Buelga 2005

BUELGA_THETA: Mapping[str, float] = {
    "CL_CRCL": 1.08,  # CL (L/h) per CrCL (L/h)
    "V_WT": 0.98,  # L/kg
}
BUELGA_IIV_CV: Mapping[str, float] = {"CL": 0.2816, "V": 0.3715}
BUELGA_CORR_CL_V = 0.2312
ML_MIN_TO_L_H = 0.06


def buelga_covariates(patient: PatientCovariates) -> dict[str, float]:
    """`CRCL` (Cockcroft-Gault, total body weight, mL/min: the standard `"CRCL"`) and `WT`."""
    return {
        "CRCL": patient_number(
            patient, "CRCL", drug=BUELGA, what="Cockcroft-Gault creatinine clearance, mL/min"
        ),
        "WT": patient_number(patient, "WT", drug=BUELGA, what="total body weight, kg"),
    }


def buelga_typical(theta: Mapping[str, Any], cov: Mapping[str, Any]) -> dict[str, Any]:
    """Buelga 2005: CL = 1.08 CrCL (L/h), V = 0.98 WT."""
    return {
        "CL": theta["CL_CRCL"] * cov["CRCL"] * ML_MIN_TO_L_H,
        "V": theta["V_WT"] * cov["WT"],
    }


def buelga2005() -> Drug:
    """Vancomycin, Buelga 2005 (`twins.drugs.get("vancomycin_buelga2005")`)."""
    pm = calibration.PopulationModel(
        pkpd.OneCompartment(),
        theta=dict(BUELGA_THETA),
        omega={k: math.log1p(cv**2) for k, cv in BUELGA_IIV_CV.items()},
        error=calibration.Additive(3.52),
        typical=buelga_typical,
        omega_block=True,
    )
    return Drug(
        name=BUELGA,
        model=pm,
        covariate_fn=buelga_covariates,
        units=_UNITS,
        dosing=_DOSING,
        reference=BUELGA_REFERENCE,
        targets=TARGETS,
        omega_correlation={("CL", "V"): BUELGA_CORR_CL_V},
        description=__doc__ or "",
    )
