"""NONMEM-format records: validation, regimens, and `simulate_records`."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import _engine as E
from ._models._base import AbstractModel, ODESolver
from ._regimen import MAX_SS_INTERVALS, MODELLED_DURATION, MODELLED_RATE, Regimen

REQUIRED_COLUMNS = ("ID", "TIME", "EVID", "AMT", "CMT")
OPTIONAL_COLUMNS = {"RATE": 0.0, "II": 0.0, "ADDL": 0, "SS": 0, "MDV": 0}

#: A parameter value for `simulate_records`: a number (all records), the name of a column
#: (its value on each record), an array with one value per record, or a function of the
#: records DataFrame returning one value per record.
ParamSpec = float | str | np.ndarray | Callable[[pd.DataFrame], Any]


class RecordError(ValueError):
    """Invalid NONMEM records: the message names the subject, the row and the column."""


def _no_dose(xp) -> Regimen:
    """A subject without doses: one padding event keeps the arrays non-empty (`xp`: NumPy
    or jax.numpy, the module the arrays come from)."""
    return Regimen(
        time=xp.zeros(1),
        amount=xp.zeros(1),
        cmt=xp.ones(1, xp.int32),
        rate=xp.zeros(1),
        duration=xp.zeros(1),
        lag=xp.zeros(1),
        bioav=xp.ones(1),
        evid=xp.ones(1, xp.int32),
        ss=xp.zeros(1, xp.int32),
        ii=xp.zeros(1),
        order=xp.full(1, xp.inf),
        mask=xp.zeros(1, bool),
    )


def _py(x: Any) -> Any:
    """A NumPy scalar as the Python scalar it holds (so messages read `9`, not `np.int64(9)`)."""
    return x.item() if isinstance(x, np.generic) else x


def _where(df: pd.DataFrame, pos: int) -> str:
    return f"subject ID={_py(df['ID'].iloc[pos])!r}, row {_py(df.index[pos])!r}"


class RecordWarning(UserWarning):
    """A record whose content NONMEM would read but ignore (named with subject and row)."""


_DOSING_FIELDS = ("AMT", "RATE", "II", "ADDL", "SS")


def _warn_dosing_fields(df: pd.DataFrame, not_dose: np.ndarray) -> None:
    """Dosing fields set on records that are not doses (EVID 0, 2, 3) are not read: say so,
    with the first such record and how many there are."""
    for col in _DOSING_FIELDS:
        set_ = not_dose & (df[col].to_numpy() != 0)
        if set_.any():
            pos = int(np.argmax(set_))
            warnings.warn(
                f"{_where(df, pos)}: {col} is {_py(df[col].iloc[pos])!r} on a record with EVID="
                f"{int(df['EVID'].iloc[pos])}, which is not a dose; dosing fields are read only on "
                f"dose records (EVID 1 or 4), so it is ignored ({int(set_.sum())} such record(s) "
                f"for {col}). Set it to 0 or make the record a dose.",
                RecordWarning,
                stacklevel=3,
            )


def _fail_doses(
    df: pd.DataFrame, per_record: np.ndarray, totals: np.ndarray, max_doses: int
) -> None:
    over = totals > max_doses
    if over.any():
        subject = df["ID"].to_numpy()[int(np.argmax(over))]
        mine = (df["ID"].to_numpy() == subject) & over
        pos = int(np.argmax(np.where(mine, per_record, -1)))
        raise RecordError(
            f"{_where(df, pos)}: ADDL is {_py(df['ADDL'].iloc[pos])!r}: this subject's records "
            f"expand to {int(totals[pos]):,} doses (each dose record counts 1 + ADDL), more than "
            f"the {max_doses:,} allowed; model a long regimen at steady state (SS=1), or pass "
            "max_doses= to allow more."
        )


def _check_id_spellings(df: pd.DataFrame) -> None:
    """Refuse IDs that differ only in type or spelling (`1`, `"1"`, `1.0`): they would be
    two subjects for pandas and one for a reader of the file."""
    raw = pd.unique(df["ID"])
    seen: dict[str, Any] = {}
    for value in raw:
        v = _py(value)
        key = str(int(v)) if isinstance(v, float) and v.is_integer() else str(v).strip()
        if key in seen:
            first = seen[key]
            pos = int(np.argmax((df["ID"] == value).to_numpy()))
            raise RecordError(
                f"row {_py(df.index[pos])!r}: ID {v!r} ({type(v).__name__}) and ID {first!r} "
                f"({type(first).__name__}) would be two subjects though they read the same; "
                "expected one spelling (and type) per subject."
            )
        seen[key] = v


#: The most doses one subject's records may expand to (each dose record counts 1 + ADDL). A
#: regimen's events are arrays in memory: ADDL = 1e7 took 137 s and 4.7 GB before this limit.
#: Pass `max_doses=` to raise it.
MAX_DOSES = 100_000


def validate_records(
    records: pd.DataFrame, n_states: int | None = None, *, max_doses: int = MAX_DOSES
) -> pd.DataFrame:
    """Check NONMEM records and return them with the optional columns filled in.

    **Arguments:**

    - `records`: one row per record with at least `ID, TIME, EVID, AMT, CMT`; optional
      `RATE, II, ADDL, SS, MDV` (0 when absent).
    - `n_states`: number of model compartments, to check `CMT`.
    - `max_doses`: the most doses (1 + ADDL per dose record) one subject may have
      (`MAX_DOSES`, 100,000, by default): the work and memory of a simulation grow with it.

    **Returns:** a copy with every optional column present.

    Raises `RecordError` naming the subject, the row and what was expected (also for `MDV`
    other than 0 or 1, and for IDs that differ only in type or spelling, such as `1` and
    `"1"`). Dosing fields (`AMT`, `RATE`, `II`, `ADDL`, `SS`) on records that are not doses
    (EVID 0, 2, 3) are ignored, as NONMEM does, with a `RecordWarning` naming the first.
    """
    if not isinstance(records, pd.DataFrame):
        raise RecordError(f"expected a pandas DataFrame of records, got {type(records).__name__}.")
    missing = [c for c in REQUIRED_COLUMNS if c not in records.columns]
    if missing:
        raise RecordError(
            f"records: missing required column(s) {missing}; expected at least "
            f"{list(REQUIRED_COLUMNS)}, got {list(records.columns)}."
        )
    if len(records) == 0:
        raise RecordError("records: expected at least one record, got an empty DataFrame.")
    df = records.copy()
    for col, default in OPTIONAL_COLUMNS.items():
        if col not in df.columns:
            df[col] = default
    for col in (*REQUIRED_COLUMNS[1:], *OPTIONAL_COLUMNS):
        values = pd.Series(pd.to_numeric(df[col], errors="coerce"), index=df.index)
        bad = values.isna().to_numpy()
        if bad.any():
            pos = int(np.argmax(bad))
            raise RecordError(
                f"{_where(df, pos)}: column {col} is {_py(df[col].iloc[pos])!r}; expected a number."
            )
        infinite = np.isinf(values.to_numpy(dtype=float))
        if infinite.any():
            pos = int(np.argmax(infinite))
            raise RecordError(
                f"{_where(df, pos)}: column {col} is {_py(df[col].iloc[pos])!r}; expected a finite "
                "number."
            )
        df[col] = values.astype(float)
    if bool(pd.Series(df["ID"]).isna().any()):
        pos = int(np.argmax(df["ID"].isna().to_numpy()))
        raise RecordError(f"row {df.index[pos]!r}: column ID is missing; expected an identifier.")
    _check_id_spellings(df)

    def fail(mask: np.ndarray, message: str) -> None:
        if mask.any():
            pos = int(np.argmax(mask))
            raise RecordError(f"{_where(df, pos)}: {message.format(row=df.iloc[pos])}")

    t = df["TIME"].to_numpy()
    evid = df["EVID"].to_numpy()
    amt = df["AMT"].to_numpy()
    cmt = df["CMT"].to_numpy()
    rate = df["RATE"].to_numpy()
    ii = df["II"].to_numpy()
    addl = df["ADDL"].to_numpy()
    ss = df["SS"].to_numpy()
    dose = np.isin(evid, (1, 4))
    fail(~np.isfinite(t) | (t < 0), "TIME is {row.TIME}; expected a finite time >= 0 (h).")
    fail(
        (evid >= 100) & (evid < 1e5) & (evid % 100 == 1),
        "EVID is {row.EVID}; expected 0, 1, 2, 3 or 4. This looks like rxode2's classic event "
        "code (100 x compartment + 1 for a dose into that compartment; nlmixr2data's theo_sd has "
        "EVID 101): write it as NONMEM does, EVID=1 with the compartment in CMT (for example "
        "`df.loc[df.EVID == 101, ['EVID', 'CMT']] = [1, 1]`) and an infusion's rate in RATE.",
    )
    fail(~np.isin(evid, (0, 1, 2, 3, 4)), "EVID is {row.EVID}; expected 0, 1, 2, 3 or 4.")
    fail(~np.isfinite(amt) | (amt < 0), "AMT is {row.AMT}; expected a finite amount >= 0.")
    fail(
        dose & (amt == 0) & ~((ss > 0) & (rate > 0)),
        "AMT is 0 on a dose record; expected AMT > 0 (or SS=1 with RATE > 0 and II=0).",
    )
    fail((cmt != np.round(cmt)) | (cmt < 0), "CMT is {row.CMT}; expected a compartment number.")
    if n_states is not None:
        fail(
            dose & ((cmt < 1) | (cmt > n_states)),
            f"CMT is {{row.CMT}}; expected a dosing compartment from 1 to {n_states}.",
        )
        fail(cmt > n_states, f"CMT is {{row.CMT}}; the model has {n_states} compartments.")
    fail(
        ~np.isfinite(rate) | ((rate < 0) & ~np.isin(rate, (MODELLED_RATE, MODELLED_DURATION))),
        "RATE is {row.RATE}; expected 0 (bolus), > 0 (mg/h), -1 (modelled rate) or -2 "
        "(modelled duration).",
    )
    fail(~np.isfinite(ii) | (ii < 0), "II is {row.II}; expected an interval >= 0 (h).")
    fail((addl < 0) | (addl != np.round(addl)), "ADDL is {row.ADDL}; expected an integer >= 0.")
    fail(~np.isin(ss, (0, 1, 2)), "SS is {row.SS}; expected 0, 1 or 2.")
    mdv = df["MDV"].to_numpy()
    fail(~np.isin(mdv, (0, 1)), "MDV is {row.MDV}; expected 0 (DV observed) or 1 (no DV).")
    _warn_dosing_fields(df, ~dose)
    fail(
        dose & (ii > 0) & (addl == 0) & (ss == 0),
        "II is {row.II} without ADDL or SS; expected ADDL > 0 or SS > 0 with II > 0.",
    )
    fail(dose & (addl > 0) & (ii <= 0), "ADDL is {row.ADDL} with II = 0; expected II > 0.")
    fail(
        dose & (ss > 0) & (ii <= 0) & ~((amt == 0) & (rate > 0)),
        "SS is {row.SS} with II = 0; expected II > 0, or AMT=0 with RATE > 0 (steady-state "
        "constant infusion).",
    )
    ids = df["ID"].to_numpy()
    doses_per_record = np.where(dose, 1 + addl, 0)
    totals = (
        pd.Series(doses_per_record, index=df.index).groupby(df["ID"].to_numpy()).transform("sum")
    )
    _fail_doses(df, doses_per_record, totals.to_numpy(), max_doses)
    same = np.concatenate([[False], ids[1:] == ids[:-1]])
    fail(
        same & (np.diff(t, prepend=t[0]) < 0),
        "TIME is {row.TIME}, before the previous record of this subject; expected times "
        "sorted within each subject.",
    )
    seen: set = set()
    starts = np.flatnonzero(~same)
    for pos in starts:
        if ids[pos] in seen:
            raise RecordError(
                f"{_where(df, int(pos))}: the records of this subject are not contiguous; "
                "expected all records of a subject together."
            )
        seen.add(ids[pos])
    return df


def resolve_params(
    params: Mapping[str, ParamSpec] | Callable[[pd.DataFrame], Mapping[str, Any]],
    records: pd.DataFrame,
) -> dict[str, np.ndarray]:
    """Per-record parameter values (float arrays of `len(records)`).

    A column name takes that column; a function of the DataFrame is evaluated on it; NaN or
    infinite values raise a `RecordError` naming the subject, row and parameter.
    """
    n = len(records)
    if callable(params):
        params = dict(params(records))
    out: dict[str, np.ndarray] = {}
    for name, spec in params.items():
        if isinstance(spec, str):
            if spec not in records.columns:
                raise RecordError(
                    f"parameter {name}: column {spec!r} not in the records; expected one of "
                    f"{list(records.columns)}."
                )
            value = np.asarray(pd.to_numeric(records[spec], errors="coerce"), dtype=float)
        elif callable(spec):
            value = np.asarray(spec(records), dtype=float)
        else:
            value = np.asarray(spec, dtype=float)
        if value.ndim == 0:
            value = np.full(n, float(value))
        if value.shape != (n,):
            raise RecordError(
                f"parameter {name}: expected a scalar or one value per record ({n}), got shape "
                f"{value.shape}."
            )
        bad = ~np.isfinite(value)
        if bad.any():
            pos = int(np.argmax(bad))
            raise RecordError(
                f"{_where(records, pos)}: parameter {name} is {value[pos]}; expected a finite "
                "number."
            )
        out[name] = value
    return out


def _dose_span(model: AbstractModel | None, p: dict[str, np.ndarray], i: int, row: Any) -> float:
    """Lag + infusion duration (h) of the dose on record `i` (for steady-state bounds)."""
    c = int(row.CMT)
    lag = float(p.get(f"ALAG{c}", np.zeros(i + 1))[i])
    f = float(p.get(f"F{c}", np.ones(i + 1))[i])
    if row.RATE > 0:
        dur = row.AMT * f / row.RATE
    elif row.RATE == MODELLED_DURATION:
        dur = float(p[f"D{c}"][i]) if f"D{c}" in p else 0.0
    elif row.RATE == MODELLED_RATE:
        dur = row.AMT * f / float(p[f"R{c}"][i]) if f"R{c}" in p else 0.0
    else:
        dur = 0.0
    return lag + dur


def _subject_regimen(
    model: AbstractModel | None, df: pd.DataFrame, p: dict[str, np.ndarray]
) -> tuple[Regimen, np.ndarray]:
    """Regimen of one subject's records (ADDL expanded) and each event's record position."""
    cols: dict[str, list] = {
        k: []
        for k in ("time", "amount", "cmt", "rate", "evid", "ss", "ii", "order", "rec", "offset")
    }
    ss_need = 1
    # Only the dose and reset records make events: the others are not walked (the cost of
    # a subject follows its doses, not its observations).
    events = np.flatnonzero(np.isin(df["EVID"].to_numpy(), (1, 3, 4)))
    for i, row in zip(events.tolist(), df.iloc[events].itertuples(index=False), strict=True):
        row: Any
        evid = int(row.EVID)
        # With the parameters known (simulate_records), a modelled rate or duration without
        # its parameter is named here; without them (regimen_from_records, Dataset), the
        # engine checks it when the regimen is simulated with parameters.
        known = model is not None
        if known and int(row.RATE) == MODELLED_RATE and f"R{int(row.CMT)}" not in p:
            raise RecordError(
                f"{_where(df, i)}: RATE=-1 needs the parameter R{int(row.CMT)} (modelled rate)."
            )
        if known and int(row.RATE) == MODELLED_DURATION and f"D{int(row.CMT)}" not in p:
            raise RecordError(
                f"{_where(df, i)}: RATE=-2 needs the parameter D{int(row.CMT)} (modelled duration)."
            )
        if evid != 3 and row.SS > 0 and row.II > 0:
            lag = float(p[f"ALAG{int(row.CMT)}"][i]) if f"ALAG{int(row.CMT)}" in p else 0.0
            if lag >= row.II:
                raise RecordError(
                    f"{_where(df, i)}: SS={int(row.SS)} with a lag time ALAG{int(row.CMT)} = "
                    f"{lag:g} h and II = {row.II:g} h; expected a lag shorter than the interval "
                    "(NONMEM's steady state for a lag >= II is not physical: it goes negative). "
                    "Give the doses without SS, or shift the record time by the lag."
                )
            span = _dose_span(model, p, i, row)
            if not span / row.II <= MAX_SS_INTERVALS:
                raise RecordError(
                    f"{_where(df, i)}: the lag + infusion of {span:g} h at steady state spans "
                    f"{span / row.II:.3g} intervals of II = {row.II:g} h; at most "
                    f"{MAX_SS_INTERVALS} are supported (pkpd.MAX_SS_INTERVALS). For an "
                    "infusion much longer than II use a constant infusion at steady state "
                    "(AMT=0, RATE > 0, II=0)."
                )
            ss_need = max(ss_need, math.ceil(span / row.II) + 1)
        for k in range(int(row.ADDL) + 1 if evid != 3 else 1):
            cols["time"].append(row.TIME + k * row.II)
            cols["amount"].append(row.AMT if evid != 3 else 0.0)
            cols["cmt"].append(int(row.CMT) if evid != 3 else 1)
            cols["rate"].append(row.RATE if evid != 3 else 0.0)
            cols["evid"].append(evid if k == 0 else 1)
            cols["ss"].append(int(row.SS) if k == 0 else 0)
            cols["ii"].append(row.II)
            cols["order"].append(float(i) if k == 0 else -1.0)
            cols["rec"].append(i)
            cols["offset"].append(k)  # the k-th additional dose sits k events after its record
    n = len(cols["time"])
    if n == 0:
        return _no_dose(jnp), np.zeros(1, dtype=np.int64)
    reg = Regimen(
        time=jnp.asarray(cols["time"], float),
        amount=jnp.asarray(cols["amount"], float),
        cmt=jnp.asarray(cols["cmt"], jnp.int32),
        rate=jnp.asarray(cols["rate"], float),
        duration=jnp.zeros(n),
        lag=jnp.zeros(n),
        bioav=jnp.ones(n),
        evid=jnp.asarray(cols["evid"], jnp.int32),
        ss=jnp.asarray(cols["ss"], jnp.int32),
        ii=jnp.asarray(cols["ii"], float),
        order=jnp.asarray(cols["order"], float),
        mask=jnp.ones(n, bool),
        addl_offset=jnp.asarray(cols["offset"], jnp.int32),
        ss_intervals=ss_need,
        has_ss=bool(np.any(np.asarray(cols["ss"]) > 0)),
        has_reset=bool(np.any(np.isin(cols["evid"], (3, 4))))
        or bool(np.any(np.asarray(cols["ss"]) == 1)),
        has_infusion=bool(np.any(np.asarray(cols["rate"]) != 0)),
    )
    return reg, np.asarray(cols["rec"], dtype=np.int64)


def regimen_from_records(
    records: pd.DataFrame, n_states: int | None = None, *, max_doses: int = MAX_DOSES
) -> Regimen:
    """The `Regimen` of one subject's NONMEM records (`EVID` 1, 3, 4; `ADDL` expanded).

    Model-level `F<n>`, `ALAG<n>`, `D<n>`, `R<n>` are applied at simulation time from the
    parameters. Raises `RecordError` for invalid records or more than one subject.
    """
    df = validate_records(records, n_states, max_doses=max_doses)
    if pd.Series(df["ID"]).nunique() != 1:
        raise RecordError(
            f"regimen_from_records: expected the records of one subject, got IDs "
            f"{list(df['ID'].unique())[:5]}."
        )
    reg, _ = _subject_regimen(None, df, {})
    return reg


def regimens_from_records(
    records: pd.DataFrame, n_states: int | None = None, *, max_doses: int = MAX_DOSES
) -> list[Regimen]:
    """The `Regimen` of every subject of NONMEM records, in their order of appearance: the
    regimens `regimen_from_records` gives for each subject's records (the same events, the
    same `RecordError`s), with the records validated once for all subjects
    (`validate_records`) and the events built column by column, not record by record. The
    regimens' fields are NumPy arrays (on the host), the form `stack` takes.
    """
    df = validate_records(records, n_states, max_doses=max_doses)
    ids = df["ID"].to_numpy()
    n_rows = len(df)
    first = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    subject = np.repeat(np.arange(first.size), np.diff(np.append(first, n_rows)))
    position = np.arange(n_rows) - first[subject]  # each record's position in its subject
    col = {c: df[c].to_numpy(dtype=float) for c in ("TIME", "EVID", "AMT", "CMT", "RATE", "II")}
    col |= {c: df[c].to_numpy(dtype=float) for c in ("ADDL", "SS")}
    ev = np.flatnonzero(np.isin(col["EVID"], (1, 3, 4)))  # the records that make events
    reset = col["EVID"][ev] == 3
    amt, rate, ii = col["AMT"][ev], col["RATE"][ev], col["II"][ev]
    # Steady-state doses (no lag here: model-level lags are applied with the parameters).
    is_ss = ~reset & (col["SS"][ev] > 0) & (ii > 0)
    span = np.where(rate > 0, amt / np.where(rate > 0, rate, 1.0), 0.0)
    spans = np.where(is_ss, span / np.where(is_ss, ii, 1.0), 0.0)
    bad = is_ss & ~(spans <= MAX_SS_INTERVALS)
    if bad.any():
        k = int(np.argmax(bad))
        raise RecordError(
            f"{_where(df, int(ev[k]))}: the lag + infusion of {span[k]:g} h at steady state "
            f"spans {spans[k]:.3g} intervals of II = {ii[k]:g} h; at most "
            f"{MAX_SS_INTERVALS} are supported (pkpd.MAX_SS_INTERVALS). For an "
            "infusion much longer than II use a constant infusion at steady state "
            "(AMT=0, RATE > 0, II=0)."
        )
    need = np.where(is_ss, np.ceil(spans) + 1.0, 1.0)
    # One event per dose record and each of its ADDL copies (one per reset).
    copies = np.where(reset, 1, col["ADDL"][ev].astype(np.int64) + 1)
    src = np.repeat(ev, copies)
    k = np.arange(src.size) - np.repeat(np.cumsum(copies) - copies, copies)
    e_reset = col["EVID"][src] == 3
    events = {
        "time": col["TIME"][src] + k * col["II"][src],
        "amount": np.where(e_reset, 0.0, col["AMT"][src]),
        "cmt": np.where(e_reset, 1, col["CMT"][src]).astype(np.int32),
        "rate": np.where(e_reset, 0.0, col["RATE"][src]),
        "evid": np.where(k == 0, col["EVID"][src], 1).astype(np.int32),
        "ss": np.where(k == 0, col["SS"][src], 0).astype(np.int32),
        "ii": col["II"][src],
        "order": np.where(k == 0, position[src].astype(float), -1.0),
        "addl_offset": k.astype(np.int32),
    }
    n_subjects = first.size
    ev_at = np.searchsorted(subject[ev], np.arange(n_subjects + 1))
    src_at = np.searchsorted(subject[src], np.arange(n_subjects + 1))
    out = []
    for s in range(n_subjects):
        a, b = int(src_at[s]), int(src_at[s + 1])
        n = b - a
        if n == 0:
            out.append(_no_dose(np))
            continue
        mine = {f: v[a:b] for f, v in events.items()}
        out.append(
            Regimen(
                **mine,
                duration=np.zeros(n),
                lag=np.zeros(n),
                bioav=np.ones(n),
                mask=np.ones(n, bool),
                ss_intervals=int(need[ev_at[s] : ev_at[s + 1]].max()),
                has_ss=bool(np.any(mine["ss"] > 0)),
                has_reset=bool(np.any(np.isin(mine["evid"], (3, 4))))
                or bool(np.any(mine["ss"] == 1)),
                has_infusion=bool(np.any(mine["rate"] != 0)),
            )
        )
    return out


def _bucket(n: int) -> int:
    return max(8, 1 << (n - 1).bit_length())


# ----------------------------------------------------------------------------- interpolation

#: How a covariate is read between two records (`interpolation=` of `simulate_records`,
#: `interpolate_covariates` and `calibration.Dataset.from_records`).
INTERPOLATIONS = ("nonmem", "locf", "linear")
_ALIASES = {"nonmem": "nonmem", "next": "nonmem", "locf": "locf", "linear": "linear"}

#: Sub-intervals per interval between two records over which a linearly interpolated
#: covariate changes (`substeps=`): the covariate takes its value at each sub-interval's
#: midpoint, the parameters are constant on each sub-interval (the midpoint rule: the error
#: falls as 1/substeps^2; docs/dosing.md, "Time-varying covariates").
INTERPOLATION_SUBSTEPS = 8


def interpolation_methods(
    interpolation: Mapping[str, str] | None, columns: Any, who: str
) -> dict[str, str]:
    """`{column: method}` with the methods' canonical names (`"next"` is `"nonmem"`);
    `ValueError` naming the covariate for a column not in `columns` or an unknown method."""
    if interpolation is None:
        return {}
    if not isinstance(interpolation, Mapping):
        raise TypeError(
            f"{who}: interpolation must map covariate names to methods, e.g. "
            f"{{'WT': 'linear', 'CRCL': 'locf'}}; got {type(interpolation).__name__}."
        )
    out = {}
    for name, method in interpolation.items():
        if name not in columns:
            raise ValueError(
                f"{who}: interpolation for covariate {name!r}, which is not a column of the "
                f"records; expected one of {list(columns)}."
            )
        canonical = _ALIASES.get(method) if isinstance(method, str) else None
        if canonical is None:
            raise ValueError(
                f"{who}: interpolation {method!r} for covariate {name!r}; expected one of "
                "'nonmem' (or 'next': the value on a record governs the interval before it, "
                "the default), 'locf' (the value carried forward to the next record) or "
                "'linear'."
            )
        out[name] = canonical
    return out


def interpolate_covariates(
    records: pd.DataFrame,
    interpolation: Mapping[str, str],
    *,
    substeps: int = INTERPOLATION_SUBSTEPS,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Records with the rows that carry each covariate's value between records.

    The engine's convention is NONMEM's: the values on a record govern the advance from the
    previous record up to it (and that record's own dose and prediction). Other readings of a
    covariate `c` between records `i - 1` and `i` (times `t[i-1] < t[i]`, one subject) are
    written as added `EVID=2` rows (no dose, no observation, `MDV=1`) before record `i`:

    - `"nonmem"` (or `"next"`, the default for any column not named): `c[i]` over
      `(t[i-1], t[i]]`; no row is added;
    - `"locf"`: `c[i-1]` carried forward over `(t[i-1], t[i])`; `c[i]` from `t[i]` on (the
      record's own dose and prediction): one row at `t[i]`, before record `i`;
    - `"linear"`: `c` linear in time from `c[i-1]` at `t[i-1]` to `c[i]` at `t[i]`: the interval
      is cut into `substeps` equal sub-intervals, each a row at its end carrying the value at
      its midpoint (so the parameters computed from it are constant on the sub-interval).

    Rows are added only where a covariate so read changes between the two records. An added
    row copies record `i` (every other column, and its index label, so that an error names it)
    with `TIME`, `EVID=2`, `AMT=RATE=II=ADDL=SS=0`, `MDV=1` and the interpolated values.

    **Arguments:**

    - `records`: validated records (`validate_records`), sorted by time within each subject.
    - `interpolation`: covariate column -> method.
    - `substeps`: sub-intervals per interval for `"linear"` (an integer >= 1).

    **Returns:** `(rows, record)`: the records with the added rows, and for each row the
    position of its record in `records` (`-1` for an added row).
    """
    methods = interpolation_methods(interpolation, records.columns, "interpolate_covariates")
    if isinstance(substeps, bool) or not isinstance(substeps, int | np.integer) or substeps < 1:
        raise ValueError(
            f"interpolate_covariates: substeps must be an integer >= 1, got {substeps!r}."
        )
    n = len(records)
    own = np.arange(n)
    varying = {c: m for c, m in methods.items() if m != "nonmem"}
    if not varying or n < 2:
        return records, own
    values = {}
    for col in varying:
        v = np.asarray(pd.to_numeric(records[col], errors="coerce"), dtype=float)
        bad = ~np.isfinite(v)
        if bad.any():
            pos = int(np.argmax(bad))
            raise RecordError(
                f"{_where(records, pos)}: covariate {col} is {_py(records[col].iloc[pos])!r}; "
                f"expected a finite number on every record (interpolation {varying[col]!r})."
            )
        values[col] = v
    t = records["TIME"].to_numpy(dtype=float)
    ids = records["ID"].to_numpy()
    # Interval i runs from record i - 1 to record i of the same subject.
    step = np.zeros(n, bool)
    step[1:] = (ids[1:] == ids[:-1]) & (t[1:] > t[:-1])
    lin = np.zeros(n, bool)
    loc = np.zeros(n, bool)
    for col, method in varying.items():
        changes = np.zeros(n, bool)
        changes[1:] = values[col][1:] != values[col][:-1]
        if method == "linear":
            lin |= changes
        else:
            loc |= changes
    lin &= step
    loc &= step & ~lin
    count = np.where(lin, substeps, np.where(loc, 1, 0))
    if not count.any():
        return records, own
    # Added rows: `count[i]` before record i, sub-interval j = 1..count[i].
    before = np.repeat(own, count)
    j = (np.arange(len(before)) - np.repeat(np.cumsum(count) - count, count) + 1).astype(float)
    k = count[before].astype(float)
    t0, t1 = t[before - 1], t[before]
    added = records.iloc[before].copy()
    added["TIME"] = np.where(j == k, t1, t0 + (t1 - t0) * (j / k))  # the last one at t[i], exactly
    for col, zero in (("EVID", 2.0), ("AMT", 0.0), ("RATE", 0.0), ("II", 0.0), ("ADDL", 0.0),
                      ("SS", 0.0), ("MDV", 1.0)):  # fmt: skip
        added[col] = zero
    frac = (j - 0.5) / k
    for col, method in varying.items():
        v = values[col]
        if method == "linear":
            added[col] = v[before - 1] + (v[before] - v[before - 1]) * frac
        else:
            added[col] = v[before - 1]
    # Each added row goes right before its record: sort by (record, added first, j).
    key_rec = np.concatenate([before, own])
    key_kind = np.concatenate([np.zeros(len(before)), np.ones(n)])
    key_j = np.concatenate([j, np.zeros(n)])
    order = np.lexsort((key_j, key_kind, key_rec))
    rows = pd.concat([added, records])
    for col in varying:
        rows[col] = rows[col].astype(float)
    rows = rows.iloc[order]
    record = np.concatenate([np.full(len(before), -1), own])[order]
    return rows, record


