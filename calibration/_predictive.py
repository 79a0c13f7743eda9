"""Predictive checks: the visual predictive check (VPC, pcVPC) and simulation-based
calibration (SBC) of the individual posteriors; the forecast of a subject on a new occasion
(`forecast_new_occasion`, integrating over the new occasion's kappa).

Both simulate replicates of the data from the model (`simulate_dataset`) and compare them with
the observations (VPC) or with the posteriors computed from them (SBC). Plots return a
`matplotlib.figure.Figure` built without `pyplot`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from ._data import Dataset
from ._laplace import individual_map
from ._model import PopulationModel, occasion_index, random_effect_names
from ._random import as_key
from ._simulation import (
    Population,
    curves,
    observations_of,
    population_values,
    simulate_dataset,
    subject_design,
    tile,
)

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

    def plot(
        self,
        *,
        log: bool = False,
        show_data: bool = True,
        figsize=(7.0, 5.0),
        unit: str | None = None,
        time_unit: str = "h",
    ) -> Figure:
        """Observed percentiles (lines) over the simulated intervals (bands).

        Median: solid line over a red band; outer percentiles: dashed lines over blue bands;
        the legend names each line and band (the band is the central `ci` interval, over the
        replicates, of the simulated percentile). With censored data a second panel shows
        the fraction below the LLOQ. `unit` (of DV, e.g. `"mg/L"`) and `time_unit` label the
        axes.
        """
        blq = self.frac_blq is not None and self.frac_blq_simulated is not None
        from matplotlib.figure import Figure  # here: matplotlib takes a second to import

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
            ax.scatter(
                d["TIME"], d["DV"], s=6, color="0.6", alpha=0.5, zorder=1, label="observations"
            )
        t = self.time
        mid = len(self.quantiles) // 2
        for j, q in enumerate(self.quantiles):
            colour = "C3" if j == mid else "C0"
            ax.fill_between(
                t,
                self.simulated[:, j, 0],
                self.simulated[:, j, 2],
                color=colour,
                alpha=0.25,
                lw=0,
                label=f"{100 * self.ci:g}% interval of the simulated {100 * q:g}th",
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
        ax.set_ylabel(f"{name} ({unit})" if unit else name)
        ax.set_title(
            f"{'pcVPC' if self.pred_corrected else 'VPC'}: {self.n_rep} replicates, "
            f"{100 * self.ci:g}% intervals of the simulated percentiles"
        )
        ax.legend(fontsize=8)
        if ax_blq is not None and self.frac_blq is not None:
            sim = self.frac_blq_simulated
            assert sim is not None
            ax_blq.fill_between(
                t, sim[:, 0], sim[:, 2], color="C2", alpha=0.3, lw=0,
                label=f"{100 * self.ci:g}% interval, simulated",
            )  # fmt: skip
            ax_blq.plot(t, self.frac_blq, color="k", marker="o", ms=3, label="observed")
            ax_blq.set_ylabel("fraction BLQ")
            ax_blq.set_xlabel(f"TIME ({time_unit})")
            ax_blq.legend(fontsize=7)
        else:
            ax.set_xlabel(f"TIME ({time_unit})")
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
    dvid: float | None = None,
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
    - `dvid`: for data with several kinds of observation (a DVID column with several values:
      a joint PK/PD model, `ByOutput`), the kind checked; one VPC per output (the
      simulations are of all of them together). Required then.

    **Returns:** a `VPCResult` (`.plot()` draws it).

    References: Bergstrand, Hooker, Wallin, Karlsson 2011, AAPS J 13:143-151 (pcVPC).
    """
    quantiles = tuple(float(q) for q in quantiles)
    if not all(0.0 < q < 1.0 for q in quantiles):
        raise ValueError(f"vpc: quantiles must lie in (0, 1), got {quantiles}.")
    m = observations_of(data, dvid, "vpc")
    sim = simulate_dataset(pm, population, data, key=as_key(key, "vpc"), n_rep=n_rep)
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
    _, nat = population_values(pm, population)
    cov, reg, time = subject_design(data, "vpc", rows=True)
    eta = jnp.zeros((data.n_subjects, pm.n_random(data.n_occasions)))  # PRED: kappas 0 too
    order = data.record_arrays() | data.row_arrays()
    return np.asarray(curves(pm, nat, cov, reg, time, eta, order=order)[1])


# ----------------------------------------------------------------------------- SBC

