"""Subjects that cannot be evaluated: parameter domains, data the error model cannot explain,
and the error that names them.

A population objective sums one term per subject. When a subject's term is not finite (its
individual parameters are outside the model's domain, an observation has zero likelihood for
every eta tried, its curvature is not positive definite) the sum is not finite either, and a
NaN would flow into the outer optimiser's finite differences. The estimators therefore look at
each subject's term: at the starting estimates a failing subject raises `SubjectError` naming
it and the reason (NONMEM stops too, naming the individual); at a trial point of the outer
search the point is rejected (an infinite objective: the search backs off, as NONMEM's does).

The domain rules are those of `pkpd.AbstractModel.domain_errors` (every parameter finite,
`positive_params` > 0, `F<n>`, `ALAG<n>` >= 0, `D<n>`, `R<n>` > 0), evaluated on traced values
by `calibration._model.in_domain` (pkpd checks concrete values only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

import pkpd
from pkpd import RecordError

from ._data import Dataset
from ._model import ByOutput, Exponential, PopulationModel


class SubjectError(ValueError):
    """Some subjects could not be evaluated; each is named with its reason.

    **Attributes:**

    - `failures`: `{subject ID: reason}`, in the order of the data.
    - `result`: what the call would have returned for the other subjects, with the failed
      subjects' rows set to NaN (`individual_map`), or None (`fit_population`: a population
      fit needs every subject).
    """

    def __init__(self, who: str, failures: Mapping[Any, str], hint: str, result: Any = None):
        self.failures = dict(failures)
        self.result = result
        shown = "; ".join(f"subject ID={i}: {r}" for i, r in list(self.failures.items())[:10])
        more = len(self.failures) - 10
        super().__init__(
            f"{who}: {len(self.failures)} subject(s) could not be evaluated ({shown}"
            f"{f'; and {more} more' if more > 0 else ''}). {hint}"
        )


# ----------------------------------------------------------------------------- domains


def first_rows(data: Dataset) -> dict[Any, Any]:
    """Each subject's first record (the row its covariates are read from), by ID."""
    if data.records is None or data.ids is None:
        return {}
    df = data.records
    first = df.reset_index().groupby("ID", sort=False)["index"].first()
    return {sid: first.get(sid) for sid in data.ids.tolist()}


def domain_reasons(
    model: pkpd.AbstractModel, params: Mapping[str, Any], data: Dataset, index: np.ndarray
) -> dict[Any, str]:
    """`{subject ID: reason}` for the subjects at positions `index` whose individual parameters
    (`params`: name -> `(subjects,)` concrete values) are outside the model's domain, by
    `pkpd.AbstractModel.domain_errors`; each reason names the parameter, its value, what was
    expected and the subject's first record."""
    n = data.n_subjects
    values = {k: np.broadcast_to(np.asarray(v, dtype=float), (n,)) for k, v in params.items()}
    rows = first_rows(data)
    out: dict[Any, list[str]] = {}
    for name, bad, expect in model.domain_errors(values):
        for i in np.flatnonzero(np.broadcast_to(bad, (n,))):
            if i in index:
                out.setdefault(i, []).append(f"{name} = {values[name][i]:g} (expected {expect})")
    reasons = {}
    for i in sorted(out):
        sid = data.ids[i] if data.ids is not None else i
        row = rows.get(sid)
        cov = ", ".join(f"{k}={float(np.asarray(v)[i]):g}" for k, v in data.covariates.items())
        source = f", from row {row}" if row is not None else ""
        where = f" (covariates {cov or 'none'}{source})"
        reasons[sid] = "individual parameter(s) outside their domain: " + "; ".join(out[i]) + where
    return reasons


# ----------------------------------------------------------------------------- data


def observation_rows(data: Dataset) -> list[list[Any]]:
    """The records row of each observation of each subject (the order of `data.dv`)."""
    if data.records is None or data.ids is None:
        return [[] for _ in range(data.n_subjects)]
    df = data.records
    is_obs = (df["EVID"].to_numpy() == 0) & (df["MDV"].to_numpy() == 0)
    obs = df[is_obs]
    groups = {sid: list(g.index) for sid, g in obs.groupby("ID", sort=False)}
    return [groups.get(sid, []) for sid in data.ids.tolist()]


def check_error_data(pm: PopulationModel, data: Dataset, who: str) -> None:
    """Raise `RecordError` for observations the error model gives zero likelihood under any
    parameters: with `Exponential` (log-transformed) errors a `DV <= 0`, and a censored
    observation whose limit is `<= 0` (NONMEM's `LOG(DV)` of such a record is an error too).
    Also observations whose DVID the model does not observe: a DVID of no `ByOutput` part,
    several DVIDs with a single error model, a `ByOutput` model without DVIDs."""
    observed = np.asarray(data.observed)
    logged = _check_dvid(pm, data, who, observed)
    if logged is None:
        return
    dv = np.asarray(data.dv)
    blq = np.asarray(data.blq)
    bad = observed & logged & (dv <= 0)
    if not bad.any():
        return
    i, j = (int(k[0]) for k in np.nonzero(bad))
    sid = data.ids[i] if data.ids is not None else i
    rows = observation_rows(data)[i]
    row = f", row {rows[j]}" if j < len(rows) else ""
    what = "censored observation with limit" if blq[i, j] else "observation"
    raise RecordError(
        f"{who}: subject ID={sid}{row}: {what} DV={dv[i, j]:g} at TIME={data.time[i, j]:g} h "
        f"cannot be explained by an Exponential (log-normal) error, which needs DV > 0 "
        f"({int(bad.sum())} such record(s) in all); set MDV=1 to skip it, or mark a value "
        "below the limit of quantification with CENS=1 and DV = the (positive) LLOQ."
    )


