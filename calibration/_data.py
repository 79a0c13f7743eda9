"""`Dataset`: NONMEM records of many subjects as padded arrays for vmapped likelihoods."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import pkpd
from pkpd import RecordError


class Dataset(eqx.Module):
    """Observations, regimens and covariates of several subjects, padded to fixed sizes.

    Built with `Dataset.from_records`. Arrays have a leading subject axis:

    - `ids`: the subject IDs, in the order of the records;
    - `regimen`: a stacked `pkpd.Regimen` (padded events);
    - `time`, `dv`: observation times (h) and observed values, shape `(subjects, obs)`;
    - `observed`: True for a real observation, False for padding;
    - `blq`, `lloq`: censored observations (below the limit of quantification) and their limit;
    - `occasion`: 0-based occasion index of each observation (0 when there is no `OCC`);
    - `occasion_start`: `(subjects, occasions)` time at which each occasion starts (its first
      record), `+inf` for occasions a subject does not have;
    - `covariates`: name -> `(subjects,)` baseline values (each subject's first record);
    - `obs_order`: `(subjects, obs)` the position of each observation's record among its
      subject's records (the order of the regimen's events at equal times, `+inf` padding),
      when some observation is listed before a dose or reset at its own time (a trough
      recorded at the dose time): it is then predicted before that event, in record order
      as NONMEM does (`pkpd.simulate(order=...)`). None otherwise (after every event at its
      time, the same thing there);
    - `obs_dvid`: `(subjects, obs)` the DVID of each observation (`from_records(dvid=)`),
      which says which model output it measures (`calibration.ByOutput`); None when the
      records have no such column;
    - `records`: the validated NONMEM records the arrays were read from;
    - time-varying covariates (`from_records(interpolation=...)`, else None and empty):
      `row_time` `(subjects, rows)` the times of the rows on which the parameters are
      evaluated (the records and the rows `pkpd.interpolate_covariates` adds), padded with
      the last; `row_covariates` name -> `(subjects, rows)` the covariate on each row;
      `obs_row` `(subjects, obs)` the row of each observation; `row_occasion`
      `(subjects, rows)` the 0-based occasion whose kappas apply on each row (for a model
      with IOV; see `from_records`); `interpolation` the `(covariate, method)` pairs. The
      regimen's events then point at these rows.

    A `Dataset` is an `equinox.Module` (a pytree): the arrays, `ids` included, are its leaves
    and `records` is static. `numeric()` gives the same data without `ids` and `records`:
    arrays only, the form that jitted functions (`jax.jit`, `equinox.filter_jit`) take as
    an argument, compiled once for every data set of the same shapes.
    """

    ids: np.ndarray | None
    regimen: pkpd.Regimen
    time: np.ndarray
    dv: np.ndarray
    observed: np.ndarray
    blq: np.ndarray
    lloq: np.ndarray
    occasion: np.ndarray
    covariates: dict[str, np.ndarray]
    records: pd.DataFrame | None = eqx.field(static=True)
    occasion_start: np.ndarray
    row_time: np.ndarray | None
    row_covariates: dict[str, np.ndarray]
    obs_row: np.ndarray | None
    row_occasion: np.ndarray | None
    interpolation: tuple[tuple[str, str], ...] = eqx.field(static=True)
    obs_order: np.ndarray | None
    obs_dvid: np.ndarray | None

    def __init__(
        self,
        ids: np.ndarray | None,
        regimen: pkpd.Regimen,
        time: np.ndarray,
        dv: np.ndarray,
        observed: np.ndarray,
        blq: np.ndarray,
        lloq: np.ndarray,
        occasion: np.ndarray,
        covariates: dict[str, np.ndarray],
        records: pd.DataFrame | None,
        occasion_start: np.ndarray | None = None,
        row_time: np.ndarray | None = None,
        row_covariates: dict[str, np.ndarray] | None = None,
        obs_row: np.ndarray | None = None,
        row_occasion: np.ndarray | None = None,
        interpolation: tuple[tuple[str, str], ...] = (),
        obs_order: np.ndarray | None = None,
        obs_dvid: np.ndarray | None = None,
    ):
        self.ids = ids
        self.regimen = regimen
        self.time = time
        self.dv = dv
        self.observed = observed
        self.blq = blq
        self.lloq = lloq
        self.occasion = occasion
        self.covariates = dict(covariates)
        self.records = records
        if occasion_start is None:
            occasion_start = np.zeros((np.shape(time)[0], 1))
        self.occasion_start = occasion_start
        self.row_time = row_time
        self.row_covariates = dict(row_covariates or {})
        self.obs_row = obs_row
        if row_time is not None and row_occasion is None:
            row_occasion = np.zeros(np.shape(row_time), dtype=np.int32)
        self.row_occasion = row_occasion
        self.interpolation = tuple(interpolation)
        self.obs_order = obs_order
        self.obs_dvid = obs_dvid

    @property
    def time_varying(self) -> bool:
        """Whether covariates change within subjects (`from_records(interpolation=...)`)."""
        return self.row_time is not None

    def _rows(self, fn) -> dict[str, Any]:
        """The time-varying fields and the observations' record order through `fn`
        (keyword arguments of `Dataset`)."""
        order = {} if self.obs_order is None else {"obs_order": fn(self.obs_order)}
        if self.obs_dvid is not None:
            order["obs_dvid"] = fn(self.obs_dvid)
        if self.row_time is None:
            return {"interpolation": self.interpolation} | order
        return {
            "row_time": fn(self.row_time),
            "row_covariates": {k: fn(v) for k, v in self.row_covariates.items()},
            "obs_row": fn(self.obs_row),
            "row_occasion": fn(self.row_occasion),
            "interpolation": self.interpolation,
        } | order

    def numeric(self) -> Dataset:
        """The same data as JAX arrays, with `ids` and `records` set to None: a pytree of
        arrays only, to pass to jitted functions (a compiled function is then reused by any
        data set of the same shapes, whatever its IDs)."""
        arrays = jax.tree_util.tree_map(
            jnp.asarray,
            (self.regimen, self.time, self.dv, self.observed, self.blq, self.lloq),
        )
        return Dataset(
            None,
            *arrays,
            jnp.asarray(self.occasion),
            {k: jnp.asarray(v) for k, v in self.covariates.items()},
            None,
            jnp.asarray(self.occasion_start),
            **self._rows(jnp.asarray),
        )

    @property
    def n_subjects(self) -> int:
        return int(np.shape(self.time)[0])

    @property
    def n_observations(self) -> int:
        return int(np.sum(self.observed))

    @property
    def n_occasions(self) -> int:
        return int(np.shape(self.occasion_start)[1])

    def __repr__(self) -> str:
        try:
            return self._describe()
        except Exception:  # traced arrays (inside jit): shapes only
            return f"Dataset({self.n_subjects} subjects, {np.shape(self.time)[1]} obs slots)"

    def _describe(self) -> str:
        observed = np.asarray(self.observed, dtype=bool)
        censored = int((observed & np.asarray(self.blq, dtype=bool)).sum())
        doses = np.asarray(self.regimen.mask, dtype=bool).sum(-1)
        ids = [] if self.ids is None else list(np.asarray(self.ids))
        shown = ", ".join(map(str, ids[:5])) + (", ..." if len(ids) > 5 else "")
        varying = ", ".join(f"{c} ({m})" for c, m in self.interpolation) or "none"
        return (
            f"Dataset({self.n_subjects} subjects [{shown}], {int(observed.sum())} observations "
            f"({censored} censored), dose events per subject {int(doses.min())}-"
            f"{int(doses.max())}, {self.n_occasions} occasion(s), covariates "
            f"{sorted(self.covariates)}, time-varying: {varying})"
        )

    def subset(self, index: Sequence[int] | np.ndarray) -> Dataset:
        """The subjects at positions `index` (a new `Dataset`)."""
        idx = np.asarray(index)
        reg = jax.tree_util.tree_map(lambda a: a[idx], self.regimen)
        keep = list(self.ids[idx].tolist())
        records: Any = self.records
        return Dataset(
            self.ids[idx],
            reg,
            self.time[idx],
            self.dv[idx],
            self.observed[idx],
            self.blq[idx],
            self.lloq[idx],
            self.occasion[idx],
            {k: v[idx] for k, v in self.covariates.items()},
            records[records["ID"].isin(keep)],
            self.occasion_start[idx],
            **self._rows(lambda a: a[idx]),
        )

    @classmethod
    def from_records(
        cls,
        records: pd.DataFrame,
        *,
        covariates: Sequence[str] = (),
        n_states: int | None = None,
        cens: str = "CENS",
        limit: str = "LIMIT",
        occasion: str = "OCC",
        max_doses: int = pkpd.MAX_DOSES,
        interpolation: Mapping[str, str] | None = None,
        substeps: int = pkpd.INTERPOLATION_SUBSTEPS,
        dvid: str = "DVID",
    ) -> Dataset:
        """Read NONMEM records (`ID, TIME, EVID, AMT, CMT, DV` and the optional dosing columns).

        Observations are the rows with `EVID == 0` and `MDV == 0`. Censoring follows the
        Monolix/nlmixr2 convention: `CENS == 1` marks an observation below the limit of
        quantification whose `DV` holds the limit (the M3 method then uses
        `P(y < LLOQ)`); a `LIMIT` column is not needed for left censoring. Occasions come from
        an `OCC` column (any values; numbered 0, 1, ... per subject in order of appearance, on
        dosing and observation records alike); an occasion starts at its first record and
        lasts until the next one starts, so each occasion's records must be contiguous in time.

        **Arguments:**

        - `records`: the data set, sorted by time within each subject.
        - `covariates`: columns to keep as subject-level covariates (first record's value); a
          missing column or a missing value raises `RecordError` naming the subject and row.
        - `n_states`: the model's number of compartments, to check `CMT`.
        - `max_doses`: the most doses (1 + ADDL per dose record) a subject may have
          (`pkpd.MAX_DOSES` by default; see `pkpd.validate_records`).
        - `interpolation`: the covariates (of `covariates`) read on every record, with how
          each is read between records, as `pkpd.simulate_records` reads them: `"nonmem"`
          (or `"next"`: the value on a record governs the interval before it, NONMEM's
          convention), `"locf"` or `"linear"`; e.g. `{"WT": "linear", "CRCL": "locf"}`. The
          likelihood then evaluates the typical values on every record (and on the rows
          `pkpd.interpolate_covariates` adds), through `pkpd.simulate_recordwise`: the same
          predictions as `simulate_records` with the same `interpolation`. Covariates not
          named keep their first record's value (`covariates`, also for named ones: the
          subject's baseline, used for reports and start checks). With occasions (`OCC`)
          each row also has the occasion whose kappas apply on it (`row_occasion`, for a
          model with IOV): the parameters change at each occasion's start, as without
          time-varying covariates (docs/calibration.md, "Inter-occasion variability").
        - `substeps`: sub-intervals per interval between records for `"linear"`
          (`pkpd.interpolate_covariates`).
        - `dvid`: the column that says which model output each observation measures
          (`calibration.ByOutput`: NONMEM's `DVID`, the default, read when the records have
          it; `"CMT"` for data that code it in CMT). Its values must be numbers.
        """
        df: Any = pkpd.validate_records(records, n_states, max_doses=max_doses)
        for col in ("DV",):
            if col not in df.columns:
                raise RecordError(f"Dataset.from_records: missing required column {col!r}.")
        for col in covariates:
            if col not in df.columns:
                raise RecordError(f"Dataset.from_records: missing covariate column {col!r}.")
        if dvid != "DVID" and dvid not in df.columns:
            raise RecordError(f"Dataset.from_records: missing DVID column {dvid!r}.")
        dvid_col = dvid if dvid in df.columns else None
        methods = dict(interpolation or {})
        for col in methods:
            if col not in covariates:
                raise ValueError(
                    f"Dataset.from_records: interpolation for covariate {col!r}, which is not "
                    f"among covariates {list(covariates)}; name it in covariates too."
                )
        rows: Any = None
        if methods:
            for col in methods:
                _check_covariate(df, col, np.ones(len(df), bool))
            rows, row_record = pkpd.interpolate_covariates(df, methods, substeps=substeps)
            row_bounds = _subject_bounds(rows["ID"].to_numpy())
        # (validate_records: each subject's records are contiguous, in order of appearance)
        bounds = _subject_bounds(df["ID"].to_numpy())
        ids = pd.unique(df["ID"])
        # Column-wise over all records; each subject is a block of positions `bounds[j]`
        # (the errors named in record order, subject by subject, as before).
        index = df.index.to_numpy()
        times = df["TIME"].to_numpy(dtype=float)
        events = np.isin(df["EVID"].to_numpy(), (1, 3, 4))
        is_obs_all = (df["EVID"].to_numpy() == 0) & (df["MDV"].to_numpy() == 0)
        obs_pos = np.flatnonzero(is_obs_all)
        obs_at = np.searchsorted(obs_pos, [a for a, _ in bounds] + [len(df)])
        dv_all = pd.to_numeric(df["DV"].iloc[obs_pos], errors="coerce").to_numpy(dtype=float)
        dv_bad = ~np.isfinite(dv_all)
        dvid_all = dvid_bad = None
        if dvid_col is not None:
            dvid_all = pd.to_numeric(df[dvid_col].iloc[obs_pos], errors="coerce")
            dvid_all = dvid_all.to_numpy(dtype=float)
            dvid_bad = ~np.isfinite(dvid_all)
        occ_values = df[occasion].to_numpy() if occasion in df.columns else None
        starts, occ_codes, row_sets = [], [], []
        before_dose: list[str] = []
        positions: list[np.ndarray] = []
        for j, sid in enumerate(ids):
            a, b = bounds[j]
            codes, start = _occasions(
                None if occ_values is None else occ_values[a:b], index[a:b], times[a:b],
                occasion, sid,
            )  # fmt: skip
            starts.append(start)
            is_obs = is_obs_all[a:b]
            if rows is None:
                before_dose.extend(
                    _observed_before_dose(times[a:b], events[a:b], index[a:b], is_obs, sid)
                )
                positions.append(np.flatnonzero(is_obs).astype(float))
            else:
                # The events point at the rows (records and added rows) of this subject.
                ra, rb = row_bounds[j]
                rec = row_record[ra:rb]
                own = np.full(len(rec), -1, dtype=np.int32)
                own[rec >= 0] = codes[rec[rec >= 0] - a]
                mine, row_occ = _occasion_rows(rows.iloc[ra:rb], own, start)
                row_obs = (mine["EVID"].to_numpy() == 0) & (mine["MDV"].to_numpy() == 0)
                row_sets.append((mine, np.flatnonzero(row_obs), row_occ))
            occ_codes.append(codes[is_obs])
            oa, ob = obs_at[j], obs_at[j + 1]
            if dv_bad[oa:ob].any():
                pos = obs_pos[oa + int(np.argmax(dv_bad[oa:ob]))]
                raise RecordError(
                    f"subject ID={sid}, row {index[pos]}: observation "
                    f"DV={df['DV'].iloc[pos]!r} is not a finite number (set MDV=1 to skip a "
                    "record)."
                )
            if dvid_bad is not None and dvid_bad[oa:ob].any():
                pos = obs_pos[oa + int(np.argmax(dvid_bad[oa:ob]))]
                raise RecordError(
                    f"subject ID={_plain(sid)}, row {index[pos]}: {dvid_col}="
                    f"{_plain(df[dvid_col].iloc[pos])!r} on an observation; expected a number "
                    "that says which model output it measures (calibration.Observation(dvid=...))."
                )
        # The regimens, the records validated once for all subjects (with the rows, the
        # events point at the rows: records, added rows and the occasions' copies).
        if rows is None:
            regimens = pkpd.regimens_from_records(df, n_states, max_doses=max_doses)
        else:
            grown = sum(len(mine) for mine, _, _ in row_sets) != len(rows)
            every = pd.concat([mine for mine, _, _ in row_sets]) if grown else rows
            regimens = pkpd.regimens_from_records(every, n_states, max_doses=max_doses)
        counts = np.diff(obs_at)
        n_obs = max(1, int(counts.max()))
        n = len(ids)
        # Observation k of subject i sits at [i, k]; padding repeats the subject's last.
        subject = np.repeat(np.arange(n), counts)
        slot = np.arange(obs_pos.size) - np.repeat(obs_at[:-1], counts)
        last = np.where(counts > 0, obs_at[1:] - 1, 0)
        fill = np.where(np.arange(n_obs)[None, :] < counts[:, None], 0, 1).astype(bool)
        time = np.zeros((n, n_obs))
        time[subject, slot] = times[obs_pos]
        last_time = times[obs_pos][last] if obs_pos.size else np.zeros(n)
        time = np.where(fill, np.where(counts > 0, last_time, 0.0)[:, None], time)
        dv = np.zeros((n, n_obs))
        dv[subject, slot] = dv_all
        observed = ~fill
        blq = np.zeros((n, n_obs), dtype=bool)
        lloq = np.full((n, n_obs), -np.inf)
        if cens in df.columns:
            c_all = df[cens].to_numpy()[obs_pos]
            lim_all = df[limit].iloc[obs_pos].to_numpy(dtype=float) if limit in df.columns else None
            for i in range(n):
                c = c_all[obs_at[i] : obs_at[i + 1]]
                if np.any(c == -1):
                    raise RecordError(
                        f"subject ID={ids[i]}: {cens}=-1 (right censoring) is not supported."
                    )
                if lim_all is not None and np.any(np.isfinite(lim_all[obs_at[i] : obs_at[i + 1]])):
                    raise RecordError(
                        f"subject ID={ids[i]}: interval censoring ({limit}) is not supported."
                    )
            blq[subject, slot] = c_all == 1
            lloq[subject, slot] = np.where(c_all == 1, dv_all, -np.inf)
        occ = np.zeros((n, n_obs), dtype=np.int32)
        occ[subject, slot] = np.concatenate(occ_codes)
        n_occ = max(len(st) for st in starts)
        occasion_start = np.full((n, n_occ), np.inf)
        for i, st in enumerate(starts):
            occasion_start[i, : len(st)] = st
        cov = {}
        for col in covariates:
            first = df.groupby("ID", sort=False)[col].first().reindex(ids)
            missing = first.isna().to_numpy()
            if missing.any():
                sid = ids[np.flatnonzero(missing)[0]]
                row = df.index[df["ID"] == sid][0]
                raise RecordError(f"subject ID={sid}, row {row}: covariate {col} is missing.")
            values = pd.to_numeric(first, errors="coerce").to_numpy(dtype=float)
            bad = ~np.isfinite(values)
            low = _COVARIATE_LOWER.get(col.upper())
            if low is not None:
                bad |= values <= low if col.upper() != "AGE" else values < low
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                row = df.index[df["ID"] == ids[k]][0]
                raise RecordError(
                    f"subject ID={ids[k]}, row {row}: covariate {col} is "
                    f"{_plain(first.iloc[k])!r}; expected {_expected(col)}."
                )
            cov[col] = values
        extra: dict[str, Any] = {}
        if dvid_all is not None:
            obs_dvid = np.zeros((n, n_obs))
            obs_dvid[subject, slot] = dvid_all
            pad = np.where(counts > 0, dvid_all[last] if dvid_all.size else 0.0, 0.0)
            extra["obs_dvid"] = np.where(fill, pad[:, None], obs_dvid)
        if before_dose:
            # (the rows path needs none: simulate_recordwise follows the record order)
            obs_order = np.full((n, n_obs), np.inf)
            for i, at in enumerate(positions):
                obs_order[i, : len(at)] = at
            extra["obs_order"] = obs_order
        if row_sets:
            n_rows = max(len(mine) for mine, _, _ in row_sets)
            row_time = np.zeros((n, n_rows))
            row_cov = {col: np.zeros((n, n_rows)) for col in methods}
            obs_row = np.zeros((n, n_obs), dtype=np.int32)
            row_occasion = np.zeros((n, n_rows), dtype=np.int32)
            for i, (mine, at, row_occ) in enumerate(row_sets):
                k = len(mine)
                t = mine["TIME"].to_numpy(dtype=float)
                row_time[i, :k], row_time[i, k:] = t, t[-1]
                row_occasion[i, :k], row_occasion[i, k:] = row_occ, row_occ[-1]
                for col in methods:
                    v = mine[col].to_numpy(dtype=float)
                    row_cov[col][i, :k], row_cov[col][i, k:] = v, v[-1]
                obs_row[i, : len(at)] = at
                obs_row[i, len(at) :] = at[-1] if len(at) else 0
            extra |= {
                "row_time": row_time,
                "row_covariates": row_cov,
                "obs_row": obs_row,
                "row_occasion": row_occasion,
                "interpolation": tuple(methods.items()),
            }
        return cls(
            ids=np.asarray(ids),
            regimen=pkpd.stack(regimens),
            time=time,
            dv=dv,
            observed=observed,
            blq=blq,
            lloq=lloq,
            occasion=occ,
            covariates=cov,
            records=df,
            occasion_start=occasion_start,
            **extra,
        )

    def arrays(self) -> dict[str, jnp.ndarray]:
        """The per-subject arrays as JAX arrays (for the likelihoods)."""
        return (
            {
                "time": jnp.asarray(self.time),
                "dv": jnp.asarray(self.dv),
                "observed": jnp.asarray(self.observed),
                "blq": jnp.asarray(self.blq),
                "lloq": jnp.asarray(self.lloq),
                "occasion": jnp.asarray(self.occasion),
                "occasion_start": jnp.asarray(self.occasion_start),
            }
            | self.row_arrays()
            | self.record_arrays()
        )

    def record_arrays(self) -> dict[str, Any]:
        """What the observations' records say beyond their time, as JAX arrays that
        `PopulationModel.predict_random` reads: `order` and `occasion` (their record
        positions and occasions, when an observation is listed before an event at its time:
        `obs_order`) and `dvid` (`obs_dvid`); empty when there is neither."""
        out = {}
        if self.obs_order is not None:
            out |= {"order": jnp.asarray(self.obs_order), "occasion": jnp.asarray(self.occasion)}
        if self.obs_dvid is not None:
            out["dvid"] = jnp.asarray(self.obs_dvid)
        return out

    def row_arrays(self) -> dict[str, Any]:
        """The time-varying covariates as JAX arrays, the keys `row_time`, `row_cov`,
        `obs_row` and `row_occ` (`row_occasion`) that `PopulationModel.predict_random` reads
        (empty without them)."""
        if self.row_time is None:
            return {}
        return {
            "row_time": jnp.asarray(self.row_time),
            "row_cov": {k: jnp.asarray(v) for k, v in self.row_covariates.items()},
            "obs_row": jnp.asarray(self.obs_row),
            "row_occ": jnp.asarray(self.row_occasion),
        }


def _plain(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


def _check_covariate(df: Any, col: str, rows: np.ndarray) -> None:
    """`RecordError` naming the subject and the row for a covariate missing, not finite or
    outside its physical bound (`_COVARIATE_LOWER`) on one of the records `rows` (a mask)."""
    raw = df[col].to_numpy()
    values = np.asarray(pd.to_numeric(df[col], errors="coerce"), dtype=float)
    missing = rows & pd.isna(raw)
    if missing.any():
        pos = int(np.argmax(missing))
        raise RecordError(
            f"subject ID={_plain(df['ID'].iloc[pos])}, row {df.index[pos]}: covariate {col} "
            "is missing."
        )
    bad = ~np.isfinite(values)
    low = _COVARIATE_LOWER.get(col.upper())
    if low is not None:
        with np.errstate(invalid="ignore"):
            bad |= values <= low if col.upper() != "AGE" else values < low
    bad &= rows
    if bad.any():
        pos = int(np.argmax(bad))
        raise RecordError(
            f"subject ID={_plain(df['ID'].iloc[pos])}, row {df.index[pos]}: covariate {col} "
            f"is {_plain(raw[pos])!r}; expected {_expected(col)}."
        )


def _expected(col: str) -> str:
    low = _COVARIATE_LOWER.get(col.upper())
    if low is None:
        return "a finite number"
    return f"a finite number {'>=' if col.upper() == 'AGE' else '>'} {low:g}"


#: Covariates that are physical quantities, by their usual NONMEM names, and the bound they
#: must exceed (AGE may be 0: a newborn). Others (centred or signed covariates) need only be
#: finite.
_COVARIATE_LOWER = {
    "WT": 0.0,
    "HT": 0.0,
    "AGE": 0.0,
    "BMI": 0.0,
    "BSA": 0.0,
    "LBW": 0.0,
    "FFM": 0.0,
    "IBW": 0.0,
    "CRCL": 0.0,
    "EGFR": 0.0,
    "SCR": 0.0,
    "CREAT": 0.0,
    "ALB": 0.0,
}


def _observed_before_dose(
    time: np.ndarray, event: np.ndarray, index: np.ndarray, is_obs: np.ndarray, sid: Any
) -> list[str]:
    """The observation records of one subject (its `TIME`, whether each record is a dose or
    reset, EVID 1, 3 or 4, and its index labels) listed before a dose or reset record at
    the same TIME, as `subject ID=.., row ..`: NONMEM predicts them before that record, so
    the Dataset then keeps every observation's record position (`obs_order`)."""
    out = []
    for j in np.flatnonzero(is_obs):
        later = event[j + 1 :] & (time[j + 1 :] == time[j])
        if later.any():
            out.append(f"subject ID={_plain(sid)}, row {index[j]!r} at TIME={time[j]:g} h")
    return out


def _subject_bounds(ids: np.ndarray) -> list[tuple[int, int]]:
    """`(start, end)` positions of each subject's contiguous block of rows, in order."""
    first = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    return list(zip(first.tolist(), np.append(first[1:], len(ids)).tolist(), strict=True))


def _occasion_rows(mine: Any, own: np.ndarray, start: np.ndarray) -> tuple[Any, np.ndarray]:
    """One subject's rows (records and the rows `pkpd.interpolate_covariates` added) with
    the occasion whose kappas apply on each row, for a model with inter-occasion variability.

    The occasions follow the rule of data without time-varying covariates
    (`calibration.occasion_index`, `pkpd.simulate_piecewise`): the parameters change at an
    occasion's start, so the advance up to that time is made with the occasion before, and
    each record's own dose and prediction take its `OCC` occasion (`own`, `-1` for an added
    row). A row governs the advance up to it (the next-record convention), so an added row
    takes the occasion in effect before its time, and where the first record of an occasion
    ends an advance (its time is after the row before it) a copy of it is put before it as
    an `EVID=2` row (no dose, no observation, the record's covariates and index label) that
    carries the advance with the occasion before.

    **Returns:** `(rows, occasion)`: the rows with those copies, and each row's occasion.
    """
    t = mine["TIME"].to_numpy(dtype=float)
    before = np.clip(np.searchsorted(start, t, side="left") - 1, 0, None).astype(np.int32)
    advance = np.zeros(len(t), bool)
    advance[1:] = t[1:] > t[:-1]
    occ = np.where(own >= 0, own, before).astype(np.int32)
    split = np.flatnonzero((own >= 0) & advance & (own != before))
    if split.size == 0:
        return mine, occ
    added = mine.iloc[split].copy()
    for col, zero in (("EVID", 2), ("AMT", 0.0), ("RATE", 0.0), ("II", 0.0), ("ADDL", 0),
                      ("SS", 0), ("MDV", 1)):  # fmt: skip
        added[col] = zero
    order = np.argsort(np.concatenate([np.arange(len(t)), split - 0.5]), kind="stable")
    rows = pd.concat([mine, added]).iloc[order]
    return rows, np.concatenate([occ, before[split]])[order]


def _occasions(
    values: np.ndarray | None, index: np.ndarray, times: np.ndarray, column: str, sid: Any
) -> tuple[np.ndarray, np.ndarray]:
    """0-based occasion of each record of one subject (its `column` values, None without the
    column; its index labels and times) and the start time of each occasion."""
    if values is None:
        return np.zeros(len(times), dtype=np.int32), np.zeros(1)
    if pd.isna(values).any():
        row = index[np.flatnonzero(pd.isna(values))[0]]
        raise RecordError(f"subject ID={sid}, row {row}: {column} is missing.")
    order = list(pd.unique(values))
    number = {v: k for k, v in enumerate(order)}
    codes = np.asarray([number[v] for v in values], dtype=np.int32)
    back = np.flatnonzero(np.diff(codes) < 0)
    if back.size:
        row = index[back[0] + 1]
        raise RecordError(
            f"subject ID={sid}, row {row}: {column}={values[back[0] + 1]} returns to an "
            "earlier occasion; the records of an occasion must be contiguous in time."
        )
    first = np.flatnonzero(np.diff(codes, prepend=-1) != 0)
    return codes, times[first]