# ----------------------------------------------------------------------------- the engine


def _recordwise(model, solver, rec_params, rec_time, reg, out_rec, checks):
    """States and outputs at the records `out_rec` of one subject whose parameters are given
    on every record (NONMEM's convention; see `simulate_recordwise`)."""
    n = model.n_states
    m = reg.n_events
    # Each event's record: its own (`order`), or the record carrying its ADDL.
    idx = jnp.arange(m, dtype=jnp.int32)
    off = jnp.zeros(m, jnp.int32) if reg.addl_offset is None else reg.addl_offset
    src_order = reg.order[jnp.clip(idx - off.astype(jnp.int32), 0, m - 1)]
    n_rec = rec_time.shape[0]
    ev_rec = jnp.clip(jnp.where(jnp.isfinite(src_order), src_order, 0.0), 0, n_rec - 1)
    ev_rec = ev_rec.astype(jnp.int32)
    ev_params = {k: v[ev_rec] for k, v in rec_params.items()}
    # (the parameters' domain is checked on them by the caller: `checked_params`, the host)
    doses = E.dose_quantities(model, ev_params, reg, checks=checks, domain=False)
    ev = E.event_entries(reg, doses)
    # An entry at every record (its output), so that each record's parameters govern the
    # advance over its own interval; the outputs asked for are picked from them.
    out = E.output_entries(rec_time, jnp.arange(n_rec, dtype=rec_time.dtype), n)
    allent = E.concat_entries(ev, out, 0)
    s, perm = E.sort_entries(allent)
    # NONMEM's convention: the parameters of the next record at or after an entry govern the
    # advance up to that entry (the first record at or after its time: the advance to a
    # time is made at the first entry there).
    r = jnp.clip(jnp.searchsorted(rec_time, s.time, side="left"), 0, n_rec - 1)
    seg_params = {k: v[r] for k, v in rec_params.items()}
    ss_x, ss_r = E.ss_tables(model, solver, ev_params, reg, doses, s, checks=checks)
    first = {k: v[0] for k, v in rec_params.items()}
    xs, _ = E.run(model, solver, seg_params, s, ss_x, ss_r, model.initial_state(first))
    inv = jnp.argsort(perm)
    out_rec = jnp.asarray(out_rec)
    states = xs[inv[ev.time.shape[0] :]][out_rec]
    out_params = {k: v[out_rec] for k, v in rec_params.items()}
    y = jax.vmap(model.output)(out_params, states)
    return states, y