def _check_dvid(pm: PopulationModel, data: Dataset, who: str, observed: np.ndarray):
    """`RecordError` for observations the model does not observe (see `check_error_data`);
    returns the mask of observations with an `Exponential` error (None: none has one)."""
    dvid = None if data.obs_dvid is None else np.asarray(data.obs_dvid)
    if not isinstance(pm.error, ByOutput):
        if dvid is not None:
            values = np.unique(dvid[observed])
            if values.size > 1:
                raise RecordError(
                    f"{who}: the records' DVID has {values.size} values "
                    f"{[_plain(v) for v in values[:6]]}: observations of several kinds, but "
                    f"the model has one error model ({type(pm.error).__name__}) for its "
                    "output. Give error=calibration.ByOutput(calibration.Observation(dvid, "
                    "output, error), ...), or keep the records of one kind."
                )
        if not isinstance(pm.error, Exponential):
            return None
        return np.ones_like(observed)
    if dvid is None:
        raise RecordError(
            f"{who}: the model observes several outputs (ByOutput, DVIDs "
            f"{[_plain(v) for v in pm.error.dvids]}), but the records have no DVID column; "
            "read them with Dataset.from_records(records, dvid='DVID') (or dvid='CMT')."
        )
    known = np.isin(dvid, np.asarray(pm.error.dvids))
    unknown = observed & ~known
    if unknown.any():
        i, j = (int(k[0]) for k in np.nonzero(unknown))
        sid = data.ids[i] if data.ids is not None else i
        rows = observation_rows(data)[i]
        row = f", row {rows[j]}" if j < len(rows) else ""
        raise RecordError(
            f"{who}: subject ID={sid}{row}: an observation with DVID={_plain(dvid[i, j])}, "
            f"which no Observation of the model's ByOutput has (its DVIDs are "
            f"{[_plain(v) for v in pm.error.dvids]}; {int(unknown.sum())} such record(s) in "
            "all); set MDV=1 to skip them, or add an Observation for it."
        )
    flags = np.asarray([isinstance(p.error, Exponential) for p in pm.error.parts])
    if not flags.any():
        return None
    index = np.zeros(dvid.shape, dtype=int)
    for k, v in enumerate(pm.error.dvids):
        index[dvid == v] = k
    return flags[index]


def _plain(x: Any) -> Any:
    x = x.item() if isinstance(x, np.generic) else x
    return int(x) if isinstance(x, float) and x.is_integer() else x


def explain_nonfinite(
    pm: PopulationModel, data: Dataset, index, pred, sd, ll, *, at: str
) -> dict[Any, str]:
    """`{subject ID: reason}` for subjects whose objective is not finite although their
    parameters are in the domain, from the predictions, residual SDs and per-observation
    log-likelihoods `(subjects, obs)` at the etas tried (`at` says which)."""
    rows = observation_rows(data)
    out = {}
    for i in index:
        sid = data.ids[i] if data.ids is not None else i
        obs = np.asarray(data.observed[i])
        bad = np.flatnonzero(obs & ~np.isfinite(ll[i]))
        if not bad.size:
            out[sid] = (
                f"its objective is not finite {at} although every observation's "
                "likelihood is (the random effects' prior or the curvature of the objective "
                "is not finite)"
            )
            continue
        j = int(bad[0])
        row = f"row {rows[i][j]}, " if j < len(rows[i]) else ""
        t, dv, f, s = data.time[i, j], data.dv[i, j], pred[i, j], sd[i, j]
        where = f"the observation at {row}TIME={t:g} h (DV={dv:g})"
        if not np.isfinite(f):
            why = f"the prediction is {f} {at}"
        elif not s > 0:
            why = (
                f"the residual SD is {s:g} {at} (prediction {f:g}): "
                f"{_error_name(pm, data, i, j)} error cannot explain it"
            )
        else:
            why = f"its log-likelihood is {ll[i, j]} {at} (prediction {f:g}, residual SD {s:g})"
        more = f"; {bad.size - 1} more observation(s) like it" if bad.size > 1 else ""
        out[sid] = f"{where}: {why}{more}"
    return out


def _error_name(pm: PopulationModel, data: Dataset, i: int, j: int) -> str:
    """The error model of observation `j` of subject `i` (its `ByOutput` part's)."""
    if not isinstance(pm.error, ByOutput) or data.obs_dvid is None:
        return type(pm.error).__name__
    for p in pm.error.parts:
        if float(p.dvid) == float(np.asarray(data.obs_dvid)[i, j]):
            return f"{type(p.error).__name__} ({p.label})"
    return type(pm.error).__name__
