"""A population PK model fitted across hospitals whose records never leave them.

Five simulated hospitals that differ the way real sites do (their patients' weight and renal
function, the dose and infusion length they give, when they sample) each hold the NONMEM
records of their own patients. A two-compartment model with covariates (clearance on
creatinine clearance with an estimated exponent, central volume on weight) is fitted by
FOCE-I across them on Flower's deployment engine: a SuperLink and one SuperNode per hospital
start as processes on this machine, the outer loop runs in the ServerApp, each hospital's
subjects' -log L is computed by its own SuperNode, and only sums cross the network. The
same fit on the pooled records gives the same estimates. Then one hospital calibrates its
own patients locally with the federated population as their prior.

    python examples/federated_population_fit.py --hospitals 5 --subjects 8
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import calibration
from surrogates import federated


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hospitals", type=int, default=5, help="1 to 5")
    ap.add_argument("--subjects", type=int, default=8, help="patients per hospital")
    ap.add_argument("--max-steps", type=int, default=500, help="outer BFGS steps at most")
    ap.add_argument("--estimator", choices=("focei", "laplace"), default="focei")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    records = federated.simulate_hospitals(args.hospitals, args.subjects, key=args.seed)
    covariates = ["WT", "CRCL"]
    with tempfile.TemporaryDirectory(prefix="federated-example-") as tmp:
        paths = {}
        for name, rec in records.items():  # each hospital's own file, on its own disk
            paths[name] = Path(tmp) / f"{name}.csv"
            rec.to_csv(paths[name], index=False)
        fed = federated.fit_population_federated(
            federated.TWO_COMPARTMENT,
            paths,
            covariates=covariates,
            estimator=args.estimator,
            max_steps=args.max_steps,
        )

    model = federated.load_model(federated.TWO_COMPARTMENT)
    pooled_data = calibration.Dataset.from_records(
        pd.concat(list(records.values()), ignore_index=True), covariates=covariates
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", calibration.ConvergenceWarning)
        pooled = calibration.fit_population(
            model, pooled_data, estimator=fed.estimator, max_steps=args.max_steps
        )

    a = fed.table.set_index(["kind", "parameter"])["estimate"]
    b = pooled.table.set_index(["kind", "parameter"])["estimate"]
    print(f"{'parameter':<18}{'federated':>12}{'pooled':>12}{'rel. diff':>11}")
    for idx in a.index:
        print(f"{' '.join(idx):<18}{a[idx]:>12.5g}{b[idx]:>12.5g}{abs(a[idx] / b[idx] - 1):>11.1e}")
    print(f"{'-2LL':<18}{fed.ofv:>12.4f}{pooled.ofv:>12.4f}{abs(fed.ofv / pooled.ofv - 1):>11.1e}")
    rounds = fed.diagnostics.get("round_seconds", [])
    print(
        f"{fed.rounds} rounds across {len(fed.hospitals)} hospitals "
        f"({fed.n_subjects} patients), {np.mean(rounds):.1f} s per round"
    )

    # One hospital's own patients, calibrated locally with the federated population as prior.
    first = next(iter(records))
    local = calibration.Dataset.from_records(records[first], covariates=covariates)
    mine = federated.individual_fit(fed, local)
    print(f"{first}: individual CL (L/h) of its patients: {np.round(mine.params['CL'], 2)}")
    return {"federated": fed, "pooled": pooled, "individual": mine}


if __name__ == "__main__":
    main()
