"""`pkpd.regimens_from_records`: the regimens of many subjects at once (what
`Dataset.from_records` uses), equal to `pkpd.regimen_from_records` of each subject's records,
event for event, on NONMEM's own scenarios (ADDL, SS=1 and 2, infusions, resets, lags) and
with the same errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pkpd
from pkpd import RecordError

NMTESTS = Path(__file__).parent / "data" / "nmtests" / "records.csv"
FIELDS = ("time", "amount", "cmt", "rate", "duration", "lag", "bioav", "evid", "ss", "ii",
          "order", "mask", "addl_offset")  # fmt: skip
STATIC = ("ss_intervals", "has_ss", "has_reset", "has_infusion")


def _records() -> pd.DataFrame:
    df = pd.read_csv(NMTESTS)
    # one subject per scenario and subject
    key = df["scenario"] + "/" + df["ID"].astype(str)
    df["ID"] = pd.factorize(key)[0] + 1
    df = df.drop(columns=["scenario", "row"])
    top = df["ID"].max()
    extra = pd.DataFrame(  # a subject without doses, and one with a long SS infusion and EVID 3
        {
            "ID": [top + 1, top + 1, top + 2, top + 2, top + 2, top + 2, top + 2],
            "TIME": [0.0, 4.0, 0.0, 1.0, 30.0, 30.0, 31.0],
            "EVID": [0, 0, 1, 0, 3, 4, 0],
            "AMT": [0.0, 0.0, 100.0, 0.0, 0.0, 50.0, 0.0],
            "CMT": [1, 1, 1, 1, 1, 1, 1],
            "RATE": [0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0],
            "II": [0.0, 0.0, 12.0, 0.0, 0.0, 6.0, 0.0],
            "ADDL": [0, 0, 0, 0, 0, 3, 0],
            "SS": [0, 0, 1, 0, 0, 0, 0],
        }
    )
    return pd.concat([df, extra], ignore_index=True)


def test_regimens_equal_those_of_each_subject():
    df = _records()
    many = pkpd.regimens_from_records(df, 3)
    ids = pd.unique(df["ID"])
    assert len(many) == len(ids) > 30
    for sid, reg in zip(ids, many, strict=True):
        one = pkpd.regimen_from_records(df[df["ID"] == sid], 3)
        for f in FIELDS:
            a, b = np.asarray(getattr(reg, f)), np.asarray(getattr(one, f))
            assert a.dtype == b.dtype and np.array_equal(a, b), (sid, f, a, b)
        for f in STATIC:
            assert getattr(reg, f) == getattr(one, f), (sid, f)
    assert any(r.has_ss for r in many) and any(r.ss_intervals > 1 for r in many)
    assert any(r.has_reset for r in many) and any(r.has_infusion for r in many)
    assert not many[-2].mask.any()  # the subject without doses: one padding event


def test_the_same_errors_name_the_same_row():
    df = _records()
    bad = df.copy()
    row = bad.index[(bad["ID"] == bad["ID"].max()) & (bad["SS"] == 1)][0]
    bad.loc[row, "RATE"] = 0.1  # a 1000 h infusion at steady state every 12 h
    sub = bad[bad["ID"] == bad["ID"].max()]
    with pytest.raises(RecordError) as one:
        pkpd.regimen_from_records(sub, 3)
    with pytest.raises(RecordError) as many:
        pkpd.regimens_from_records(bad, 3)
    assert str(many.value) == str(one.value)
    assert f"row {row}" in str(many.value) and "spans 83.3 intervals" in str(many.value)
    bad.loc[row, "CMT"] = 7
    with pytest.raises(RecordError, match=rf"row {row}: CMT is 7.0; expected a dosing"):
        pkpd.regimens_from_records(bad, 3)
