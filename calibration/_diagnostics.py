"""Model diagnostics: residuals (IWRES, CWRES, NPDE), GOF plots and individual plots.

Everything here works on the design of a `Dataset` (its regimens, observation times and
covariates) and a population model with population values, and is vmapped over subjects (and
replicates). Plots return a `matplotlib.figure.Figure` built without `pyplot` (no global state;
Jupyter displays it, `fig.savefig(path)` writes it). Simulation is in `_simulation`, the VPC
and SBC in `_predictive`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.scipy.special import ndtri

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from ._data import Dataset
from ._estimators import FOCEI, jacobian
from ._laplace import IndividualFit, PopulationFit, individual_map
from ._model import PopulationModel, log_scale, residual_sd
from ._random import as_key
from ._simulation import (
    Population,
    curves,
    grid_rows,
    observations_of,
    population_values,
    simulate_replicates,
    subject_design,
)


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
    want = (data.n_subjects, data.n_occasions, len(pm.iov))
    if pm.iov and (individual.kappa is None or individual.kappa.shape != want):
        got = None if individual.kappa is None else individual.kappa.shape
        raise ValueError(
            f"individual modes: the model has IOV on {list(pm.iov_names)}, so the modes need "
            f"kappas of shape (subjects, occasions, n_iov) = {want}; got {got}."
        )
    return individual


def _random_effects(pm: PopulationModel, ind: IndividualFit) -> jnp.ndarray:
    """Each subject's random effects at its modes: etas, then (IOV) the kappas of every
    occasion, occasion-major (`PopulationModel.n_random`); 0 for the kappas of occasions a
    subject does not have (their mode: they do not touch its data)."""
    if not pm.iov or ind.kappa is None:
        return jnp.asarray(ind.eta)
    kappa = np.nan_to_num(ind.kappa, nan=0.0).reshape(ind.eta.shape[0], -1)
    return jnp.asarray(np.concatenate([ind.eta, kappa], axis=1))


def _transform(pm: PopulationModel, y, which=None):
    """The scale of the residual error: log for `Exponential`, natural otherwise (for
    `ByOutput`, each observation its own part's: `which`)."""
    flag = log_scale(pm.error, which)
    if flag is True:
        return jnp.log(jnp.where(y > 0, y, 1.0))
    if flag is False:
        return y
    return jnp.where(flag, jnp.log(jnp.where(y > 0, y, 1.0)), y)


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
    - With inter-occasion variability the random effects are the etas and the kappas of
      every occasion (`eta*` their joint modes, `fit.individual.kappa`; `Omega` the
      block-diagonal covariance of both, `PopulationModel.random_cholesky`): IPRED uses the
      kappas of each observation's occasion, CWRES linearise in both, and NPDE simulate new
      etas and kappas (`simulate_dataset`). PRED has the kappas at 0.
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
    `ID, TIME, DV, BLQ, PRED, IPRED, CPRED, EPRED, RES, IRES, IWRES, CWRES, NPDE`; for a model
    with IOV also `OCC`, the 0-based occasion of each observation (`Dataset.occasion`); for
    data with a DVID column also `DVID` (a `ByOutput` model: each observation's residuals
    use its own output's error model, and `gof_plots` and `vpc` take one output at a time).

    References: Hooker, Staatz, Karlsson 2007, Pharm Res 24:2187-2197 (CWRES); Brendel,
    Comets, Laffont, Laveille, Mentré 2006, Pharm Res 23:2036-2049 and Comets, Brendel,
    Mentré 2008, Comput Methods Programs Biomed 90:154-166 (NPDE).
    """
    n_obs = int(data.observed.sum(axis=1).max())
    if n_sim <= n_obs:
        raise ValueError(
            f"residuals: NPDE need more replicates than observations per subject (the "
            f"simulated covariance must be invertible); expected n_sim > {n_obs}, got {n_sim}."
        )
    phi, nat = population_values(pm, fit_or_population)
    ind = _modes_for(pm, fit_or_population, phi, data, individual)
    cond = _conditional(pm, nat, data, _random_effects(pm, ind))
    keys = jax.random.split(as_key(key, "residuals"), (n_sim, data.n_subjects))
    no_limit = jnp.full(data.time.shape, -jnp.inf)
    sims = simulate_replicates(pm, nat, data, keys, no_limit)["dv"]
    valid = cond["valid"]
    dvid = data.record_arrays().get("dvid", jnp.zeros(data.time.shape))
    npde, epred = _npde(pm, sims, jnp.asarray(data.dv), valid, dvid)
    m = data.observed
    cols = {
        "ID": np.broadcast_to(data.ids[:, None], m.shape)[m],
        "TIME": data.time[m],
        "DV": data.dv[m],
        "BLQ": data.blq[m],
    }
    if pm.iov:
        cols["OCC"] = np.asarray(data.occasion)[m]
    if data.obs_dvid is not None:
        cols["DVID"] = np.asarray(data.obs_dvid)[m]
    for name in ("PRED", "IPRED", "CPRED"):
        cols[name] = np.asarray(cond[name.lower()])[m]
    cols["EPRED"] = np.asarray(epred)[m]
    cols["RES"] = np.where(data.blq[m], np.nan, cols["DV"] - cols["PRED"])
    cols["IRES"] = np.where(data.blq[m], np.nan, cols["DV"] - cols["IPRED"])
    cols["IWRES"] = np.asarray(cond["iwres"])[m]
    cols["CWRES"] = np.asarray(cond["cwres"])[m]
    cols["NPDE"] = np.asarray(npde)[m]
    return pd.DataFrame(cols)


def _conditional(pm: PopulationModel, nat, data: Dataset, b):
    """PRED, IPRED, CPRED, IWRES and CWRES of every subject (vmapped) at its random effects
    `b` (etas, and with IOV the kappas of every occasion: `_random_effects`)."""
    cov, reg, time = subject_design(data, "residuals", rows=True)
    usable = jnp.asarray(data.observed & ~data.blq)
    dv = jnp.asarray(data.dv)
    start = jnp.asarray(data.occasion_start)
    order = data.record_arrays() | data.row_arrays()
    return _conditional_jit(pm, nat, cov, reg, time, start, dv, usable, b, order)


@eqx.filter_jit
def _conditional_jit(pm: PopulationModel, nat, cov, reg, time, start, dv, usable, b, order):
    omega = nat["omega"]
    if pm.iov:
        # The covariance of all random effects: Omega, then the IOV variances of each
        # occasion (block diagonal; PopulationModel.random_cholesky squared).
        kap = jnp.tile(jnp.asarray(nat["iov"]), start.shape[-1])
        omega = jax.scipy.linalg.block_diag(omega, jnp.diag(kap))

    def one(c, r, t, s, y_obs, ok, e, o):
        which = pm.which(o)
        expo = log_scale(pm.error, which)

        def f_of(e):
            if pm.iov or "row_time" in o:  # occasions, or time-varying covariates
                obs = {"time": t, "occasion_start": s} | o
                return pm.predict_random(nat["theta"], c, r, obs, e)
            return pm.predict(
                pm.individual_params(nat["theta"], c, e), r, t, o.get("order"), o.get("dvid")
            )

        def h(e):
            return _transform(pm, f_of(e), which)

        ipred = f_of(e)
        pred = f_of(jnp.zeros_like(e))
        g = jacobian(h, e)
        sd = residual_sd(pm.error, nat["sigma"], ipred, which)
        y = _transform(pm, y_obs, which)
        ok = ok & (sd > 0)
        if expo is not False:
            ok = ok & jnp.where(expo, (ipred > 0) & (y_obs > 0), True)
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
            "cpred": jnp.where(expo, jnp.exp(cpred_t), cpred_t),
            "iwres": jnp.where(ok, iwres, jnp.nan),
            "cwres": jnp.where(ok, cwres, jnp.nan),
            "valid": ok,
        }

    return jax.vmap(one)(cov, reg, time, start, dv, usable, b, order)


@eqx.filter_jit
def _npde(pm: PopulationModel, sims, dv, valid, dvid):
    """NPDE and EPRED from replicates `sims` `(K, subjects, obs)` (uncensored)."""
    k = sims.shape[0]

    def one(ysim, y_obs, ok, d):
        which = pm.which({"dvid": d})
        epred = jnp.mean(ysim, axis=0)
        ys = _transform(pm, ysim, which)
        yo = _transform(pm, y_obs, which)
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

    return jax.vmap(one, in_axes=(1, 0, 0, 0))(sims, dv, valid, dvid)


# ----------------------------------------------------------------------------- GOF plots


def gof_plots(
    res: pd.DataFrame,
    *,
    log: bool = False,
    figsize=(13.0, 8.0),
    dvid: float | None = None,
    unit: str | None = None,
    time_unit: str = "h",
) -> Figure:
    """Goodness-of-fit panels from `residuals(...)`: a 2 x 3 grid.

    DV vs PRED and DV vs IPRED (identity lines), CWRES vs TIME, CWRES vs PRED, NPDE vs TIME
    and NPDE vs PRED (zero and +-1.96 lines). A binned mean (red) helps to see trends.
    Censored observations are left out of the panels. `log=True` puts DV and predictions on
    log axes (non-positive values are then not drawn). `unit` (of DV, e.g. `"mg/L"`) and
    `time_unit` label the axes. For residuals of several kinds of observation (a `DVID`
    column with several values: a joint model) give `dvid=`, the kind drawn (one set of
    panels per output).
    """
    if "DVID" in res.columns:
        kinds = np.unique(res["DVID"].to_numpy(dtype=float))
        if dvid is None and kinds.size > 1:
            raise ValueError(
                f"gof_plots: the residuals hold {kinds.size} kinds of observation (DVID "
                f"{[int(k) if float(k).is_integer() else float(k) for k in kinds]}); give "
                "dvid= for the one to draw."
            )
        if dvid is not None:
            if float(dvid) not in kinds:
                raise ValueError(f"gof_plots: no residual has DVID={dvid!r}.")
            res = res[res["DVID"].to_numpy(dtype=float) == float(dvid)]
    elif dvid is not None:
        raise ValueError(f"gof_plots: dvid={dvid!r}, but the residuals have no DVID column.")
    d = res[~res["BLQ"].to_numpy(dtype=bool)]
    u = f" ({unit})" if unit else ""
    label = {
        "DV": f"DV{u}",
        "PRED": f"PRED{u}",
        "IPRED": f"IPRED{u}",
        "TIME": f"TIME ({time_unit})",
    }
    from matplotlib.figure import Figure  # here: matplotlib takes a second to import

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
        ax.set_xlabel(label[pred])
        ax.set_ylabel(label["DV"])
        ax.set_title(f"DV vs {pred}" + ("" if dvid is None else f" (DVID {dvid:g})"))
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
        ax.set_xlabel(label.get(xname, xname))
        ax.set_ylabel(yname)
        ax.set_title(f"{yname} vs {xname}" + ("" if dvid is None else f" (DVID {dvid:g})"))
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
    dvid: float | None = None,
    unit: str | None = None,
    time_unit: str = "h",
) -> Figure:
    """One panel per subject: observations, IPRED (solid) and PRED (dashed) on a fine grid.

    Censored observations are drawn as open triangles at their LLOQ. The curves run from 0 to
    the subject's last observation time with the individual modes of the fit (or of
    `individual_map` for population values). With inter-occasion variability IPRED uses the
    kappas of each occasion (the modes, `fit.individual.kappa`), so it steps at the start of
    each occasion, marked by a dotted vertical line; PRED has every kappa at 0. With
    time-varying covariates (`Dataset.from_records(interpolation=...)`) the curves follow
    them: each grid time takes the covariates (and occasion) in effect there as the
    likelihood reads them (`grid_rows`: each covariate's own rule, `"linear"` on the
    estimation's sub-intervals), so IPRED passes through the predictions on the records.

    **Arguments:**

    - `pm`, `fit_or_population`, `data`: as `residuals`.
    - `ids`: the subjects to draw (default all); more than `max_panels` raises, naming `ids`.
    - `n_grid`: points of each curve; `ncols`: panels per row; `log`: log concentration axis.
    - `individual`: the conditional modes to draw (as in `residuals`).
    - `dvid`: for data with several kinds of observation (a joint model, `ByOutput`), the
      kind drawn: its observations and its output's curves (required then).
    - `unit` (of DV, e.g. `"mg/L"`) and `time_unit` label the axes.
    """
    phi, nat = population_values(pm, fit_or_population)
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
    shown = observations_of(sub, dvid, "individual_plots")
    tmax = np.where(sub.observed, sub.time, 0.0).max(axis=1)
    tmax = np.where(tmax > 0, tmax, 1.0)
    grid = jnp.asarray(tmax[:, None] * np.linspace(0.0, 1.0, n_grid)[None, :])
    cov, reg, _ = subject_design(sub, rows=True)
    b = _random_effects(pm, ind)[index]
    start = jnp.asarray(sub.occasion_start) if pm.iov else None

    kind = {} if dvid is None else {"dvid": jnp.full(grid.shape, float(dvid))}
    if sub.time_varying:  # the covariates read on the grid as the likelihood reads them
        reg, rows = grid_rows(sub, np.asarray(grid))
        kind |= rows
    ipred, pred = curves(pm, nat, cov, reg, grid, b, start, order=kind)
    ipred, pred, grid_np = np.asarray(ipred), np.asarray(pred), np.asarray(grid)
    n = index.size
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    from matplotlib.figure import Figure  # here: matplotlib takes a second to import

    fig = Figure(figsize=(3.2 * ncols, 2.6 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=False, squeeze=False)).ravel()
    for k in range(n):
        ax = axes[k]
        m = shown[k]
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
        if pm.iov:
            for t0 in sub.occasion_start[k][1:]:
                if np.isfinite(t0) and t0 <= tmax[k]:
                    ax.axvline(t0, color="0.5", lw=0.8, ls=":")
        if log:
            ax.set_yscale("log")
        ax.set_title(f"ID {sub.ids[k]}", fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in axes[n:]:
        fig.delaxes(ax)
    axes[0].legend(fontsize=7)
    fig.supxlabel(f"TIME ({time_unit})")
    what = "DV" if dvid is None else f"DV (DVID {dvid:g})"
    fig.supylabel(f"{what} ({unit})" if unit else what)
    return fig
