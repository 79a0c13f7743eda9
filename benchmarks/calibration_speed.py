"""Calibration speed: FOCE-I population fit of theophylline, vmapped MAP for 10,000 patients.

Each figure is printed next to a baseline run in the same process:

- population fit (`calibration.fit_population`, FOCE-I) on theophylline: first call (with
  compilation) and second call; nlmixr2's FOCE-I takes about 2-4 s for the whole call (R,
  not run here);
- individual MAP of N simulated patients in one vmapped call (`calibration.individual_map`,
  FOCE-I curvature) against `scipy.optimize.minimize` (BFGS on the same negative log
  posterior, NumPy closed form, analytic gradients not used) per patient on a subset;
- optionally (`--nuts`) population NUTS, 4 chains x 1,000 draws, on theophylline.

    python benchmarks/calibration_speed.py --json
"""

from __future__ import annotations

import argparse
import json
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
    a = ap.parse_args()
    out: dict = {"machine": {"platform": jax.default_backend(), "jax": jax.__version__}}

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
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(k, v)


if __name__ == "__main__":
    main()
