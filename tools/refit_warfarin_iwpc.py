"""Refit the recalibrated warfarin model on the IWPC training file and write its estimates.

    .venv/bin/python tools/refit_warfarin_iwpc.py [--csv PATH] [--out PATH] [--no-nuts]

Fits `twins.drugs.warfarin_iwpc` (interval likelihood of the stable doses, Hamberg 2007
structure) on the twin's 3,361 patients of `iwpc_warfarin_train.csv`: MAP with Laplace SEs,
NUTS (numpyro, 2 chains x 500 draws after 500 warm-up), and the 5-fold cross-validation of
`twins.validation.warfarin_recalibration_cv` (MAP) and of the NUTS posterior-median dose.
Writes `twins/data/warfarin_iwpc_recalibrated.json`, which `warfarin_iwpc.drug()` reads.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import pathlib
import time

import numpy as np

from twins import validation
from twins.drugs import warfarin_iwpc as w

ROOT = pathlib.Path(__file__).resolve().parents[1]
CSV = ROOT / "tests/data/reference/datasets/iwpc_warfarin_train.csv.gz"
OUT = ROOT / "twins/data" / w.DATA_FILE


def _named(values) -> dict[str, float]:
    return {p: float(v) for p, v in zip(w.PARAMS, values, strict=True)}


def refit(csv: pathlib.Path, *, nuts: bool = True, n_folds: int = 5) -> dict:
    """The estimates as written to the JSON (see the module docstring)."""
    data = validation.warfarin_recalibration_data(csv)
    args = (data["cov"], data["dose"], data["lo"], data["hi"])
    t0 = time.perf_counter()
    fit = w.fit_map(*args)
    out: dict = {
        "model": w.NAME,
        "data": {
            "file": csv.name,
            "sha256": hashlib.sha256(csv.read_bytes()).hexdigest(),
            "patients": int(data["dose"].size),
            "target_ranges": {
                f"{lo:g}-{hi:g}": int(np.sum((data["lo"] == lo) & (data["hi"] == hi)))
                for lo, hi in sorted(
                    set(zip(data["lo"].tolist(), data["hi"].tolist(), strict=True))
                )
            },
        },
        "fitted": datetime.date.today().isoformat(),
        "by": "tools/refit_warfarin_iwpc.py (pkpd-twins), estimated here on the IWPC "
        "training file, cross-validated",
        "parameters": list(w.PARAMS),
        "map": {
            "x": _named(fit["x"]),
            "se": _named(fit["se"]),
            "log_posterior": fit["logpost"],
            "seconds": round(time.perf_counter() - t0, 1),
        },
        "theta": w.theta_from_x(fit["x"]),
    }
    cv = validation.warfarin_recalibration_cv(data, n_folds=n_folds)
    out["cv_map"] = validation.dose_metrics(data["dose"], cv["predicted"]) | {
        "fold_mae": [f["mae"] for f in cv["folds"]]
    }
    if nuts:
        t0 = time.perf_counter()
        post = w.fit_nuts(*args)
        s = post["samples"]
        out["nuts"] = {
            "median": _named(np.median(s, axis=0)),
            "sd": _named(np.std(s, axis=0)),
            "q2.5": _named(np.quantile(s, 0.025, axis=0)),
            "q97.5": _named(np.quantile(s, 0.975, axis=0)),
            "rhat": _named(post["rhat"]),
            "ess": _named(post["ess"]),
            "divergences": post["divergences"],
            "draws": int(s.shape[0]),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        folds = np.arange(data["dose"].size) % n_folds
        predicted = np.empty(data["dose"].size)
        for k in range(n_folds):
            tr = folds != k
            post_k = w.fit_nuts(
                {c: v[tr] for c, v in data["cov"].items()},
                data["dose"][tr],
                data["lo"][tr],
                data["hi"][tr],
                seed=k + 1,
            )
            test_cov = {c: v[~tr] for c, v in data["cov"].items()}
            draws = np.stack([w.predict_weekly_dose(x, test_cov) for x in post_k["samples"]])
            predicted[~tr] = np.median(draws, axis=0)
        out["cv_nuts_posterior_median"] = validation.dose_metrics(data["dose"], predicted)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=pathlib.Path, default=CSV)
    ap.add_argument("--out", type=pathlib.Path, default=OUT)
    ap.add_argument("--no-nuts", action="store_true")
    a = ap.parse_args()
    result = refit(a.csv, nuts=not a.no_nuts)
    a.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in result if k.startswith("cv")}, indent=2))


if __name__ == "__main__":
    main()
