"""Model diagnostics: simulation, residuals (IWRES, CWRES, NPDE), GOF plots, VPC and SBC.

Everything here works on the design of a `Dataset` (its regimens, observation times and
covariates) and a population model with population values, and is vmapped over subjects (and
replicates). Plots return a `matplotlib.figure.Figure` built without `pyplot` (no global state;
Jupyter displays it, `fig.savefig(path)` writes it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.scipy.special import ndtri
from matplotlib.figure import Figure

from ._data import Dataset
from ._estimators import FOCEI, jacobian
from ._laplace import IndividualFit, PopulationFit, individual_map
from ._model import Exponential, PopulationModel, require_no_iov
from ._random import as_key

#: Population values in any of the accepted forms (see `simulate_dataset`).
Population = PopulationFit | Mapping[str, Any] | None


# ----------------------------------------------------------------------------- population values


def _population(pm: PopulationModel, population: Population) -> tuple[dict[str, Any], Any]:
    """`(phi, natural)`: unconstrained and natural-scale population values."""
    if isinstance(population, PopulationFit):
        phi = population.phi
    elif population is None:
        phi = pm.initial()
    elif isinstance(population.get("omega"), Mapping):
        phi = dict(population)
    else:
        phi = _phi_from_natural(pm, population)
    return phi, pm.natural(phi)


def _phi_from_natural(pm: PopulationModel, nat: Mapping[str, Any]) -> dict[str, Any]:
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


def _modes_for(
    pm: PopulationModel,
    population: Population,
    phi,
    data: Dataset,
    individual: IndividualFit | None,
) -> IndividualFit:
    """The conditional modes: given, the fit's own when it was made on `data`, else MAP."""
    if individual is None and isinstance(population, PopulationFit):
        individual = population.individual
        if not np.array_equal(individual.ids, data.ids):
            individual = None
    if individual is None:
        # Only the modes are needed: the first-order curvature compiles faster (same modes).
        return individual_map(pm, data, phi, estimator=FOCEI())
    if individual.eta.shape != (data.n_subjects, pm.n_eta):
        raise ValueError(
            f"individual modes of shape {individual.eta.shape} do not match the data "
            f"({data.n_subjects} subjects) and the model ({pm.n_eta} etas)."
        )
    return individual


def _subjects(data: Dataset):
    cov = {k: jnp.asarray(v) for k, v in data.covariates.items()}
    return cov, data.regimen, jnp.asarray(data.time)


def _transform(pm: PopulationModel, y):
    """The scale of the residual error: log for `Exponential`, natural otherwise."""
    if isinstance(pm.error, Exponential):
        return jnp.log(jnp.where(y > 0, y, 1.0))
    return y


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
    _, nat = _population(pm, population)
    limit = (
        _default_lloq(data)
        if lloq is None
        else np.broadcast_to(np.asarray(lloq, dtype=float), data.time.shape)
    )
    keys = jax.random.split(as_key(key, "simulate_dataset"), (n_rep, data.n_subjects))
    out = _simulate(pm, nat, data, keys, jnp.asarray(limit))
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


def _simulate(pm: PopulationModel, nat, data: Dataset, keys, limit):
    """Simulated etas, predictions and observations, `(n_rep, subjects, ...)`."""
    cov, reg, time = _subjects(data)
    times = {"time": time, "occasion_start": jnp.asarray(data.occasion_start)}
    observed = jnp.asarray(data.observed)
    return _simulate_jit(pm, nat, keys, cov, reg, times, jnp.asarray(limit), observed)


@eqx.filter_jit
def _simulate_jit(pm: PopulationModel, nat, keys, cov, reg, times, limit, observed):
    chol = jnp.linalg.cholesky(nat["omega"])
    n_occ = times["occasion_start"].shape[-1]
    iov_sd = jnp.tile(jnp.sqrt(nat["iov"]), n_occ) if pm.iov else jnp.zeros(0)
    expo = isinstance(pm.error, Exponential)

    def one(key, c, r, t, lim, obs):
        k_eta, k_eps, k_kap = jax.random.split(key, 3)
        eta = chol @ jax.random.normal(k_eta, (pm.n_eta,))
        kappa = iov_sd * jax.random.normal(k_kap, iov_sd.shape)
        params = pm.individual_params(nat["theta"], c, eta)
        f = pm.predict_random(nat["theta"], c, r, t, jnp.concatenate([eta, kappa]))
        sd = pm.error.sd(f, nat["sigma"])
        eps = jax.random.normal(k_eps, f.shape)
        y = f * jnp.exp(sd * eps) if expo else f + sd * eps
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
    )


def _tile(data: Dataset, n: int) -> Dataset:
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
    )


# ----------------------------------------------------------------------------- residuals


