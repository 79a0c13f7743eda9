"""Convergence diagnostics and summary tables of posterior draws (NUTS, SVI).

The rank-normalised split R-hat and bulk/tail ESS of Vehtari et al. (2021), divergences,
E-BFMI (Betancourt 2016) and tree-depth hits, reported in words; and the estimates tables of
`BayesFit` (posterior median, SD, 95% interval, R-hat, ESS).

References: Vehtari A, Gelman A, Simpson D, Carpenter B, Bürkner P-C (2021). *Bayesian Anal*
16:667-718; Betancourt M (2016). arXiv:1604.00695 (E-BFMI); Yao Y, Vehtari A, Simpson D,
Gelman A (2018). *Proc ICML* 80:5581-5590 (PSIS diagnostic for VI).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ._model import PopulationModel

#: R-hat above this flags non-convergence (Vehtari et al. 2021, section 4.4).
RHAT_MAX = 1.01
#: Bulk- and tail-ESS below this many per chain flag too few effective draws (Vehtari et al.
#: 2021: 100 per chain, 400 for the recommended four chains).
ESS_PER_CHAIN_MIN = 100
#: E-BFMI below this flags poor exploration of the energy distribution (Betancourt 2016).
BFMI_MIN = 0.3
#: Pareto k-hat above this flags an unreliable variational approximation (Yao et al. 2018).
PARETO_K_MAX = 0.7


def has_block(pm: PopulationModel) -> bool:
    """Whether the model has a correlated (block) Omega of at least two etas."""
    return pm.omega_block and pm.n_eta >= 2


def diagnosed_variables(pm: PopulationModel) -> list[str]:
    """The posterior variables whose R-hat and ESS are checked (all reported quantities)."""
    iov = ["iov"] if pm.iov else []
    corr = ["corr"] if has_block(pm) else []
    return [*pm.theta, "omega", *corr, *iov, *pm.error.names, "eta"]


def convergence_stats(idata, variables: list[str]) -> dict[str, xr.Dataset]:
    """Rank-normalised split R-hat, bulk- and tail-ESS of `variables` (Vehtari et al. 2021).

    A correlation matrix enters by its strictly lower triangle (dim `eta_pair`, labels
    `"CL~KA"`): its diagonal is constant and has no R-hat.
    """
    import arviz as az  # here, not at import time: importing arviz takes seconds

    post = idata.posterior
    data = {}
    for var in variables:
        da = post[var]
        if var == "corr":
            names = [str(n) for n in da.coords["eta_name"].values]
            pairs = [(i, j) for i in range(len(names)) for j in range(i)]
            da = xr.concat(
                [da.isel(eta_name=i, eta_name_=j, drop=True) for i, j in pairs], dim="eta_pair"
            )
            da = da.assign_coords(eta_pair=[f"{names[i]}~{names[j]}" for i, j in pairs])
            da = da.transpose("chain", "draw", "eta_pair")
        data[var] = da
    ds = xr.Dataset(data)
    # A constant quantity (a stuck chain) gives NaN, which is reported as a problem below.
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "r_hat": az.rhat(ds),
            "ess_bulk": az.ess(ds, method="bulk"),
            "ess_tail": az.ess(ds, method="tail"),
        }
    assert all(isinstance(v, xr.Dataset) for v in out.values())
    return out


def _labelled_values(ds: xr.Dataset, var: str) -> list[tuple[str, float]]:
    """Flatten one variable of a diagnostics Dataset into (label, value) pairs."""
    da = ds[var]
    if da.ndim == 0:
        return [(var, float(da.values))]
    labels = [[str(c) for c in da.coords[d].values] for d in da.dims]
    out = []
    for idx in np.ndindex(*da.shape):
        parts = [
            f"ID={labels[k][i]}" if d == "subject" else labels[k][i]
            for k, (d, i) in enumerate(zip(da.dims, idx, strict=True))
        ]
        out.append((f"{var}[{', '.join(parts)}]", float(da.values[idx])))
    return out


def _worst(pairs: list[tuple[str, float]], bad, key, fmt: str, n: int = 5) -> str:
    flagged = sorted((p for p in pairs if bad(p[1])), key=lambda p: key(p[1]))
    text = ", ".join(f"{lab} = {fmt.format(v)}" for lab, v in flagged[:n])
    more = len(flagged) - n
    return text + (f" and {more} more" if more > 0 else "")


def _finite(pairs: list[tuple[str, float]], fn) -> float:
    vals = [v for _, v in pairs if math.isfinite(v)]
    return fn(vals) if vals else math.nan


def diagnose(idata, stats: dict[str, xr.Dataset], num_chains: int, max_tree_depth: int):
    """R-hat, ESS, divergences, E-BFMI and tree depth; a list of problems in words."""
    import arviz as az  # here, not at import time: importing arviz takes seconds

    variables = [str(v) for v in stats["r_hat"].data_vars]
    r_pairs = [p for v in variables for p in _labelled_values(stats["r_hat"], v)]
    b_pairs = [p for v in variables for p in _labelled_values(stats["ess_bulk"], v)]
    t_pairs = [p for v in variables for p in _labelled_values(stats["ess_tail"], v)]
    required = ESS_PER_CHAIN_MIN * num_chains
    sample_stats = idata.sample_stats
    diverging = np.asarray(sample_stats["diverging"])
    divergences = int(diverging.sum())
    hits = 0
    if "n_steps" in sample_stats:  # ArviZ's name for numpyro's num_steps
        hits = int((np.asarray(sample_stats["n_steps"]) >= 2**max_tree_depth - 1).sum())
    bfmi = np.asarray(az.bfmi(idata)) if "energy" in sample_stats else np.full(num_chains, np.nan)

    problems = []
    if any(not (v <= RHAT_MAX) for _, v in r_pairs):
        worst = _worst(
            r_pairs,
            lambda v: not (v <= RHAT_MAX),
            lambda v: -np.nan_to_num(v, nan=np.inf),
            "{:.4f}",
        )
        problems.append(f"R-hat > {RHAT_MAX} for {worst}")
    for what, pairs in (("bulk", b_pairs), ("tail", t_pairs)):
        if any(not (v >= required) for _, v in pairs):
            worst = _worst(
                pairs, lambda v: not (v >= required), lambda v: np.nan_to_num(v, nan=-1.0), "{:.0f}"
            )
            problems.append(
                f"{what}-ESS < {required} ({ESS_PER_CHAIN_MIN} per chain x {num_chains}) "
                f"for {worst}"
            )
    if divergences:
        problems.append(
            f"{divergences} divergent transition(s) in {diverging.size} draws (raise "
            "target_accept or reparameterise)"
        )
    low = [f"chain {c}: {b:.2f}" for c, b in enumerate(bfmi) if b < BFMI_MIN]
    if low:
        problems.append(f"E-BFMI < {BFMI_MIN} ({', '.join(low)})")
    diagnostics = {
        "max_r_hat": _finite(r_pairs, max),
        "min_ess_bulk": _finite(b_pairs, min),
        "min_ess_tail": _finite(t_pairs, min),
        "ess_required": required,
        "divergences": divergences,
        "min_bfmi": float(np.min(bfmi)) if bfmi.size else math.nan,
        "tree_depth_hits": hits,
        "num_chains": num_chains,
        "num_draws": int(sample_stats.sizes["draw"]),
    }
    return diagnostics, problems


# ----------------------------------------------------------------------------- tables


def _draws(idata, var: str) -> np.ndarray:
    """(chains * draws, ...) array of one posterior variable."""
    a = np.asarray(idata.posterior[var])
    return a.reshape(-1, *a.shape[2:])


def _summary_row(kind, name, draws: np.ndarray, r_hat: float, ess_bulk: float) -> dict[str, Any]:
    est = float(np.median(draws))
    sd = float(np.std(draws, ddof=1))
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return {
        "kind": kind,
        "parameter": name,
        "estimate": est,
        "se": sd,
        "rse_pct": 100.0 * abs(sd / est) if est else np.nan,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "cv_pct": np.nan,
        "shrinkage_pct": np.nan,
        "r_hat": r_hat,
        "ess_bulk": ess_bulk,
    }


def population_table(
    pm: PopulationModel, idata, stats, occasions: np.ndarray | None = None
) -> pd.DataFrame:
    """The estimates table; `stats` from `convergence_stats`, or None (no R-hat, ESS).

    With IOV an `iov` row per parameter gives the variance of its kappas, its CV% and the
    shrinkage of the kappas' posterior means over the occasions the subjects have
    (`occasions`: `(subjects, occasions)` True where a subject has the occasion, i.e.
    `np.isfinite(Dataset.occasion_start)`; all occasions when None).
    """

    def conv(var, **sel) -> tuple[float, float]:
        if stats is None:
            return math.nan, math.nan
        return (
            float(stats["r_hat"][var].sel(sel)),
            float(stats["ess_bulk"][var].sel(sel)),
        )

    rows = []
    for k in pm.theta:
        rows.append(_summary_row("theta", k, _draws(idata, k), *conv(k)))
    var = _draws(idata, "omega")
    eta_mean = np.asarray(idata.posterior["eta"].mean(dim=("chain", "draw")))
    for i, name in enumerate(pm.eta_names):
        row = _summary_row("omega", name, var[:, i], *conv("omega", eta_name=name))
        row["cv_pct"] = float(np.median(100.0 * np.sqrt(np.expm1(var[:, i]))))
        omega_sd = math.sqrt(row["estimate"])
        row["shrinkage_pct"] = 100.0 * (1.0 - float(np.std(eta_mean[:, i])) / omega_sd)
        rows.append(row)
    if has_block(pm):
        corr = _draws(idata, "corr")
        for i in range(pm.n_eta):
            for j in range(i):
                label = f"{pm.eta_names[i]}~{pm.eta_names[j]}"
                rows.append(
                    _summary_row("corr", label, corr[:, i, j], *conv("corr", eta_pair=label))
                )
    if pm.iov:
        iov = _draws(idata, "iov")
        kappa_mean = np.asarray(idata.posterior["kappa"].mean(dim=("chain", "draw")))
        have = np.ones(kappa_mean.shape[:2], bool) if occasions is None else occasions
        for i, name in enumerate(pm.iov_names):
            row = _summary_row("iov", name, iov[:, i], *conv("iov", iov_name=name))
            row["cv_pct"] = float(np.median(100.0 * np.sqrt(np.expm1(iov[:, i]))))
            sd = float(np.std(kappa_mean[:, :, i][have]))
            row["shrinkage_pct"] = 100.0 * (1.0 - sd / math.sqrt(row["estimate"]))
            rows.append(row)
    for k in pm.error.names:
        rows.append(_summary_row("sigma", k, _draws(idata, k), *conv(k)))
    return pd.DataFrame(rows)


def individual_table(idata, stats, occasions: np.ndarray | None = None) -> pd.DataFrame:
    """One row per subject and eta / individual parameter. A parameter is a monotone function
    of its eta, so it has the eta's (rank-based) R-hat and ESS; one without an eta is fixed.

    With IOV (a `kappa` in the posterior) each subject also has one row (kind `kappa`) per
    IOV parameter and occasion it has (`occasions`, as in `population_table`), with the
    0-based occasion in the column `occasion` (NaN on the other rows)."""
    post = idata.posterior
    eta_names = [str(n) for n in post.coords["eta_name"].values]
    rows = []
    for s, sid in enumerate(post.coords["subject"].values.tolist()):
        for var, dim in (("eta", "eta_name"), ("individual", "param")):
            for j, name in enumerate(str(n) for n in post.coords[dim].values):
                draws = np.asarray(post[var].values[:, :, s, j]).reshape(-1)
                if name in eta_names:
                    sel = {"subject": sid, "eta_name": name}
                    r_hat = float(stats["r_hat"]["eta"].sel(sel))
                    ess = float(stats["ess_bulk"]["eta"].sel(sel))
                else:
                    r_hat = ess = math.nan
                row = _summary_row(var, name, draws, r_hat, ess)
                del row["cv_pct"], row["shrinkage_pct"]
                rows.append({"subject": sid} | row)
        if "kappa" in post:
            rows += _kappa_rows(post, stats, s, sid, occasions)
    table = pd.DataFrame(rows)
    if "kappa" in post:
        first = ["subject", "occasion"]
        table = table.reindex(columns=first + [c for c in table.columns if c not in first])
    return table


def _kappa_rows(post, stats, s: int, sid, occasions) -> list[dict[str, Any]]:
    kappa = post["kappa"]
    names = [str(n) for n in kappa.coords["iov_name"].values]
    rows = []
    for k in range(kappa.sizes["occasion"]):
        if occasions is not None and not occasions[s, k]:
            continue
        for j, name in enumerate(names):
            draws = np.asarray(kappa.values[:, :, s, k, j]).reshape(-1)
            sel = {"subject": sid, "occasion": k, "iov_name": name}
            r_hat = float(stats["r_hat"]["kappa"].sel(sel)) if stats is not None else math.nan
            ess = float(stats["ess_bulk"]["kappa"].sel(sel)) if stats is not None else math.nan
            row = _summary_row("kappa", name, draws, r_hat, ess)
            del row["cv_pct"], row["shrinkage_pct"]
            rows.append({"subject": sid, "occasion": float(k)} | row)
    return rows