@eqx.filter_jit
def _subject_core(model, solver, rec_params, rec_time, reg):
    """Every record of one subject, its checks done on the host (`simulate_records`): the
    compiled program holds no host callback, so the persistent compilation cache keeps it."""
    out_rec = jnp.arange(rec_time.shape[0])
    return _recordwise(model, solver, rec_params, rec_time, reg, out_rec, False)


def simulate_recordwise(
    model: AbstractModel,
    params: Mapping[str, Any],
    record_time: Any,
    regimen: Regimen,
    output_records: Any,
    *,
    solver: ODESolver = ODESolver(),
    checks: bool = True,
) -> Any:
    """Simulate one subject whose parameters are given on every record, as NONMEM does.

    The array form of `simulate_records` for one subject (jittable, `jax.vmap` it over
    subjects padded to one number of records): the parameters of record `i` govern the
    advance from the previous record's time up to `record_time[i]`, the doses of record `i`
    (and of its `ADDL` copies) and the prediction on record `i`. A dose implied by `ADDL` or
    delayed by a lag takes the parameters of the next record at or after it for the advance up
    to it (NONMEM Users Guide VI, section III.I: at such a dose time "TIME and all user data
    items ... are from the next event record"). This is how `calibration` evaluates subjects
    with time-varying covariates.

    **Arguments:**

    - `model`, `solver`, `checks`: as `simulate`.
    - `params`: parameter values by name, each with one value per record `(records,)`.
    - `record_time`: `(records,)` the records' times (h), sorted; padding repeats the last.
    - `regimen`: the subject's doses from `regimen_from_records` of the same records (its
      events' `order` is the position of their record).
    - `output_records`: `(outputs,)` positions of the records whose prediction is wanted.

    **Returns:** shape `(outputs,)` for single-output models, `(outputs, n_outputs)` else.
    """
    rec_time = jnp.asarray(record_time, dtype=jnp.result_type(float))
    p = {
        k: jnp.broadcast_to(jnp.asarray(v, dtype=float), rec_time.shape) for k, v in params.items()
    }
    model.check_params(p)
    if checks:
        p = E.checked_params(model, p)
    _, y = _recordwise(model, solver, p, rec_time, regimen, output_records, checks)
    return y[:, 0] if len(model.output_names) == 1 else y