def residuals(
    pm: PopulationModel,
    fit_or_population: Population,
    data: Dataset,
    *,
    key: jax.Array | int,
    n_sim: int = 1000,
    individual: IndividualFit | None = None,
) -> pd.DataFrame:
    """Predictions and residuals of every observation: PRED, IPRED, IWRES, CWRES and NPDE.

    - `PRED`: the population prediction (eta = 0); `IPRED`: the individual prediction at the
      conditional modes (those of the fit when `fit_or_population` is a `PopulationFit` of
      `data`, else `individual_map`); `RES = DV - PRED`, `IRES = DV - IPRED`.
    - `IWRES = (DV - IPRED) / SD(IPRED)`.
    - `CWRES`: conditional weighted residuals (FOCE-I linearisation around the conditional
      modes): with `G = d IPRED / d eta` at the mode `eta*` (`jax.jacfwd`),
      `CPRED = IPRED - G eta*`, `Cov = G Omega G^T + diag(SD(IPRED)^2)` and
      `CWRES = Cov^(-1/2) (DV - CPRED)` per subject (symmetric inverse square root).
    - `NPDE`: normalised prediction distribution errors from `n_sim` replicates of the data
      (`simulate_dataset`): the observations and each replicate are centred on the simulated
      mean (`EPRED`) and decorrelated with the Cholesky factor of the simulated covariance of
      the subject; `pde` is the fraction of decorrelated replicates below the decorrelated
      observation (0 and 1 replaced by `1/n_sim` and `1 - 1/n_sim`) and `NPDE = Phi^-1(pde)`.

    With an `Exponential` error model the residuals are taken on the log scale
    (`log DV - log IPRED`, ...). Censored observations (`BLQ`) are excluded from CWRES and
    NPDE (they are `NaN` and flagged in the `BLQ` column; they also leave the decorrelation
    of the other observations of their subject), as are observations with zero residual
    variance (a proportional error at a zero prediction).

    **Arguments:**

    - `pm`: the population model.
    - `fit_or_population`: a `PopulationFit` or population values (see `simulate_dataset`).
    - `data`: the observations.
    - `key`: PRNG key (or an int) of the NPDE simulations.
    - `n_sim`: number of replicates for NPDE (1000 as in Comets et al. 2008).
    - `individual`: the conditional modes to use (an `IndividualFit` of `data`); by default
      those of the fit, or `individual_map` given the population values.

    **Returns:** a `pandas.DataFrame` with one row per observation (padding dropped):
    `ID, TIME, DV, BLQ, PRED, IPRED, CPRED, EPRED, RES, IRES, IWRES, CWRES, NPDE`.

    References: Hooker, Staatz, Karlsson 2007, Pharm Res 24:2187-2197 (CWRES); Brendel,
    Comets, Laffont, Laveille, Mentré 2006, Pharm Res 23:2036-2049 and Comets, Brendel,
    Mentré 2008, Comput Methods Programs Biomed 90:154-166 (NPDE).
    """
    require_no_iov(pm, "residuals")
    n_obs = int(data.observed.sum(axis=1).max())
    if n_sim <= n_obs:
        raise ValueError(
            f"residuals: NPDE need more replicates than observations per subject (the "
            f"simulated covariance must be invertible); expected n_sim > {n_obs}, got {n_sim}."
        )
    phi, nat = _population(pm, fit_or_population)
    ind = _modes_for(pm, fit_or_population, phi, data, individual)
    cond = _conditional(pm, nat, data, jnp.asarray(ind.eta))
    keys = jax.random.split(as_key(key, "residuals"), (n_sim, data.n_subjects))
    no_limit = jnp.full(data.time.shape, -jnp.inf)
    sims = _simulate(pm, nat, data, keys, no_limit)["dv"]
    valid = cond["valid"]
    npde, epred = _npde(pm, sims, jnp.asarray(data.dv), valid)
    m = data.observed
    cols = {
        "ID": np.broadcast_to(data.ids[:, None], m.shape)[m],
        "TIME": data.time[m],
        "DV": data.dv[m],
        "BLQ": data.blq[m],
    }
    for name in ("PRED", "IPRED", "CPRED"):
        cols[name] = np.asarray(cond[name.lower()])[m]
    cols["EPRED"] = np.asarray(epred)[m]
    cols["RES"] = np.where(data.blq[m], np.nan, cols["DV"] - cols["PRED"])
    cols["IRES"] = np.where(data.blq[m], np.nan, cols["DV"] - cols["IPRED"])
    cols["IWRES"] = np.asarray(cond["iwres"])[m]
    cols["CWRES"] = np.asarray(cond["cwres"])[m]
    cols["NPDE"] = np.asarray(npde)[m]
    return pd.DataFrame(cols)