#: `posterior(pm, phi, data, *, key, n_draws) -> (subjects, n_draws, n_random)` draws of
#: each subject's random effects (`n_random = pm.n_random(data.n_occasions)`: the etas, then
#: with IOV the kappas of every occasion, occasion-major; `n_eta` without IOV).
PosteriorFn = Callable[..., Any]


def laplace_posterior(
    pm: PopulationModel,
    phi: Mapping[str, Any],
    data: Dataset,
    *,
    key: jax.Array | int,
    n_draws: int,
) -> np.ndarray:
    """Draws from the Laplace approximation of each subject's posterior of its random effects.

    `N(b*, H^-1)` with the MAP `b*` and the inverse Hessian from `individual_map` given
    the population values `phi` (unconstrained, `pm.initial()` form); `key` (a JAX PRNG key
    or an int) draws the normal deviates. Without IOV `b` is the etas. With inter-occasion
    variability `b` is the etas and the kappas of every occasion of the data, occasion-major
    (`PopulationModel.n_random`, labels `calibration.random_effect_names`), drawn jointly
    from their joint curvature (`IndividualFit.random_cov`: etas and kappas are correlated
    a posteriori); the kappas of an occasion a subject does not have are drawn from their
    prior `N(0, omega_IOV^2)` (mode 0, which is their exact posterior).

    **Returns:** `(subjects, n_draws, n_random)` draws (`n_random = n_eta` without IOV).
    """
    key = as_key(key, "laplace_posterior")
    ind = individual_map(pm, data, dict(phi))
    if pm.iov:
        assert ind.kappa is not None and ind.random_cov is not None
        kappa = np.nan_to_num(ind.kappa, nan=0.0).reshape(data.n_subjects, -1)
        mode, cov = np.concatenate([ind.eta, kappa], axis=1), ind.random_cov
    else:
        mode, cov = ind.eta, ind.cov
    chol = np.linalg.cholesky(0.5 * (cov + np.swapaxes(cov, -1, -2)))
    z = np.asarray(jax.random.normal(key, (data.n_subjects, n_draws, mode.shape[1])))
    return mode[:, None, :] + np.einsum("sij,sdj->sdi", chol, z)


@dataclasses.dataclass(frozen=True)
class SBCResult:
    """Simulation-based calibration of individual posteriors.

    - `eta_names`: the random effects checked: the parameters with an eta and, for a model
      with IOV, each kappa by `kappa_<param>[<occasion>]` (`random_effect_names`);
      `truth`: `(n_sims, n_random)` their true values;
    - `ranks`: `(n_sims, n_random)` the number of posterior draws below the truth (0..`n_draws`);
      uniform on 0..`n_draws` when the posterior is calibrated;
    - `coverage`: a DataFrame, one row per parameter, one column per central interval level:
      the fraction of simulated subjects whose interval (draw quantiles) holds the truth;
    - `mean`, `sd`: `(n_sims, n_random)` posterior means and SDs (of the draws);
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
        from matplotlib.figure import Figure  # here: matplotlib takes a second to import

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
    and covariates) get true etas drawn from the prior `N(0, Omega)` (and, with IOV, true
    kappas of every occasion from `N(0, omega_IOV^2)`, checked as random effects of their
    own) and observations
    simulated from the model (`simulate_dataset`, censored like the design). Each subject's
    posterior given the true population values is then computed once for all subjects
    (vmapped) and compared with the truth: central-interval coverage and the rank of the truth
    among `n_draws` posterior draws (uniform for a calibrated posterior).

    **Arguments:**

    - `pm`: the population model; `data_design`: the design (its DV are ignored).
    - `key`: PRNG key (or an int); `n_sims`: number of simulated subjects.
    - `population`: the true population values (see `simulate_dataset`; default the model's).
    - `posterior`: `posterior(pm, phi, data, *, key, n_draws) -> (subjects, n_draws,
      n_random)` draws of the random effects (etas; with IOV then the kappas of every
      occasion, occasion-major); default `laplace_posterior` (MAP and inverse Hessian,
      normal on the eta scale). Pass another function for NUTS or SVI posteriors.
    - `n_draws`: posterior draws per subject (ranks take `n_draws + 1` values).
    - `levels`: central interval levels whose coverage is reported.

    **Returns:** an `SBCResult` (`.coverage`, `.ranks`, `.plot()`).

    References: Talts, Betancourt, Simpson, Vehtari, Gelman 2018, arXiv:1804.06788.
    """
    if n_sims < 1 or n_draws < 1:
        raise ValueError(f"sbc: expected n_sims, n_draws >= 1, got {n_sims}, {n_draws}.")
    phi, _ = population_values(pm, population)
    k_sim, k_post = jax.random.split(as_key(key, "sbc"))
    design = tile(data_design, n_sims)
    sim = simulate_dataset(pm, phi, design, key=k_sim)
    data = sim.dataset(0)
    draws = np.asarray(posterior(pm, phi, data, key=k_post, n_draws=n_draws))
    names = random_effect_names(pm, data.n_occasions) if pm.iov else pm.eta_names
    expected = (n_sims, n_draws, len(names))
    if draws.shape != expected:
        raise ValueError(
            f"sbc: posterior returned draws of shape {draws.shape}, expected {expected} "
            f"(subjects, n_draws, random effects {list(names)})."
        )
    truth = sim.eta[0]
    if pm.iov:
        assert sim.kappa is not None
        truth = np.concatenate([truth, sim.kappa[0].reshape(n_sims, -1)], axis=1)
    ranks = np.sum(draws < truth[:, None, :], axis=1)
    rows = {}
    for p in levels:
        q = np.quantile(draws, [(1.0 - p) / 2.0, (1.0 + p) / 2.0], axis=1)
        rows[float(p)] = np.mean((q[0] <= truth) & (truth <= q[1]), axis=0)
    coverage = pd.DataFrame(rows, index=pd.Index(list(names), name="parameter"))
    return SBCResult(
        eta_names=tuple(names),
        truth=truth,
        ranks=ranks,
        n_draws=n_draws,
        coverage=coverage,
        mean=draws.mean(axis=1),
        sd=draws.std(axis=1, ddof=1),
        data=data,
    )


