r"""The built-in default trial: warfarin initiation modelled on EU-PACT.

EU-PACT (Pirmohamed M, Burnside G, Eriksson N, et al. A randomized trial of genotype-guided
dosing of warfarin. N Engl J Med 2013;369(24):2294-2303) randomised 455 patients starting
warfarin for atrial fibrillation or venous thromboembolism (98.5% white) to genotype-guided
or standard initiation, and compared the percentage of time with INR 2.0-3.0 over 12 weeks.

The virtual version simulates the Hamberg 2007 S-warfarin PK/INR model
(`twins.drugs.get("warfarin_hamberg2007")`) for the same virtual patients in both arms:

- **control**: 10 mg on day 1 and 5 mg on days 2 and 3 (5 mg on days 1-3 above age 75),
  then 5 mg daily adjusted by the INR nomogram below from the day-4 INR on;
- **genotype_guided**: a maintenance dose ED from the IWPC 2009 pharmacogenetic algorithm
  (age, height, weight, CYP2C9, VKORC1, amiodarone), three equal loading doses on days 1-3
  sized from ED and the patient's S-warfarin elimination rate (below), the dose revised on
  day 4 from the day-4 INR, then the same INR-guided management.

What had to be assumed (the protocol's exact tables are not reproduced here) is listed in
`ASSUMPTIONS` and in the report; the published figures are in `PUBLISHED`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

import pkpd

from .._population import Population
from ..drugs import get as get_drug
from ..drugs import warfarin
from ..validation import iwpc_2009_dose
from ._arms import DosingArm, Nomogram
from ._endpoints import AnyAbove, MeanDose, TimeInRange, TimeToRange
from ._trial import Trial

PIRMOHAMED_2013 = (
    "Pirmohamed M, Burnside G, Eriksson N, et al. A randomized trial of genotype-guided dosing "
    "of warfarin. N Engl J Med 2013;369(24):2294-2303."
)

#: INR measured on these days (1-based; day 1 is the first dose, measured before it).
VISITS: tuple[int, ...] = (1, 4, 6, 8, 11, 15, 22, 29, 36, 43, 57, 71, 85)

#: Maintenance nomogram for target INR 2-3 (weekly dose change and doses withheld), with
#: values chosen inside the ranges of Jaffer & Bragg's table.
NOMOGRAM = Nomogram(
    bounds=(1.5, 2.0, 3.0 + 1e-9, 4.0 + 1e-9, 5.0 + 1e-9),
    change=(0.15, 0.10, 0.0, -0.10, -0.10, -0.15),
    hold=(0, 0, 0, 0, 1, 2),
    reference=(
        "After Jaffer A, Bragg L. Practical tips for warfarin dosing and monitoring. Cleve Clin "
        "J Med 2003;70(4):361-371 (maintenance dose adjustment for INR goal 2.0-3.0)."
    ),
)

PUBLISHED: dict[str, object] = {
    "genotype_guided": {"ttr": 67.4, "inr_ge4": 27.0, "time_to_target": 21.0},
    "control": {"ttr": 60.3, "inr_ge4": 36.6, "time_to_target": 29.0},
    "source": PIRMOHAMED_2013,
    "notes": (
        "Mean percentage of time in INR 2.0-3.0 over 12 weeks (difference adjusted, 95% CI "
        "3.3-10.6); percentage of patients with an INR >= 4.0; median days to a therapeutic "
        "INR. n = 455 (227 genotype-guided, 228 control)."
    ),
}

#: The published difference in TTR (genotype-guided minus control), adjusted, with its 95% CI.
PUBLISHED_DIFFERENCES: dict[str, object] = {
    "genotype_guided": {"ttr": {"estimate": 7.0, "ci_low": 3.3, "ci_high": 10.6}},
}

ASSUMPTIONS: tuple[str, ...] = (
    "Virtual patients: ancestry 98.5% White, 0.75% Black, 0.75% Asian (EU-PACT: 98.5% white); "
    "age uniform on 45-89 years (mean 67, near the trial's); sex, height, weight by "
    "twins.Demographics; CYP2C9/VKORC1 from the IWPC counts for each ancestry; amiodarone in "
    "3%. Indication (AF or VTE) is not modelled.",
    "PK/PD: Hamberg 2007 (S-warfarin two-compartment PK, CYP2C9 and age on clearance, VKORC1 "
    "on EC50, INR through transit compartments) with its published between-subject "
    "variability; baseline INR 1.0; no within-patient variability over time (diet, "
    "adherence, intercurrent illness, interacting drugs), which the real trial had: the "
    "virtual TTRs are expected to be higher than the published ones for that reason.",
    "Genotype arm, days 1-3: ED = IWPC 2009 pharmacogenetic dose / 7 (EU-PACT used a "
    "modified IWPC algorithm); three equal loading doses LD = ED / (1 - exp(-72 k)), which "
    "bring the S-warfarin in the body after the third dose to its steady-state peak under "
    "ED, with k = CL_S / (V1 + V2) at the patient's typical Hamberg clearance (CYP2C9, age). "
    "This follows the idea of Avery et al. 2011 (loading from genotype-dependent half-life); "
    "it is not their published formula.",
    "Genotype arm, day 4-5 revision: ED is revised with the maintenance nomogram from the "
    "day-4 INR (EU-PACT used a dedicated dose-revision algorithm).",
    "Control arm after day 3: 5 mg daily, adjusted with the same nomogram from the day-4 "
    "INR on (EU-PACT: usual local practice).",
    "INR-guided management in both arms: INR on days 1 (baseline), 4, 6, 8, 11, 15, 22, 29, "
    "36, 43, 57, 71 and 85; the nomogram (Jaffer & Bragg 2003 ranges): INR < 1.5 +15%, "
    "1.5-1.99 +10%, 2.0-3.0 unchanged, 3.01-4.0 -10%, 4.01-5.0 withhold 1 dose and -10%, "
    "> 5.0 withhold 2 doses and -15%; daily doses rounded to 0.5 mg (at least 0.5 mg).",
    "Assay noise on each measured INR: the model's residual error (log-normal, SD 0.0325).",
    "Endpoints from the measured INRs at the visits (as in the trial): TTR by Rosendaal "
    "interpolation from day 1 to day 85; INR >= 4.0 at any visit; time to the first INR in "
    "2.0-3.0 (visit granularity). ttr_true is the same TTR on the noise-free daily INR.",
)


def _cyp2c9_label(value: str) -> str | None:
    return value if value in warfarin.CYP2C9_CL_DECREASE else None


def _vkorc1_label(value: str) -> str | None:
    return value if value in ("-1639 GG", "-1639 AG", "-1639 AA") else None


def iwpc_daily_dose(cov: Mapping[str, np.ndarray]) -> np.ndarray:
    """ED (mg/day): the IWPC 2009 pharmacogenetic weekly dose / 7, from population covariates."""
    age = np.asarray(cov["AGE"], dtype=float)
    decades = np.clip(np.floor(age / 10.0), 1, 9)
    race = np.asarray(cov.get("ANCESTRY", np.full(age.shape, None, dtype=object)), dtype=object)
    weekly = iwpc_2009_dose(
        age_decades=decades,
        height_cm=np.asarray(cov["HT"], dtype=float),
        weight_kg=np.asarray(cov["WT"], dtype=float),
        vkorc1=np.array([_vkorc1_label(v) for v in cov["VKORC1_PHENOTYPE"]], dtype=object),
        cyp2c9=np.array([_cyp2c9_label(v) for v in cov["CYP2C9"]], dtype=object),
        race=race,
        amiodarone=np.asarray(cov.get("AMIODARONE", np.zeros(age.shape)), dtype=float),
    )
    return weekly / 7.0


def elimination_rate(cov: Mapping[str, np.ndarray]) -> np.ndarray:
    """k = CL_S / (V1 + V2) (1/h) at the typical Hamberg 2007 values for CYP2C9 and age."""
    decrease = np.array([warfarin.CYP2C9_CL_DECREASE.get(v, 0.0) for v in cov["CYP2C9"]])
    age = np.asarray(cov["AGE"], dtype=float)
    th = warfarin.THETA
    cl = th["CL"] * (1.0 - th["AGE_CL"] * (age - 71.0)) * (1.0 - decrease)
    return cl / (th["V1"] + th["V2"])


def genotype_initial(cov: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Genotype arm: three equal loading doses from ED and k, then ED."""
    ed = iwpc_daily_dose(cov)
    k = elimination_rate(cov)
    load = ed / -np.expm1(-72.0 * k)
    load = np.round(load / 0.5) * 0.5
    return np.repeat(load[:, None], 3, axis=1), ed