def _conditional(pm: PopulationModel, nat, data: Dataset, eta):
    """PRED, IPRED, CPRED, IWRES and CWRES of every subject (vmapped)."""
    cov, reg, time = _subjects(data)
    usable = jnp.asarray(data.observed & ~data.blq)
    dv = jnp.asarray(data.dv)
    return _conditional_jit(pm, nat, cov, reg, time, dv, usable, eta)


@eqx.filter_jit
def _conditional_jit(pm: PopulationModel, nat, cov, reg, time, dv, usable, eta):
    omega = nat["omega"]
    expo = isinstance(pm.error, Exponential)

    def one(c, r, t, y_obs, ok, e):
        def f_of(e):
            return pm.predict(pm.individual_params(nat["theta"], c, e), r, t)

        def h(e):
            return _transform(pm, f_of(e))

        ipred = f_of(e)
        pred = f_of(jnp.zeros_like(e))
        g = jacobian(h, e)
        sd = pm.error.sd(ipred, nat["sigma"])
        y = _transform(pm, y_obs)
        ok = ok & (sd > 0)
        if expo:
            ok = ok & (ipred > 0) & (y_obs > 0)
        n = t.shape[0]
        cpred_t = h(e) - g @ e
        both = ok[:, None] & ok[None, :]
        cmat = jnp.where(both, g @ omega @ g.T + jnp.diag(sd**2), jnp.eye(n))
        res = jnp.where(ok, y - cpred_t, 0.0)
        w, q = jnp.linalg.eigh(cmat)
        cwres = q @ ((q.T @ res) / jnp.sqrt(w))
        iwres = (y - h(e)) / jnp.where(ok, sd, 1.0)
        return {
            "pred": pred,
            "ipred": ipred,
            "cpred": jnp.exp(cpred_t) if expo else cpred_t,
            "iwres": jnp.where(ok, iwres, jnp.nan),
            "cwres": jnp.where(ok, cwres, jnp.nan),
            "valid": ok,
        }

    return jax.vmap(one)(cov, reg, time, dv, usable, eta)


@eqx.filter_jit
def _npde(pm: PopulationModel, sims, dv, valid):
    """NPDE and EPRED from replicates `sims` `(K, subjects, obs)` (uncensored)."""
    k = sims.shape[0]

    def one(ysim, y_obs, ok):
        epred = jnp.mean(ysim, axis=0)
        ys = _transform(pm, ysim)
        yo = _transform(pm, y_obs)
        mean = jnp.mean(ys, axis=0)
        dev = jnp.where(ok[None, :], ys - mean[None, :], 0.0)
        n = ok.shape[0]
        v = dev.T @ dev / (k - 1)
        v = jnp.where(ok[:, None] & ok[None, :], v, jnp.eye(n))
        low = jnp.linalg.cholesky(v)
        z_obs = jax.scipy.linalg.solve_triangular(low, jnp.where(ok, yo - mean, 0.0), lower=True)
        z_sim = jax.scipy.linalg.solve_triangular(low, dev.T, lower=True).T
        pde = jnp.mean((z_sim < z_obs[None, :]).astype(z_sim.dtype), axis=0)
        pde = jnp.clip(pde, 1.0 / k, 1.0 - 1.0 / k)
        return jnp.where(ok, ndtri(pde), jnp.nan), epred

    return jax.vmap(one, in_axes=(1, 0, 0))(sims, dv, valid)


@eqx.filter_jit
def _curves(pm: PopulationModel, nat, cov, reg, time, eta):
    """`(IPRED, PRED)` of every subject at its own `time` row."""

    def one(c, r, t, e):
        ipred = pm.predict(pm.individual_params(nat["theta"], c, e), r, t)
        pred = pm.predict(pm.individual_params(nat["theta"], c, jnp.zeros_like(e)), r, t)
        return ipred, pred

    return jax.vmap(one)(cov, reg, time, eta)


# ----------------------------------------------------------------------------- GOF plots


