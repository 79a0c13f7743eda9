"""Calibration speed: FOCE-I population fit of theophylline, vmapped MAP for 10,000 patients.

Each figure is printed next to a baseline run in the same process:

- population fit (`calibration.fit_population`, FOCE-I) on theophylline: first call (with
  compilation) and second call; nlmixr2's FOCE-I takes about 2-4 s for the whole call (R,
  not run here);
- individual MAP of N simulated patients in one vmapped call (`calibration.individual_map`,
  FOCE-I curvature) against `scipy.optimize.minimize` (BFGS on the same negative log
  posterior, NumPy closed form, analytic gradients not used) per patient on a subset;
- optionally (`--nuts`) population NUTS, 4 chains x 1,000 draws, on theophylline;
- optionally (`--large N`) FOCE-I on N simulated subjects of a two-compartment IV model (one
  500 mg bolus, 10 samples, BSV on CL and V1, proportional error) with the outer loop's
  gradient by central differences (the default) and by implicit differentiation
  (`gradient="implicit"`), each fitted twice (the second call warm), with their ratio;
- optionally (`--quinidine`) the same two on a data set of the design of nlme's Quinidine
  data (136 subjects, irregular oral dosing, sparse levels, a time-varying covariate).

    python benchmarks/calibration_speed.py --json
    python benchmarks/calibration_speed.py --large 1000 --skip-theo --json
    python benchmarks/calibration_speed.py --large 1000 --skip-theo --gradients implicit --json

Each large fit records the 1-minute load average after each call (`os.getloadavg`): on a
shared machine it says how much of the CPU the fit had.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time
import warnings

import jax
import numpy as np
import pandas as pd
import scipy.optimize

import calibration as C
import pkpd

REF = pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference"


def theophylline() -> C.Dataset:
    df = pd.read_csv(REF / "datasets" / "theo_sd_nlmixr2data.csv")
    df.loc[df["EVID"] == 101, "EVID"] = 1  # rxode2's dose into compartment 1
    df.loc[df["EVID"] == 0, "CMT"] = 2
    return C.Dataset.from_records(df)


THEO_MODEL = C.PopulationModel(
    pkpd.OneCompartmentOral(),
    theta={"KA": 1.0, "CL": 3.0, "V": 30.0},
    omega={"KA": 0.3, "CL": 0.1, "V": 0.1},
    error=C.Additive(1.0),
)
TIMES = np.array([0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 24.0])
DOSE = 320.0


def map_cohort(n: int, seed: int = 0) -> tuple[C.Dataset, C.PopulationModel]:
    """N patients simulated from a theophylline-like population (one oral dose, 9 samples)."""
    pm = C.PopulationModel(
        pkpd.OneCompartmentOral(),
        theta={"KA": 1.5, "CL": 2.8, "V": 32.0},
        omega={"KA": 0.4, "CL": 0.08, "V": 0.02},
        error=C.Additive(0.7),
    )
    rng = np.random.default_rng(seed)
    eta = rng.standard_normal((n, 3)) * np.sqrt([0.4, 0.08, 0.02])
    ka, cl, v = (pm.theta[k] * np.exp(eta[:, i]) for i, k in enumerate(("KA", "CL", "V")))
    k = cl / v
    t = TIMES[None, :]
    conc = DOSE * ka[:, None] / (v[:, None] * (ka - k)[:, None])
    conc = conc * (np.exp(-k[:, None] * t) - np.exp(-ka[:, None] * t))
    dv = conc + 0.7 * rng.standard_normal(conc.shape)
    ids = np.repeat(np.arange(1, n + 1), TIMES.size + 1)
    time_col = np.tile(np.concatenate([[0.0], TIMES]), n)
    evid = np.tile(np.concatenate([[1], np.zeros(TIMES.size, int)]), n)
    amt = np.where(evid == 1, DOSE, 0.0)
    cmt = np.where(evid == 1, 1, 2)
    dv_col = np.concatenate([np.concatenate([[0.0], row]) for row in dv])
    df = pd.DataFrame(
        {"ID": ids, "TIME": time_col, "EVID": evid, "AMT": amt, "CMT": cmt, "DV": dv_col}
    )
    return C.Dataset.from_records(df), pm


LARGE_TIMES = np.array([0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 18.0, 24.0])


def large_cohort(n: int, seed: int = 1) -> tuple[C.Dataset, C.PopulationModel]:
    """N subjects simulated from a two-compartment IV population (the model itself, through
    `simulate_dataset`), and the model with distant starting values."""
    truth = C.PopulationModel(
        pkpd.TwoCompartment(),
        theta={"CL": 5.0, "V1": 20.0, "Q": 8.0, "V2": 60.0},
        omega={"CL": 0.09, "V1": 0.09},
        error=C.Proportional(0.1),
    )
    rows = []
    for i in range(1, n + 1):
        rows.append(dict(ID=i, TIME=0.0, EVID=1, AMT=500.0, CMT=1, DV=0.0, MDV=1))
        rows += [dict(ID=i, TIME=t, EVID=0, AMT=0.0, CMT=1, DV=1.0, MDV=0) for t in LARGE_TIMES]
    design = C.Dataset.from_records(pd.DataFrame(rows))
    data = C.simulate_dataset(truth, None, design, key=seed).dataset()
    start = C.PopulationModel(
        truth.model,
        theta={"CL": 7.0, "V1": 15.0, "Q": 5.0, "V2": 80.0},
        omega=truth.omega,
        error=C.Proportional(0.2),
    )
    return data, start


def quinidine_like(seed: int = 3) -> tuple[C.Dataset, C.PopulationModel]:
    """A data set of the design of R's nlme Quinidine data (Verme et al. 1992; 136 subjects,
    361 levels): irregular oral dosing (3-12 doses 6-12 h apart), 1-6 sparse levels per
    subject, creatinine clearance changing between records (read with NONMEM's next-record
    convention), simulated from a one-compartment oral model with BSV on CL and additive
    error (the design, not the real values)."""
    rng = np.random.default_rng(seed)
    truth = C.PopulationModel(
        pkpd.OneCompartmentOral(),
        theta={"KA": 0.5, "TVCL": 9.0, "V": 250.0, "CRCL_EXP": 0.4},
        omega={"CL": 0.08},
        error=C.Additive(0.5),
        typical=lambda th, c: {
            "KA": th["KA"],
            "CL": th["TVCL"] * (c["CRCL"] / 60.0) ** th["CRCL_EXP"],
            "V": th["V"],
        },
        unconstrained=("CRCL_EXP",),
    )
    rows = []
    for i in range(1, 137):
        t, crcl = 0.0, float(rng.uniform(30.0, 100.0))
        n_dose = int(rng.integers(3, 13))
        for _ in range(n_dose):
            crcl = float(np.clip(crcl * np.exp(rng.normal(0.0, 0.05)), 15.0, 150.0))
            rows.append(dict(ID=i, TIME=t, EVID=1, AMT=float(rng.choice([166.0, 201.0, 249.0])),
                             CMT=1, DV=0.0, MDV=1, CRCL=crcl))  # fmt: skip
            t += float(rng.choice([6.0, 8.0, 12.0]))
        for s in np.sort(rng.uniform(1.0, t, size=int(rng.integers(1, 7)))):
            rows.append(dict(ID=i, TIME=float(s), EVID=0, AMT=0.0, CMT=2, DV=1.0, MDV=0, CRCL=crcl))
    df = pd.DataFrame(rows).sort_values(["ID", "TIME", "EVID"], kind="stable")
    df = df.reset_index(drop=True)
    design = C.Dataset.from_records(df, covariates=["CRCL"], interpolation={"CRCL": "nonmem"})
    data = C.simulate_dataset(truth, None, design, key=seed).dataset()
    start = C.PopulationModel(
        truth.model,
        theta={"KA": 0.8, "TVCL": 12.0, "V": 200.0, "CRCL_EXP": 0.2},
        omega={"CL": 0.15},
        error=C.Additive(1.0),
        typical=truth.typical,
        unconstrained=("CRCL_EXP",),
    )
    return data, start


def time_large(
    n: int, quinidine: bool = False, gradients: tuple[str, ...] = ("differences", "implicit")
) -> dict:
    data, start = quinidine_like() if quinidine else large_cohort(n)
    n = data.n_subjects
    out: dict = {"n_subjects": n, "observations": int(data.n_observations)}
    for gradient in gradients:
        calls, loads = [], []
        for _ in range(2):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", C.ConvergenceWarning)
                fit = C.fit_population(start, data, gradient=gradient)
            calls.append(time.perf_counter() - t0)
            loads.append(os.getloadavg()[0])
        out[gradient] = {
            "first_call_s": calls[0],
            "second_call_s": calls[1],
            "steps": fit.n_steps,
            "ofv": fit.ofv,
            "converged": fit.converged,
            "load_average_1min": loads,  # after each call (2 cores, shared)
        }
    if "differences" in out and "implicit" in out:
        out["warm_ratio_differences_over_implicit"] = (
            out["differences"]["second_call_s"] / out["implicit"]["second_call_s"]
        )
    return out


def scipy_map(pm: C.PopulationModel, data: C.Dataset, n: int) -> float:
    """Seconds for per-patient `scipy.optimize.minimize` MAP of the first `n` patients."""
    theta = np.array([pm.theta[k] for k in ("KA", "CL", "V")])
    omega_inv = 1.0 / np.array([pm.omega[k] for k in ("KA", "CL", "V")])
    sd = float(pm.error.add_sd)  # type: ignore[union-attr]

    def nlp(eta, t, y):
        ka, cl, v = theta * np.exp(eta)
        k = cl / v
        f = DOSE * ka / (v * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))
        return 0.5 * np.sum((y - f) ** 2) / sd**2 + 0.5 * np.sum(eta**2 * omega_inv)

    t0 = time.perf_counter()
    for i in range(n):
        m = data.observed[i]
        scipy.optimize.minimize(nlp, np.zeros(3), args=(data.time[i, m], data.dv[i, m]))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--n-map", type=int, default=10_000)
    ap.add_argument("--scipy-n", type=int, default=200)
    ap.add_argument("--nuts", action="store_true", help="also time population NUTS 4 x 1000")
    ap.add_argument("--large", type=int, default=0, help="also fit N two-compartment subjects")
    ap.add_argument("--quinidine", action="store_true", help="also fit a Quinidine-sized set")
    ap.add_argument("--skip-theo", action="store_true", help="only the --large/--quinidine fits")
    ap.add_argument(
        "--gradients",
        default="differences,implicit",
        help="outer gradients of the --large/--quinidine fits, comma-separated",
    )
    a = ap.parse_args()
    grads = tuple(g.strip() for g in a.gradients.split(",") if g.strip())
    out: dict = {"machine": {"platform": jax.default_backend(), "jax": jax.__version__}}
    if a.skip_theo:
        if a.quinidine:
            out["quinidine_like_focei"] = time_large(0, quinidine=True, gradients=grads)
        if a.large:
            out["large_focei"] = time_large(a.large, gradients=grads)
        print(json.dumps(out, indent=2) if a.json else out)
        return

    data = theophylline()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.ConvergenceWarning)
        t0 = time.perf_counter()
        fit = C.fit_population(THEO_MODEL, data)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        C.fit_population(THEO_MODEL, data)
        second = time.perf_counter() - t0
    out["theophylline_focei"] = {
        "first_call_s": first,
        "second_call_s": second,
        "converged": fit.converged,
        "ofv": fit.ofv,
        "baseline": "nlmixr2 FOCE-I about 2-4 s per call (published, not run here)",
    }

    cohort, pm = map_cohort(a.n_map)
    t0 = time.perf_counter()
    C.individual_map(pm, cohort, estimator=C.FOCEI())
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    ind = C.individual_map(pm, cohort, estimator=C.FOCEI())
    second = time.perf_counter() - t0
    ns = min(a.scipy_n, a.n_map)
    s = scipy_map(pm, cohort, ns)
    out["map"] = {
        "n": a.n_map,
        "first_call_s": first,
        "second_call_s": second,
        "patients_per_s": a.n_map / second,
        "converged_fraction": float(ind.converged.mean()),
        "scipy_per_patient": {"n": ns, "patients_per_s": ns / s},
        "ratio_vs_scipy": (a.n_map / second) / (ns / s),
    }
    if a.nuts:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", C.ConvergenceWarning)
            bf = C.fit_population_nuts(THEO_MODEL, data, num_warmup=1000, num_samples=1000, key=0)
        out["theophylline_nuts_4x1000"] = {
            "wall_s": time.perf_counter() - t0,
            "converged": bf.converged,
        }
    if a.quinidine:
        out["quinidine_like_focei"] = time_large(0, quinidine=True, gradients=grads)
    if a.large:
        out["large_focei"] = time_large(a.large, gradients=grads)
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(k, v)


if __name__ == "__main__":
    main()