# ----------------------------------------------------------------------------- new occasion


@dataclasses.dataclass(frozen=True)
class OccasionForecast:
    """A subject's predictions on a new occasion (`forecast_new_occasion`).

    - `times`: `(times,)` the forecast times (h); `draws`: `(n_draws, times)` the model
      predictions (IPRED, no residual error) for each posterior draw and new kappa;
    - `kappa`: `(n_draws, n_iov)` the new occasion's kappas used (drawn from
      `N(0, omega_IOV^2)`; zeros when `integrated` is False);
    - `occasion_start`: the start times of the subject's past occasions and, last, of the
      new one; `occasion`: `(times,)` the occasion of each forecast time (`occasion_index`:
      the last one started at or before it);
    - `integrated`: True when the forecast integrates over the new occasion's kappa;
    - `note`: says so, in words (for reports and plots).
    """

    times: np.ndarray
    draws: np.ndarray
    kappa: np.ndarray
    occasion_start: np.ndarray
    occasion: np.ndarray
    integrated: bool
    note: str

    @property
    def mean(self) -> np.ndarray:
        """`(times,)` the predictive mean."""
        return self.draws.mean(axis=0)

    def interval(self, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """The central `level` predictive interval at each time (draw quantiles)."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"interval: level must be in (0, 1), got {level}.")
        lo, hi = np.quantile(self.draws, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=0)
        return lo, hi


@eqx.filter_jit
def _occasion_predictions(pm: PopulationModel, theta, covariates, regimen, obs, b):
    return jax.vmap(lambda e: pm.predict_random(theta, covariates, regimen, obs, e))(b)


def forecast_new_occasion(
    pm: PopulationModel,
    population: Population,
    covariates: Mapping[str, Any],
    regimen: Any,
    times: Any,
    *,
    draws: Any,
    occasion_start: Any,
    new_occasion: float,
    key: jax.Array | int,
    integrate_kappa: bool = True,
) -> OccasionForecast:
    """Forecast one subject on a new occasion, integrating over that occasion's kappa.

    The subject's posterior holds its etas and the kappas of its past occasions; a new
    occasion (the next course, the next visit) has a kappa that no data have informed yet,
    so its posterior is its prior, `kappa_new ~ N(0, omega_IOV^2)` (Karlsson & Sheiner 1993,
    *J Pharmacokinet Biopharm* 21:735-750). For each posterior draw a new kappa is drawn
    and the subject is simulated with the past occasions' kappas before `new_occasion` and
    the new kappa from it on (`PopulationModel.predict_random`, parameters changing at the
    start of each occasion). Setting the new kappa to 0 (`integrate_kappa=False`, the
    forecast of tools that drop the kappas) understates the predictive spread by the
    IOV and, for a log-normal parameter, biases the mean: it is offered only to compare.

    **Arguments:**

    - `pm`: a population model with IOV (`pm.iov`).
    - `population`: the population values (a `PopulationFit`, its `population` dict, the
      `pm.initial()` form, or None for the model's own; see `simulate_dataset`): theta and
      the IOV variances are read from it.
    - `covariates`: the subject's covariates by name (scalars).
    - `regimen`: the subject's `pkpd.Regimen`, past and new doses (a dose at or after
      `new_occasion` takes the new occasion's parameters).
    - `times`: forecast times (h), any order.
    - `draws`: `(n_draws, n_eta + k * n_iov)` posterior draws of the subject's random
      effects: its etas, then the kappas of its `k` past occasions, occasion-major
      (`laplace_posterior(...)[i]`; from a `BayesFit`, `random_effect_draws(fit, id)`).
    - `occasion_start`: `(k,)` start times (h) of the past occasions
      (`Dataset.occasion_start[i]`; `+inf` entries, occasions the subject does not have,
      are dropped with their kappas); empty when the subject has none.
    - `new_occasion`: start time (h) of the new occasion, after the last past one.
    - `key`: a JAX PRNG key or an int, for the new kappas.
    - `integrate_kappa`: draw the new kappa (the default) or set it to 0.

    **Returns:** an `OccasionForecast` (its `note` says whether the kappa was integrated).
    """
    fn = "forecast_new_occasion"
    if not pm.iov:
        raise ValueError(
            f"{fn}: the model has no inter-occasion variability (iov), so a new occasion is "
            "like the others: forecast with the posterior of the etas."
        )
    _, nat = population_values(pm, population)
    n_iov = len(pm.iov)
    start = np.atleast_1d(np.asarray(occasion_start, dtype=float))
    b = np.asarray(draws, dtype=float)
    if b.ndim != 2 or b.shape[1] != pm.n_eta + start.size * n_iov:
        raise ValueError(
            f"{fn}: draws must have shape (n_draws, n_eta + occasions * n_iov) = (n_draws, "
            f"{pm.n_eta} + {start.size} * {n_iov}) (etas {list(pm.eta_names)}, then the "
            f"kappas of each past occasion of {list(pm.iov_names)}); got {b.shape}."
        )
    if not np.isfinite(b).all():
        raise ValueError(f"{fn}: draws hold non-finite values.")
    keep = np.isfinite(start)
    if keep.size and not keep[: int(keep.sum())].all():
        raise ValueError(
            f"{fn}: occasion_start {start.tolist()} has a finite start after a padding +inf."
        )
    kappa_cols = np.repeat(keep, n_iov)
    b = np.concatenate([b[:, : pm.n_eta], b[:, pm.n_eta :][:, kappa_cols]], axis=1)
    start = start[keep]
    if start.size and np.any(np.diff(start) <= 0):
        raise ValueError(f"{fn}: occasion_start must be increasing, got {start.tolist()}.")
    new = float(new_occasion)
    if not math.isfinite(new) or (start.size and not new > start[-1]):
        raise ValueError(
            f"{fn}: new_occasion ({new} h) must be a finite time after the start of the last "
            f"past occasion ({start[-1] if start.size else None} h)."
        )
    t = np.atleast_1d(np.asarray(times, dtype=float))
    if t.ndim != 1 or t.size == 0 or not np.isfinite(t).all():
        raise ValueError(f"{fn}: times must be a non-empty 1-d array of finite times (h).")
    n_draws = b.shape[0]
    if integrate_kappa:
        sd = np.sqrt(np.asarray(nat["iov"], dtype=float))
        z = np.asarray(jax.random.normal(as_key(key, fn), (n_draws, n_iov)))
        kappa = z * sd[None, :]
        note = (
            f"new occasion at {new:g} h: its kappa ({', '.join(pm.iov_names)}) drawn from "
            "N(0, omega_IOV^2) for each posterior draw (integrated over, not set to 0)"
        )
    else:
        as_key(key, fn)
        kappa = np.zeros((n_draws, n_iov))
        note = (
            f"new occasion at {new:g} h: its kappa ({', '.join(pm.iov_names)}) set to 0 "
            "(NOT integrated: the predictive spread omits the inter-occasion variability)"
        )
    starts = np.concatenate([start, [new]])
    full = jnp.asarray(np.concatenate([b, kappa], axis=1))
    obs = {"time": jnp.asarray(t), "occasion_start": jnp.asarray(starts)}
    cov = {k: jnp.asarray(float(v)) for k, v in covariates.items()}
    pred = _occasion_predictions(pm, nat["theta"], cov, regimen, obs, full)
    return OccasionForecast(
        times=t,
        draws=np.asarray(pred),
        kappa=kappa,
        occasion_start=starts,
        occasion=np.asarray(occasion_index(starts, t)),
        integrated=bool(integrate_kappa),
        note=note,
    )
