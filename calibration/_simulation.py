"""Simulation from a population model on the design of a data set, and population values.

`simulate_dataset` draws replicates of a `Dataset` (new etas, kappas and residual errors, the
same regimens, times and covariates), vmapped over replicates and subjects in one compiled
call. The helpers here (population values in their accepted forms, the design arrays, the
population and individual predictions on a grid, data sets tiled to any size) are shared by
the diagnostics (`_diagnostics`) and the predictive checks (`_predictive`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ._data import Dataset
from ._laplace import PopulationFit
from ._model import PopulationModel, observe
from ._random import as_key

#: Population values in any of the accepted forms (see `simulate_dataset`).
Population = PopulationFit | Mapping[str, Any] | None


# ----------------------------------------------------------------------------- population values


def population_values(pm: PopulationModel, population: Population) -> tuple[dict[str, Any], Any]:
    """`(phi, natural)`: unconstrained and natural-scale population values."""
    if isinstance(population, PopulationFit):
        phi = population.phi
    elif population is None:
        phi = pm.initial()
    elif isinstance(population.get("omega"), Mapping):
        phi = dict(population)
    else:
        phi = phi_from_natural(pm, population)
    return phi, pm.natural(phi)


def phi_from_natural(pm: PopulationModel, nat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `pm.natural`: natural-scale theta / Omega matrix / sigma -> unconstrained."""
    for part in ("theta", "omega", "sigma"):
        if part not in nat:
            raise ValueError(
                f"population values: expected keys 'theta', 'omega', 'sigma' (natural scale, "
                f"as PopulationFit.population) or the pm.initial() form; {part!r} is missing."
            )
    missing = [k for k in pm.theta if k not in nat["theta"]]
    if missing:
        raise ValueError(f"population values: no theta for {missing}.")
    theta = {
        k: jnp.asarray(
            float(nat["theta"][k]) if k in pm.unconstrained else math.log(float(nat["theta"][k]))
        )
        for k in pm.theta
    }
    omega = np.asarray(nat["omega"], dtype=float)
    d = pm.n_eta
    if omega.shape != (d, d):
        raise ValueError(
            f"population values: expected an Omega matrix of shape {(d, d)} "
            f"(etas {list(pm.eta_names)}), got shape {omega.shape}."
        )
    sd = np.sqrt(np.diag(omega))
    out: dict[str, Any] = {"log_sd": jnp.asarray(np.log(sd))}
    corr = omega / np.outer(sd, sd)
    if pm.omega_block:
        # Canonical partial correlations of the Cholesky factor (inverse of
        # `PopulationModel.omega_cholesky`).
        low = np.linalg.cholesky(corr)
        u = []
        for i in range(1, d):
            for j in range(i):
                used = float(np.sum(low[i, :j] ** 2))
                u.append(math.atanh(low[i, j] / math.sqrt(1.0 - used)))
        out["corr"] = jnp.asarray(np.asarray(u, dtype=float).reshape(-1))
    elif np.any(np.abs(corr - np.eye(d)) > 1e-12):
        raise ValueError(
            "population values: Omega has off-diagonal elements but the model has "
            "omega_block=False."
        )
    sigma = {k: jnp.asarray(math.log(float(nat["sigma"][k]))) for k in pm.error.names}
    phi = {"theta": theta, "omega": out, "sigma": sigma}
    if pm.iov:
        if "iov" not in nat:
            raise ValueError("population values: the model has IOV; 'iov' (variances) is missing.")
        var = np.broadcast_to(np.asarray(nat["iov"], dtype=float), (len(pm.iov),))
        phi["iov"] = {"log_sd": jnp.asarray(0.5 * np.log(var))}
    return phi


