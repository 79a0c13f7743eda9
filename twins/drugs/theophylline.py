r"""Theophylline: the one-compartment oral model of the calibration validation (theo_sd).

$$\frac{dA_d}{dt} = -k_a A_d, \quad \frac{dA_c}{dt} = k_a A_d - \frac{CL}{V} A_c, \quad
  C = A_c / V$$

Typical values are nlmixr2's SAEM fit of the 12-subject theophylline data (`theo_sd`), the
reference the calibration package is validated against (docs/calibration.md): $k_a$ = 1.57
/h, $CL$ = 2.76 L/h, $V$ = 31.5 L; between-subject variability (CV) 71.5% on $k_a$, 27.6% on
CL, 13.4% on V ($\omega^2 = \log(1 + CV^2)$); additive residual error 0.693 mg/L. No
covariates (doses in the data are mg/kg x weight, but the model has no weight effect).

Target: serum concentration 5-15 mg/L (asthma, NAEPP Expert Panel Report 3).

References: Boeckmann AJ, Sheiner LB, Beal SL. NONMEM Users Guide, Part V. NONMEM Project
Group, UCSF, 1994 (the data); nlmixr2 README example fit (est = "saem", theo_sd), github
nlmixr2/nlmixr2 @0840fedc (the estimates; Fidler M et al. Nonlinear mixed-effects model
development and simulation using nlmixr and related R open-source packages. CPT
Pharmacometrics Syst Pharmacol 2019;8(9):621-633 describes the software); National Asthma
Education and Prevention Program. Expert Panel Report 3: Guidelines for the Diagnosis and
Management of Asthma. NIH Publication 07-4051, 2007 (the target).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import calibration
import pkpd

from ._drug import Dosing, Drug, PatientCovariates, Target, Units
from ._metrics import Trough
from ._routes import Oral

NAME = "theophylline"
REFERENCE = (
    "nlmixr2 SAEM fit of theo_sd (nlmixr2 README, github nlmixr2/nlmixr2 @0840fedc); data: "
    "Boeckmann AJ, Sheiner LB, Beal SL. NONMEM Users Guide Part V, UCSF 1994; software: "
    "Fidler M et al. CPT Pharmacometrics Syst Pharmacol 2019;8(9):621-633"
)
THETA: Mapping[str, float] = {"KA": 1.57, "CL": 2.76, "V": 31.5}
IIV_CV: Mapping[str, float] = {"KA": 0.715, "CL": 0.276, "V": 0.134}
ADD_SD = 0.693  # mg/L


def covariates(patient: PatientCovariates) -> dict[str, float]:
    """No covariates: the model's typical values are the same for every patient."""
    del patient
    return {}


def drug() -> Drug:
    """Theophylline (`twins.drugs.get("theophylline")`)."""
    pm = calibration.PopulationModel(
        pkpd.OneCompartmentOral(),
        theta=dict(THETA),
        omega={k: math.log1p(cv**2) for k, cv in IIV_CV.items()},
        error=calibration.Additive(ADD_SD),
    )
    return Drug(
        name=NAME,
        model=pm,
        covariate_fn=covariates,
        units=Units(
            dose="mg theophylline (anhydrous)",
            concentration="mg/L",
            observed="theophylline plasma concentration, mg/L",
        ),
        dosing=Dosing(
            route=Oral(),
            amount=320.0,
            interval=12.0,
            reference="320 mg: the single dose of theo_sd (11 of 12 subjects; 4.0-5.9 mg/kg).",
        ),
        reference=REFERENCE,
        targets=(
            Target(
                metric=Trough("concentration"),
                low=5.0,
                high=15.0,
                unit="mg/L",
                reference="National Asthma Education and Prevention Program, Expert Panel "
                "Report 3, NIH Publication 07-4051, 2007.",
                note="steady-state serum concentration, asthma",
            ),
        ),
        description=__doc__ or "",
    )
