"""NONMEM records of the doses and levels read, with times in hours from each patient's
origin."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import pandas as pd

from ._codes import Substance
from ._dosing import Dose
from ._resources import Value
from ._times import hours

#: Columns of `FhirImport.records`.
RECORD_COLUMNS = (
    "ID",
    "TIME",
    "EVID",
    "AMT",
    "CMT",
    "RATE",
    "II",
    "ADDL",
    "DV",
    "MDV",
    "CENS",
    "SOURCE",
)


def _origin(pid: str, doses: list[Dose], levels: list[Value], origin: Any) -> dt.datetime | None:
    if isinstance(origin, dt.datetime):
        return origin
    if isinstance(origin, Mapping) and pid in origin:
        return origin[pid]
    times = [d.start for d in doses] + [v.time for v in levels]
    return min(times) if times else None


def build_records(
    patients: Mapping[str, Any],
    values: Mapping[str, list[Value]],
    doses: Mapping[str, list[Dose]],
    origin: Any,
    cmt: int,
    substance: Substance,
) -> tuple[pd.DataFrame, dict[str, dt.datetime]]:
    """The records of every patient read (in the order the patients were read) and the
    origin of each patient that has records.

    Default origin: the patient's earliest dose or level. At equal times a level comes
    before a dose (a trough is drawn before the dose it precedes)."""
    rows: list[dict[str, Any]] = []
    origins: dict[str, dt.datetime] = {}
    for pid in patients:
        ds = doses.get(pid, [])
        levels = [v for v in values.get(pid, []) if v.loinc.code in substance.levels]
        t0 = _origin(pid, ds, levels, origin)
        if t0 is None:
            continue
        origins[pid] = t0
        mine: list[tuple[float, int, dict[str, Any]]] = []
        for v in levels:
            row = {
                "ID": pid,
                "TIME": hours(v.time, t0),
                "EVID": 0,
                "AMT": 0.0,
                "CMT": cmt,
                "RATE": 0.0,
                "II": 0.0,
                "ADDL": 0,
                "DV": v.value,
                "MDV": 0,
                "CENS": int(v.censored),
                "SOURCE": v.source,
            }
            mine.append((row["TIME"], 0, row))
        for d in ds:
            row = {
                "ID": pid,
                "TIME": hours(d.start, t0),
                "EVID": 1,
                "AMT": d.amount,
                "CMT": cmt,
                "RATE": d.amount / d.duration if d.duration > 0 else 0.0,
                "II": d.ii if d.addl > 0 else 0.0,
                "ADDL": d.addl,
                "DV": 0.0,
                "MDV": 1,
                "CENS": 0,
                "SOURCE": d.source,
            }
            mine.append((row["TIME"], 1, row))
        mine.sort(key=lambda item: (item[0], item[1]))
        rows.extend(row for _, _, row in mine)
    frame = pd.DataFrame(rows, columns=list(RECORD_COLUMNS))
    for column in ("EVID", "CMT", "ADDL", "MDV", "CENS"):
        frame[column] = frame[column].astype(int)
    for column in ("TIME", "AMT", "RATE", "II", "DV"):
        frame[column] = frame[column].astype(float)
    frame["ID"] = frame["ID"].astype(str)
    frame["SOURCE"] = frame["SOURCE"].astype(str)
    return frame, origins
