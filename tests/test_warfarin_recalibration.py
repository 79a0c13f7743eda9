"""The warfarin population recalibrated on the IWPC training file (twins.drugs.warfarin_iwpc).

References: Hamberg AK et al. Clin Pharmacol Ther 2007;81(4):529-538 (the model);
International Warfarin Pharmacogenetics Consortium. N Engl J Med 2009;360:753-764 (the data).
"""

from __future__ import annotations

import math
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize, stats

import pkpd
from twins import validation
from twins.drugs import warfarin
from twins.drugs import warfarin_iwpc as w

CSV = pathlib.Path(__file__).parent / "data/reference/datasets/iwpc_warfarin_train.csv.gz"

PATIENTS = {
    "age": [35.0, 65.0, 85.0, 55.0],
    "weight": [95.0, 70.0, 52.0, 80.0],
    "cyp2c9": ["*1/*1", "*1/*3", "*2/*2", "*3/*3"],
    "vkorc1": ["GG", "AG", "AA", "GG"],
    "race": ["white", "asian", "black", "missing"],
    "amiodarone": [0.0, 1.0, 0.0, 0.0],
    "inducer": [0.0, 0.0, 0.0, 1.0],
}


def _x_demo() -> np.ndarray:
    """A parameter vector away from the prior mean (every covariate effect non-zero)."""
    rng = np.random.default_rng(3)
    x = w.PRIOR_MEAN + 0.1 * rng.standard_normal(len(w.PARAMS))
    x[w.PARAMS.index("AGE_CL")] = 0.008
    x[w.PARAMS.index("log_OMEGA")] = math.log(0.4)
    return x


def _params(x, patient: int, eta_cl: float = 0.0, eta_ec50: float = 0.0) -> dict:
    """Model parameters of one patient written out from the equations of the module
    docstring, not through `log_product`."""
    p = dict(zip(w.PARAMS, x, strict=True))
    age, wt = PATIENTS["age"][patient], PATIENTS["weight"][patient]
    dip = PATIENTS["cyp2c9"][patient].replace("*", "").replace("/", "")
    cl = 0.314 * (1 - p["AGE_CL"] * (age - 71)) * (wt / 70) ** p["WT_CL"]
    if dip != "11":
        cl *= math.exp(p[f"log_m_{dip}"])
    cl *= math.exp(p["log_AMIO_CL"] * PATIENTS["amiodarone"][patient])
    cl *= math.exp(p["log_IND_CL"] * PATIENTS["inducer"][patient])
    vk, race = PATIENTS["vkorc1"][patient], PATIENTS["race"][patient]
    ec50 = math.exp(p["log_EC50_GG"])
    if vk != "GG":
        ec50 *= math.exp(p[f"log_rho_{vk}"])
    if race != "white":
        ec50 *= math.exp(p[f"log_EC50_{race.upper()}"])
    params = dict(warfarin.FIXED, **warfarin.THETA, F1=0.5)
    params.update(CL=cl * math.exp(eta_cl), EC50=ec50 * math.exp(eta_ec50))
    return params


def _inr(x, patient, weekly, eta):
    # The whole eta on CL: only the product CL * EC50 sets the steady state.
    return warfarin.steady_state_inr(_params(x, patient, eta_cl=eta), weekly / 7.0)


@pytest.mark.parametrize(
    "patient, weekly, lo, hi",
    [(0, 45.0, 2.0, 3.0), (1, 20.0, 1.7, 2.8), (2, 8.0, 2.5, 3.5), (3, 60.0, 2.0, 3.0)],
)
def test_interval_likelihood_against_quadrature(patient, weekly, lo, hi):
    """P(INR_ss in [lo, hi]) = the normal mass of the etas for which `steady_state_inr` at
    this dose is in range: the ends found by brentq on the model's own INR, the mass by
    scipy quad of the normal density (tolerance 1e-8)."""
    x = _x_demo()
    omega = math.exp(x[w.PARAMS.index("log_OMEGA")])
    # INR falls as eta (clearance) rises: the range is eta in [e_hi, e_lo].
    e_lo = optimize.brentq(lambda e: _inr(x, patient, weekly, e) - lo, -20, 20, xtol=1e-13)
    e_hi = optimize.brentq(lambda e: _inr(x, patient, weekly, e) - hi, -20, 20, xtol=1e-13)
    mass, _ = integrate.quad(lambda e: stats.norm.pdf(e, scale=omega), e_hi, e_lo, epsabs=1e-13)
    cov = w.design(**{k: [v[patient]] for k, v in PATIENTS.items()})
    ll = w.interval_loglik(jnp.asarray(x), cov, jnp.asarray([weekly]), lo, hi)
    assert float(np.exp(ll[0])) == pytest.approx(mass, rel=1e-8, abs=1e-12)


