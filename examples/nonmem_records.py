"""Simulate NONMEM-format records and compare with NONMEM's own output.

Runs one of the vendored mrgsolve/nmtests scenarios (default mrg09: infusions at steady state
with lag time and bioavailability) through `pkpd.simulate_records` and prints the largest
relative error against the CP that NONMEM 7.5 printed.

    python examples/nonmem_records.py --scenario mrg16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np
import pandas as pd

import pkpd

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "nmtests"


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="mrg09")
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)

    records = pd.read_csv(DATA / "records.csv")
    nonmem = pd.read_csv(DATA / "nonmem_output.csv")
    rec = records[records.scenario == args.scenario].reset_index(drop=True)
    if rec.empty:
        raise SystemExit(f"unknown scenario {args.scenario!r}; see {DATA / 'scenarios.csv'}")
    ref = nonmem[nonmem.scenario == args.scenario].reset_index(drop=True)
    if args.scenario == "mrgtv01":
        params = {"CL": lambda r: 1.1 * (r["WT"] / 70.0) ** 0.75, "V": 20.0, "KA": 1.5}
    else:
        # ADVAN2 TRANS2 with F2 = BIOAV, ALAG2 = LAGT, D2 = DUR2 from the data columns.
        params = {"CL": 1.1, "V": 20.0, "KA": 1.5, "F2": "BIOAV", "ALAG2": "LAGT", "D2": "DUR2"}
    out = pkpd.simulate_records(pkpd.OneCompartmentOral(), params, rec)
    cp = 1000.0 * out["PRED"].to_numpy()  # NONMEM's CP = A(2) / (V / 1000)
    obs = rec["EVID"].to_numpy() == 0
    nm = ref["CP"].to_numpy()
    err = np.abs(cp[obs] - nm[obs]) / np.where(nm[obs] == 0, 1.0, np.abs(nm[obs]))
    print(out.loc[obs, ["TIME", "PRED"]].assign(CP=cp[obs], NONMEM=nm[obs]).head(12).to_string())
    print(f"{args.scenario}: largest relative error against NONMEM = {err.max():.2e}")
    return float(err.max())


if __name__ == "__main__":
    main()
