r"""A second warfarin trial: initiation modelled on COAG.

COAG (Kimmel SE, French B, Kasner SE, et al. A pharmacogenetic versus a clinical algorithm
for warfarin dosing. N Engl J Med 2013;369(24):2283-2293) randomised 1,015 patients
starting warfarin (27% Black) to genotype-guided or clinically guided dosing during the
first five days: a dose-initiation algorithm for days 1-3 (clinical variables plus CYP2C9
\*2, \*3 and VKORC1 -1639G>A, or clinical variables only), a dose-revision algorithm with the
INR on day 4 or 5 (or both), then the same INR-guided management in both groups to day 28.
The primary outcome was the percentage of time with INR 2.0-3.0 from day 4 or 5 to day 28:
45.2% (genotype) vs 45.4% (clinical), no difference; in Black patients 35.2% vs 43.5%.

The virtual version gives the same virtual patients both arms and simulates the Hamberg 2007
S-warfarin PK/INR model (`twins.drugs.get("warfarin_hamberg2007")`), as the EU-PACT preset
does (`twins.trials.eupact_trial`):

- **days 1-3** (`gage_2008_pharmacogenetic`, `gage_2008_clinical`): the maintenance dose
  predicted by the algorithms of Gage et al. 2008 (warfarindosing.org), given as the daily
  dose on days 1-3 (COAG initiated at predicted maintenance doses, no loading dose:
  French B et al. Pharmacogenet Genomics 2016;26:445-452):

  $$\text{PG: } D = \exp(0.9751 - 0.3238\,n_{A} + 0.4317\,BSA - 0.4008\,n_{*3}
    - 0.00745\,AGE - 0.2066\,n_{*2} + 0.2029\,INR_t - 0.2538\,AMIO + 0.0922\,SMOKE
    - 0.0901\,BLACK + 0.0664\,VTE)$$

  $$\text{clinical: } D = \exp(0.613 + 0.425\,BSA - 0.0075\,AGE + 0.156\,BLACK
    + 0.216\,INR_t - 0.257\,AMIO + 0.108\,SMOKE + 0.0784\,VTE)$$

  (mg/day; $n_A$ VKORC1 -1639 A alleles, $n_{*2}$, $n_{*3}$ CYP2C9 alleles, BSA in m²,
  target INR $INR_t$ = 2.5);
- **days 4 and 5** (`LENZINI_2010_PHARMACOGENETIC`, `LENZINI_2010_CLINICAL`): the dose
  revised from the INR measured that morning by the refinement algorithms of Lenzini et
  al. 2010, $\text{mg/week} = \exp(b_0 + b_{\ln INR} \ln INR + \sum_j b_j x_j + b_2 d_2 +
  b_3 d_3 + b_4 d_4)$ with $d_k$ the dose given on day $k$ (0 if not yet given: $d_4$ = 0
  for the day-4 revision), coefficients in `LENZINI_2010_PHARMACOGENETIC` and
  `LENZINI_2010_CLINICAL`;
- **day 7 on**: the same INR nomogram in both arms (the EU-PACT preset's `NOMOGRAM`).

The population (`coag_population`) draws CYP2C9 and VKORC1 from CPIC's allele frequencies by
biogeographic group (`Population.sample(genotype_source="cpic")`): 27% Black (CPIC's African
American/Afro-Caribbean frequencies), 73% White (European). COAG genotyped only CYP2C9 \*2
and \*3, so the algorithms see \*5, \*6, \*8 and \*11 (about 9% of alleles in the African
American group, under 1% in the European) as \*1, while the patient's clearance is that of
their function (below): the one mechanism behind the race difference that the model can
carry. Every assumption is in `ASSUMPTIONS` (and the report); the published figures in
`PUBLISHED` and `PUBLISHED_BY_RACE`.

References: Kimmel SE et al. N Engl J Med 2013;369:2283-2293 (design and results); Gage BF,
Eby C, Johnson JA, et al. Use of pharmacogenetic and clinical factors to predict the
therapeutic dose of warfarin. Clin Pharmacol Ther 2008;84(3):326-331 (initiation);
Lenzini P, Wadelius M, Kimmel S, et al. Integration of genetic, clinical, and INR data to
refine warfarin dosing. Clin Pharmacol Ther 2010;87(5):572-578 (revision); Hamberg AK et al.
Clin Pharmacol Ther 2007;81:529-538 (model); Rosendaal FR et al. Thromb Haemost
1993;69:236-239 (TTR).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

import pkpd

from .. import pgx
from .._population import Population
from ..drugs import get as get_drug
from ._arms import Arm, Nomogram
from ._endpoints import (
    AnyAbove,
    Endpoint,
    MeanDose,
    Source,
    TimeInRange,
    TimeToRange,
    observed_values,
)
from ._eupact import NOMOGRAM
from ._subgroups import Subgroup
from ._trial import Trial

KIMMEL_2013 = (
    "Kimmel SE, French B, Kasner SE, et al. A pharmacogenetic versus a clinical algorithm for "
    "warfarin dosing. N Engl J Med 2013;369(24):2283-2293."
)
GAGE_2008 = (
    "Gage BF, Eby C, Johnson JA, et al. Use of pharmacogenetic and clinical factors to predict "
    "the therapeutic dose of warfarin. Clin Pharmacol Ther 2008;84(3):326-331."
)
LENZINI_2010 = (
    "Lenzini P, Wadelius M, Kimmel S, et al. Integration of genetic, clinical, and INR data to "
    "refine warfarin dosing. Clin Pharmacol Ther 2010;87(5):572-578."
)

#: The target INR of COAG (2.0-3.0), the value the algorithms take.
TARGET_INR = 2.5

#: INR measured on these days (1-based; before that day's dose): baseline, the two revision
#: days, then management to day 28 (reconstructed: see ASSUMPTIONS).
VISITS: tuple[int, ...] = (1, 4, 5, 7, 10, 14, 21, 28)

#: Days (1-based) on which the revision algorithm re-sets the dose from that morning's INR.
REVISION_DAYS: tuple[int, ...] = (4, 5)

#: The primary endpoint's window (1-based days, inclusive): from the end of the
#: intervention period (the day-5 revision) to day 28.
WINDOW_DAYS: tuple[int, int] = (5, 28)

#: Gage 2008, pharmacogenetic: ln(mg/day) = sum of coefficient x covariate.
GAGE_2008_PHARMACOGENETIC: Mapping[str, float] = {
    "intercept": 0.9751,
    "vkorc1_a": -0.3238,  # per VKORC1 -1639 (3673) A allele
    "bsa": 0.4317,  # per m^2
    "cyp2c9_3": -0.4008,  # per CYP2C9*3 allele
    "age": -0.00745,  # per year
    "cyp2c9_2": -0.2066,  # per CYP2C9*2 allele
    "target_inr": 0.2029,
    "amiodarone": -0.2538,
    "smoker": 0.0922,
    "black": -0.0901,
    "dvt_pe": 0.0664,  # indication deep-vein thrombosis / pulmonary embolism
}

#: Gage 2008, clinical: ln(mg/day).
GAGE_2008_CLINICAL: Mapping[str, float] = {
    "intercept": 0.613,
    "bsa": 0.425,
    "age": -0.0075,
    "black": 0.156,
    "target_inr": 0.216,
    "amiodarone": -0.257,
    "smoker": 0.108,
    "dvt_pe": 0.0784,
}

#: Lenzini 2010, pharmacogenetic refinement: ln(mg/week); `ln_inr` multiplies ln(INR) of
#: day 4 or 5, `dose_2` ... `dose_4` the doses (mg) given on days 2-4.
LENZINI_2010_PHARMACOGENETIC: Mapping[str, float] = {
    "intercept": 3.10894,
    "age": -0.00767,
    "ln_inr": -0.51611,
    "vkorc1_a": -0.23032,
    "cyp2c9_2": -0.14745,
    "cyp2c9_3": -0.30770,
    "bsa": 0.24597,
    "target_inr": 0.26729,
    "black": -0.09644,
    "stroke": -0.20590,
    "diabetes": -0.11216,
    "amiodarone": -0.10350,
    "fluvastatin": -0.19275,
    "dose_2": 0.01690,
    "dose_3": 0.02018,
    "dose_4": 0.01065,
}

#: Lenzini 2010, clinical refinement (no genotype): ln(mg/week).
LENZINI_2010_CLINICAL: Mapping[str, float] = {
    "intercept": 2.81602,
    "ln_inr": -0.76679,
    "age": -0.00590,
    "target_inr": 0.27815,
    "diabetes": -0.16759,
    "bsa": 0.17675,
    "stroke": -0.22844,
    "fluvastatin": -0.25487,
    "black": 0.07123,
    "amiodarone": -0.11137,
    "dose_2": 0.03471,
    "dose_3": 0.03047,
    "dose_4": 0.01929,
}

#: The terms of the revision that change during the trial (the rest is fixed per patient).
_DYNAMIC = ("intercept", "ln_inr", "dose_2", "dose_3", "dose_4")

#: Baseline characteristics of the virtual cohort that the algorithms read and the sampler
#: draws (fractions of patients). Reconstructed, not COAG's Table 1: see ASSUMPTIONS.
BASELINE: Mapping[str, float] = {
    "black": 0.27,
    "female": 0.49,
    "dvt_pe": 0.60,
    "smoker": 0.15,
    "diabetes": 0.20,
    "stroke": 0.10,
    "amiodarone": 0.03,
    "fluvastatin": 0.01,
}

PUBLISHED: dict[str, object] = {
    "genotype_guided": {"ttr_window": 45.2},
    "clinical": {"ttr_window": 45.4},
    "source": KIMMEL_2013,
    "notes": (
        "Mean percentage of time in INR 2.0-3.0 from day 4 or 5 to day 28 (adjusted mean "
        "difference -0.2, 95% CI -3.4 to 3.1; P = 0.91). n = 1015 (514 genotype-guided, 501 "
        "clinically guided). Black patients (interaction P = 0.003): 35.2% vs 43.5% "
        "(difference -8.3, 95% CI -15.9 to -0.7)."
    ),
}

#: The published differences (genotype-guided minus clinically guided), adjusted.
PUBLISHED_DIFFERENCES: dict[str, object] = {
    "genotype_guided": {"ttr_window": {"estimate": -0.2, "ci_low": -3.4, "ci_high": 3.1}},
}

#: The primary endpoint in Black patients (Kimmel 2013); the non-Black figures are not held
#: here (not transcribed from the paper's subgroup figure).
PUBLISHED_BY_RACE: dict[str, object] = {
    "Black": {
        "genotype_guided": {"ttr_window": 35.2},
        "clinical": {"ttr_window": 43.5},
        "difference": {"estimate": -8.3, "ci_low": -15.9, "ci_high": -0.7},
    },
    "source": KIMMEL_2013,
}

ASSUMPTIONS: tuple[str, ...] = (
    "Virtual patients: 27% Black (CPIC African American/Afro-Caribbean allele frequencies), "
    "73% White (CPIC European; COAG's non-Black patients, 6% of them Hispanic, are all "
    "taken as European); age uniform on 30-85 years; 49% female; height and weight by "
    "twins.Demographics (not by race). CYP2C9 and VKORC1 from CPIC's allele frequencies "
    "(Hardy-Weinberg). Indication DVT/PE 60%, current smokers 15%, diabetes 20%, prior "
    "stroke 10%, amiodarone 3%, fluvastatin 1%: rounded values of the kind COAG reports, "
    "not transcribed from its Table 1 (assumed; they enter only the dosing algorithms).",
    "CYP2C9 alleles other than *2 and *3 (*5, *6, *8, *11, ... drawn from CPIC): COAG "
    "genotyped only *2 and *3, so the algorithms count them as *1. The Hamberg 2007 model "
    "has clearances for *1, *2 and *3 only; each allele's clearance is taken from its CPIC "
    "function: decreased function (activity 0.5) as *2, no function (0) as *3, normal, "
    "uncertain or unknown function as *1 (an assumption: no published clearance exists).",
    "PK/PD: Hamberg 2007 with its published between-subject variability, as in the EU-PACT "
    "preset; baseline INR 1.0; no within-patient variability, adherence or dropout (the "
    "trial's patients had all three): virtual TTRs are expected to be higher than the "
    "published ones.",
    "Days 1-3: the maintenance dose predicted by Gage et al. 2008 (pharmacogenetic, or "
    "clinical: the algorithms of warfarindosing.org that COAG adapted; COAG's own refits of "
    "their coefficients are not reproduced), target INR 2.5, given each day without a "
    "loading dose, rounded to 0.5 mg.",
    "Days 4 and 5: the dose revised with Lenzini et al. 2010's refinement algorithm "
    "(pharmacogenetic or clinical) from that morning's INR and the doses of days 2-4 (the "
    "day-4 dose counts as 0 at the day-4 revision); COAG revised on day 4, 5 or both: here "
    "always both. The clinical coefficients are as transcribed by an independent "
    "implementation (the reil package's Lenzini class, after Ravvaz et al. 2017); the "
    "pharmacogenetic ones agree with it; neither was checked against the paper's table.",
    "From day 7: the same INR nomogram in both arms (the EU-PACT preset's, Jaffer & Bragg "
    "2003 ranges), INR on days 7, 10, 14, 21 and 28 (COAG's standardised titration table "
    "and visit schedule are not reproduced); doses rounded to 0.5 mg (at least 0.5 mg).",
    "Assay noise on each measured INR: the model's residual error (log-normal, SD 0.0325).",
    "Primary endpoint: Rosendaal TTR (INR 2.0-3.0) on the measured INRs from day 5 to day "
    "28 (COAG: from day 4 or 5, whichever ended the intervention); also by race (Black / "
    "non-Black). ttr_all is the TTR from day 1 to day 28, inr_ge4 any INR >= 4.0 on days "
    "1-28, ttr_window_true the window TTR on the noise-free daily INR.",
)


# ----------------------------------------------------------------------------- algorithms


def _linear(coefficients: Mapping[str, float], values: Mapping[str, Any]):
    """sum_j coefficient_j * value_j over the coefficients (intercept: 1)."""
    total = coefficients["intercept"]
    for name, b in coefficients.items():
        if name != "intercept":
            total = total + b * values[name]
    return total


def gage_2008_dose(coefficients: Mapping[str, float], **covariates: Any) -> np.ndarray:
    """The Gage 2008 predicted warfarin dose (mg/day): `exp(sum_j b_j x_j)`.

    `coefficients` is `GAGE_2008_PHARMACOGENETIC` or `GAGE_2008_CLINICAL`; `covariates`
    gives every term they name: `age` (years), `bsa` (m²), `target_inr`, the 0/1 flags
    `black`, `amiodarone`, `smoker`, `dvt_pe`, and for the pharmacogenetic one the allele
    counts `vkorc1_a` (VKORC1 -1639 A), `cyp2c9_2`, `cyp2c9_3` (0, 1, 2).

    References: Gage BF et al. Clin Pharmacol Ther 2008;84(3):326-331.
    """
    missing = [k for k in coefficients if k != "intercept" and k not in covariates]
    if missing:
        raise ValueError(f"gage_2008_dose: missing covariates {missing}.")
    return np.exp(_linear(coefficients, {k: np.asarray(v, float) for k, v in covariates.items()}))


def lenzini_2010_dose(coefficients: Mapping[str, float], **covariates: Any):
    """The Lenzini 2010 refined warfarin dose (mg/day): `exp(sum_j b_j x_j) / 7` (the model
    predicts mg/week).

    `coefficients` is `LENZINI_2010_PHARMACOGENETIC` or `LENZINI_2010_CLINICAL`;
    `covariates` gives `ln_inr` (natural log of the day-4 or day-5 INR), `dose_2`,
    `dose_3`, `dose_4` (mg given on days 2, 3, 4; 0 for a day not yet dosed), `age`, `bsa`,
    `target_inr`, the flags `black`, `stroke`, `diabetes`, `amiodarone`, `fluvastatin`, and
    for the pharmacogenetic one `vkorc1_a`, `cyp2c9_2`, `cyp2c9_3`. NumPy or JAX arrays.

    References: Lenzini P et al. Clin Pharmacol Ther 2010;87(5):572-578.
    """
    missing = [k for k in coefficients if k != "intercept" and k not in covariates]
    if missing:
        raise ValueError(f"lenzini_2010_dose: missing covariates {missing}.")
    xp = jnp if any(isinstance(v, jax.Array) for v in covariates.values()) else np
    return xp.exp(_linear(coefficients, covariates)) / 7.0


def _require(cov: Mapping[str, Any], key: str, what: str) -> np.ndarray:
    if key not in cov:
        raise ValueError(
            f"COAG algorithms: the covariates have no {key!r} ({what}); the population must "
            f"provide it (coag_population does). They have {sorted(cov)}."
        )
    return np.asarray(cov[key], dtype=float)


def _vkorc1_a(cov: Mapping[str, Any]) -> np.ndarray:
    counts = {"-1639 GG": 0.0, "-1639 AG": 1.0, "-1639 AA": 2.0}
    labels = cov.get("VKORC1_PHENOTYPE")
    if labels is None:
        raise ValueError("COAG algorithms: the covariates have no 'VKORC1_PHENOTYPE'.")
    out = []
    for i, label in enumerate(labels):
        if label not in counts:
            raise ValueError(
                f"COAG algorithms: patient {cov['ID'][i]} has VKORC1_PHENOTYPE {label!r}; "
                f"expected one of {sorted(counts)}."
            )
        out.append(counts[label])
    return np.asarray(out)


def _tested_counts(cov: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """CYP2C9 *2 and *3 allele counts as COAG's genotyping reported them: the population's
    `CYP2C9_STAR2` / `CYP2C9_STAR3` (coag_population), else counted in the diplotype."""
    if "CYP2C9_STAR2" in cov and "CYP2C9_STAR3" in cov:
        return np.asarray(cov["CYP2C9_STAR2"], float), np.asarray(cov["CYP2C9_STAR3"], float)
    if "CYP2C9" not in cov:
        raise ValueError("COAG algorithms: the covariates have no 'CYP2C9' diplotype.")
    alleles = [str(d).split("/") for d in cov["CYP2C9"]]
    return (
        np.asarray([a.count("*2") for a in alleles], float),
        np.asarray([a.count("*3") for a in alleles], float),
    )


def algorithm_covariates(cov: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inputs of the Gage and Lenzini algorithms from `Population.covariates()` (with
    `ANCESTRY`, as the trial engine adds it): `age`, `bsa` (Mosteller), `target_inr` (2.5),
    `black` (ancestry "Black or African American"), the flags `amiodarone`, `fluvastatin`
    (medications), `smoker`, `dvt_pe`, `diabetes`, `stroke` (extras), and the tested allele
    counts `vkorc1_a`, `cyp2c9_2`, `cyp2c9_3`."""
    age = _require(cov, "AGE", "age, years")
    n = age.size
    if "ANCESTRY" not in cov:
        raise ValueError("COAG algorithms: the covariates have no 'ANCESTRY' (race).")
    ancestry = np.asarray(cov["ANCESTRY"], dtype=object)
    star2, star3 = _tested_counts(cov)
    return {
        "age": age,
        "bsa": _require(cov, "BSA", "body surface area, m^2"),
        "target_inr": np.full(n, TARGET_INR),
        "black": (ancestry == "Black or African American").astype(float),
        "amiodarone": _require(cov, "AMIODARONE", "medication flag"),
        "fluvastatin": _require(cov, "FLUVASTATIN", "medication flag"),
        "smoker": _require(cov, "SMOKER", "current smoker, 0/1"),
        "dvt_pe": _require(cov, "DVT_PE", "indication DVT/PE, 0/1"),
        "diabetes": _require(cov, "DIABETES", "diabetes, 0/1"),
        "stroke": _require(cov, "STROKE", "prior stroke, 0/1"),
        "vkorc1_a": _vkorc1_a(cov),
        "cyp2c9_2": star2,
        "cyp2c9_3": star3,
    }


