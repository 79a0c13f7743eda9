r"""Citalopram: S-citalopram by CYP2C19 phenotype, age and weight (Akil 2016).

Akil 2016 modelled R- and S-citalopram and their desmethyl metabolites in 81 elderly
patients with Alzheimer's disease (CitAD trial). This drug keeps the S-enantiomer
(escitalopram, the active one, and the one CYP2C19 acts on), one compartment with
first-order absorption, all parameters apparent (divided by the unknown bioavailability):

$$CL_S/F = CL_0 \left(\frac{\text{AGE}}{60}\right)^{-1.33}
  \left(\frac{\text{WT}}{70}\right)^{0.75}, \quad V_S/F = 1390\ \text{L}, \quad
  k_a = 1\ /\text{h (fixed)}$$

with $CL_0$ = 22.1 L/h for CYP2C19 extensive or rapid metabolizers, 16.3 L/h for
intermediate or poor metabolizers and 16.8 L/h where the genotype is not known (the paper
estimated one typical value per group, Table 3).

**Phenotype -> group** (CPIC labels from `twins.pgx`, `"CYP2C19_PHENOTYPE"`): Normal, Rapid
and Ultrarapid Metabolizer -> extensive/rapid (22.1); Intermediate, Likely Intermediate,
Poor and Likely Poor Metabolizer -> intermediate/poor (16.3); no genotype, or
`"Indeterminate"` -> genotype missing (16.8), the paper's own group for patients without a
usable genotype. Ultrarapid (`*17/*17`) patients were pooled with the rapid ones in the paper
(3 rapid metabolizers of 81).

**Dose**: mg of racemic citalopram; the S-enantiomer is half of it (`F1 = 0.5`, the
S-fraction, not a bioavailability), which is how the paper splits the racemic dose.

**Variability** (log-normal, $\omega^2 = \log(1 + CV^2)$): CL 38.34%, V 75.37%, correlation
0.471; **residual error** proportional 21.61%.

The S-enantiomer's V/F, the variability and the residual error are not in the shared
`published_models.json`; they come from the same single transcription of Akil 2016 Table 3
(nlmixr2lib `Akil_2016_citalopram.R`), which also explains why the CL-V entry is read as a
correlation. Not checked against the paper itself.

References: Akil A, Bies RR, Pollock BG, et al. A population pharmacokinetic model for R- and
S-citalopram and desmethylcitalopram in Alzheimer's disease patients with agitation. J
Pharmacokinet Pharmacodyn 2016;43(1):99-109. doi:10.1007/s10928-015-9457-6. Target:
Hiemke C et al. Consensus guidelines for therapeutic drug monitoring in
neuropsychopharmacology: update 2017. Pharmacopsychiatry 2018;51(1-02):9-62 (escitalopram
15-80 ng/mL). Dose: Porsteinsson AP et al. Effect of citalopram on agitation in Alzheimer
disease: the CitAD randomized clinical trial. JAMA 2014;311(7):682-691.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import calibration
import pkpd
from twins import pgx

from ._drug import (
    CovariateError,
    Dosing,
    Drug,
    PatientCovariates,
    Target,
    Units,
    patient_number,
)
from ._metrics import Trough
from ._routes import Oral

NAME = "citalopram_akil2016"
REFERENCE = (
    "Akil A, Bies RR, Pollock BG, Avramopoulos D, Devanand DP, Mintzer JE, Porsteinsson AP, "
    "Schneider LS, Weintraub D, Yesavage J, Shade DM, Lyketsos CG. A population "
    "pharmacokinetic model for R- and S-citalopram and desmethylcitalopram in Alzheimer's "
    "disease patients with agitation. J Pharmacokinet Pharmacodyn 2016;43(1):99-109. "
    "doi:10.1007/s10928-015-9457-6"
)
S_FRACTION = 0.5

THETA: Mapping[str, float] = {
    "CL_EMRM": 22.1,  # L/h, CYP2C19 extensive/rapid, age 60, 70 kg
    "CL_IMPM": 16.3,  # L/h, intermediate/poor
    "CL_MISSING": 16.8,  # L/h, genotype not known
    "AGE_CL": -1.33,  # exponent on AGE/60
    "WT_CL": 0.75,  # exponent on WT/70
    "V": 1390.0,  # L (S-enantiomer V/F)
}
KA = 1.0  # 1/h, fixed
IIV_CV: Mapping[str, float] = {"CL": 0.3834, "V": 0.7537}
CORR_CL_V = 0.471
PROP_SD = 0.2161

#: CPIC CYP2C19 phenotype -> Akil 2016 covariate group.
CYP2C19_GROUPS: Mapping[str, str] = {
    "Ultrarapid Metabolizer": "EMRM",
    "Rapid Metabolizer": "EMRM",
    "Normal Metabolizer": "EMRM",
    "Likely Intermediate Metabolizer": "IMPM",
    "Intermediate Metabolizer": "IMPM",
    "Likely Poor Metabolizer": "IMPM",
    "Poor Metabolizer": "IMPM",
    "Indeterminate": "MISSING",
}


def cyp2c19_group(patient: PatientCovariates) -> str:
    """Akil 2016's CYP2C19 group of a patient: `"EMRM"`, `"IMPM"` or `"MISSING"`.

    From `"CYP2C19_PHENOTYPE"` (CPIC label), else from the `"CYP2C19"` diplotype through
    `twins.pgx`; neither present means the genotype is missing (the paper's third group).
    """
    label = patient.get("CYP2C19_PHENOTYPE")
    if label is None:
        raw = patient.get("CYP2C19")
        if raw is None:
            return "MISSING"
        try:
            label = pgx.phenotype("CYP2C19", raw).phenotype
        except (ValueError, TypeError) as err:
            raise CovariateError(f"{NAME}: patient CYP2C19 {raw!r} cannot be read: {err}") from err
    if label not in CYP2C19_GROUPS:
        raise CovariateError(
            f"{NAME}: patient CYP2C19_PHENOTYPE is {label!r}; expected a CPIC label, one of "
            f"{sorted(CYP2C19_GROUPS)}."
        )
    return CYP2C19_GROUPS[label]


def covariates(patient: PatientCovariates) -> dict[str, float]:
    """`AGE`, `WT` and the indicators `CYP2C19_IMPM`, `CYP2C19_MISSING`."""
    group = cyp2c19_group(patient)
    return {
        "AGE": patient_number(patient, "AGE", drug=NAME, what="age, years"),
        "WT": patient_number(patient, "WT", drug=NAME, what="body weight, kg"),
        "CYP2C19_IMPM": float(group == "IMPM"),
        "CYP2C19_MISSING": float(group == "MISSING"),
    }


def typical(theta: Mapping[str, Any], cov: Mapping[str, Any]) -> dict[str, Any]:
    """Akil 2016 S-citalopram typical values (one CL per CYP2C19 group)."""
    impm, missing = cov["CYP2C19_IMPM"], cov["CYP2C19_MISSING"]
    cl0 = (
        theta["CL_EMRM"] * (1.0 - impm - missing)
        + theta["CL_IMPM"] * impm
        + theta["CL_MISSING"] * missing
    )
    cl = cl0 * (cov["AGE"] / 60.0) ** theta["AGE_CL"] * (cov["WT"] / 70.0) ** theta["WT_CL"]
    return {"KA": KA, "CL": cl, "V": theta["V"], "F1": S_FRACTION}


def drug() -> Drug:
    """S-citalopram after racemic citalopram (`twins.drugs.get("citalopram_akil2016")`)."""
    pm = calibration.PopulationModel(
        pkpd.OneCompartmentOral(),
        theta=dict(THETA),
        omega={k: math.log1p(cv**2) for k, cv in IIV_CV.items()},
        error=calibration.Proportional(PROP_SD),
        typical=typical,
        omega_block=True,
        unconstrained=("AGE_CL",),
    )
    return Drug(
        name=NAME,
        model=pm,
        covariate_fn=covariates,
        units=Units(
            dose="mg racemic citalopram (S-citalopram = half)",
            concentration="S-citalopram mg/L",
            observed="S-citalopram plasma concentration, mg/L (x 1000 for ng/mL)",
        ),
        dosing=Dosing(
            route=Oral(),
            amount=30.0,
            interval=24.0,
            reference="30 mg once daily, the CitAD target dose (Porsteinsson 2014).",
        ),
        reference=REFERENCE,
        targets=(
            Target(
                metric=Trough("concentration"),
                low=0.015,
                high=0.080,
                unit="mg/L",
                reference="Hiemke C et al. Pharmacopsychiatry 2018;51(1-02):9-62.",
                note="escitalopram (S-citalopram) therapeutic reference range, 15-80 ng/mL, "
                "trough at steady state",
            ),
        ),
        omega_correlation={("CL", "V"): CORR_CL_V},
        description=__doc__ or "",
    )