def gof_plots(res: pd.DataFrame, *, log: bool = False, figsize=(13.0, 8.0)) -> Figure:
    """Goodness-of-fit panels from `residuals(...)`: a 2 x 3 grid.

    DV vs PRED and DV vs IPRED (identity lines), CWRES vs TIME, CWRES vs PRED, NPDE vs TIME
    and NPDE vs PRED (zero and +-1.96 lines). A binned mean (red) helps to see trends.
    Censored observations are left out of the panels. `log=True` puts DV and predictions on
    log axes (non-positive values are then not drawn).
    """
    d = res[~res["BLQ"].to_numpy(dtype=bool)]
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(2, 3)
    for ax, pred in zip(axes[0, :2], ("PRED", "IPRED"), strict=True):
        x, y = np.asarray(d[pred], dtype=float), np.asarray(d["DV"], dtype=float)
        ax.scatter(x, y, s=12, alpha=0.6, color="C0")
        finite = np.concatenate([x, y])
        lo, hi = _limits(finite, log)
        ax.plot([lo, hi], [lo, hi], color="k", lw=1)
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(pred)
        ax.set_ylabel("DV")
        ax.set_title(f"DV vs {pred}")
    for ax, (yname, xname) in zip(
        [axes[0, 2], axes[1, 0], axes[1, 1], axes[1, 2]],
        [("CWRES", "TIME"), ("CWRES", "PRED"), ("NPDE", "TIME"), ("NPDE", "PRED")],
        strict=True,
    ):
        x, y = np.asarray(d[xname], dtype=float), np.asarray(d[yname], dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[ok], y[ok], s=12, alpha=0.6, color="C0")
        for level, style in ((0.0, "-"), (1.96, "--"), (-1.96, "--")):
            ax.axhline(level, color="k", lw=1, ls=style)
        bx, by = _binned_mean(x[ok], y[ok])
        ax.plot(bx, by, color="C3", lw=1.5)
        if log and xname == "PRED":
            ax.set_xscale("log")
        ax.set_xlabel(xname)
        ax.set_ylabel(yname)
        ax.set_title(f"{yname} vs {xname}")
    return fig


def _limits(values: np.ndarray, log: bool) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if log:
        v = v[v > 0]
    if v.size == 0:
        return (1e-3, 1.0) if log else (0.0, 1.0)
    return float(v.min()), float(v.max())


def _binned_mean(x: np.ndarray, y: np.ndarray, n_bins: int = 10):
    if x.size < 2 * n_bins:
        return np.array([]), np.array([])
    order = np.argsort(x)
    chunks = np.array_split(order, n_bins)
    return (
        np.array([np.median(x[c]) for c in chunks]),
        np.array([np.mean(y[c]) for c in chunks]),
    )


