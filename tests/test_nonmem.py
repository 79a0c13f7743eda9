"""`simulate_records` against NONMEM's own output for 30 dosing scenarios (mrgsolve/nmtests).

See tests/data/nmtests/README.md for the source, the model and the NONMEM conventions.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
from helpers import DATA

import pkpd

NM = DATA / "nmtests"
RTOL = 1e-4  # CP is printed with 5 significant digits (rounding alone: up to 5e-5)


@functools.cache
def _tables() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return (
        pd.read_csv(NM / "records.csv"),
        pd.read_csv(NM / "nonmem_output.csv"),
        pd.read_csv(NM / "scenarios.csv"),
    )


SCENARIOS = list(pd.read_csv(NM / "scenarios.csv")["scenario"])


def _params(scenario: str) -> dict:
    """NONMEM's $PK for the scenario, as `simulate_records` parameters (see the README)."""
    if scenario == "mrgtv01":
        return {"CL": lambda r: 1.1 * (r["WT"] / 70.0) ** 0.75, "V": 20.0, "KA": 1.5}
    # F2 = BIOAV, ALAG2 = LAGT, D2 = DUR2 (only read on RATE=-2 records, all with MODE=2).
    return {"CL": 1.1, "V": 20.0, "KA": 1.5, "F2": "BIOAV", "ALAG2": "LAGT", "D2": "DUR2"}


def _scenario(scenario: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    records, output, _ = _tables()
    rec = records[records.scenario == scenario].reset_index(drop=True)
    out = output[output.scenario == scenario].reset_index(drop=True)
    return rec, out


def _ambiguous_dose_rows(rec: pd.DataFrame) -> np.ndarray:
    """Dose records whose printed CP depends on an unexercised convention.

    An un-lagged bolus into the observed compartment (2) on a dose record: whether NONMEM's
    value on that record includes the bolus is not settled by these data.
    """
    lag = rec["LAGT"].to_numpy() if "LAGT" in rec else np.zeros(len(rec))
    return (
        rec.EVID.isin([1, 4]).to_numpy()
        & (rec.CMT.to_numpy() == 2)
        & (rec.RATE.to_numpy() == 0)
        & (lag == 0)
        & (rec.AMT.to_numpy() > 0)
    )


def test_vendored_vectors_are_consistent():
    """Records and outputs join row by row; counts agree with scenarios.csv."""
    records, output, scen = _tables()
    assert len(scen) == 30 and scen.scenario.is_unique
    merged = records.merge(output, on=["scenario", "row"], suffixes=("", "_out"), validate="1:1")
    assert len(merged) == len(records) == len(output)
    for col in ("ID", "TIME", "EVID"):
        assert (merged[col] == merged[f"{col}_out"]).all(), col
    counts = records.groupby("scenario").agg(
        n_records=("row", "size"), n_obs=("EVID", lambda e: int((e == 0).sum()))
    )
    expected = scen.set_index("scenario")[["n_records", "n_obs"]]
    pd.testing.assert_frame_equal(counts.loc[expected.index], expected, check_dtype=False)
    # The one convention these data do not exercise is indeed absent.
    assert not _ambiguous_dose_rows(records).any()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_nonmem_scenario(scenario: str):
    rec, out = _scenario(scenario)
    assert (rec.row.to_numpy() == out.row.to_numpy()).all()
    res = pkpd.simulate_records(pkpd.OneCompartmentOral(), _params(scenario), rec)
    cp = 1000.0 * res["PRED"].to_numpy()  # mg/L -> µg/L, as NONMEM's CP = 1000 * A(2) / V
    ref = out["CP"].to_numpy()
    evid = rec["EVID"].to_numpy()
    assert np.all(np.isfinite(cp))

    def check(rows: np.ndarray, what: str) -> None:
        zero = rows & (ref == 0)
        wrong = zero & (cp != 0)
        assert not wrong.any(), (
            f"{scenario} {what}: NONMEM prints 0 on rows {rec.row[wrong].tolist()[:8]}, "
            f"got {cp[wrong][:8]}"
        )
        nz = rows & (ref != 0)
        err = np.abs(cp[nz] - ref[nz]) / np.abs(ref[nz])
        bad = err > RTOL
        assert not bad.any(), (
            f"{scenario} {what}: relative error up to {err.max():.2e} on {bad.sum()} rows, "
            f"first {rec.row[nz][bad].tolist()[:8]}: NONMEM {ref[nz][bad][:8]}, "
            f"got {cp[nz][bad][:8]}"
        )

    # Observation records: the score.
    check(evid == 0, "EVID=0")
    # Dose and reset records: the value after the record's event (reset, steady state, dose),
    # e.g. the steady-state value on an SS record, 0 after EVID 3 (see the README).
    check((evid != 0) & ~_ambiguous_dose_rows(rec), "dose rows")
    # The time-varying covariate is applied on every record: the CL that NONMEM printed.
    if scenario == "mrgtv01":
        cl = 1.1 * (rec["WT"].to_numpy() / 70.0) ** 0.75
        np.testing.assert_allclose(cl, out["CL"].to_numpy(), rtol=1e-4)
