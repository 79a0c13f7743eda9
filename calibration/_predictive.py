"""Predictive checks: the visual predictive check (VPC, pcVPC) and simulation-based
calibration (SBC) of the individual posteriors.

Both simulate replicates of the data from the model (`simulate_dataset`) and compare them with
the observations (VPC) or with the posteriors computed from them (SBC). Plots return a
`matplotlib.figure.Figure` built without `pyplot`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ._data import Dataset
from ._laplace import individual_map
from ._model import PopulationModel, require_no_iov
from ._random import as_key
from ._simulation import (
    Population,
    curves,
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
    _, nat = population_values(pm, population)
    cov, reg, time = subject_design(data)
    eta = jnp.zeros((data.n_subjects, pm.n_eta))
    return np.asarray(curves(pm, nat, cov, reg, time, eta)[1])


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
    phi, _ = population_values(pm, population)
    k_sim, k_post = jax.random.split(as_key(key, "sbc"))
    design = tile(data_design, n_sims)
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