def individual_plots(
    pm: PopulationModel,
    fit_or_population: Population,
    data: Dataset,
    *,
    ids: Sequence[Any] | None = None,
    n_grid: int = 200,
    ncols: int = 4,
    log: bool = False,
    max_panels: int = 48,
    individual: IndividualFit | None = None,
) -> Figure:
    """One panel per subject: observations, IPRED (solid) and PRED (dashed) on a fine grid.

    Censored observations are drawn as open triangles at their LLOQ. The curves run from 0 to
    the subject's last observation time with the individual modes of the fit (or of
    `individual_map` for population values).

    **Arguments:**

    - `pm`, `fit_or_population`, `data`: as `residuals`.
    - `ids`: the subjects to draw (default all); more than `max_panels` raises, naming `ids`.
    - `n_grid`: points of each curve; `ncols`: panels per row; `log`: log concentration axis.
    - `individual`: the conditional modes to draw (as in `residuals`).
    """
    require_no_iov(pm, "individual_plots")
    phi, nat = _population(pm, fit_or_population)
    ind = _modes_for(pm, fit_or_population, phi, data, individual)
    if ids is None:
        index = np.arange(data.n_subjects)
    else:
        pos = {sid: i for i, sid in enumerate(data.ids.tolist())}
        unknown = [s for s in ids if s not in pos]
        if unknown:
            raise ValueError(f"individual_plots: no subject with ID {unknown} in the data.")
        index = np.asarray([pos[s] for s in ids], dtype=int)
    if index.size > max_panels:
        raise ValueError(
            f"individual_plots: {index.size} subjects would make {index.size} panels "
            f"(max_panels={max_panels}); choose some with `ids=` or raise `max_panels`."
        )
    if index.size == 0:
        raise ValueError("individual_plots: expected at least one subject, got none.")
    sub = data.subset(index)
    tmax = np.where(sub.observed, sub.time, 0.0).max(axis=1)
    tmax = np.where(tmax > 0, tmax, 1.0)
    grid = jnp.asarray(tmax[:, None] * np.linspace(0.0, 1.0, n_grid)[None, :])
    cov, reg, _ = _subjects(sub)
    eta = jnp.asarray(ind.eta[index])

    ipred, pred = _curves(pm, nat, cov, reg, grid, eta)
    ipred, pred, grid_np = np.asarray(ipred), np.asarray(pred), np.asarray(grid)
    n = index.size
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.6 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=False, squeeze=False)).ravel()
    for k in range(n):
        ax = axes[k]
        m = sub.observed[k]
        t, y, b = sub.time[k][m], sub.dv[k][m], sub.blq[k][m]
        ax.plot(grid_np[k], ipred[k], color="C0", lw=1.5, label="IPRED")
        ax.plot(grid_np[k], pred[k], color="C1", lw=1.2, ls="--", label="PRED")
        ax.scatter(t[~b], y[~b], s=14, color="k", zorder=3, label="DV")
        if b.any():
            ax.scatter(
                t[b],
                y[b],
                s=20,
                marker="v",
                facecolors="none",
                edgecolors="k",
                zorder=3,
                label="BLQ (at LLOQ)",
            )
        if log:
            ax.set_yscale("log")
        ax.set_title(f"ID {sub.ids[k]}", fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in axes[n:]:
        fig.delaxes(ax)
    axes[0].legend(fontsize=7)
    fig.supxlabel("TIME (h)")
    fig.supylabel("DV")
    return fig


# ----------------------------------------------------------------------------- VPC


@dataclasses.dataclass(frozen=True)
class VPCResult:
    """A (prediction-corrected) visual predictive check, binned by time.

    - `edges`: `(n_bins + 1,)` bin edges (h); `time`: `(n_bins,)` median observation time of
      each bin; `n`: observations per bin;
    - `quantiles`: the percentiles checked (fractions, e.g. 0.05, 0.5, 0.95);
    - `observed`: `(n_bins, n_quantiles)` percentiles of the observations (`NaN` where the
      fraction of censored observations in the bin reaches the percentile: it lies below
      the LLOQ);
    - `simulated`: `(n_bins, n_quantiles, 3)` the lower bound, median and upper bound (the
      central `ci` interval over replicates) of each simulated percentile;
    - `frac_blq`, `frac_blq_simulated` `(n_bins, 3)`: the observed fraction of censored
      observations and its simulated interval (None when the data has none);
    - `observations`: the observations (`ID, TIME, DV, BLQ, PRED, BIN`; `DV` prediction
      corrected when `pred_corrected`);
    - `n_excluded`: observations left out (prediction correction at `PRED <= 0`).
    """

    edges: np.ndarray
    time: np.ndarray
    n: np.ndarray
    quantiles: tuple[float, ...]
    observed: np.ndarray
    simulated: np.ndarray
    ci: float
    pred_corrected: bool
    frac_blq: np.ndarray | None
    frac_blq_simulated: np.ndarray | None
    observations: pd.DataFrame
    n_excluded: int
    n_rep: int

    @property
    def inside(self) -> np.ndarray:
        """`(n_bins, n_quantiles)`: observed percentile within its simulated interval
        (`NaN` percentiles, below the LLOQ, count as inside)."""
        o = self.observed
        lo, hi = self.simulated[..., 0], self.simulated[..., 2]
        return ~np.isfinite(o) | ((o >= lo) & (o <= hi))

    def plot(self, *, log: bool = False, show_data: bool = True, figsize=(7.0, 5.0)) -> Figure:
        """Observed percentiles (lines) over the simulated intervals (bands).

        Median: solid line over a red band; outer percentiles: dashed lines over blue bands.
        With censored data a second panel shows the fraction below the LLOQ.
        """
        blq = self.frac_blq is not None and self.frac_blq_simulated is not None
        fig = Figure(
            figsize=(figsize[0], figsize[1] * (1.35 if blq else 1.0)), layout="constrained"
        )
        if blq:
            ax, ax_blq = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        else:
            ax, ax_blq = fig.subplots(1, 1), None
        obs = self.observations
        if show_data:
            d = obs[~obs["BLQ"].to_numpy(dtype=bool)]
            ax.scatter(d["TIME"], d["DV"], s=6, color="0.6", alpha=0.5, zorder=1)
        t = self.time
        mid = len(self.quantiles) // 2
        for j, q in enumerate(self.quantiles):
            colour = "C3" if j == mid else "C0"
            ax.fill_between(
                t, self.simulated[:, j, 0], self.simulated[:, j, 2], color=colour, alpha=0.25, lw=0
            )
            ax.plot(
                t,
                self.observed[:, j],
                color="k",
                lw=1.6 if j == mid else 1.0,
                ls="-" if j == mid else "--",
                marker="o",
                ms=3,
                label=f"observed {100 * q:g}th",
            )
        for e in self.edges:
            ax.axvline(e, color="0.85", lw=0.6, zorder=0)
        if log:
            ax.set_yscale("log")
        name = "prediction-corrected DV" if self.pred_corrected else "DV"
        ax.set_ylabel(name)
        ax.set_title(
            f"{'pcVPC' if self.pred_corrected else 'VPC'}: {self.n_rep} replicates, "
            f"{100 * self.ci:g}% intervals of the simulated percentiles"
        )
        ax.legend(fontsize=8)
        if ax_blq is not None and self.frac_blq is not None:
            sim = self.frac_blq_simulated
            assert sim is not None
            ax_blq.fill_between(t, sim[:, 0], sim[:, 2], color="C2", alpha=0.3, lw=0)
            ax_blq.plot(t, self.frac_blq, color="k", marker="o", ms=3)
            ax_blq.set_ylabel("fraction BLQ")
            ax_blq.set_xlabel("TIME (h)")
        else:
            ax.set_xlabel("TIME (h)")
        return fig


def vpc(
    pm: PopulationModel,
    population: Population,
    data: Dataset,
    *,
    key: jax.Array | int,
    n_rep: int = 500,
    bins: int | Sequence[float] = 8,
    pred_corrected: bool = False,
    quantiles: Sequence[float] = (0.05, 0.5, 0.95),
    ci: float = 0.95,
) -> VPCResult:
    """Visual predictive check: observed percentiles against their simulated distribution.

    `n_rep` replicates of the data are simulated (`simulate_dataset`, censored like the
    data). In each time bin the `quantiles` of the observations are compared with the central
    `ci` interval, over replicates, of the same quantiles of the simulated observations.

    Prediction correction (`pred_corrected=True`) removes the variability that comes from
    the design (doses, covariates, times within a bin): every observed and simulated value is
    multiplied by `PRED_bin / PRED`, `PRED_bin` the median population prediction of its bin
    (lower bound 0). Observations with `PRED <= 0` cannot be corrected and are left out
    (counted in `n_excluded`).

    **Arguments:**

    - `pm`, `population`, `data`: as `simulate_dataset`.
    - `key`: PRNG key (or an int) of the simulations; `n_rep`: number of replicates.
    - `bins`: a number of bins (edges at quantiles of the observation times; when the design
      has no more distinct times than that, one bin per time) or the bin edges (h), which
      must cover every observation time.
    - `pred_corrected`: the pcVPC; `quantiles`: the percentiles (fractions); `ci`: width of
      the simulated intervals.

    **Returns:** a `VPCResult` (`.plot()` draws it).

    References: Bergstrand, Hooker, Wallin, Karlsson 2011, AAPS J 13:143-151 (pcVPC).
    """
    quantiles = tuple(float(q) for q in quantiles)
    if not all(0.0 < q < 1.0 for q in quantiles):
        raise ValueError(f"vpc: quantiles must lie in (0, 1), got {quantiles}.")
    sim = simulate_dataset(pm, population, data, key=as_key(key, "vpc"), n_rep=n_rep)
    m = data.observed
    t_all = data.time[m]
    edges = _bin_edges(t_all, bins)
    bin_of = np.clip(np.searchsorted(edges, t_all, side="right") - 1, 0, edges.size - 2)
    dv = data.dv[m].astype(float)
    blq = data.blq[m]
    sdv = sim.dv[:, m]
    sblq = sim.blq[:, m]
    pred = _pred(pm, population, data)[m]
    keep = np.ones(t_all.shape, dtype=bool)
    if pred_corrected:
        keep = pred > 0
        med = np.array(
            [
                np.median(pred[keep & (bin_of == b)]) if np.any(keep & (bin_of == b)) else np.nan
                for b in range(edges.size - 1)
            ]
        )
        ratio = np.where(keep, med[bin_of] / np.where(keep, pred, 1.0), np.nan)
        dv = dv * ratio
        sdv = sdv * ratio[None, :]
    n_bins = edges.size - 1
    nq = len(quantiles)
    observed = np.full((n_bins, nq), np.nan)
    simulated = np.full((n_bins, nq, 3), np.nan)
    times = np.full(n_bins, np.nan)
    counts = np.zeros(n_bins, dtype=int)
    any_blq = bool(data.blq[m].any())
    frac = np.full(n_bins, np.nan) if any_blq else None
    frac_sim = np.full((n_bins, 3), np.nan) if any_blq else None
    lo, hi = 50.0 * (1.0 - ci), 50.0 * (1.0 + ci)
    for b in range(n_bins):
        sel = keep & (bin_of == b)
        counts[b] = int(sel.sum())
        if counts[b] == 0:
            continue
        times[b] = np.median(t_all[sel])
        obs_q = np.quantile(dv[sel], quantiles)
        sim_q = np.quantile(sdv[:, sel], quantiles, axis=1)  # (nq, n_rep)
        simulated[b] = np.percentile(sim_q, [lo, 50.0, hi], axis=1).T
        if frac is not None and frac_sim is not None:
            f_obs = float(np.mean(blq[sel]))
            f_sim = np.mean(sblq[:, sel], axis=1)
            frac[b] = f_obs
            frac_sim[b] = np.percentile(f_sim, [lo, 50.0, hi])
            obs_q = np.where(np.asarray(quantiles) <= f_obs, np.nan, obs_q)
        observed[b] = obs_q
    nonempty = counts > 0
    observations = pd.DataFrame(
        {
            "ID": np.broadcast_to(data.ids[:, None], m.shape)[m][keep],
            "TIME": t_all[keep],
            "DV": dv[keep],
            "BLQ": blq[keep],
            "PRED": pred[keep],
            "BIN": bin_of[keep],
        }
    )
    return VPCResult(
        edges=edges,
        time=times[nonempty],
        n=counts[nonempty],
        quantiles=quantiles,
        observed=observed[nonempty],
        simulated=simulated[nonempty],
        ci=ci,
        pred_corrected=pred_corrected,
        frac_blq=None if frac is None else frac[nonempty],
        frac_blq_simulated=None if frac_sim is None else frac_sim[nonempty],
        observations=observations,
        n_excluded=int((~keep).sum()),
        n_rep=n_rep,
    )


def _bin_edges(t: np.ndarray, bins: int | Sequence[float]) -> np.ndarray:
    if isinstance(bins, int | np.integer):
        if bins < 1:
            raise ValueError(f"vpc: expected at least one bin, got bins={bins}.")
        ut = np.unique(t)
        if ut.size <= bins:
            mids = 0.5 * (ut[1:] + ut[:-1])
            return np.concatenate([[ut[0]], mids, [ut[-1]]])
        return np.unique(np.quantile(t, np.linspace(0.0, 1.0, int(bins) + 1)))
    edges = np.asarray(bins, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"vpc: bin edges must be increasing, at least two, got {edges}.")
    if t.min() < edges[0] or t.max() > edges[-1]:
        raise ValueError(
            f"vpc: bin edges [{edges[0]}, {edges[-1]}] do not cover the observation times "
            f"[{t.min()}, {t.max()}] h."
        )
    return edges


def _pred(pm: PopulationModel, population: Population, data: Dataset) -> np.ndarray:
    _, nat = _population(pm, population)
    cov, reg, time = _subjects(data)
    eta = jnp.zeros((data.n_subjects, pm.n_eta))
    return np.asarray(_curves(pm, nat, cov, reg, time, eta)[1])


# ----------------------------------------------------------------------------- SBC

#: `posterior(pm, phi, data, *, key, n_draws) -> (subjects, n_draws, n_eta)` eta draws.
PosteriorFn = Callable[..., Any]


def laplace_posterior(
    pm: PopulationModel,
    phi: Mapping[str, Any],
    data: Dataset,
    *,
    key: jax.Array | int,
    n_draws: int,
) -> np.ndarray:
    """Draws from the Laplace approximation of each subject's eta posterior.

    `N(eta*, H^-1)` with the MAP `eta*` and the inverse Hessian from `individual_map` given
    the population values `phi` (unconstrained, `pm.initial()` form); `key` (a JAX PRNG key
    or an int) draws the normal deviates.

    **Returns:** `(subjects, n_draws, n_eta)` draws.
    """
    require_no_iov(pm, "laplace_posterior")
    key = as_key(key, "laplace_posterior")
    ind = individual_map(pm, data, dict(phi))
    chol = np.linalg.cholesky(0.5 * (ind.cov + np.swapaxes(ind.cov, -1, -2)))
    z = np.asarray(jax.random.normal(key, (data.n_subjects, n_draws, pm.n_eta)))
    return ind.eta[:, None, :] + np.einsum("sij,sdj->sdi", chol, z)


@dataclasses.dataclass(frozen=True)
class SBCResult:
    """Simulation-based calibration of individual posteriors.

    - `eta_names`: the parameters (with an eta); `truth`: `(n_sims, n_eta)` the true etas;
    - `ranks`: `(n_sims, n_eta)` the number of posterior draws below the truth (0..`n_draws`);
      uniform on 0..`n_draws` when the posterior is calibrated;
    - `coverage`: a DataFrame, one row per parameter, one column per central interval level:
      the fraction of simulated subjects whose interval (draw quantiles) holds the truth;
    - `mean`, `sd`: `(n_sims, n_eta)` posterior means and SDs (of the draws);
    - `data`: the simulated subjects (a `Dataset`).
    """

    eta_names: tuple[str, ...]
    truth: np.ndarray
    ranks: np.ndarray
    n_draws: int
    coverage: pd.DataFrame
    mean: np.ndarray
    sd: np.ndarray
    data: Dataset

    @property
    def n_sims(self) -> int:
        return int(self.truth.shape[0])

    def uniformity_pvalue(self, n_bins: int = 20) -> dict[str, float]:
        """Chi-square test of uniform ranks, per parameter (`n_bins` equal bins)."""
        from scipy import stats

        out = {}
        for j, name in enumerate(self.eta_names):
            counts = _rank_counts(self.ranks[:, j], self.n_draws, n_bins)
            out[name] = float(stats.chisquare(counts).pvalue)
        return out

    def plot(self, *, n_bins: int = 20, figsize_per_panel=(3.6, 3.0)) -> Figure:
        """Rank histograms, one panel per parameter, with the 99% band of uniform counts."""
        from scipy import stats

        d = len(self.eta_names)
        fig = Figure(figsize=(figsize_per_panel[0] * d, figsize_per_panel[1]), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, d, squeeze=False)).ravel()
        expected = self.n_sims / n_bins
        band = stats.binom.ppf([0.005, 0.5, 0.995], self.n_sims, 1.0 / n_bins)
        for j, name in enumerate(self.eta_names):
            ax = axes[j]
            counts = _rank_counts(self.ranks[:, j], self.n_draws, n_bins)
            ax.axhspan(band[0], band[2], color="0.85")
            ax.axhline(expected, color="0.4", lw=1)
            ax.bar(
                np.arange(n_bins), counts, width=1.0, color="C0", edgecolor="white", align="edge"
            )
            cov90 = self.coverage.loc[name].get(0.9, np.nan)
            ax.set_title(f"{name}: 90% coverage {cov90:.3f}", fontsize=9)
            ax.set_xlabel(f"rank bin (of {self.n_draws + 1} ranks)")
        axes[0].set_ylabel("subjects")
        return fig


