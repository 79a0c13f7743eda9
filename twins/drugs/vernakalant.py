r"""Vernakalant: intravenous two-compartment model with CYP2D6, age and creatinine (Mao 2012).

Mao 2012 pooled 597 patients with atrial fibrillation or flutter and 8 healthy volunteers.
This drug is the patients' model. Every parameter is per kg of body weight:

$$CL = WT \cdot \exp\!\left(\theta_{CL} + 0.156\,\text{EM/UM} - 0.535\,\text{PM}
  - 0.284 \log\frac{\text{AGE}}{60} - 0.345 \log\frac{S_{Cr}}{100\ \mu\text{mol/L}}\right)$$

$$V_c = 0.512\,WT, \quad V_p = 1.039\,WT, \quad Q = 1.338\,WT$$

(L/h and L) with $\theta_{CL} = -1.050$, i.e. 0.35 L/h/kg for patients whose CYP2D6 genotype
was not collected, 0.41 for extensive/ultrarapid metabolizers and 0.20 for poor
metabolizers (Table III).

**Phenotype -> stratum** (`"CYP2D6_PHENOTYPE"`, CPIC labels): the paper's genotyped patients
were extensive (291), poor (16) or ultrarapid (4) metabolizers; with 5% poor metabolizers,
the 94% "extensive" necessarily held the heterozygous carriers of non-functional alleles that
CPIC (Caudle 2020) now calls Intermediate. So CPIC Normal and Intermediate -> EM, Ultrarapid
-> UM (pooled with EM for patients), Poor -> PM, and no genotype or `"Indeterminate"` -> the
"not genotyped" stratum, which the paper estimated separately.

**Dose**: mg of vernakalant *hydrochloride* as labelled (3 mg/kg over 10 min, then 2 mg/kg
if needed); the model's parameters are for the free base, so the covariate model sets
`F1` = 349.50 / 385.93 (free base / hydrochloride molar masses, as in Mao 2012).

**Variability**: a full 4x4 Omega on CL, Vc, Vp, Q (published as variances: 0.159, 0.446,
0.121, 0.480, covariances 0.184 CL-Vc, 0.042 CL-Vp, 0.048 CL-Q, 0.016 Vc-Vp, 0.118 Vc-Q,
0.203 Vp-Q); **residual error** proportional, variance 0.079 (SD 28%) in patients.
Serum creatinine comes in mg/dL (`"SCR"`) and is converted with 88.42 umol/L per mg/dL.

Values from a single transcription (nlmixr2lib `Mao_2012_vernakalant.R`, citing Tables
II-III); the clearance strata agree with the shared `published_models.json`. Not checked
against the paper itself.

References: Mao ZL, Townsend RW, Gao Y, Wheeler JJ, Kastrissios H, Keirns J. Population
pharmacokinetics of vernakalant hydrochloride injection (RSD1235) in patients with atrial
fibrillation or atrial flutter. J Clin Pharmacol 2012;52(7):1042-1053.
doi:10.1177/0091270011408425. Caudle KE et al. Clin Transl Sci 2020;13(1):116-124.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

import calibration
import pkpd
from twins import pgx

from ._drug import (
    CovariateError,
    Dosing,
    Drug,
    PatientCovariates,
    Units,
    patient_number,
)
from ._routes import Infusion

NAME = "vernakalant_mao2012"
REFERENCE = (
    "Mao ZL, Townsend RW, Gao Y, Wheeler JJ, Kastrissios H, Keirns J. Population "
    "pharmacokinetics of vernakalant hydrochloride injection (RSD1235) in patients with "
    "atrial fibrillation or atrial flutter. J Clin Pharmacol 2012;52(7):1042-1053. "
    "doi:10.1177/0091270011408425"
)
#: Free base / hydrochloride molar mass: the fraction of a labelled dose that is free base.
FREE_BASE_FRACTION = 349.50 / 385.93
UMOL_PER_MG_DL = 88.42  # creatinine

#: Published thetas (Table II), on the log scale as published.
THETA: Mapping[str, float] = {
    "LCL": -1.050,  # log(L/h/kg), patients, CYP2D6 not genotyped, age 60, SCr 100 umol/L
    "EMUM_CL": 0.156,  # patients, CYP2D6 EM or UM
    "PM_CL": -0.535,  # CYP2D6 PM
    "AGE_CL": -0.284,  # exponent on AGE/60
    "SCR_CL": -0.345,  # exponent on SCr/100 umol/L
    "LV1": -0.670,  # log(L/kg)
    "LV2": 0.038,  # log(L/kg)
    "LQ": 0.291,  # log(L/h/kg), patients
}
#: Omega (Table II), variances and covariances, etas in the order CL, V1 (Vc), V2 (Vp), Q.
OMEGA_NAMES = ("CL", "V1", "V2", "Q")
OMEGA = np.array(
    [
        [0.159, 0.184, 0.042, 0.048],
        [0.184, 0.446, 0.016, 0.118],
        [0.042, 0.016, 0.121, 0.203],
        [0.048, 0.118, 0.203, 0.480],
    ]
)
PROP_SD = math.sqrt(0.079)

#: CPIC CYP2D6 phenotype -> Mao 2012 stratum.
CYP2D6_STRATA: Mapping[str, str] = {
    "Normal Metabolizer": "EM",
    "Intermediate Metabolizer": "EM",
    "Ultrarapid Metabolizer": "UM",
    "Poor Metabolizer": "PM",
    "Indeterminate": "NOT_GENOTYPED",
}


def cyp2d6_stratum(patient: PatientCovariates) -> str:
    """Mao 2012's CYP2D6 stratum: `"EM"`, `"UM"`, `"PM"` or `"NOT_GENOTYPED"`.

    From `"CYP2D6_PHENOTYPE"`, else from the `"CYP2D6"` diplotype through `twins.pgx`;
    neither present -> not genotyped.
    """
    label = patient.get("CYP2D6_PHENOTYPE")
    if label is None:
        raw = patient.get("CYP2D6")
        if raw is None:
            return "NOT_GENOTYPED"
        try:
            label = pgx.phenotype("CYP2D6", raw).phenotype
        except (ValueError, TypeError) as err:
            raise CovariateError(f"{NAME}: patient CYP2D6 {raw!r} cannot be read: {err}") from err
    if label not in CYP2D6_STRATA:
        raise CovariateError(
            f"{NAME}: patient CYP2D6_PHENOTYPE is {label!r}; expected a CPIC label, one of "
            f"{sorted(CYP2D6_STRATA)}."
        )
    return CYP2D6_STRATA[label]


def covariates(patient: PatientCovariates) -> dict[str, float]:
    """`AGE`, `WT`, `SCR_UMOL` (umol/L) and the indicators `CYP2D6_EMUM`, `CYP2D6_PM`."""
    stratum = cyp2d6_stratum(patient)
    scr = patient_number(patient, "SCR", drug=NAME, what="serum creatinine, mg/dL")
    return {
        "AGE": patient_number(patient, "AGE", drug=NAME, what="age, years"),
        "WT": patient_number(patient, "WT", drug=NAME, what="body weight, kg"),
        "SCR_UMOL": scr * UMOL_PER_MG_DL,
        "CYP2D6_EMUM": float(stratum in ("EM", "UM")),
        "CYP2D6_PM": float(stratum == "PM"),
    }


def typical(theta: Mapping[str, Any], cov: Mapping[str, Any]) -> dict[str, Any]:
    """Mao 2012 typical values for a patient (per kg, times weight)."""
    wt = cov["WT"]
    log_cl = (
        theta["LCL"]
        + theta["EMUM_CL"] * cov["CYP2D6_EMUM"]
        + theta["PM_CL"] * cov["CYP2D6_PM"]
        + theta["AGE_CL"] * jnp.log(cov["AGE"] / 60.0)
        + theta["SCR_CL"] * jnp.log(cov["SCR_UMOL"] / 100.0)
    )
    return {
        "CL": jnp.exp(log_cl) * wt,
        "V1": jnp.exp(theta["LV1"]) * wt,
        "Q": jnp.exp(theta["LQ"]) * wt,
        "V2": jnp.exp(theta["LV2"]) * wt,
        "F1": FREE_BASE_FRACTION,
    }


def drug() -> Drug:
    """Vernakalant (`twins.drugs.get("vernakalant_mao2012")`)."""
    sd = np.sqrt(np.diag(OMEGA))
    corr = OMEGA / np.outer(sd, sd)
    pm = calibration.PopulationModel(
        pkpd.TwoCompartment(),
        theta=dict(THETA),
        omega={n: float(OMEGA[i, i]) for i, n in enumerate(OMEGA_NAMES)},
        error=calibration.Proportional(PROP_SD),
        typical=typical,
        omega_block=True,
        unconstrained=tuple(THETA),
    )
    return Drug(
        name=NAME,
        model=pm,
        covariate_fn=covariates,
        units=Units(
            dose="mg vernakalant hydrochloride (as labelled)",
            concentration="vernakalant free base mg/L",
            observed="vernakalant plasma concentration, mg/L (x 1000 for ng/mL)",
        ),
        dosing=Dosing(
            route=Infusion(duration=10.0 / 60.0),
            amount=3.0,
            interval=25.0 / 60.0,
            per_kg=True,
            reference="3 mg/kg over 10 min; if needed 2 mg/kg over 10 min from 25 min "
            "(Mao 2012; the second dose is 2 mg/kg: pass amount=2.0).",
        ),
        reference=REFERENCE,
        omega_correlation={
            (OMEGA_NAMES[i], OMEGA_NAMES[j]): float(corr[i, j]) for i in range(4) for j in range(i)
        },
        description=__doc__ or "",
    )