# ----------------------------------------------------------------------------- the arm


@dataclasses.dataclass(frozen=True, eq=False)
class RevisionArm(Arm):
    r"""COAG's dosing: an initiation algorithm for the first days, a revision algorithm on
    the revision days, then INR-guided management.

    - Periods before the first revision day: the initiation dose,
      `gage_2008_dose(initiation, ...)`, rounded to `dose_step`.
    - On each of `revision_days` (visits; the INR measured that morning, with assay noise):
      the dose becomes `lenzini_2010_dose(revision, ...)` with the doses given on days 2, 3
      and 4 before that day (0 for a day not yet dosed), rounded.
    - At a visit on one of a rule's `days`: `rule(measured, dose) -> (new dose, doses
      withheld)`, as in `DosingArm` (e.g. a `Nomogram`).
    - With `Trial(visits=Visits(...))`: a visit that slipped is decided by the rule of its
      scheduled day, from the INR of the day it happened (`step_at`); a missed visit
      decides nothing, so a missed day-4 or day-5 revision is no revision (with both
      missed the initiation dose runs on to the first management visit).

    **Fields:** `name`, `label`, `description`; `initiation` (Gage coefficients), `revision`
    (Lenzini coefficients); `visits` (1-based days); `revision_days` (1-based, visits after
    day 1, at most day 5: the algorithm reads the doses of days 2-4); `rules` (`((days,
    rule), ...)`, days after the last revision day); `dose_step` (mg).
    """

    name: str
    label: str
    description: str
    initiation: Mapping[str, float]
    revision: Mapping[str, float]
    visits: tuple[int, ...] = VISITS
    revision_days: tuple[int, ...] = REVISION_DAYS
    rules: tuple[tuple[tuple[int, ...], Any], ...] = ()
    dose_step: float = 0.5
    host_driven: ClassVar[bool] = False

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"RevisionArm: name must be a word ([A-Za-z0-9_]), got {self.name!r}.")
        days = [int(d) for d in self.visits]
        if any(d < 1 for d in days) or days != sorted(set(days)):
            raise ValueError(
                f"RevisionArm {self.name!r}: visits must be increasing days >= 1, got "
                f"{self.visits!r}."
            )
        rev = [int(d) for d in self.revision_days]
        if not rev or rev != sorted(set(rev)) or rev[0] < 2 or rev[-1] > 5:
            raise ValueError(
                f"RevisionArm {self.name!r}: revision_days must be increasing days in 2-5 "
                f"(the algorithm reads the doses of days 2-4), got {self.revision_days!r}."
            )
        missing = sorted(set(rev) - set(days))
        if missing:
            raise ValueError(
                f"RevisionArm {self.name!r}: revision days {missing} are not visit days."
            )
        for rule_days, _ in self.rules:
            bad = sorted(set(rule_days) - set(days))
            if bad:
                raise ValueError(f"RevisionArm {self.name!r}: rule days {bad} are not visit days.")
            early = sorted(d for d in rule_days if d <= rev[-1])
            if early:
                raise ValueError(
                    f"RevisionArm {self.name!r}: rule days {early} fall on or before the last "
                    f"revision day {rev[-1]}."
                )
        for what, coefficients in (("initiation", self.initiation), ("revision", self.revision)):
            if "intercept" not in coefficients:
                raise ValueError(f"RevisionArm {self.name!r}: {what} has no 'intercept'.")
        extra = sorted(set(_DYNAMIC) - set(self.revision))
        if extra:
            raise ValueError(
                f"RevisionArm {self.name!r}: the revision algorithm must have the terms "
                f"{list(_DYNAMIC)}; it lacks {extra}."
            )
        if not self.dose_step > 0:
            raise ValueError(f"RevisionArm {self.name!r}: dose_step must be > 0.")
        object.__setattr__(self, "visits", tuple(d - 1 for d in days))
        object.__setattr__(self, "revision_days", tuple(d - 1 for d in rev))
        object.__setattr__(
            self, "rules", tuple((tuple(int(d) - 1 for d in ds), r) for ds, r in self.rules)
        )
        object.__setattr__(self, "initiation", dict(self.initiation))
        object.__setattr__(self, "revision", dict(self.revision))

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "initiation": dict(sorted(self.initiation.items())),
            "revision": dict(sorted(self.revision.items())),
            "revision_days": [d + 1 for d in self.revision_days],
            "rules": [{"days": [d + 1 for d in days], "rule": repr(r)} for days, r in self.rules],
            "dose_step": self.dose_step,
        }

    def _round(self, dose):
        xp = jnp if isinstance(dose, jax.Array) else np
        return xp.maximum(xp.round(dose / self.dose_step), 1.0) * self.dose_step

    def start(self, covariates):
        x = algorithm_covariates(covariates)
        initial = self._round(gage_2008_dose(self.initiation, **{
            k: x[k] for k in self.initiation if k != "intercept"
        }))  # fmt: skip
        static = {k: b for k, b in self.revision.items() if k not in _DYNAMIC}
        fixed = self.revision["intercept"] + sum(
            (b * x[k] for k, b in static.items()), np.zeros_like(initial)
        )
        n = initial.size
        return {
            "fixed": np.asarray(fixed, dtype=float),
            "dose": initial,
            "given": np.zeros((n, 3)),  # doses given on days 2, 3, 4
            "hold": np.zeros(n, dtype=np.int32),
        }

    def step(self, period, measured, is_visit, state):
        return self.step_at(period, period, measured, is_visit, state)

    def step_at(self, period, visit_period, measured, is_visit, state):
        """`step` at a visit held in `period` that was scheduled in `visit_period` (a slipped
        visit, `Trial(visits=Visits(...))`): the rule of the scheduled visit decides (a
        revision day's Lenzini revision, a later day's nomogram) from the INR measured in
        `period`, with the doses of days 2-4 given before `period` (0 for a day not yet
        dosed: a day-4 revision held on day 5 reads the day-4 dose, one held on day 3 reads
        neither the day-3 nor the day-4 dose), and applies from `period` on. A missed visit
        (`is_visit` False) decides nothing: the dose stays as it was."""
        dose, hold, given = state["dose"], state["hold"], state["given"]
        b = self.revision
        for day in self.revision_days:
            applies = is_visit & (visit_period == day)
            log_week = (
                state["fixed"]
                + b["ln_inr"] * jnp.log(measured)
                + b["dose_2"] * given[0]
                + b["dose_3"] * given[1]
                + b["dose_4"] * given[2]
            )
            dose = jnp.where(applies, self._round(jnp.exp(log_week) / 7.0), dose)
        for days, rule in self.rules:
            applies = is_visit & jnp.isin(visit_period, jnp.asarray(days, dtype=jnp.int32))
            new_dose, new_hold = rule(measured, dose)
            dose = jnp.where(applies, self._round(new_dose), dose)
            hold = jnp.where(applies, new_hold, hold)
        held = hold > 0
        amount = jnp.where(held, 0.0, dose)
        hold = jnp.maximum(hold - 1, 0)
        slot = jnp.clip(period - 1, 0, 2)  # day 2 -> 0, day 3 -> 1, day 4 -> 2
        record = (period >= 1) & (period <= 3)
        given = jnp.where(record & (jnp.arange(3, dtype=jnp.int32) == slot), amount, given)
        return amount, {**state, "dose": dose, "hold": hold, "given": given}


