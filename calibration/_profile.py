"""Likelihood-profile intervals: one population parameter held fixed on a grid, the others
refitted, and the interval where -2LL rises by the chi-square quantile above its minimum.

For a parameter `psi` with the others `lambda`, the profile is
`-2 log L_p(psi) = min_lambda -2 log L(psi, lambda)`; by Wilks' theorem
`-2 log L_p(psi) - (-2 log L(hat))` is asymptotically chi-square with one degree of freedom,
so `{psi : -2 log L_p(psi) - min <= chi2_1(level)}` (3.84 at 95%) is an approximate
confidence interval. It follows the likelihood where it is not quadratic (skewed, bounded
parameters: a variance near zero, an absorption rate) where the Wald interval
`estimate +- 1.96 SE` cannot. The ends are found by root-finding between the grid points
that bracket the rise (each evaluation a refit), as NONMEM/PsN's `llp` and nlmixr2's
`profile()` do.

References: Venzon DJ, Moolgavkar SH. A method for computing profile-likelihood-based
confidence intervals. Appl Stat 1988;37:87-94. Wilks SS. The large-sample distribution of
the likelihood ratio for testing composite hypotheses. Ann Math Stat 1938;9:60-62.
Lindbom L, Pihlgren P, Jonsson EN. PsN-Toolkit. Comput Methods Programs Biomed
2005;79:241-257 (`llp`, the log-likelihood profiling of PsN).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.interpolate
import scipy.optimize
import scipy.stats
from jax.flatten_util import ravel_pytree

from ._bootstrap import modes_problem, parameter_rows, refit, resolve_fit
from ._data import Dataset
from ._estimators import AbstractEstimator
from ._laplace import PopulationFit
from ._model import PopulationModel


@dataclasses.dataclass(frozen=True)
class ProfileResult:
    """The likelihood profile of one parameter (`profile_likelihood`).

    - `parameter`: its label (`theta[CL]`, `omega[V]` (a variance), `sigma[add_sd]`,
      `iov[CL]`); `estimate`: the fit's value; `fit_ofv`: the fit's -2LL;
    - `profile`: one row per point evaluated (grid and root-finding), sorted by `value`:
      `value` (natural scale), `minus2ll`, `delta` (`minus2ll - fit_ofv`), `converged`,
      `n_steps`, `on_grid`, `error` (why a refit raised: its `minus2ll` is NaN; or why its
      subjects' conditional modes did not converge at the point), and the
      other parameters' estimates there (by label);
    - `ci_low`, `ci_high`: the interval at `level` (NaN on a side where the profile did not
      rise by `threshold` within the points tried; `notes` says so); `threshold`:
      `chi2_1(level)` (3.84 at 95%);
    - `wald_low`, `wald_high`: the fit's Wald interval of the same parameter (from its
      estimates table), for comparison; `notes`: what went wrong, if anything.
    """

    parameter: str
    estimate: float
    fit_ofv: float
    level: float
    threshold: float
    ci_low: float
    ci_high: float
    wald_low: float
    wald_high: float
    profile: pd.DataFrame
    notes: tuple[str, ...] = ()

    def to_dataframe(self) -> pd.DataFrame:
        """The profile table (a copy)."""
        return self.profile.copy()

    def __repr__(self) -> str:
        return (
            f"ProfileResult({self.parameter}: estimate {self.estimate:.5g}, "
            f"{round(100 * self.level)}% profile interval [{self.ci_low:.5g}, "
            f"{self.ci_high:.5g}] (-2LL + {self.threshold:.3f}), Wald [{self.wald_low:.5g}, "
            f"{self.wald_high:.5g}]; {len(self.profile)} refits)"
        )

    def __str__(self) -> str:
        cols = ["value", "minus2ll", "delta", "converged", "on_grid"]
        with pd.option_context("display.max_rows", None, "display.width", 200):
            table = self.profile.filter(items=cols).to_string(
                index=False, float_format=lambda x: f"{x:.6g}"
            )
        lines = [repr(self), f"  -2LL of the fit {self.fit_ofv:.4f}", table]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def plot(self, *, ax=None, figsize=(5.0, 3.6)):
        """The profile (delta -2LL against the value) with the threshold and the interval (a
        `matplotlib.figure.Figure` built without pyplot, or drawn on `ax`)."""
        from matplotlib.figure import Figure

        fig = None
        if ax is None:
            fig = Figure(figsize=figsize, layout="constrained")
            ax = fig.subplots()
        ok = self.profile[np.isfinite(self.profile["delta"])]
        ax.plot(ok["value"], ok["delta"], "o-", color="C0", ms=3, label="profile -2LL - min")
        ax.axhline(self.threshold, color="C3", ls="--", lw=1, label=f"chi2(1, {self.level:g})")
        for edge in (self.ci_low, self.ci_high):
            if math.isfinite(edge):
                ax.axvline(edge, color="C3", lw=1)
        ax.axvline(self.estimate, color="k", lw=1, label="estimate")
        ax.set_xlabel(self.parameter)
        ax.set_ylabel("delta -2LL")
        ax.legend(fontsize=7)
        return fig if fig is not None else ax.figure


def _locate(pm: PopulationModel, phi, parameter: str | tuple[str, str]) -> tuple[str, int, str]:
    """`(label, index in the flattened phi, scale)` of a parameter; scale `"log"` (natural
    value `exp(u)`), `"log_var"` (`exp(2u)`: variances from log SDs) or `"identity"`."""
    if isinstance(parameter, tuple):
        kind, name = parameter
    elif "[" in parameter and parameter.endswith("]"):
        kind, name = parameter[:-1].split("[", 1)
    else:
        kind, name = "theta", parameter
    choices = [f"theta[{k}]" for k in pm.theta] + [f"omega[{k}]" for k in pm.eta_names]
    choices += [f"iov[{k}]" for k in pm.iov_names] + [f"sigma[{k}]" for k in pm.error.names]
    label = f"{kind}[{name}]"
    if label not in choices:
        extra = " (correlations are not profiled)" if kind == "corr" else ""
        raise ValueError(
            f"profile_likelihood: no parameter {label}{extra}; expected one of {choices} "
            "(a plain name is a theta)."
        )
    marker = jax.tree_util.tree_map(jnp.zeros_like, phi)
    if kind == "theta":
        marker["theta"][name] = jnp.ones_like(marker["theta"][name])
        scale = "identity" if name in pm.unconstrained else "log"
    elif kind == "sigma":
        marker["sigma"][name] = jnp.ones_like(marker["sigma"][name])
        scale = "log"
    else:
        names = pm.eta_names if kind == "omega" else pm.iov_names
        marker[kind]["log_sd"] = marker[kind]["log_sd"].at[names.index(name)].set(1.0)
        scale = "log_var"
    index = int(np.argmax(np.asarray(ravel_pytree(marker)[0])))
    return label, index, scale


def _to_natural(u, scale: str):
    u = np.asarray(u, dtype=float)
    return {"log": np.exp(u), "log_var": np.exp(2.0 * u), "identity": u}[scale]


def _to_unconstrained(v, scale: str, label: str):
    v = np.asarray(v, dtype=float)
    if scale != "identity" and np.any(~(v > 0)):
        raise ValueError(f"profile_likelihood: values of {label} must be > 0, got {v.tolist()}.")
    return {"log": np.log(v), "log_var": 0.5 * np.log(v), "identity": v}[scale]


def profile_likelihood(
    pm: PopulationModel,
    data: Dataset,
    parameter: str | tuple[str, str],
    fit: PopulationFit | None = None,
    *,
    values: Sequence[float] | None = None,
    n_points: int = 8,
    span: float = 3.0,
    level: float = 0.95,
    refine: bool = True,
    max_extend: int = 8,
    estimator: AbstractEstimator | None = None,
    max_steps: int = 500,
    gtol: float = 1e-4,
    xtol: float = 1e-5,
) -> ProfileResult:
    """Likelihood-profile interval of one population parameter: the parameter held at each
    value of a grid, the others refitted (each refit started from its neighbour's
    estimates), and the interval where -2LL rises by `chi2_1(level)` (3.84 at 95%) above
    the fit's.

    **Arguments:**

    - `pm`, `data`: the model and the data that were fitted.
    - `parameter`: `"CL"` (a theta), or a label `"theta[CL]"`, `"omega[V]"` (the variance
      of V's eta), `"iov[CL]"`, `"sigma[add_sd]"`, or a `(kind, name)` pair.
    - `fit`: the `PopulationFit` (fitted here when not given).
    - `values`: the grid on the natural scale (the scale of the estimates table); by
      default `n_points` on each side of the estimate, evenly spaced on the estimation
      scale (log for positive parameters) out to `span` standard errors (or +-1 on the log
      scale without standard errors), extended by up to `max_extend` steps on a side that
      has not risen by the threshold.
    - `level`: of the interval.
    - `refine`: find each end by Brent's method between the bracketing grid points, every
      evaluation a refit (`xtol` on the estimation scale); `False`: the end of a monotone
      cubic (PCHIP) interpolation of the profile through the grid points (no further refits).
    - `estimator`: `FOCEI()` or `Laplace()` (default: the fit's own); `max_steps`, `gtol`:
      of each refit's outer loop (a tighter `gtol` than a fit's default: the profile is a
      difference of -2LL values).

    **Returns:** a `ProfileResult`. A refit that raises is recorded (its -2LL NaN, the
    reason in `error`) and is not used for the interval.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"profile_likelihood: level must be in (0, 1), got {level}.")
    fit, est = resolve_fit(pm, data, fit, estimator, "profile_likelihood")
    label, j, scale = _locate(pm, fit.phi, parameter)
    x_fit = np.asarray(ravel_pytree(fit.phi)[0], dtype=float)
    u_hat = float(x_fit[j])
    threshold = float(scipy.stats.chi2.ppf(level, 1))
    points: dict[float, dict[str, Any]] = {}

    def evaluate(u: float, start: np.ndarray, on_grid: bool) -> dict[str, Any]:
        u = float(u)
        if u in points:
            return points[u]
        rec: dict[str, Any] = {"u": u, "on_grid": on_grid}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outer, x, ofv = refit(
                    pm,
                    data,
                    start,
                    est,
                    fixed=(j, u),
                    max_steps=max_steps,
                    gtol=gtol,
                    who="profile_likelihood",
                )
            converged = bool(outer is None or outer.converged) and math.isfinite(ofv)
            modes = modes_problem(pm, data, x, est) if converged else None
            rec |= {
                "minus2ll": ofv if math.isfinite(ofv) else math.nan,
                "converged": converged and modes is None,
                "n_steps": 0 if outer is None else outer.n_steps,
                "error": modes,
                "x": x,
            }
        except Exception as error:  # recorded, not used
            rec |= {
                "minus2ll": math.nan,
                "converged": False,
                "n_steps": 0,
                "error": f"{type(error).__name__}: {error}",
                "x": None,
            }
        points[u] = rec
        return rec

    se_u = math.nan
    if fit.cov_phi is not None:
        se_u = float(math.sqrt(np.asarray(fit.cov_phi)[j, j]))
    width = span * se_u if math.isfinite(se_u) and se_u > 0 else 1.0
    evaluate(u_hat, x_fit, True)
    notes: list[str] = []
    ends = {}
    for side in (-1.0, 1.0):
        if values is not None:
            grid_u = np.sort(_to_unconstrained(values, scale, label))
            grid_u = grid_u[grid_u < u_hat][::-1] if side < 0 else grid_u[grid_u > u_hat]
            extend = 0
        else:
            grid_u = u_hat + side * width * np.arange(1, n_points + 1) / n_points
            extend = max_extend
        step = width / n_points
        prev = points[u_hat]
        bracket = None
        k = 0
        while True:
            if k < len(grid_u):
                u = float(grid_u[k])
            elif extend > 0 and values is None:
                u = float(prev["u"] + side * step)
                extend -= 1
            else:
                break
            k += 1
            start = prev["x"] if prev["x"] is not None else x_fit
            rec = evaluate(u, start, True)
            if rec["x"] is None:
                continue
            if rec["minus2ll"] - fit.ofv >= threshold:
                bracket = (prev, rec)
                break
            prev = rec
        ends[side] = bracket
    roots = {-1.0: math.nan, 1.0: math.nan}
    for side, bracket in ends.items():
        name = "lower" if side < 0 else "upper"
        if bracket is None:
            reached = max((p["u"] for p in points.values()), key=lambda v: side * v)
            notes.append(
                f"the profile did not rise by {threshold:.3f} on the {name} side up to "
                f"{label}={float(_to_natural(reached, scale)):.5g}: the {name} bound is "
                "beyond the points tried (or the likelihood is flat there: the parameter is "
                "poorly identified)"
            )
            continue
        inner, outer_rec = bracket
        if refine:

            def g(u, inner=inner):
                rec = evaluate(u, inner["x"], False)
                if rec["x"] is None:
                    raise _Failed(rec["error"])
                return rec["minus2ll"] - fit.ofv - threshold

            try:
                root = _brent(g, inner["u"], outer_rec["u"], xtol)
            except _Failed as error:
                notes.append(f"the {name} end could not be refined: a refit raised ({error})")
                root = _interpolated(points, side, u_hat, fit.ofv + threshold)
        else:
            root = _interpolated(points, side, u_hat, fit.ofv + threshold)
        roots[side] = root
    rows = []
    for rec in sorted(points.values(), key=lambda r: r["u"]):
        row = {
            "value": float(_to_natural(rec["u"], scale)),
            "minus2ll": rec["minus2ll"],
            "delta": rec["minus2ll"] - fit.ofv,
            "converged": rec["converged"],
            "n_steps": rec["n_steps"],
            "on_grid": rec["on_grid"],
            "error": rec["error"],
        }
        if rec["x"] is not None:
            row |= parameter_rows(pm, rec["x"], None)
        rows.append(row)
    profile = pd.DataFrame(rows)
    lowest = float(np.nanmin(profile["minus2ll"]))
    if lowest < fit.ofv - 0.01:
        notes.append(
            f"the profile reached -2LL {lowest:.4f}, below the fit's {fit.ofv:.4f}: the fit "
            "was not at the minimum (refit from the profile's best point)"
        )
    wald = fit.table.assign(label=fit.table["kind"] + "[" + fit.table["parameter"] + "]")
    wald = wald.set_index("label").loc[label]
    lo, hi = roots[-1.0], roots[1.0]
    return ProfileResult(
        parameter=label,
        estimate=float(_to_natural(u_hat, scale)),
        fit_ofv=float(fit.ofv),
        level=level,
        threshold=threshold,
        ci_low=float(_to_natural(lo, scale)) if math.isfinite(lo) else math.nan,
        ci_high=float(_to_natural(hi, scale)) if math.isfinite(hi) else math.nan,
        wald_low=float(wald["ci_low"]),
        wald_high=float(wald["ci_high"]),
        profile=profile,
        notes=tuple(notes),
    )


class _Failed(Exception):
    pass


def _interpolated(points, side: float, u_hat: float, target: float) -> float:
    """Where a monotone cubic (PCHIP) interpolation of the profile on one side (the grid
    points with a -2LL, the estimate included) crosses `target`."""
    pts = sorted(
        (r["u"], r["minus2ll"])
        for r in points.values()
        if math.isfinite(r["minus2ll"]) and side * (r["u"] - u_hat) >= 0
    )
    u = np.array([p[0] for p in pts])
    v = np.array([p[1] for p in pts])
    spline = scipy.interpolate.PchipInterpolator(u, v)
    inner = u_hat
    outer = u[-1] if side > 0 else u[0]
    return _brent(lambda t: float(spline(t)) - target, inner, outer, 2e-12)


def _brent(fn, a: float, b: float, xtol: float) -> float:
    """The root of `fn` between `a` and `b` (scipy's Brent method)."""
    root = scipy.optimize.brentq(fn, a, b, xtol=xtol, full_output=False)
    return float(cast(float, root))