def _check_subject(model: AbstractModel, sub: pd.DataFrame, p: dict[str, np.ndarray]) -> None:
    """The engine's checks of one subject's parameters on the host (`RecordError` naming
    the subject and the row): every value inside the model's domain (`domain_rules`)."""
    rules = model.domain_rules()
    who = type(model).__name__
    for name, value in p.items():
        if name not in rules:
            continue  # finiteness: resolve_params
        test, expect = rules[name]
        bad = np.asarray(test(value), bool)
        if bad.any():
            pos = int(np.argmax(bad))
            raise RecordError(
                f"{_where(sub, pos)}: {who}: parameter {name} is {_py(value[pos])!r}, outside "
                f"its domain: expected {name} finite and {expect}."
            )


def simulate_records(
    model: AbstractModel,
    params: Mapping[str, ParamSpec] | Callable[[pd.DataFrame], Mapping[str, Any]],
    records: pd.DataFrame,
    *,
    solver: ODESolver = ODESolver(),
    interpolation: Mapping[str, str] | None = None,
    substeps: int = INTERPOLATION_SUBSTEPS,
) -> pd.DataFrame:
    """Simulate NONMEM records of one or more subjects; the prediction on every record.

    Records are processed in file order with NONMEM's conventions: the prediction on a dose
    record is after that record's dose; doses implied by `ADDL` or delayed by a lag that
    fall on a record's time come before it; parameters are evaluated on every record and
    those of a record govern the advance from the previous record up to it (time-varying
    covariates); `EVID` 3 resets, 4 resets and doses; `SS` 1 and 2 as NONMEM.

    **Arguments:**

    - `model`: the structural model.
    - `params`: for each parameter (`CL`, `V`, ..., and optionally `F<n>`, `ALAG<n>`, `D<n>`
      for `RATE=-2`, `R<n>` for `RATE=-1`) a number, a column name, one value per record,
      or a function of the records DataFrame; or one function returning that mapping.
    - `records`: a DataFrame with `ID, TIME, EVID, AMT, CMT` and optionally
      `RATE, II, ADDL, SS, MDV` plus any user columns.
    - `solver`: ODE settings (`pkpd.ODESolver`); linear models are exact.
    - `interpolation`: how covariate columns are read between records, by column:
      `"nonmem"` (or `"next"`, the default for every column: the value on a record governs
      the interval before it), `"locf"` (the previous record's value carried forward up to
      the record) or `"linear"` (linear in time between the two records). The parameters
      are then evaluated on the records with the rows that carry those values added
      (`interpolate_covariates`; a function of the DataFrame sees them as `EVID=2` rows);
      e.g. `interpolation={"WT": "linear", "CRCL": "locf"}`.
    - `substeps`: for `"linear"`, the sub-intervals per interval between records on which
      the parameters are constant (the covariate at each sub-interval's midpoint; the error
      falls as `1 / substeps**2`, see docs/dosing.md).

    Every check is made on the host before anything is compiled: the records
    (`validate_records`), the parameters (finite, inside the model's domain) and the doses,
    each `RecordError` naming the subject and the row; the compiled program holds no host
    callback (JAX's persistent compilation cache keeps it).

    **Returns:** a copy of `records` with the prediction in `PRED` (single-output models)
    or one column per `model.output_names`, and the amounts `A1`...`An`.
    """
    df = validate_records(records, model.n_states)
    methods = interpolation_methods(interpolation, df.columns, "simulate_records")
    rows, record = interpolate_covariates(df, methods, substeps=substeps)
    p_all = resolve_params(params, rows)
    model.check_params(p_all)
    n = model.n_states
    states_rows = np.zeros((len(rows), n))
    y_rows = np.zeros((len(rows), len(model.output_names)))
    positions = np.arange(len(rows))
    ids = rows["ID"].to_numpy()
    for sid in pd.unique(ids):
        pos = positions[ids == sid]
        sub = rows.iloc[pos]
        p = {k: v[pos] for k, v in p_all.items()}
        _check_subject(model, sub, p)
        reg, _ = _subject_regimen(model, sub, p)
        n_rec = len(pos)
        nr, ne = _bucket(n_rec), _bucket(reg.n_events)
        rec_time = np.concatenate(
            [sub["TIME"].to_numpy(), np.full(nr - n_rec, sub["TIME"].iloc[-1])]
        )
        p_pad = {
            k: jnp.asarray(np.concatenate([v, np.full(nr - n_rec, v[-1])])) for k, v in p.items()
        }
        reg = reg.pad(ne)
        states, y = _subject_core(model, solver, p_pad, jnp.asarray(rec_time), reg)
        states_rows[pos] = np.asarray(states)[:n_rec]
        y_rows[pos] = np.asarray(y)[:n_rec]
        bad = ~np.isfinite(y_rows[pos]).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise RecordError(
                f"{_where(sub, i)}: the simulation gave a non-finite prediction; check the "
                "parameters of this subject."
            )
    keep = record >= 0
    states_all = np.zeros((len(df), n))
    y_all = np.zeros((len(df), len(model.output_names)))
    states_all[record[keep]] = states_rows[keep]
    y_all[record[keep]] = y_rows[keep]
    out = records.copy()
    if len(model.output_names) == 1:
        out["PRED"] = y_all[:, 0]
    else:
        for j, name in enumerate(model.output_names):
            out[name] = y_all[:, j]
    for i in range(n):
        out[f"A{i + 1}"] = states_all[:, i]
    return out