def subject_design(data: Dataset, who: str = "individual_plots", *, rows: bool = False):
    """Covariates, regimens and observation times of every subject, as JAX arrays (the
    diagnostics' design). With `rows=True` the caller also passes `Dataset.row_arrays` to
    the predictions (`curves`, `PopulationModel.predict_random`), which then follow
    time-varying covariates record by record (on a time grid of its own: `grid_rows`);
    without it data with time-varying covariates are refused, `NotImplementedError`, rather
    than simulated at their baseline."""
    if data.time_varying and not rows:
        raise NotImplementedError(
            f"{who}: data with time-varying covariates (Dataset.from_records(interpolation="
            "...)) need the predictions on their rows (subject_design(rows=True) with "
            "Dataset.row_arrays, or grid_rows for a time grid); this caller reads the "
            "covariates at their baseline only."
        )
    cov = {k: jnp.asarray(v) for k, v in data.covariates.items()}
    return cov, data.regimen, jnp.asarray(data.time)


def grid_rows(data: Dataset, grid: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """The regimens and the row arrays (`Dataset.row_arrays`) of the subjects of `data`
    (time-varying covariates) with a row added at each time of `grid` `(subjects, points)`
    (sorted), whose predictions are the outputs (`obs_row`): the curves of
    `individual_plots` follow the covariates as the likelihood reads them.

    A grid row carries the parameters in effect at its time: those of the next row after it
    (the next-record convention: that row's covariates and occasion govern the interval
    before it, which is each covariate's own interpolation rule, `"linear"` on the
    estimation's sub-intervals), or at the time of a row those of the last row there (the
    output after the events at that time, as `pkpd.simulate` gives it). It adds no dose and
    no advance with other parameters, so the curve passes through the predictions on the
    data's rows. The regimens' events are renumbered to point at the same rows as before.

    **Returns:** `(regimen, rows)`: the stacked regimen and the JAX row arrays (`row_time`,
    `row_cov`, `row_occ`, and `obs_row` pointing at the grid rows).
    """
    assert data.row_time is not None and data.row_occasion is not None
    grid = np.asarray(grid, dtype=float)
    n, n_rows = np.shape(data.row_time)
    n_grid = grid.shape[1]
    row_time = np.asarray(data.row_time)
    cov = {k: np.asarray(v) for k, v in data.row_covariates.items()}
    occ = np.asarray(data.row_occasion)
    order = np.array(data.regimen.order, dtype=float)
    new_time = np.zeros((n, n_rows + n_grid))
    new_cov = {k: np.zeros((n, n_rows + n_grid)) for k in cov}
    new_occ = np.zeros((n, n_rows + n_grid), dtype=np.int32)
    obs_row = np.zeros((n, n_grid), dtype=np.int32)
    for i in range(n):
        r, g = row_time[i], grid[i]
        at = np.searchsorted(r, g, side="right")  # after every row at or before g
        on_row = (at > 0) & (r[np.clip(at - 1, 0, None)] == g)
        source = np.clip(np.where(on_row, at - 1, at), 0, n_rows - 1)
        mine = np.arange(n_rows) + np.searchsorted(at, np.arange(n_rows), side="right")
        theirs = at + np.arange(n_grid)
        new_time[i, mine], new_time[i, theirs] = r, g
        for k, v in cov.items():
            new_cov[k][i, mine], new_cov[k][i, theirs] = v[i], v[i][source]
        new_occ[i, mine], new_occ[i, theirs] = occ[i], occ[i][source]
        obs_row[i] = theirs
        real = np.isfinite(order[i])
        order[i, real] += np.searchsorted(at, order[i, real], side="right")
    regimen = eqx.tree_at(lambda reg: reg.order, data.regimen, jnp.asarray(order))
    rows = {
        "row_time": jnp.asarray(new_time),
        "row_cov": {k: jnp.asarray(v) for k, v in new_cov.items()},
        "obs_row": jnp.asarray(obs_row),
        "row_occ": jnp.asarray(new_occ),
    }
    return regimen, rows


@eqx.filter_jit
def curves(pm: PopulationModel, nat, cov, reg, time, b, occasion_start=None, order=None):
    """`(IPRED, PRED)` of every subject at its own `time` row.

    `order` (`{"order": (subjects, obs), "occasion": (subjects, obs)}`, from
    `Dataset.record_arrays`, with `dvid` too) takes the outputs in record order at equal
    times (`Dataset.obs_order`); None or empty: after the events at their time. With
    `Dataset.row_arrays` in it too (time-varying covariates), each subject is simulated
    record by record with the parameters of each row (`PopulationModel.predict_random`).

    `b` holds each subject's random effects: its etas `(subjects, n_eta)`, or for a model
    with IOV its etas and the kappas of each occasion (`(subjects, n_random)`, see
    `PopulationModel.predict_random`) with `occasion_start` `(subjects, occasions)` the
    occasions' start times (`Dataset.occasion_start`): IPRED then changes parameters at the
    start of each occasion. PRED has every random effect 0 (kappas too)."""

    order = {} if order is None else dict(order)
    if "row_time" in order:  # time-varying covariates: record by record (predict_random)

        def one_rows(c, r, t, e, o):
            obs = {"time": t} | o
            return (
                pm.predict_random(nat["theta"], c, r, obs, e),
                pm.predict_random(nat["theta"], c, r, obs, jnp.zeros_like(e)),
            )

        return jax.vmap(one_rows)(cov, reg, time, b, order)

    def pred_of(c, r, t, o):
        zero = pm.individual_params(nat["theta"], c, jnp.zeros(pm.n_eta))
        return pm.predict(zero, r, t, o.get("order"), o.get("dvid"))

    if occasion_start is None:

        def one(c, r, t, e, o):
            ipred = pm.predict(
                pm.individual_params(nat["theta"], c, e), r, t, o.get("order"), o.get("dvid")
            )
            return ipred, pred_of(c, r, t, o)

        return jax.vmap(one)(cov, reg, time, b, order)

    def one_iov(c, r, t, e, s, o):
        obs = {"time": t, "occasion_start": s} | o
        return pm.predict_random(nat["theta"], c, r, obs, e), pred_of(c, r, t, o)

    return jax.vmap(one_iov)(cov, reg, time, b, occasion_start, order)


# ----------------------------------------------------------------------------- simulation


@dataclasses.dataclass(frozen=True)
class Simulation:
    """Replicates of a data set simulated from a population model on its design.

    - `dv`: `(n_rep, subjects, obs)` simulated observations; a censored value holds its LLOQ
      (the Monolix/nlmixr2 convention that `Dataset.from_records` reads);
    - `blq`: `(n_rep, subjects, obs)` True where the simulated value fell below `lloq`;
    - `ipred`: `(n_rep, subjects, obs)` model predictions of each simulated subject;
    - `eta`: `(n_rep, subjects, n_eta)` the simulated etas; `params`: individual parameters
      by name, `(n_rep, subjects)` each;
    - `lloq`: `(subjects, obs)` the limit used (`-inf`: no censoring);
    - `observed`: `(subjects, obs)` the design's real (not padding) observations;
    - `data`: the design;
    - `kappa`: for a model with IOV, `(n_rep, subjects, occasions, n_iov)` the simulated
      inter-occasion effects (`params` hold the parameters without them), else None.
    """

    dv: np.ndarray
    blq: np.ndarray
    ipred: np.ndarray
    eta: np.ndarray
    params: dict[str, np.ndarray]
    lloq: np.ndarray
    observed: np.ndarray
    data: Dataset
    kappa: np.ndarray | None = None

    @property
    def n_rep(self) -> int:
        return int(self.dv.shape[0])

    def dataset(self, rep: int = 0) -> Dataset:
        """Replicate `rep` as a `Dataset` (same design, simulated `DV` and `CENS`)."""
        return _with_observations(self.data, self.dv[rep], self.blq[rep])


def simulate_dataset(
    pm: PopulationModel,
    population: Population,
    data: Dataset,
    *,
    key: jax.Array | int,
    n_rep: int = 1,
    lloq: float | np.ndarray | None = None,
) -> Simulation:
    """Simulate replicates of `data`: new etas from Omega and residual errors, same design.

    Each replicate keeps the regimens, observation times and covariates of every subject of
    `data`; etas are drawn from `N(0, Omega)` and observations from the error model around
    the individual predictions (`Exponential`: `IPRED * exp(eps)`; others `IPRED + SD * eps`).
    One compiled call, vmapped over replicates and subjects.

    **Arguments:**

    - `pm`: the population model.
    - `population`: a `PopulationFit`, its natural-scale `population` dict (`theta`, `omega`
      matrix, `sigma`), unconstrained values in the `pm.initial()` form, or `None` for the
      model's own values.
    - `data`: the design.
    - `key`: a JAX PRNG key or an int (the same key gives the same replicates).
    - `n_rep`: number of replicates.
    - `lloq`: the limit of quantification applied to simulated values (a number, or an array
      `(subjects, obs)`); values below it are censored (`blq`, `dv = lloq`). By default the
      data's own: each censored observation keeps its limit, other observations of a subject
      with censored observations take that subject's lowest limit, and subjects without any
      take the lowest limit of the data set; no censoring when the data has none.

    **Returns:** a `Simulation`.
    """
    if n_rep < 1:
        raise ValueError(f"simulate_dataset: expected n_rep >= 1, got {n_rep}.")
    _, nat = population_values(pm, population)
    limit = (
        _default_lloq(data)
        if lloq is None
        else np.broadcast_to(np.asarray(lloq, dtype=float), data.time.shape)
    )
    keys = jax.random.split(as_key(key, "simulate_dataset"), (n_rep, data.n_subjects))
    out = simulate_replicates(pm, nat, data, keys, jnp.asarray(limit))
    return Simulation(
        dv=np.asarray(out["dv"]),
        blq=np.asarray(out["blq"]),
        ipred=np.asarray(out["ipred"]),
        eta=np.asarray(out["eta"]),
        params={
            k: np.asarray(jnp.broadcast_to(v, (n_rep, data.n_subjects)))
            for k, v in out["params"].items()
        },
        lloq=np.array(limit),
        observed=data.observed,
        data=data,
        kappa=np.asarray(out["kappa"]).reshape(n_rep, data.n_subjects, data.n_occasions, -1)
        if pm.iov
        else None,
    )


def _default_lloq(data: Dataset) -> np.ndarray:
    blq = data.blq & data.observed
    if not blq.any():
        return np.full(data.time.shape, -np.inf)
    lim = np.where(blq, data.lloq, np.inf)
    subject = lim.min(axis=1)
    subject = np.where(np.isfinite(subject), subject, subject.min())
    return np.where(blq, data.lloq, subject[:, None])


def simulate_replicates(pm: PopulationModel, nat, data: Dataset, keys, limit):
    """Simulated etas, predictions and observations, `(n_rep, subjects, ...)`."""
    cov = {k: jnp.asarray(v) for k, v in data.covariates.items()}
    reg, time = data.regimen, jnp.asarray(data.time)
    times = {"time": time, "occasion_start": jnp.asarray(data.occasion_start)}
    times |= data.row_arrays() | data.record_arrays()
    observed = jnp.asarray(data.observed)
    return _simulate_jit(pm, nat, keys, cov, reg, times, jnp.asarray(limit), observed)


@eqx.filter_jit
def _simulate_jit(pm: PopulationModel, nat, keys, cov, reg, times, limit, observed):
    chol = jnp.linalg.cholesky(nat["omega"])
    n_occ = times["occasion_start"].shape[-1]
    iov_sd = jnp.tile(jnp.sqrt(nat["iov"]), n_occ) if pm.iov else jnp.zeros(0)

    def one(key, c, r, t, lim, obs):
        k_eta, k_eps, k_kap = jax.random.split(key, 3)
        eta = chol @ jax.random.normal(k_eta, (pm.n_eta,))
        kappa = iov_sd * jax.random.normal(k_kap, iov_sd.shape)
        params = pm.individual_params(nat["theta"], c, eta)
        f = pm.predict_random(nat["theta"], c, r, t, jnp.concatenate([eta, kappa]))
        eps = jax.random.normal(k_eps, f.shape)
        y = observe(pm.error, nat["sigma"], f, eps, pm.which(t))
        blq = obs & (y < lim)
        return {
            "dv": jnp.where(blq, lim, y),
            "blq": blq,
            "ipred": f,
            "eta": eta,
            "kappa": kappa,
            "params": params,
        }

    subjects = jax.vmap(one, in_axes=(0, 0, 0, 0, 0, 0))
    reps = jax.vmap(subjects, in_axes=(0, None, None, None, None, None))
    return reps(keys, cov, reg, times, limit, observed)


def _with_observations(data: Dataset, dv: np.ndarray, blq: np.ndarray) -> Dataset:
    """`data` with new observed values (and censoring flags), arrays and records alike."""
    dv = np.where(data.observed, dv, data.dv)
    blq = blq & data.observed
    lloq = np.where(blq, dv, -np.inf)
    records: Any = data.records.copy()
    is_obs = (records["EVID"].to_numpy() == 0) & (records["MDV"].to_numpy() == 0)
    obs: Any = records[is_obs]
    subject = pd.Index(data.ids).get_indexer(obs["ID"])
    pos = obs.groupby("ID", sort=False).cumcount().to_numpy()
    records["DV"] = records["DV"].astype(float)
    records.loc[is_obs, "DV"] = dv[subject, pos]
    cens = np.zeros(len(records), dtype=int)
    cens[is_obs] = blq[subject, pos].astype(int)
    records["CENS"] = cens
    return Dataset(
        ids=data.ids,
        regimen=data.regimen,
        time=data.time,
        dv=dv,
        observed=data.observed,
        blq=blq,
        lloq=lloq,
        occasion=data.occasion,
        covariates=data.covariates,
        records=records,
        occasion_start=data.occasion_start,
        row_time=data.row_time,
        row_covariates=data.row_covariates,
        obs_row=data.obs_row,
        row_occasion=data.row_occasion,
        interpolation=data.interpolation,
        obs_order=data.obs_order,
        obs_dvid=data.obs_dvid,
    )


def tile(data: Dataset, n: int) -> Dataset:
    """`n` subjects cycling through the subjects of `data`, with IDs 1..n."""
    index = np.arange(n) % data.n_subjects
    sub = data.subset(index)
    groups = {sid: g for sid, g in data.records.groupby("ID", sort=False)}
    records = pd.concat(
        [groups[sid].assign(ID=j + 1) for j, sid in enumerate(data.ids[index].tolist())],
        ignore_index=True,
    )
    return Dataset(
        ids=np.arange(1, n + 1),
        regimen=sub.regimen,
        time=sub.time,
        dv=sub.dv,
        observed=sub.observed,
        blq=sub.blq,
        lloq=sub.lloq,
        occasion=sub.occasion,
        covariates=sub.covariates,
        records=records,
        occasion_start=sub.occasion_start,
        row_time=sub.row_time,
        row_covariates=sub.row_covariates,
        obs_row=sub.obs_row,
        row_occasion=sub.row_occasion,
        interpolation=sub.interpolation,
        obs_order=sub.obs_order,
        obs_dvid=sub.obs_dvid,
    )


def observations_of(data: Dataset, dvid: float | None, who: str) -> np.ndarray:
    """The observations of one kind (`dvid`), a mask; all of them when the data has one kind.
    `ValueError` for a DVID the data does not have, or none given for data with several."""
    m = np.asarray(data.observed, dtype=bool)
    if data.obs_dvid is None:
        if dvid is not None:
            raise ValueError(f"{who}: dvid={dvid!r}, but the data has no DVID column.")
        return m
    values = np.unique(np.asarray(data.obs_dvid)[m])
    shown = [int(v) if float(v).is_integer() else float(v) for v in values]
    if dvid is None:
        if values.size > 1:
            raise ValueError(
                f"{who}: the data has observations of {values.size} kinds (DVID {shown}); "
                "give dvid= for the one to check (one check per output)."
            )
        return m
    if float(dvid) not in values:
        raise ValueError(f"{who}: no observation has DVID={dvid!r}; the data has DVID {shown}.")
    return m & (np.asarray(data.obs_dvid) == float(dvid))