def _rank_counts(ranks: np.ndarray, n_draws: int, n_bins: int) -> np.ndarray:
    b = np.minimum((ranks * n_bins) // (n_draws + 1), n_bins - 1)
    return np.bincount(b.astype(int), minlength=n_bins)


def sbc(
    pm: PopulationModel,
    data_design: Dataset,
    *,
    key: jax.Array | int,
    n_sims: int = 200,
    population: Population = None,
    posterior: PosteriorFn = laplace_posterior,
    n_draws: int = 999,
    levels: Sequence[float] = (0.5, 0.9, 0.95),
) -> SBCResult:
    """Simulation-based calibration of the individual posteriors (the twins).

    `n_sims` subjects (cycling through the subjects of `data_design`: their regimens, times
    and covariates) get true etas drawn from the prior `N(0, Omega)` and observations
    simulated from the model (`simulate_dataset`, censored like the design). Each subject's
    posterior given the true population values is then computed once for all subjects
    (vmapped) and compared with the truth: central-interval coverage and the rank of the truth
    among `n_draws` posterior draws (uniform for a calibrated posterior).

    **Arguments:**

    - `pm`: the population model; `data_design`: the design (its DV are ignored).
    - `key`: PRNG key (or an int); `n_sims`: number of simulated subjects.
    - `population`: the true population values (see `simulate_dataset`; default the model's).
    - `posterior`: `posterior(pm, phi, data, *, key, n_draws) -> (subjects, n_draws, n_eta)`
      eta draws; default `laplace_posterior` (MAP and inverse Hessian, normal on the eta
      scale). Pass another function for NUTS or SVI posteriors.
    - `n_draws`: posterior draws per subject (ranks take `n_draws + 1` values).
    - `levels`: central interval levels whose coverage is reported.

    **Returns:** an `SBCResult` (`.coverage`, `.ranks`, `.plot()`).

    References: Talts, Betancourt, Simpson, Vehtari, Gelman 2018, arXiv:1804.06788.
    """
    require_no_iov(pm, "sbc")
    if n_sims < 1 or n_draws < 1:
        raise ValueError(f"sbc: expected n_sims, n_draws >= 1, got {n_sims}, {n_draws}.")
    phi, _ = _population(pm, population)
    k_sim, k_post = jax.random.split(as_key(key, "sbc"))
    design = _tile(data_design, n_sims)
    sim = simulate_dataset(pm, phi, design, key=k_sim)
    data = sim.dataset(0)
    draws = np.asarray(posterior(pm, phi, data, key=k_post, n_draws=n_draws))
    expected = (n_sims, n_draws, pm.n_eta)
    if draws.shape != expected:
        raise ValueError(
            f"sbc: posterior returned draws of shape {draws.shape}, expected {expected}."
        )
    truth = sim.eta[0]
    ranks = np.sum(draws < truth[:, None, :], axis=1)
    rows = {}
    for p in levels:
        q = np.quantile(draws, [(1.0 - p) / 2.0, (1.0 + p) / 2.0], axis=1)
        rows[float(p)] = np.mean((q[0] <= truth) & (truth <= q[1]), axis=0)
    coverage = pd.DataFrame(rows, index=pd.Index(list(pm.eta_names), name="parameter"))
    return SBCResult(
        eta_names=pm.eta_names,
        truth=truth,
        ranks=ranks,
        n_draws=n_draws,
        coverage=coverage,
        mean=draws.mean(axis=1),
        sd=draws.std(axis=1, ddof=1),
        data=data,
    )
