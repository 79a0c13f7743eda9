r"""Warfarin: the Hamberg 2007 S-warfarin PK / INR model with CYP2C9, VKORC1 and age.

**PK** (S-warfarin, two compartments, first-order absorption; apparent, i.e. divided by the
unknown oral bioavailability):

$$CL_S = 0.314 \cdot (1 - 0.0091\,(\text{AGE} - 71)) \cdot (1 - r_{CYP2C9}) \;\text{L/h},$$

with the fractional decrease $r$ = 0 (`*1/*1`), 0.315 (`*1/*2`), 0.453 (`*1/*3`), 0.722
(`*2/*2`), 0.690 (`*2/*3`), 0.852 (`*3/*3`); $V_1$ = 13.8 L, $Q$ = 0.131 L/h, $V_2$ = 6.59 L,
$k_a$ = 2 /h (fixed).

**Dose.** Doses are mg of *racemic* warfarin, as prescribed. The model follows S-warfarin,
half of the racemate: the covariate model sets the depot's `F1 = 0.5` (the S-fraction; not a
bioavailability, since $CL_S$ is already an apparent oral clearance). Any `pkpd` regimen of
racemic mg into compartment 1 therefore gives S-warfarin concentrations. R-warfarin, whose
anticoagulant potency is much lower, is not modelled, as in the paper's PD model.

**PD** (INR): S-warfarin inhibits the synthesis of the vitamin K-dependent clotting factors,

$$I(C) = \frac{E_{max} C^\gamma}{EC_{50}^\gamma + C^\gamma}, \quad E_{max} = 1,\; \gamma = 0.424,$$

$EC_{50}$ = 4.61 (VKORC1 -1639 GG), 3.02 (GA), 2.20 (AA) mg/L. Two parallel transit chains,
all states starting at 1: six compartments with $k_{tr1} = 1/MTT_1$ ($MTT_1$ = 11.6 h),

$$\frac{dA_1}{dt} = k_{tr1}(1 - I - A_1), \quad \frac{dA_i}{dt} = k_{tr1}(A_{i-1} - A_i)
\;(i = 2..6),$$

and one compartment with $k_{tr2} = 1/MTT_2$ ($MTT_2$ = 120 h),
$dA_7/dt = k_{tr2}(1 - I - A_7)$. Then

$$INR = BASE + INR_{max}\,(1 - A_6 A_7)^\lambda, \quad INR_{max} = 20,\; \lambda = 3.61,$$

with BASE = 1 (the paper used each patient's measured baseline INR; 1.0 is the healthy
value, as in nlmixr2lib's implementation).

**At steady state** under a constant S-warfarin concentration $C$ every chain state equals
$1 - I(C)$, so $INR_{ss} = BASE + INR_{max}(1 - (1 - I(C))^2)^\lambda$: exact for a constant
infusion, and an approximation for repeated oral doses, with $C$ the average steady-state
concentration $F \cdot D / (CL_S \tau)$ (`steady_state_inr`, `maintenance_dose`; the error
of that approximation is measured in tests/test_drugs.py and docs/drugs.md).

**Variability** (log-normal, $\omega^2 = \log(1 + CV^2)$): CL 31%, V1 26.2%, V2 99.1%,
MTT1 14.1%, MTT2 102%, EC50 40.9% (covariances between etas were estimated but not
published: the Omega here is diagonal). **Residual error** on INR: log-additive, SD 0.0325
(the S-warfarin PK residual, 0.0908 single dose / 0.301 steady state on the log scale, is
not used because INR is the observed output).

The ktr = 1/MTT form follows the transcriptions in nlmixr2lib and in the shared
`published_models.json` (PK and PD values there agree between two independent
transcriptions, not checked against the paper itself). One public implementation (the
`reil` package) uses $k_{tr1} = 6/MTT_1$ instead; that changes the speed of the INR
response, not its steady state.

References: Hamberg AK, Dahl ML, Barban M, Scordo MG, Wadelius M, Pengo V, Padrini R,
Jonsson EN. A PK-PD model for predicting the impact of age, CYP2C9, and VKORC1 genotype on
individualization of warfarin therapy. Clin Pharmacol Ther 2007;81(4):529-538.
doi:10.1038/sj.clpt.6100084. Target INR 2-3: Ageno W et al. Oral anticoagulant therapy:
antithrombotic therapy and prevention of thrombosis, 9th ed: ACCP evidence-based clinical
practice guidelines. Chest 2012;141(2 Suppl):e44S-e88S.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

import calibration
import pkpd
from twins import pgx

from ._drug import (
    CovariateError,
    DoseConstraints,
    Dosing,
    Drug,
    PatientCovariates,
    Target,
    Units,
    patient_number,
    patient_text,
)
from ._metrics import Trough
from ._routes import Oral

NAME = "warfarin_hamberg2007"
REFERENCE = (
    "Hamberg AK, Dahl ML, Barban M, Scordo MG, Wadelius M, Pengo V, Padrini R, Jonsson EN. "
    "A PK-PD model for predicting the impact of age, CYP2C9, and VKORC1 genotype on "
    "individualization of warfarin therapy. Clin Pharmacol Ther 2007;81(4):529-538. "
    "doi:10.1038/sj.clpt.6100084"
)

#: Fraction of racemic warfarin that is S-warfarin (the racemate is 50:50).
S_FRACTION = 0.5

#: Fractional decrease of CL_S against *1/*1 (Hamberg 2007 Table 2).
CYP2C9_CL_DECREASE: Mapping[str, float] = {
    "*1/*1": 0.0,
    "*1/*2": 0.315,
    "*1/*3": 0.453,
    "*2/*2": 0.722,
    "*2/*3": 0.690,
    "*3/*3": 0.852,
}
_CYP2C9_KEYS = {"*1/*2": "12", "*1/*3": "13", "*2/*2": "22", "*2/*3": "23", "*3/*3": "33"}

#: VKORC1 -1639G>A phenotype labels of twins.pgx -> Hamberg 2007's genotype groups.
VKORC1_GROUPS: Mapping[str, str] = {"-1639 GG": "GG", "-1639 AG": "AG", "-1639 AA": "AA"}

THETA: Mapping[str, float] = {
    "CL": 0.314,  # L/h, CYP2C9 *1/*1, age 71
    "AGE_CL": 0.0091,  # fractional decrease of CL per year above 71
    "CL_DEC_12": 0.315,
    "CL_DEC_13": 0.453,
    "CL_DEC_22": 0.722,
    "CL_DEC_23": 0.690,
    "CL_DEC_33": 0.852,
    "V1": 13.8,  # L
    "Q": 0.131,  # L/h
    "V2": 6.59,  # L
    "EC50_GG": 4.61,  # mg/L
    "EC50_AG": 3.02,
    "EC50_AA": 2.20,
    "GAMMA": 0.424,
    "MTT1": 11.6,  # h
    "MTT2": 120.0,  # h
    "LAMBDA": 3.61,
}
#: Values fixed in the paper (not estimated).
FIXED: Mapping[str, float] = {"KA": 2.0, "EMAX": 1.0, "INRMAX": 20.0, "BASE": 1.0}

IIV_CV: Mapping[str, float] = {
    "CL": 0.31,
    "V1": 0.262,
    "V2": 0.991,
    "MTT1": 0.141,
    "MTT2": 1.02,
    "EC50": 0.409,
}
INR_LOG_SD = 0.0325

#: How warfarin twins integrate the model in their forecasts and dose searches (the default
#: `solver` of `twins.DigitalTwin` for this model): fixed steps of at most 1 h, the
#: S-warfarin PK exactly (matrix exponential) and RK4 for the INR chain, as the trials do.
#: Against diffrax at rtol 1e-10 (tests/test_twin_solver.py), at one posterior the INR
#: forecast and the INR the dose search reads are within 2e-3 (measured 1.5e-3) and the
#: recommended dose within 0.03% (measured 0.024%); with the update integrated by it too,
#: the dose within 0.5% (measured 0.1%). On the 2-core CPU (load 5) one twin's update, dose
#: search and forecast with 100 draws took 0.14-0.22, 1.4-1.5 and 0.02-0.05 s, against
#: 0.4-0.5, 4.6-9.6 and 0.06-0.09 s with the library's adaptive solver (docs/twins.md).
TWIN_SOLVER = pkpd.FixedStep(1.0)


def _fraction(params: Mapping[str, Any], c):
    """Emax C^g / (EC50^g + C^g), written as a logistic in log C (finite gradients at 0)."""
    positive = c > 0
    safe = jnp.where(positive, c, 1.0)
    z = params["GAMMA"] * (jnp.log(safe) - jnp.log(params["EC50"]))
    return params["EMAX"] * jnp.where(positive, jax.nn.sigmoid(z), 0.0)


class HambergINR(pkpd.AbstractPDModel):
    r"""The INR model of Hamberg 2007, driven by the S-warfarin concentration (mg/L).

    Inhibition $I = E_{max} C^\gamma / (EC_{50}^\gamma + C^\gamma)$ of clotting-factor
    synthesis; two parallel transit chains (six compartments with rate $1/MTT_1$ and one
    with rate $1/MTT_2$), all starting at 1:

    $$\dot A_1 = \tfrac{1}{MTT_1}(1 - I - A_1),\; \dot A_i = \tfrac{1}{MTT_1}(A_{i-1} - A_i)
      \;(i = 2..6),\; \dot A_7 = \tfrac{1}{MTT_2}(1 - I - A_7)$$

    and the effect $INR = BASE + INR_{max}(1 - A_6 A_7)^\lambda$ (where round-off makes
    $1 - A_6 A_7$ a hair below zero near baseline, the INR is BASE).

    **Parameters:** `EC50` (mg/L), `GAMMA`, `EMAX`, `MTT1` (h), `MTT2` (h), `LAMBDA`,
    `INRMAX`, `BASE`. **States:** `fast1` ... `fast6`, `slow` (dimensionless, 1 at baseline).

    Compose with the S-warfarin PK as `pkpd.PKPD(pkpd.TwoCompartmentOral(), HambergINR())`
    (`warfarin_model()`): outputs `C` (S-warfarin, mg/L) and `E` (INR).

    References: Hamberg AK et al. Clin Pharmacol Ther 2007;81(4):529-538 (Appendix).
    """

    autonomous: ClassVar[bool] = True  # the vector field does not read t
    state_names: ClassVar[tuple[str, ...]] = (
        "fast1",
        "fast2",
        "fast3",
        "fast4",
        "fast5",
        "fast6",
        "slow",
    )
    param_names: ClassVar[tuple[str, ...]] = (
        "EC50",
        "GAMMA",
        "EMAX",
        "MTT1",
        "MTT2",
        "LAMBDA",
        "INRMAX",
        "BASE",
    )

    def initial_state(self, params):
        del params
        return jnp.ones(7, dtype=jnp.result_type(float))

    def vector_field(self, t, c, y, params):
        del t
        inh = _fraction(params, c)
        k1 = 1.0 / params["MTT1"]
        k2 = 1.0 / params["MTT2"]
        first = k1 * (1.0 - inh - y[0])
        rest = k1 * (y[0:5] - y[1:6])
        slow = k2 * (1.0 - inh - y[6])
        return jnp.concatenate([first[None], rest, slow[None]])

    def effect(self, params, c, y):
        del c
        x = 1.0 - y[..., 5] * y[..., 6]
        positive = x > 0
        safe = jnp.where(positive, x, 1.0)
        rise = jnp.where(positive, safe ** params["LAMBDA"], 0.0)
        return params["BASE"] + params["INRMAX"] * rise


def warfarin_model() -> pkpd.PKPD:
    """The structural model: S-warfarin two-compartment oral PK with the Hamberg INR model.

    Compartments: 1 depot, 2 central, 3 peripheral, then the seven INR chain states.
    Outputs: `C` (S-warfarin, mg/L) and `E` (INR). Integrated with diffrax.
    """
    return pkpd.PKPD(pkpd.TwoCompartmentOral(), HambergINR())


def typical(theta: Mapping[str, Any], cov: Mapping[str, Any]) -> dict[str, Any]:
    """Typical parameters (Hamberg 2007 covariate model) from theta and numeric covariates.

    Covariates: `AGE` (years), indicators `CYP2C9_12`, `_13`, `_22`, `_23`, `_33` (0/1, at
    most one is 1; all 0 for *1/*1), `VKORC1_AG`, `VKORC1_AA` (0/1; both 0 for GG).
    """
    decrease = sum(theta[f"CL_DEC_{k}"] * cov[f"CYP2C9_{k}"] for k in _CYP2C9_KEYS.values())
    cl = theta["CL"] * (1.0 - theta["AGE_CL"] * (cov["AGE"] - 71.0)) * (1.0 - decrease)
    ag, aa = cov["VKORC1_AG"], cov["VKORC1_AA"]
    ec50 = theta["EC50_GG"] * (1.0 - ag - aa) + theta["EC50_AG"] * ag + theta["EC50_AA"] * aa
    return {
        "KA": FIXED["KA"],
        "CL": cl,
        "V1": theta["V1"],
        "Q": theta["Q"],
        "V2": theta["V2"],
        "EC50": ec50,
        "GAMMA": theta["GAMMA"],
        "EMAX": FIXED["EMAX"],
        "MTT1": theta["MTT1"],
        "MTT2": theta["MTT2"],
        "LAMBDA": theta["LAMBDA"],
        "INRMAX": FIXED["INRMAX"],
        "BASE": FIXED["BASE"],
        "F1": S_FRACTION,
    }


def cyp2c9_diplotype(patient: PatientCovariates, *, drug: str = NAME) -> str:
    """The patient's CYP2C9 diplotype in CPIC order (`"*1/*3"`), checked against the model.

    **Raises:** `CovariateError` if `"CYP2C9"` is missing, cannot be read by `twins.pgx`, or
    is a diplotype outside Hamberg 2007's covariate model (`*1`, `*2`, `*3` only).
    """
    raw = patient_text(patient, "CYP2C9", drug=drug, what="CYP2C9 diplotype, e.g. '*1/*3'")
    try:
        diplotype = pgx.phenotype("CYP2C9", raw).diplotype
    except ValueError as err:
        raise CovariateError(f"{drug}: patient CYP2C9 {raw!r} cannot be read: {err}") from err
    if diplotype not in CYP2C9_CL_DECREASE:
        raise CovariateError(
            f"{drug}: patient CYP2C9 {diplotype} is not in Hamberg 2007's covariate model, "
            f"which estimated CL for {sorted(CYP2C9_CL_DECREASE)} only; no published "
            "clearance exists for it."
        )
    return diplotype


def vkorc1_group(patient: PatientCovariates, *, drug: str = NAME) -> str:
    """The patient's VKORC1 -1639G>A group, `"GG"`, `"AG"` or `"AA"`.

    Read from `"VKORC1_PHENOTYPE"` (twins.pgx's label, `"-1639 AG"`) when present, else from
    the `"VKORC1"` genotype through `twins.pgx.phenotype`.
    """
    label = patient.get("VKORC1_PHENOTYPE")
    if label is None:
        raw = patient_text(patient, "VKORC1", drug=drug, what="VKORC1 -1639G>A genotype")
        try:
            label = pgx.phenotype("VKORC1", raw).phenotype
        except ValueError as err:
            raise CovariateError(f"{drug}: patient VKORC1 {raw!r} cannot be read: {err}") from err
    if label not in VKORC1_GROUPS:
        raise CovariateError(
            f"{drug}: patient VKORC1_PHENOTYPE is {label!r}; expected one of "
            f"{sorted(VKORC1_GROUPS)}."
        )
    return VKORC1_GROUPS[label]


def covariates(patient: PatientCovariates) -> dict[str, float]:
    """Hamberg 2007 covariates from the standard patient dict (`AGE`, `CYP2C9`, `VKORC1`)."""
    age = patient_number(patient, "AGE", drug=NAME, what="age, years")
    diplotype = cyp2c9_diplotype(patient)
    group = vkorc1_group(patient)
    out = {"AGE": age}
    for dip, key in _CYP2C9_KEYS.items():
        out[f"CYP2C9_{key}"] = float(diplotype == dip)
    out["VKORC1_AG"] = float(group == "AG")
    out["VKORC1_AA"] = float(group == "AA")
    return out


def drug() -> Drug:
    """The warfarin drug of the library (`twins.drugs.get("warfarin_hamberg2007")`)."""
    pm = calibration.PopulationModel(
        warfarin_model(),
        theta=dict(THETA),
        omega={k: math.log1p(cv**2) for k, cv in IIV_CV.items()},
        error=calibration.Exponential(INR_LOG_SD),
        typical=typical,
        output=1,
    )
    return Drug(
        name=NAME,
        model=pm,
        covariate_fn=covariates,
        units=Units(
            dose="mg racemic warfarin (S-warfarin = half)",
            concentration="S-warfarin mg/L",
            observed="INR (ratio)",
        ),
        dosing=Dosing(
            route=Oral(),
            amount=5.0,
            interval=24.0,
            reference="5 mg once daily: a usual starting dose (Ageno W et al. Chest "
            "2012;141(2 Suppl):e44S-e88S).",
            constraints=DoseConstraints(
                strengths=(1.0, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.5, 10.0),
                max_units=2,
                intervals=(24.0,),
                reference="Tablets of 1, 2, 2.5, 3, 4, 5, 6, 7.5 and 10 mg (at most two a "
                "day), once daily: Coumadin (warfarin sodium) tablets, US prescribing "
                "information, Bristol-Myers Squibb 2017.",
            ),
        ),
        reference=REFERENCE,
        targets=(
            Target(
                metric=Trough("INR"),
                low=2.0,
                high=3.0,
                unit="-",
                reference="Ageno W et al. Oral anticoagulant therapy: ACCP evidence-based "
                "clinical practice guidelines, 9th ed. Chest 2012;141(2 Suppl):e44S-e88S.",
                note="most indications (atrial fibrillation, venous thromboembolism); 2.5 is "
                "the usual aim",
            ),
        ),
        description=__doc__ or "",
    )


# ----------------------------------------------------------------------------- steady state


def _check_target(target_inr: float, params: Mapping[str, float]) -> None:
    base, top = params["BASE"], params["BASE"] + params["INRMAX"]
    if not base < target_inr < top:
        raise ValueError(
            f"warfarin: expected a target INR between BASE={base} and BASE + INRMAX={top} "
            f"(exclusive), got {target_inr}."
        )


def inhibition_for_inr(target_inr: float, params: Mapping[str, float]) -> float:
    r"""The constant inhibition $I$ at which the steady-state INR equals `target_inr`.

    Solves $INR = BASE + INR_{max}(1 - (1 - I)^2)^\lambda$:
    $I = 1 - \sqrt{1 - ((INR - BASE)/INR_{max})^{1/\lambda}}$.
    """
    _check_target(target_inr, params)
    rise = ((target_inr - params["BASE"]) / params["INRMAX"]) ** (1.0 / params["LAMBDA"])
    return 1.0 - math.sqrt(1.0 - rise)


def concentration_for_inhibition(inhibition: float, params: Mapping[str, float]) -> float:
    r"""S-warfarin concentration (mg/L) at inhibition $I$: $EC_{50}(I/(E_{max}-I))^{1/\gamma}$."""
    if not 0.0 < inhibition < params["EMAX"]:
        raise ValueError(
            f"warfarin: expected an inhibition in (0, EMAX={params['EMAX']}), got {inhibition}."
        )
    ratio = inhibition / (params["EMAX"] - inhibition)
    return params["EC50"] * ratio ** (1.0 / params["GAMMA"])


def steady_state_inr(params: Mapping[str, float], dose: float, *, interval: float = 24.0) -> float:
    r"""Steady-state INR for `dose` mg racemic warfarin every `interval` h, in closed form.

    Uses the average steady-state S-warfarin concentration
    $\bar C = F_1 \cdot \text{dose} / (CL \cdot \tau)$ as if it were constant:
    $INR = BASE + INR_{max}(1 - (1 - I(\bar C))^2)^\lambda$. Exact for a constant-rate input;
    for oral doses the concentration swings around $\bar C$ within the interval and the INR
    at the periodic steady state differs a little (measured in tests/test_drugs.py).

    **Arguments:** `params`: model parameters (e.g. `Drug.typical_params(patient)`);
    `dose`: racemic mg per interval; `interval`: h.
    """
    c = params.get("F1", 1.0) * dose / (params["CL"] * interval)
    inh = float(_fraction({k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(c)))
    return params["BASE"] + params["INRMAX"] * (1.0 - (1.0 - inh) ** 2) ** params["LAMBDA"]


def maintenance_dose(
    params: Mapping[str, float], *, target_inr: float = 2.5, interval: float = 24.0
) -> float:
    r"""Racemic warfarin dose (mg per `interval`) whose steady-state INR is `target_inr`.

    Closed form from the average steady-state concentration (see `steady_state_inr`):
    $\text{dose} = CL \cdot \tau \cdot C^* / F_1$ with $C^*$ the concentration whose
    constant-input steady-state INR is the target.

    **Arguments:** `params`: model parameters of one patient (`Drug.typical_params`);
    `target_inr`; `interval` (h).

    **Returns:** mg of racemic warfarin per interval.
    """
    c = concentration_for_inhibition(inhibition_for_inr(target_inr, params), params)
    return params["CL"] * interval * c / params.get("F1", 1.0)


def periodic_steady_state_inr(
    params: Mapping[str, float],
    dose: float,
    *,
    interval: float = 24.0,
    n_points: int = 25,
) -> np.ndarray:
    """INR over one dosing interval at the periodic steady state of the full model.

    Solved with the model itself: `pkpd.steady_state` finds the periodic steady state of
    the PK and INR states (Newton's method on the one-interval map), then the interval is
    simulated. Used to check the closed form `steady_state_inr`.

    **Returns:** INR at `n_points` equally spaced times over `[0, interval]` after a dose.
    """
    model = warfarin_model()
    regimen = pkpd.steady_state(pkpd.oral(dose), ii=interval)
    times = jnp.linspace(0.0, interval, n_points)
    out = pkpd.simulate(model, dict(params), regimen, times)
    return np.asarray(out[:, 1])