# ----------------------------------------------------------------------------- endpoints


@dataclasses.dataclass(frozen=True)
class WindowTimeInRange(Endpoint):
    r"""Percentage of time with the output in `[low, high]` between two days (Rosendaal
    interpolation), e.g. COAG's TTR from day 5 to day 28.

    `start_day` and `end_day` are 1-based trial days (the morning of that day, before its
    dose; day 1 is the first dose): the series (measured at the visits, or the noise-free
    daily values with `source="true"`) is interpolated linearly and cut at both ends, so a
    window edge between two values takes the interpolated value there. With dropout
    (`Course["observed"]`), only the observed intervals count (NaN without any). With
    `Trial(visits=...)` (slipped and missed visits) the measured values are each patient's
    visits that happened, at the days they happened: Rosendaal between consecutive
    *measured* values (across a missed visit), cut at the window; a window end that no
    interval of measured values reaches (the last visits missed, or slipped before the end
    day) is not counted, the TTR is over the covered part (NaN with none).

    References: Rosendaal FR et al. Thromb Haemost 1993;69(3):236-239.
    """

    low: float = 2.0
    high: float = 3.0
    start_day: float = 1.0
    end_day: float = 29.0
    source: Source = "measured"
    unit: ClassVar[str] = "% of time"
    visit_aware: ClassVar[bool] = True

    def __post_init__(self):
        if not (math.isfinite(self.start_day) and math.isfinite(self.end_day)):
            raise ValueError(f"WindowTimeInRange {self.name!r}: days must be finite.")
        if not 1 <= self.start_day < self.end_day:
            raise ValueError(
                f"WindowTimeInRange {self.name!r}: expected 1 <= start_day < end_day, got "
                f"{self.start_day} and {self.end_day}."
            )
        if not self.low < self.high:
            raise ValueError(f"WindowTimeInRange {self.name!r}: expected low < high.")

    def __call__(self, course):
        # the schedule (the visit days, or the period starts) must cover the window
        scheduled = np.asarray(
            course["visit_days"] if self.source == "measured" else course["days"], dtype=float
        )
        a, b = self.start_day - 1.0, self.end_day - 1.0  # days from the first dose
        if scheduled[0] > a or scheduled[-1] < b:
            raise ValueError(
                f"WindowTimeInRange {self.name!r}: the window day {self.start_day:g}-"
                f"{self.end_day:g} is not covered by the values (days {scheduled[0] + 1:g}-"
                f"{scheduled[-1] + 1:g})."
            )
        # with visits: each patient's measured values at the days they were measured
        t, y, m = observed_values(course, self.source)
        t = np.asarray(t, dtype=float)
        y = np.asarray(y, dtype=float)
        t0, t1 = t[..., :-1], t[..., 1:]
        y0, y1 = y[..., :-1], y[..., 1:]
        lo_t, hi_t = np.maximum(t0, a), np.minimum(t1, b)
        keep = hi_t > lo_t
        dt = np.where(keep, hi_t - lo_t, 0.0)
        span = np.where(t1 > t0, t1 - t0, 1.0)
        # the values at the clipped ends of each interval
        u0 = y0 + (y1 - y0) * (lo_t - t0) / span
        u1 = y0 + (y1 - y0) * (hi_t - t0) / span
        lo, hi = np.minimum(u0, u1), np.maximum(u0, u1)
        width = hi - lo
        overlap = np.clip(np.minimum(hi, self.high) - np.maximum(lo, self.low), 0.0, None)
        flat = width <= 0
        inside = (lo >= self.low) & (lo <= self.high)
        frac = np.where(flat, inside.astype(float), overlap / np.where(flat, 1.0, width))
        weight = np.broadcast_to(dt, frac.shape)
        if m is not None:
            m = np.asarray(m, dtype=bool)
            weight = np.where(m[..., :-1] & m[..., 1:], weight, 0.0)
        follow = weight.sum(-1)
        spent = (frac * weight).sum(-1)
        return {
            self.name: np.where(
                follow > 0, 100.0 * spent / np.where(follow > 0, follow, 1.0), np.nan
            )
        }