def test_interval_likelihood_two_etas_by_monte_carlo():
    """With separate etas on CL and EC50 (Hamberg's split of omega^2) the in-range fraction
    of 400,000 simulated patients is the closed form within 4 Monte Carlo SEs."""
    x = _x_demo()
    omega2 = math.exp(2 * x[w.PARAMS.index("log_OMEGA")])
    share = omega2 / sum(w.OMEGA2_HAMBERG.values())
    rng = np.random.default_rng(11)
    n = 400_000
    e_cl = rng.normal(0.0, math.sqrt(share * w.OMEGA2_HAMBERG["CL"]), n)
    e_ec = rng.normal(0.0, math.sqrt(share * w.OMEGA2_HAMBERG["EC50"]), n)
    patient, weekly = 1, 24.0
    p = _params(x, patient)
    c = 0.5 * weekly / 7.0 / (p["CL"] * np.exp(e_cl) * 24.0)
    z = p["GAMMA"] * (np.log(c) - np.log(p["EC50"] * np.exp(e_ec)))
    inh = 1.0 / (1.0 + np.exp(-z))
    inr = 1.0 + 20.0 * (1.0 - (1.0 - inh) ** 2) ** p["LAMBDA"]
    frac = np.mean((inr >= 2.0) & (inr <= 3.0))
    cov = w.design(**{k: [v[patient]] for k, v in PATIENTS.items()})
    ll = w.interval_loglik(jnp.asarray(x), cov, jnp.asarray([weekly]), 2.0, 3.0)
    se = math.sqrt(frac * (1 - frac) / n)
    assert float(np.exp(ll[0])) == pytest.approx(frac, abs=4 * se)


def _simulated_cohort(x_true, n, seed):
    """IWPC-like patients: genotype, race and co-medication frequencies near the file's.

    The stable dose: the clinician lands on a dose whose log(C/EC50) lies uniformly in the
    target range's [log q_lo, log q_hi]; then the density of log dose given theta is
    P(INR_ss in range | dose) / (log q_hi - log q_lo), so the interval likelihood is the
    exact likelihood (up to a constant) of these data.
    """
    rng = np.random.default_rng(seed)
    dips = ["*1/*1", "*1/*2", "*1/*3", "*2/*2", "*2/*3", "*3/*3"]
    cohort = {
        "age": 10.0 * rng.integers(2, 10, n) + 5.0,
        "weight": np.clip(rng.normal(78, 20, n), 35, 200),
        "cyp2c9": list(rng.choice(dips, n, p=[0.70, 0.12, 0.09, 0.03, 0.04, 0.02])),
        "vkorc1": list(rng.choice(["GG", "AG", "AA"], n, p=[0.35, 0.40, 0.25])),
        "race": list(
            rng.choice(["white", "asian", "black", "missing"], n, p=[0.5, 0.25, 0.15, 0.1])
        ),
        "amiodarone": (rng.random(n) < 0.08).astype(float),
        "inducer": (rng.random(n) < 0.03).astype(float),
    }
    cov = w.design(**cohort)
    lo = np.where(rng.random(n) < 0.8, 2.0, 1.7)
    hi = np.where(lo == 2.0, 3.0, 2.8)
    omega = math.exp(x_true[w.PARAMS.index("log_OMEGA")])
    ql, qh = np.asarray(w.log_q(lo)), np.asarray(w.log_q(hi))
    log_ratio = ql + (qh - ql) * rng.random(n)  # log(C / EC50) of the patient at its dose
    eta = rng.normal(0.0, omega, n)
    log_daily = np.asarray(w.log_product(jnp.asarray(x_true), cov)) + eta
    daily = np.exp(log_daily + log_ratio) * 24.0 / 0.5
    return cov, 7.0 * daily, lo, hi


def test_parameters_recovered_from_simulated_cohort():
    """Known theta (Hamberg 2007 with new covariate effects), 4,000 simulated patients: every
    MAP estimate within 3 of its Laplace SEs, and the SEs within a factor 2 of the spread
    that 1/sqrt(n) scaling of the information implies (not degenerate)."""
    x_true = np.array(w.PRIOR_MEAN)
    changes = {
        "log_EC50_GG": math.log(3.2),
        "log_m_12": math.log(0.8),
        "AGE_CL": 0.009,
        "WT_CL": 0.5,
        "log_AMIO_CL": -0.25,
        "log_IND_CL": 0.3,
        "log_EC50_ASIAN": -0.1,
        "log_EC50_BLACK": 0.15,
        "log_EC50_MISSING": -0.05,
        "log_OMEGA": math.log(0.35),
    }
    for k, v in changes.items():
        x_true[w.PARAMS.index(k)] = v
    cov, dose, lo, hi = _simulated_cohort(x_true, 4000, seed=2026)
    fit = w.fit_map(cov, dose, lo, hi)
    z = (fit["x"] - x_true) / fit["se"]
    bad = {p: round(float(v), 2) for p, v in zip(w.PARAMS, z, strict=True) if abs(v) > 3}
    assert not bad, f"estimates more than 3 SE from the truth: {bad}"
    assert np.all(fit["se"] > 0) and np.all(fit["se"] < 1.0)
    # Predicted doses at eta = 0 from the estimates against those from the truth.
    rel = w.predict_weekly_dose(fit["x"], cov) / w.predict_weekly_dose(x_true, cov) - 1
    assert np.max(np.abs(rel)) < 0.15