def control_initial(cov: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Control arm: 10/5/5 mg (5/5/5 above 75 years), then 5 mg."""
    age = np.asarray(cov["AGE"], dtype=float)
    n = age.size
    loading = np.tile([10.0, 5.0, 5.0], (n, 1))
    loading[age > 75.0, 0] = 5.0
    return loading, np.full(n, 5.0)


def eupact_trial(*, days: int = 84) -> Trial:
    """The EU-PACT-like warfarin trial (two arms, 12 weeks, INR-guided management).

    References: Pirmohamed M et al. N Engl J Med 2013;369:2294-2303 (design and results);
    Hamberg AK et al. Clin Pharmacol Ther 2007;81:529-538 (model); International Warfarin
    Pharmacogenetics Consortium. N Engl J Med 2009;360:753-764 (maintenance dose); Avery PJ
    et al. Clin Pharmacol Ther 2011;90:701-706 (the idea of the genotype-based loading dose);
    Jaffer A, Bragg L. Cleve Clin J Med 2003;70:361-371 (nomogram ranges); Rosendaal FR et al.
    Thromb Haemost 1993;69:236-239 (TTR).
    """
    visits = tuple(d for d in VISITS if d <= days + 1)
    rules = ((tuple(d for d in visits if d > 1), NOMOGRAM),)
    arms = (
        DosingArm(
            name="genotype_guided",
            label="Genotype-guided",
            description="IWPC maintenance dose with a genotype-based 3-day loading dose; "
            "day-4 revision; INR-guided thereafter.",
            initial=genotype_initial,
            visits=visits,
            rules=rules,
        ),
        DosingArm(
            name="control",
            label="Standard (10/5/5 mg)",
            description="10 mg day 1, 5 mg days 2-3 (5/5/5 above 75), then 5 mg daily, "
            "INR-guided from day 4.",
            initial=control_initial,
            visits=visits,
            rules=rules,
        ),
    )
    endpoints = (
        TimeInRange("ttr", "Time in INR 2.0-3.0 (Rosendaal, measured INR)", 2.0, 3.0),
        TimeInRange("ttr_true", "Time in INR 2.0-3.0 (daily noise-free INR)", 2.0, 3.0, "true"),
        AnyAbove("inr_ge4", "Any INR >= 4.0", 4.0),
        TimeToRange("time_to_target", "Time to first INR 2.0-3.0", 2.0, 3.0),
        MeanDose("weekly_dose", "Mean weekly dose, weeks 9-12", 28),
    )
    sampler = functools.partial(
        Population.sample,
        ancestry={"White": 0.985, "Black or African American": 0.0075, "Asian": 0.0075},
        age=(45.0, 89.0),
        medications={"amiodarone": 0.03},
    )
    return Trial(
        name="eupact_virtual",
        description=(
            "Virtual warfarin initiation trial modelled on EU-PACT (Pirmohamed et al., N Engl J "
            "Med 2013): genotype-guided vs standard dosing, INR-guided management, 12 weeks."
        ),
        drug=get_drug("warfarin_hamberg2007"),
        population=sampler,
        arms=arms,
        endpoints=endpoints,
        days=days,
        subgroups=("CYP2C9", "VKORC1_PHENOTYPE", "ancestry", "age_group"),
        covariates=("AGE", "WT", "HT"),
        reference_arm="control",
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
    "NOMOGRAM",
    "PUBLISHED",
    "PUBLISHED_DIFFERENCES",
    "VISITS",
    "eupact_trial",
]