@dataclasses.dataclass(frozen=True)
class Race(Subgroup):
    """Black / non-Black, from the population's `ancestry` column ("Black or African
    American" is Black; any other value, None included, is non-Black): COAG's subgroups."""

    name: str = "race"
    description: ClassVar[str] = "Black / non-Black (ancestry 'Black or African American')"

    def levels(self, frame, cov):
        ancestry = frame["ancestry"].astype(object).to_numpy()
        return np.where(ancestry == "Black or African American", "Black", "non-Black")


# ----------------------------------------------------------------------------- population


@functools.cache
def _allele_class(allele: str) -> str:
    """The Hamberg 2007 allele whose clearance stands for `allele`: by CPIC activity value
    (0.5 -> *2, 0 -> *3; 1, uncertain or unknown -> *1)."""
    if allele in ("*1", "*2", "*3"):
        return allele
    score = pgx.phenotype("CYP2C9", f"*1/{allele}").activity_score
    if score is None:
        return "*1"
    value = float(score) - 1.0
    return "*2" if math.isclose(value, 0.5) else "*3" if math.isclose(value, 0.0) else "*1"


def coag_population(
    n: int,
    *,
    key: Any,
    black_fraction: float = BASELINE["black"],
    age: tuple[float, float] = (30.0, 85.0),
    baseline: Mapping[str, float] | None = None,
) -> Population:
    """COAG's virtual patients: `Population.sample` with CPIC allele frequencies by group,
    plus the clinical covariates the dosing algorithms read.

    Draws from `key`: the population (`black_fraction` "Black or African American", the
    rest "White"; `age` uniform; CYP2C9 and VKORC1 from CPIC's frequencies; amiodarone and
    fluvastatin), then, from a stream of its own, the 0/1 extras `smoker`, `dvt_pe`,
    `diabetes`, `stroke` (prevalences `baseline`, default `BASELINE`). The `CYP2C9` column
    holds the diplotype the model sees, each allele replaced by the \\*1, \\*2 or \\*3 of
    its CPIC function (see `ASSUMPTIONS`); the extras `cyp2c9_star2` and `cyp2c9_star3` hold
    the \\*2 and \\*3 counts COAG's genotyping reported, `cyp2c9_other` the count of the other
    decreased- or no-function alleles (which it did not test).
    """
    rates = dict(BASELINE if baseline is None else baseline)
    if not 0.0 <= black_fraction <= 1.0:
        raise ValueError(
            f"coag_population: black_fraction must be in [0, 1], got {black_fraction}."
        )
    if isinstance(key, int | np.integer):  # an integer seed, as Population.sample takes
        key = jax.random.key(int(key))
    k_pop, k_extra = jax.random.split(key)
    ancestry = {"Black or African American": black_fraction, "White": 1.0 - black_fraction}
    ancestry = {k: v for k, v in ancestry.items() if v > 0}
    pop = Population.sample(
        n,
        key=k_pop,
        ancestry=ancestry,
        age=age,
        female_fraction=rates.get("female", 0.5),
        genes=("CYP2C9", "VKORC1"),
        genotype_source="cpic",
        medications={"amiodarone": rates["amiodarone"], "fluvastatin": rates["fluvastatin"]},
    )
    frame = pop.to_dataframe()
    u = np.asarray(jax.random.uniform(k_extra, (n, 4)))
    for j, name in enumerate(("smoker", "dvt_pe", "diabetes", "stroke")):
        frame[f"extra_{name}"] = (u[:, j] < rates[name]).astype(float)
    alleles = [str(d).split("/") for d in frame["CYP2C9"]]
    frame["extra_cyp2c9_star2"] = [float(a.count("*2")) for a in alleles]
    frame["extra_cyp2c9_star3"] = [float(a.count("*3")) for a in alleles]
    mapped = [[_allele_class(x) for x in a] for a in alleles]
    frame["extra_cyp2c9_other"] = [
        float(sum(c != "*1" for c in m) - a.count("*2") - a.count("*3"))
        for m, a in zip(mapped, alleles, strict=True)
    ]
    frame["CYP2C9"] = ["/".join(sorted(m, key=lambda s: int(s[1:]))) for m in mapped]
    return Population.from_dataframe(frame)