def test_predicted_dose_has_inr_2_5_at_typical_parameters():
    """`predict_weekly_dose` is the dose whose steady-state INR (warfarin.steady_state_inr,
    the parameters written out independently) is 2.5."""
    x = _x_demo()
    cov = w.design(**PATIENTS)
    doses = w.predict_weekly_dose(x, cov)
    for i, weekly in enumerate(doses):
        inr = warfarin.steady_state_inr(_params(x, i), weekly / 7.0)
        assert inr == pytest.approx(2.5, rel=1e-10)


def test_variant_loads_and_simulates_an_inr_time_course():
    """The shipped variant: its typical parameters give the fitted model's dose, and 60 days
    of that dose simulated with the full model bring the INR to 2.5 (within 0.05; the swing
    within the day, as for warfarin_hamberg2007)."""
    drug = w.drug()
    est = w.estimates()
    assert drug.name == "warfarin_iwpc_recalibrated"
    patient = {
        "AGE": 65.0,
        "CYP2C9": "*1/*3",
        "VKORC1": "A/G",
        "WT": 70.0,
        "ANCESTRY": "Asian",
        "AMIODARONE": 1,
    }
    params = drug.typical_params(patient)
    x = np.array([est["map"]["x"][p] for p in w.PARAMS])
    cov = w.design(
        age=[65.0],
        weight=[70.0],
        cyp2c9=["*1/*3"],
        vkorc1=["AG"],
        race=["asian"],
        amiodarone=[1.0],
        inducer=[0.0],
    )
    weekly = float(w.predict_weekly_dose(x, cov)[0])
    daily = warfarin.maintenance_dose(params, target_inr=2.5)
    assert 7.0 * daily == pytest.approx(weekly, rel=1e-10)
    times = jnp.concatenate([jnp.asarray([0.0, 24.0]), jnp.linspace(59 * 24.0, 60 * 24.0, 25)])
    out = np.asarray(pkpd.simulate(drug.model.model, params, drug.regimen(60, amount=daily), times))
    assert out[0, 1] == pytest.approx(1.0) and out[1, 1] < 1.5
    assert np.all(np.abs(out[2:, 1] - 2.5) < 0.05)
    with pytest.raises(w.CovariateError, match="ANCESTRY 'Martian'"):
        drug.typical_params(dict(patient, ANCESTRY="Martian"))
    with pytest.raises(w.CovariateError, match="'WT'"):
        drug.typical_params({k: v for k, v in patient.items() if k != "WT"})


def test_iwpc_target_range_parsing():
    assert validation.iwpc_target_range("1.7-2.8", "row 0") == (1.7, 2.8)
    assert validation.iwpc_target_range("2 to 3", "row 0") == (2.0, 3.0)
    assert validation.iwpc_target_range(float("nan"), "row 0") == (2.0, 3.0)
    with pytest.raises(ValueError, match=r"row 4.*Estimated Target INR Range.*'3-2'"):
        validation.iwpc_target_range("3-2", "row 4")


@pytest.mark.extended
def test_shipped_estimates_reproduced_on_the_training_file():
    """`fit_map` on the real file gives the shipped JSON's MAP (1e-4 on the unconstrained
    scale) and SEs (1%)."""
    data = validation.warfarin_recalibration_data(CSV)
    assert data["dose"].size == 3361
    fit = w.fit_map(data["cov"], data["dose"], data["lo"], data["hi"])
    est = w.estimates()
    assert est["data"]["patients"] == 3361
    for i, p in enumerate(w.PARAMS):
        assert fit["x"][i] == pytest.approx(est["map"]["x"][p], abs=1e-4), p
        assert fit["se"][i] == pytest.approx(est["map"]["se"][p], rel=1e-2), p


def test_shipped_nuts_posterior_agrees_with_the_laplace_approximation():
    """The shipped NUTS summary (same posterior as the MAP): converged (R-hat < 1.01, ESS >
    400, no divergences), medians within 0.5 Laplace SE of the mode, SDs within 25% of the
    Laplace SEs."""
    est = w.estimates()
    nuts, fit = est["nuts"], est["map"]
    assert nuts["divergences"] == 0
    for p in w.PARAMS:
        assert nuts["rhat"][p] < 1.01 and nuts["ess"][p] > 400, p
        assert abs(nuts["median"][p] - fit["x"][p]) < 0.5 * fit["se"][p], p
        assert nuts["sd"][p] == pytest.approx(fit["se"][p], rel=0.25), p
