r"""Warfarin, the Hamberg 2007 model recalibrated on the IWPC training file.

The structural model is `warfarin` (Hamberg 2007: S-warfarin two-compartment PK, INR by two
transit chains), unchanged; what is re-estimated is its covariate model for the two
parameters that set the steady-state INR, the S-warfarin clearance and the EC50:

$$CL = 0.314\,(1 - \theta_{age}(\text{AGE} - 71))\,(1 - r_{CYP2C9})\,
  (\text{WT}/70)^{\theta_{wt}}\,\theta_{amio}^{\text{AMIO}}\,\theta_{ind}^{\text{IND}}
  \;\text{L/h},$$

$$EC_{50} = EC_{50,GG}\,\rho_{VKORC1}\,\theta_{race}\;\text{mg/L},$$

with $r$ re-estimated for the five non-`*1/*1` diplotypes of Hamberg 2007, $\rho_{AG}$,
$\rho_{AA}$ the VKORC1 -1639 EC50 ratios to GG, $\theta_{race}$ for Asian, Black and
missing/mixed race (White = 1; `Race (OMB)` of the IWPC file), amiodarone and enzyme
inducers (carbamazepine, phenytoin, rifampin) as factors on CL.

**Estimation** (`fit_map`, `fit_nuts`): each patient's stable weekly dose $D$ is outcome
data through an interval likelihood. At steady state under the average S-warfarin
concentration $\bar C = F_1 D_{day}/(CL\,24\,h)$, $INR_{ss} = 1 + 20(1 - (1 - I)^2)^\lambda$
with $I = \bar C^\gamma / (EC_{50}^\gamma + \bar C^\gamma)$ (`warfarin.steady_state_inr`), so
$INR_{ss} \in [lo, hi]$ if and only if $\log(\bar C/EC_{50}) \in [\log q_{lo}, \log q_{hi}]$
with $q(INR) = (I/(1 - I))^{1/\gamma}$ at $I$ = `warfarin.inhibition_for_inr(INR)`. The
log-normal between-patient effects on CL and EC50 enter only through their sum
$\eta = \eta_{CL} + \eta_{EC50} \sim N(0, \omega^2)$, so the random effect is integrated
out in closed form:

$$P(INR_{ss} \in [lo, hi]) = \Phi\!\left(\frac{u - \log q_{lo}}{\omega}\right)
 - \Phi\!\left(\frac{u - \log q_{hi}}{\omega}\right),\quad
 u = \log\frac{F_1 D_{day}}{24\,CL_{typ}\,EC_{50,typ}}.$$

$[lo, hi]$ is the patient's own target range where the file states one (`Estimated Target
INR Range Based on Indication`), else 2-3. Only the product $CL \cdot EC_{50}$ is identified
by steady-state doses: the typical CL of *1/*1 at 71 years and 70 kg stays at Hamberg's
0.314 L/h (so the PK time course is the published one) and its EC50 is estimated;
$\omega^2$ is split between CL and EC50 in Hamberg's proportion (0.0918 : 0.1546). $\gamma$,
$\lambda$, $INR_{max}$ and the transit times stay at Hamberg's values (they shape the INR
time course, which doses alone do not inform).

Priors (the same for MAP and NUTS; weakly informative, centred on Hamberg 2007 where it has
the parameter): $\log EC_{50,GG} \sim N(\log 4.61, 1)$, $\log\rho \sim N(\log\rho_{Hamberg},
1)$, $\log(1 - r) \sim N(\log(1 - r_{Hamberg}), 1)$, $\theta_{age} \sim N(0.0091, 0.02)$,
$\theta_{wt} \sim N(0, 1)$, log of each new factor $\sim N(0, 1)$, $\log\omega \sim N(\log
0.5, 1)$. MAP: posterior mode (BFGS on JAX gradients), SEs from the inverse Hessian of the
negative log posterior (Laplace). NUTS: numpyro directly (calibration's NUTS samples the
etas of INR/concentration observations; this likelihood has no observation of the model's
outputs, only an interval, with the etas integrated out).

**Provenance.** Estimated here on the IWPC training file (`iwpc_warfarin_train.csv`,
patients with a stable dose, age, height, weight, a CYP2C9 diplotype of Hamberg 2007 and a
VKORC1 -1639 genotype: 3,361), cross-validated (5 folds by position modulo 5, as
`twins.validation.iwpc_warfarin`); no other patients. Values in
`twins/data/warfarin_iwpc_recalibrated.json`, written by `tools/refit_warfarin_iwpc.py`.

References: Hamberg AK et al. Clin Pharmacol Ther 2007;81(4):529-538 (the model);
International Warfarin Pharmacogenetics Consortium. N Engl J Med 2009;360(8):753-764 (the
cohort); Hoffman MD, Gelman A. J Mach Learn Res 2014;15:1593-1623 (NUTS); Phan D, Pradhan N,
Jankowiak M. arXiv:1912.11554 (numpyro).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

import calibration

from . import warfarin
from ._drug import CovariateError, Drug, PatientCovariates, patient_flag, patient_number

NAME = "warfarin_iwpc_recalibrated"
DATA_FILE = "warfarin_iwpc_recalibrated.json"
REFERENCE = (
    "Structural model: " + warfarin.REFERENCE + ". Covariate model re-estimated here on the "
    "IWPC training file (International Warfarin Pharmacogenetics Consortium, N Engl J Med "
    "2009;360(8):753-764), by interval likelihood of the stable doses, cross-validated "
    "(pkpd-twins, twins/drugs/warfarin_iwpc.py)."
)

CYP2C9_KEYS = ("12", "13", "22", "23", "33")
_DIPLOTYPE_KEY = {"*1/*2": "12", "*1/*3": "13", "*2/*2": "22", "*2/*3": "23", "*3/*3": "33"}
RACES = ("asian", "black", "missing")  # White is the reference
_ANCESTRY = {
    "white": None,
    "asian": "asian",
    "black": "black",
    "black or african american": "black",
    "unknown": "missing",
    "missing": "missing",
}

#: The estimated parameters, on the unconstrained scale of the fit, in order.
PARAMS: tuple[str, ...] = (
    "log_EC50_GG",
    "log_rho_AG",
    "log_rho_AA",
    *(f"log_m_{k}" for k in CYP2C9_KEYS),  # log(1 - r) for CYP2C9 diplotype k
    "AGE_CL",
    "WT_CL",
    "log_AMIO_CL",
    "log_IND_CL",
    *(f"log_EC50_{r.upper()}" for r in RACES),
    "log_OMEGA",
)


def _prior() -> tuple[np.ndarray, np.ndarray]:
    th = warfarin.THETA
    mean = {
        "log_EC50_GG": math.log(th["EC50_GG"]),
        "log_rho_AG": math.log(th["EC50_AG"] / th["EC50_GG"]),
        "log_rho_AA": math.log(th["EC50_AA"] / th["EC50_GG"]),
        **{f"log_m_{k}": math.log(1.0 - th[f"CL_DEC_{k}"]) for k in CYP2C9_KEYS},
        "AGE_CL": th["AGE_CL"],
        "log_OMEGA": math.log(0.5),
    }
    sd = {"AGE_CL": 0.02}
    return (
        np.array([mean.get(p, 0.0) for p in PARAMS]),
        np.array([sd.get(p, 1.0) for p in PARAMS]),
    )


PRIOR_MEAN, PRIOR_SD = _prior()
#: Bounds on the age coefficient that keep Hamberg's linear age factor 1 - AGE_CL (AGE - 71)
#: positive for ages 15-95 (the IWPC decades 10-19 to 90+).
AGE_CL_BOUNDS = (-1.0 / 56.0 + 1e-6, 1.0 / 24.0 - 1e-6)
#: Hamberg 2007's split of the summed between-patient variance: CL 31% CV, EC50 40.9% CV.
OMEGA2_HAMBERG = {k: math.log1p(warfarin.IIV_CV[k] ** 2) for k in ("CL", "EC50")}


def log_q(inr: Any) -> Any:
    r"""$\log(C/EC_{50})$ at which the constant-concentration steady-state INR is `inr`.

    Hamberg 2007 values ($\gamma$, $\lambda$, $INR_{max}$, BASE = 1); vectorised (JAX).
    """
    th, fx = warfarin.THETA, warfarin.FIXED
    rise = ((jnp.asarray(inr) - fx["BASE"]) / fx["INRMAX"]) ** (1.0 / th["LAMBDA"])
    inh = 1.0 - jnp.sqrt(1.0 - rise)
    return (jnp.log(inh) - jnp.log(fx["EMAX"] - inh)) / th["GAMMA"]


def design(
    *,
    age: Sequence[float],
    weight: Sequence[float],
    cyp2c9: Sequence[str],
    vkorc1: Sequence[str],
    race: Sequence[str | None],
    amiodarone: Sequence[float],
    inducer: Sequence[float],
) -> dict[str, np.ndarray]:
    """Numeric covariate arrays for `log_product`: indicators of CYP2C9 (`"*1/*3"`), VKORC1
    group (`"GG"`, `"AG"`, `"AA"`), race (`"white"`, `"asian"`, `"black"`, `"missing"`).

    **Raises:** `ValueError` naming the position and the value outside the model.
    """
    n = len(age)
    out = {
        "AGE": np.asarray(age, dtype=float),
        "WT": np.asarray(weight, dtype=float),
        "AMIO": np.asarray(amiodarone, dtype=float),
        "IND": np.asarray(inducer, dtype=float),
    }
    for key in CYP2C9_KEYS:
        out[f"CYP_{key}"] = np.zeros(n)
    for key in ("AG", "AA", *RACES):
        out[key] = np.zeros(n)
    for i in range(n):
        dip, vk, rc = cyp2c9[i], vkorc1[i], race[i]
        if dip != "*1/*1":
            if dip not in _DIPLOTYPE_KEY:
                raise ValueError(f"{NAME}: patient {i}: CYP2C9 {dip!r} is not in the model.")
            out[f"CYP_{_DIPLOTYPE_KEY[dip]}"][i] = 1.0
        if vk not in ("GG", "AG", "AA"):
            raise ValueError(f"{NAME}: patient {i}: VKORC1 group {vk!r}; expected GG, AG, AA.")
        if vk != "GG":
            out[vk][i] = 1.0
        if rc not in ("white", *RACES):
            raise ValueError(f"{NAME}: patient {i}: race {rc!r}; expected white or {RACES}.")
        if rc != "white":
            out[rc][i] = 1.0
    return out


def _unpack(x) -> dict[str, Any]:
    return {p: x[i] for i, p in enumerate(PARAMS)}


def log_product(x, cov: Mapping[str, Any]):
    """log(CL_typ * EC50_typ) (L/h * mg/L) per patient for unconstrained parameters `x`."""
    p = _unpack(x)
    log_cl = math.log(warfarin.THETA["CL"]) + jnp.log(1.0 - p["AGE_CL"] * (cov["AGE"] - 71.0))
    log_cl = log_cl + sum(p[f"log_m_{k}"] * cov[f"CYP_{k}"] for k in CYP2C9_KEYS)
    log_cl = log_cl + p["WT_CL"] * jnp.log(cov["WT"] / 70.0)
    log_cl = log_cl + p["log_AMIO_CL"] * cov["AMIO"] + p["log_IND_CL"] * cov["IND"]
    log_ec = p["log_EC50_GG"] + p["log_rho_AG"] * cov["AG"] + p["log_rho_AA"] * cov["AA"]
    log_ec = log_ec + sum(p[f"log_EC50_{r.upper()}"] * cov[r] for r in RACES)
    return log_cl + log_ec


def _log_diff_ndtr(a, b):
    """log(Phi(a) - Phi(b)) for a > b, stable in both tails."""
    flip = (a + b) > 0
    hi = jnp.where(flip, -b, a)
    lo = jnp.where(flip, -a, b)
    lhi, llo = log_ndtr(hi), log_ndtr(lo)
    return lhi + jnp.log1p(-jnp.exp(llo - lhi))


def interval_loglik(x, cov, weekly_dose, lo, hi):
    r"""Per-patient log P(INR_ss in [lo, hi] | weekly dose, covariates, x), eta integrated
    out in closed form (module docstring)."""
    omega = jnp.exp(_unpack(x)["log_OMEGA"])
    u = jnp.log(warfarin.S_FRACTION * (weekly_dose / 7.0) / 24.0) - log_product(x, cov)
    return _log_diff_ndtr((u - log_q(lo)) / omega, (u - log_q(hi)) / omega)


def log_posterior(x, cov, weekly_dose, lo, hi):
    """Sum of `interval_loglik` plus the log prior density (module docstring)."""
    z = (x - PRIOR_MEAN) / PRIOR_SD
    return jnp.sum(interval_loglik(x, cov, weekly_dose, lo, hi)) - 0.5 * jnp.sum(z**2)


def predict_weekly_dose(x, cov, *, target_inr: float = 2.5) -> np.ndarray:
    """Weekly racemic dose (mg) whose steady-state INR is `target_inr` at eta = 0."""
    log_day = log_product(jnp.asarray(x), cov) + log_q(target_inr) + math.log(24.0)
    return 7.0 * np.exp(np.asarray(log_day)) / warfarin.S_FRACTION


def _as_jax(cov):
    return {k: jnp.asarray(v, dtype=float) for k, v in cov.items()}


def _weighted_neg_log_posterior(x, cov, weekly_dose, lo, hi, weights):
    z = (x - PRIOR_MEAN) / PRIOR_SD
    ll = interval_loglik(x, cov, weekly_dose, lo, hi)
    return -jnp.sum(weights * ll) + 0.5 * jnp.sum(z**2)


# Module level, so that fits on data of the same shape (the folds of a cross-validation,
# weighted 0/1) compile once.
_value_and_grad = jax.jit(jax.value_and_grad(_weighted_neg_log_posterior))
_hessian = jax.jit(jax.hessian(_weighted_neg_log_posterior))


def fit_map(cov, weekly_dose, lo, hi, *, weights=None) -> dict[str, Any]:
    """Posterior mode and Laplace SEs (inverse Hessian of the negative log posterior).

    **Arguments:** `cov` (`design` arrays), `weekly_dose` (mg/week), `lo`, `hi` (target
    INR range per patient), `weights` (per patient, default 1; 0 leaves a patient out, as
    the folds of `twins.validation.warfarin_recalibration_cv` do).

    **Returns:** `{"x": mode, "se": SEs, "cov": covariance, "logpost": value, "n": patients}`
    on the unconstrained scale of `PARAMS`.

    **Raises:** `RuntimeError` if the optimiser does not converge or the Hessian is not
    positive definite.
    """
    from scipy.optimize import minimize

    c = _as_jax(cov)
    d, a, b = (jnp.asarray(v, dtype=float) for v in (weekly_dose, lo, hi))
    wts = jnp.ones_like(d) if weights is None else jnp.asarray(weights, dtype=float)
    n = float(jnp.sum(wts))
    args = (c, d, a, b, wts)

    def per_patient(x):  # scaled, so that the optimiser's first steps are of a sensible size
        value, grad = _value_and_grad(jnp.asarray(x), *args)
        return float(value) / n, np.asarray(grad) / n

    bounds = [AGE_CL_BOUNDS if p == "AGE_CL" else (None, None) for p in PARAMS]
    res = minimize(
        per_patient,
        np.array(PRIOR_MEAN),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"gtol": 1e-9, "ftol": 1e-14, "maxiter": 5000},
    )
    x = np.asarray(res.x)
    for _ in range(3):  # Newton polish: L-BFGS-B stops on relative reduction of f
        grad = np.asarray(_value_and_grad(jnp.asarray(x), *args)[1])
        hess = np.asarray(_hessian(jnp.asarray(x), *args))
        try:
            np.linalg.cholesky(hess)
        except np.linalg.LinAlgError as err:
            raise RuntimeError(
                f"{NAME}: the Hessian at the mode is not positive definite ({res.message})."
            ) from err
        x = x - np.linalg.solve(hess, grad)
    value, grad = (np.asarray(v) for v in _value_and_grad(jnp.asarray(x), *args))
    covm = np.linalg.inv(np.asarray(_hessian(jnp.asarray(x), *args)))
    se = np.sqrt(np.diag(covm))
    if not np.all(np.isfinite(x)) or np.max(np.abs(grad * se)) > 1e-6:
        raise RuntimeError(f"{NAME}: MAP did not converge ({res.message}; gradient {grad}).")
    return {
        "x": x,
        "se": se,
        "cov": covm,
        "logpost": float(-value),
        "n": round(n),
    }


def fit_nuts(
    cov,
    weekly_dose,
    lo,
    hi,
    *,
    seed: int = 0,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    init: Sequence[float] | None = None,
) -> dict[str, Any]:
    """NUTS (numpyro, dense mass matrix) on the same posterior as `fit_map`, every chain
    started at `init` (default: the MAP of `fit_map`).

    **Returns:** `{"samples": (chains * draws, len(PARAMS)) array, "rhat", "ess" (per
    parameter), "divergences"}`.
    """
    import numpyro
    import numpyro.distributions as dist
    from numpyro.diagnostics import summary
    from numpyro.infer import MCMC, NUTS, init_to_value

    if init is None:
        init = fit_map(cov, weekly_dose, lo, hi)["x"]
    c = _as_jax(cov)
    d, a, b = (jnp.asarray(v, dtype=float) for v in (weekly_dose, lo, hi))

    def model():
        x = numpyro.sample("x", dist.Normal(PRIOR_MEAN, PRIOR_SD).to_event(1))
        numpyro.factor("interval", jnp.sum(interval_loglik(x, c, d, a, b)))

    mcmc = MCMC(
        NUTS(model, dense_mass=True, init_strategy=init_to_value(values={"x": jnp.asarray(init)})),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="sequential",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(seed))
    grouped = mcmc.get_samples(group_by_chain=True)["x"]
    diag = summary({"x": np.asarray(grouped)}, group_by_chain=True)["x"]
    return {
        "samples": np.asarray(grouped).reshape(-1, len(PARAMS)),
        "rhat": np.asarray(diag["r_hat"]),
        "ess": np.asarray(diag["n_eff"]),
        "divergences": int(np.sum(mcmc.get_extra_fields()["diverging"])),
    }


# ----------------------------------------------------------------------------- the variant


def estimates() -> dict[str, Any]:
    """The shipped estimates (`twins/data/warfarin_iwpc_recalibrated.json`)."""
    text = resources.files("twins").joinpath("data", DATA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def theta_from_x(x: Sequence[float]) -> dict[str, float]:
    """Model theta (natural scale, `typical` reads it) from the unconstrained estimates."""
    p = {k: float(v) for k, v in zip(PARAMS, x, strict=True)}
    th = dict(warfarin.THETA)
    th["EC50_GG"] = math.exp(p["log_EC50_GG"])
    th["EC50_AG"] = th["EC50_GG"] * math.exp(p["log_rho_AG"])
    th["EC50_AA"] = th["EC50_GG"] * math.exp(p["log_rho_AA"])
    for k in CYP2C9_KEYS:
        th[f"CL_DEC_{k}"] = 1.0 - math.exp(p[f"log_m_{k}"])
    th["AGE_CL"] = p["AGE_CL"]
    th["WT_CL"] = p["WT_CL"]
    th["AMIO_CL"] = math.exp(p["log_AMIO_CL"])
    th["IND_CL"] = math.exp(p["log_IND_CL"])
    for r in RACES:
        th[f"EC50_{r.upper()}"] = math.exp(p[f"log_EC50_{r.upper()}"])
    return th


def typical(theta: Mapping[str, Any], cov: Mapping[str, Any]) -> dict[str, Any]:
    """Typical parameters: Hamberg 2007's (`warfarin.typical`) with the recalibrated
    covariate model (weight, amiodarone and inducers on CL; race on EC50)."""
    out = warfarin.typical(theta, cov)
    out["CL"] = (
        out["CL"]
        * (cov["WT"] / 70.0) ** theta["WT_CL"]
        * theta["AMIO_CL"] ** cov["AMIODARONE"]
        * theta["IND_CL"] ** cov["INDUCER"]
    )
    for r in RACES:
        out["EC50"] = out["EC50"] * theta[f"EC50_{r.upper()}"] ** cov[f"RACE_{r.upper()}"]
    return out


def covariates(patient: PatientCovariates) -> dict[str, float]:
    """Covariates from the standard patient dict: Hamberg's (`AGE`, `CYP2C9`, `VKORC1`),
    `WT` (kg), `ANCESTRY` (`"White"`, `"Asian"`, `"Black"` / `"Black or African American"`,
    `"Unknown"`; absent or `None` = missing or mixed, as the IWPC codes it), `AMIODARONE`
    and `ENZYME_INDUCER` (0/1; absent = 0)."""
    out = warfarin.covariates(patient)
    out["WT"] = patient_number(patient, "WT", drug=NAME, what="weight, kg")
    raw = patient.get("ANCESTRY")
    key = "missing" if raw is None else _ANCESTRY.get(str(raw).strip().lower(), "?")
    if key == "?":
        raise CovariateError(
            f"{NAME}: patient ANCESTRY {raw!r}; expected White, Asian, Black (or African "
            "American), Unknown or none."
        )
    for r in RACES:
        out[f"RACE_{r.upper()}"] = float(key == r)
    out["AMIODARONE"] = patient_flag(patient, "AMIODARONE", drug=NAME, what="taking it, 0/1")
    out["INDUCER"] = patient_flag(
        patient, "ENZYME_INDUCER", drug=NAME, what="carbamazepine, phenytoin or rifampin, 0/1"
    )
    return out


def drug() -> Drug:
    """The recalibrated warfarin variant (`twins.drugs.warfarin_iwpc.drug()`)."""
    est = estimates()
    x = [est["map"]["x"][p] for p in PARAMS]
    base = warfarin.drug()
    omega2 = math.exp(2.0 * est["map"]["x"]["log_OMEGA"])
    share = omega2 / sum(OMEGA2_HAMBERG.values())
    omega = dict(base.model.omega)
    for k, v in OMEGA2_HAMBERG.items():
        omega[k] = v * share
    pm = calibration.PopulationModel(
        warfarin.warfarin_model(),
        theta=theta_from_x(x),
        omega=omega,
        error=calibration.Exponential(warfarin.INR_LOG_SD),
        typical=typical,
        output=1,
    )
    return Drug(
        name=NAME,
        model=pm,
        covariate_fn=covariates,
        units=base.units,
        dosing=base.dosing,
        reference=REFERENCE,
        targets=base.targets,
        description=__doc__ or "",
    )