# ----------------------------------------------------------------------------- the trial


def coag_trial(*, days: int = 28) -> Trial:
    """The COAG-like warfarin initiation trial (two arms, 4 weeks).

    References: Kimmel SE et al. N Engl J Med 2013;369:2283-2293 (design and results);
    Gage BF et al. Clin Pharmacol Ther 2008;84:326-331 (initiation algorithms); Lenzini P et
    al. Clin Pharmacol Ther 2010;87:572-578 (revision algorithms); Hamberg AK et al. Clin
    Pharmacol Ther 2007;81:529-538 (model); French B et al. Pharmacogenet Genomics
    2016;26:445-452 (COAG initiated at predicted maintenance doses); Jaffer A, Bragg L. Cleve
    Clin J Med 2003;70:361-371 (nomogram ranges); Rosendaal FR et al. Thromb Haemost
    1993;69:236-239 (TTR).
    """
    if days < WINDOW_DAYS[1]:
        raise ValueError(f"coag_trial: days must be >= {WINDOW_DAYS[1]} (the endpoint window).")
    later = tuple(d for d in VISITS if d > REVISION_DAYS[-1] + 1)
    rules: tuple[tuple[tuple[int, ...], Nomogram], ...] = ((later, NOMOGRAM),)
    arms = (
        RevisionArm(
            name="genotype_guided",
            label="Genotype-guided",
            description="Gage 2008 pharmacogenetic dose on days 1-3; Lenzini 2010 "
            "pharmacogenetic revision on days 4 and 5; INR nomogram thereafter.",
            initiation=GAGE_2008_PHARMACOGENETIC,
            revision=LENZINI_2010_PHARMACOGENETIC,
            rules=rules,
        ),
        RevisionArm(
            name="clinical",
            label="Clinically guided",
            description="Gage 2008 clinical dose on days 1-3; Lenzini 2010 clinical revision "
            "on days 4 and 5; INR nomogram thereafter.",
            initiation=GAGE_2008_CLINICAL,
            revision=LENZINI_2010_CLINICAL,
            rules=rules,
        ),
    )
    start, end = WINDOW_DAYS
    endpoints = (
        WindowTimeInRange(
            "ttr_window", "Time in INR 2.0-3.0, day 5-28 (Rosendaal, measured INR)", 2.0, 3.0,
            start, end,
        ),
        WindowTimeInRange(
            "ttr_window_true", "Time in INR 2.0-3.0, day 5-28 (daily noise-free INR)", 2.0,
            3.0, start, end, "true",
        ),
        TimeInRange("ttr_all", "Time in INR 2.0-3.0, day 1-28 (measured INR)", 2.0, 3.0),
        AnyAbove("inr_ge4", "Any INR >= 4.0", 4.0),
        TimeToRange("time_to_target", "Time to first INR 2.0-3.0", 2.0, 3.0),
        MeanDose("weekly_dose", "Mean weekly dose, last 7 days", 7),
    )  # fmt: skip
    return Trial(
        name="coag_virtual",
        description=(
            "Virtual warfarin initiation trial modelled on COAG (Kimmel et al., N Engl J Med "
            "2013): genotype-guided vs clinically guided dosing algorithms for days 1-5, then "
            "the same INR-guided management to day 28; 27% Black."
        ),
        drug=get_drug("warfarin_hamberg2007"),
        population=functools.partial(coag_population, black_fraction=BASELINE["black"]),
        arms=arms,
        endpoints=endpoints,
        days=days,
        subgroups=(Race(), "ancestry", "CYP2C9", "VKORC1_PHENOTYPE", "CYP2C9_OTHER"),
        covariates=("AGE", "WT", "HT", "BSA"),
        reference_arm="clinical",
        solver=pkpd.FixedStep(2.0),
        # The INR once a day, before the dose: its own time scale is days (the INR hardly
        # moves within one), so points within the day would cost 2x the run for nothing.
        band_points=1,
        published=PUBLISHED,
        published_differences=PUBLISHED_DIFFERENCES,
        assumptions=ASSUMPTIONS,
    )


__all__ = [
    "ASSUMPTIONS",
    "BASELINE",
    "GAGE_2008_CLINICAL",
    "GAGE_2008_PHARMACOGENETIC",
    "LENZINI_2010_CLINICAL",
    "LENZINI_2010_PHARMACOGENETIC",
    "PUBLISHED",
    "PUBLISHED_BY_RACE",
    "PUBLISHED_DIFFERENCES",
    "REVISION_DAYS",
    "VISITS",
    "WINDOW_DAYS",
    "Race",
    "RevisionArm",
    "WindowTimeInRange",
    "algorithm_covariates",
    "coag_population",
    "coag_trial",
    "gage_2008_dose",
    "lenzini_2010_dose",
]
