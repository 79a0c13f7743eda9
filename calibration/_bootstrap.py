"""Nonparametric (case) bootstrap of a population fit: subjects resampled with replacement,
each resample refitted from the original estimates, percentile (and BCa) intervals.

A resample draws `N` subjects with replacement from the `N` of the data (within each stratum
when `stratify` names a covariate, keeping every stratum's size, as PsN's `bootstrap
-stratify_on` does); a subject drawn twice enters the likelihood twice, as two independent
subjects. Each resample is refitted by the outer loop of `fit_population`
(`minimize_objective` over `objective_values`), started from the original estimates (a warm
start: the resample's optimum is near), and its estimates are read on the scale of the
estimates table (theta, omega variances, correlations, sigma) and of any derived quantities
given. A resample whose fit raises or does not converge is counted and listed with its
reason; the intervals use the converged resamples only and say how many.

The outer loop is host-side BFGS over finite differences (`minimize_objective`), so the
resamples run one after another (each with the same compiled objective: every resample has
the data's shapes), with a progress bar if asked, or in `workers` processes.

References: Efron B. Bootstrap methods: another look at the jackknife. Ann Stat
1979;7:1-26. Efron B. Better bootstrap confidence intervals. J Am Stat Assoc
1987;82:171-185 (BCa). Efron B, Tibshirani RJ. An Introduction to the Bootstrap. Chapman &
Hall, 1993 (percentile and BCa intervals, the jackknife estimate of the acceleration, ch.
13-14). Lindbom L, Pihlgren P, Jonsson EN. PsN-Toolkit -- a collection of computer intensive
statistical methods for non-linear mixed effect modeling using NONMEM. Comput Methods
Programs Biomed 2005;79:241-257 (the case bootstrap of subjects, stratified, as PsN runs it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.stats
from jax.flatten_util import ravel_pytree

from ._data import Dataset
from ._estimators import FOCEI, AbstractEstimator
from ._failures import SubjectError
from ._laplace import (
    OuterLoopResult,
    PopulationFit,
    estimates_table,
    fit_population,
    individual_map,
    minimize_objective,
    objective_values,
)
from ._model import PopulationModel

#: Derived quantities: name -> function of the natural-scale population values
#: (`{"theta": {...}, "omega": matrix, "sigma": {...}}`, as `PopulationFit.population`).
Derived = Mapping[str, Callable[[dict[str, Any]], float]]


# ------------------------------------------------------------------ refits (shared with profile)


def refit(
    pm: PopulationModel,
    data: Dataset,
    x0: np.ndarray,
    estimator: AbstractEstimator,
    *,
    fixed: tuple[int, float] | None = None,
    max_steps: int = 500,
    gtol: float = 1e-3,
    who: str = "bootstrap",
) -> tuple[OuterLoopResult | None, np.ndarray, float]:
    """Refit `data` from the flattened population values `x0` (unconstrained scale), the
    coordinate `fixed = (index, value)` held at `value` if given. Returns the outer loop's
    result (None when no parameter is free), the full flattened estimate and its -2LL."""
    x0 = np.asarray(x0, dtype=float)
    free = np.ones(x0.shape[0], dtype=bool)
    if fixed is not None:
        free[fixed[0]] = False
    rejected: dict[Any, str] = {}

    def full(points):
        points = np.atleast_2d(np.asarray(points, dtype=float))
        out = np.empty((points.shape[0], x0.shape[0]))
        out[:, free] = points
        if fixed is not None:
            out[:, fixed[0]] = fixed[1]
        return out

    def evaluate(points, *, start: bool = False):
        res = objective_values(pm, data, full(points), estimator=estimator, start=start)
        for sid, why in res.rejected.items():
            rejected.setdefault(sid, why)
        return res.values

    if not free.any():
        x = full(np.empty((1, 0)))[0]
        return None, x, 2.0 * float(evaluate(x[None, :0], start=True)[0])
    outer = minimize_objective(
        evaluate,
        x0[free],
        max_steps=max_steps,
        gtol=gtol,
        standard_errors=False,
        who=who,
        rejected=lambda: rejected,
    )
    return outer, full(outer.x)[0], outer.ofv


def modes_problem(
    pm: PopulationModel, data: Dataset, x: np.ndarray, estimator: AbstractEstimator
) -> str | None:
    """Why the subjects' conditional modes at the estimate `x` are not all converged (as
    `fit_population` checks after its outer loop), or None when they are."""
    phi = ravel_pytree(pm.initial())[1](jnp.asarray(x))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ind = individual_map(pm, data, phi, estimator=estimator)
    except SubjectError as error:
        return f"conditional modes not found at the estimate: {error}"
    bad = ~np.asarray(ind.converged, dtype=bool)
    if bad.any():
        ids = [_plain(i) for i in np.asarray(data.ids)[bad][:10].tolist()]
        return f"conditional modes did not converge at the estimate for subject(s) {ids}"
    return None


def parameter_rows(pm: PopulationModel, x: np.ndarray, derived: Derived | None) -> dict[str, float]:
    """`{"kind[name]": value}` of the flattened estimate `x`: the estimates table's rows
    (theta, omega variance, corr, iov variance, sigma), then the derived quantities."""
    unravel = ravel_pytree(pm.initial())[1]
    phi = unravel(jnp.asarray(x))
    table = estimates_table(pm, phi, None, None)
    out = {
        f"{k}[{p}]": float(v)
        for k, p, v in zip(table["kind"], table["parameter"], table["estimate"], strict=True)
    }
    if derived:
        nat = jax.tree_util.tree_map(np.asarray, pm.natural(phi))
        for name, fn in derived.items():
            out[f"derived[{name}]"] = float(fn(nat))
    return out


def resolve_fit(
    pm: PopulationModel,
    data: Dataset,
    fit: PopulationFit | None,
    estimator: AbstractEstimator | None,
    who: str,
) -> tuple[PopulationFit, AbstractEstimator]:
    """The original fit (fitted here when not given, with `estimator`) and the estimator of
    the refits (the fit's own unless `estimator` is given)."""
    if fit is None:
        est = FOCEI() if estimator is None else estimator
        return fit_population(pm, data, estimator=est), est
    if not isinstance(fit, PopulationFit):
        raise TypeError(
            f"{who}: fit must be a calibration.PopulationFit, got {type(fit).__name__}."
        )
    if not bool(eqx.tree_equal(fit.model, pm)):
        raise ValueError(
            f"{who}: the fit is of another model than `pm` (give the PopulationModel that was "
            "fitted)."
        )
    if data.ids is not None and list(np.asarray(fit.individual.ids)) != list(np.asarray(data.ids)):
        raise ValueError(
            f"{who}: the fit's subjects {list(np.asarray(fit.individual.ids))[:5]}... are not "
            "the data's; give the data that was fitted."
        )
    est = fit.estimator if estimator is None else estimator
    return fit, FOCEI() if est is None else est


# ----------------------------------------------------------------------------- resampling


def draw_resamples(data: Dataset, n: int, key, stratify: str | None) -> np.ndarray:
    """`(n, subjects)` subject positions drawn with replacement (within each stratum of the
    covariate `stratify`, keeping each stratum's size, in the data's order of strata)."""
    n_sub = data.n_subjects
    if stratify is None:
        groups = [np.arange(n_sub)]
    else:
        if stratify not in data.covariates:
            raise ValueError(
                f"bootstrap: stratify={stratify!r} is not a covariate of the data "
                f"{sorted(data.covariates)} (read it with Dataset.from_records(covariates=[...]))."
            )
        col = np.asarray(data.covariates[stratify])
        if col.ndim != 1:
            raise ValueError(f"bootstrap: stratify={stratify!r} must be one value per subject.")
        _, first = np.unique(col, return_index=True)
        groups = [np.flatnonzero(col == col[i]) for i in sorted(first)]
    out = np.empty((n, n_sub), dtype=np.int64)
    keys = jax.random.split(key, n)
    for b in range(n):
        parts = []
        for s, members in enumerate(groups):
            k = jax.random.fold_in(keys[b], s)
            draw = np.asarray(jax.random.randint(k, (members.size,), 0, members.size))
            parts.append(members[draw])
        out[b] = np.concatenate(parts)
    return out


# ----------------------------------------------------------------------------- the result


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    """A nonparametric bootstrap of a population fit (`bootstrap`).

    - `intervals`: one row per estimate (`kind`, `parameter`, `label` as `theta[CL]`): the
      original `estimate`, the bootstrap `median`, `mean`, `se` (SD over resamples),
      `bias` (mean - estimate), the percentile interval `ci_low`, `ci_high` at `level`,
      the BCa interval `bca_low`, `bca_high` (NaN unless `bca=True`) and `n_used` (the
      resamples the interval uses);
    - `estimates`: the estimates of every resample, long (`resample`, `label`, `value`);
    - `resamples`: one row per resample: `converged`, `ofv` (-2LL), `n_steps`, `error`
      (the exception's type and message of a fit that raised, or why it did not converge),
      `raised`, `used` (in the intervals),
      `subjects` (the IDs drawn, in order);
    - `n`, `n_converged`, `n_failed` (raised), `n_not_converged`; `level`; `stratify`;
      `fit_ofv` (the original -2LL); `method` (the estimator's name); `jackknife` (the
      leave-one-subject-out estimates of BCa, or None).
    """

    intervals: pd.DataFrame
    estimates: pd.DataFrame
    resamples: pd.DataFrame
    n: int
    n_converged: int
    n_failed: int
    n_not_converged: int
    level: float
    stratify: str | None
    fit_ofv: float
    method: str
    jackknife: pd.DataFrame | None = None

    @property
    def failures(self) -> dict[int, str]:
        """`{resample: reason}` of every resample not used (raised, or not converged)."""
        r = self.resamples
        return {
            int(b): (why or "did not converge")
            for b, used, why in zip(r["resample"], r["used"], r["error"], strict=True)
            if not used
        }

    def to_dataframe(self) -> pd.DataFrame:
        """The intervals table (a copy)."""
        return self.intervals.copy()

    def samples(self) -> pd.DataFrame:
        """The estimates wide: one row per resample, one column per label (NaN for a
        resample that raised), with `converged` and `used`."""
        wide = self.estimates.pivot(index="resample", columns="label", values="value")
        labels = list(self.intervals["label"])
        wide = wide.reindex(index=self.resamples["resample"], columns=labels)
        wide["converged"] = self.resamples.set_index("resample")["converged"]
        wide["used"] = self.resamples.set_index("resample")["used"]
        return wide

    def __repr__(self) -> str:
        used = int(np.min(self.intervals["n_used"].to_numpy())) if len(self.intervals) else 0
        return (
            f"BootstrapResult({self.method.upper()}, {self.n} resamples"
            + (f" stratified by {self.stratify}" if self.stratify else "")
            + f": {self.n_converged} converged, {self.n_not_converged} not converged, "
            f"{self.n_failed} failed; {round(100 * self.level)}% percentile intervals of "
            f"{len(self.intervals)} estimates on {used} resamples)"
        )

    def __str__(self) -> str:
        cols = ["label", "estimate", "median", "se", "ci_low", "ci_high"]
        if np.isfinite(self.intervals[["bca_low", "bca_high"]].to_numpy(dtype=float)).any():
            cols += ["bca_low", "bca_high"]
        cols.append("n_used")
        with pd.option_context("display.max_rows", None, "display.width", 200):
            table = self.intervals.filter(items=cols).to_string(
                index=False, float_format=lambda x: f"{x:.5g}"
            )
        lines = [repr(self), table]
        fails = self.failures
        if fails:
            shown = list(fails.items())[:10]
            lines.append(f"Resamples not used ({len(fails)}):")
            lines += [f"  resample {b}: {why}" for b, why in shown]
            if len(fails) > 10:
                lines.append(f"  ... and {len(fails) - 10} more (BootstrapResult.failures)")
        return "\n".join(lines)

    def plot(self, labels: list[str] | None = None, *, figsize=None):
        """Histograms of the used resamples' estimates with the original estimate and the
        percentile interval (a `matplotlib.figure.Figure`, built without pyplot)."""
        from matplotlib.figure import Figure

        wide = self.samples()
        wide = wide[wide["used"].astype(bool)]
        labels = list(self.intervals["label"]) if labels is None else list(labels)
        ncols = min(4, len(labels))
        nrows = math.ceil(len(labels) / ncols)
        fig = Figure(figsize=figsize or (3.2 * ncols, 2.6 * nrows), layout="constrained")
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        ints = self.intervals.set_index("label")
        for ax, lab in zip(axes, labels, strict=False):
            vals = np.asarray(wide[lab], dtype=float)
            ax.hist(vals[np.isfinite(vals)], bins=30, color="C0", alpha=0.7)
            ax.axvline(ints.loc[lab, "estimate"], color="k", lw=1.5, label="estimate")
            for edge in ("ci_low", "ci_high"):
                ax.axvline(ints.loc[lab, edge], color="C3", ls="--", lw=1.2)
            ax.set_title(lab, fontsize=9)
        for ax in axes[len(labels) :]:
            ax.set_visible(False)
        axes[0].legend(
            handles=[
                axes[0].lines[0],
                axes[0].lines[1],
            ],
            labels=["estimate", f"{round(100 * self.level)}% percentile interval"],
            fontsize=7,
        )
        return fig


# ----------------------------------------------------------------------------- the file


class _ResultsFile:
    """A JSON-lines file: a header line, then one line per resample, appended and flushed as
    each finishes. A rerun with the same data, key and settings continues it; a last line
    cut by an interruption is dropped."""

    def __init__(self, path: str | os.PathLike | None, header: dict[str, Any]):
        self.path = None if path is None else os.fspath(path)
        self.header = header
        self.done: dict[int, dict[str, Any]] = {}
        if self.path is None:
            return
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, encoding="utf-8") as fh:
                lines = [line for line in fh.read().split("\n") if line.strip()]
            good = []
            for i, line in enumerate(lines):
                try:
                    good.append(json.loads(line))
                except json.JSONDecodeError:
                    if i < len(lines) - 1:
                        raise ValueError(
                            f"bootstrap: results file {self.path} line {i + 1} is not JSON "
                            "(only the last line may be cut by an interruption)."
                        ) from None
            if not good or "header" not in good[0]:
                raise ValueError(f"bootstrap: results file {self.path} has no header line.")
            old = good[0]["header"]
            for field in header:
                if old.get(field) != header[field]:
                    raise ValueError(
                        f"bootstrap: results file {self.path} was written for another run "
                        f"({field}: {old.get(field)!r} in the file, {header[field]!r} now); "
                        "give another file or the same data, model and settings."
                    )
            for rec in good[1:]:
                self.done[int(rec["resample"])] = rec
            with open(self.path, "w", encoding="utf-8") as fh:  # drop a cut last line
                for rec in good:
                    fh.write(json.dumps(rec) + "\n")
        else:
            with open(self.path, "w", encoding="utf-8") as fh:
                fh.write(json.dumps({"header": header}) + "\n")

    def append(self, rec: dict[str, Any]) -> None:
        self.done[int(rec["resample"])] = rec
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _one(pm, data, idx, x0, est, derived, max_steps, gtol, b) -> dict[str, Any]:
    """Refit resample `b` (subject positions `idx`): its record for the results file."""
    rec: dict[str, Any] = {"resample": b, "subjects": [int(i) for i in idx]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sample = data.subset(idx)
            outer, x, ofv = refit(
                pm, sample, x0, est, max_steps=max_steps, gtol=gtol, who="bootstrap"
            )
        rows = parameter_rows(pm, x, derived)
        converged = bool(outer is None or outer.converged) and math.isfinite(ofv)
        finite = all(math.isfinite(v) for v in rows.values())
        modes = modes_problem(pm, sample, x, est) if converged and finite else None
        rec |= {
            "converged": converged and finite and modes is None,
            "ofv": ofv if math.isfinite(ofv) else None,
            "n_steps": 0 if outer is None else int(outer.n_steps),
            "error": None if finite else "non-finite estimates",
            "estimates": {k: (v if math.isfinite(v) else None) for k, v in rows.items()},
        }
        if modes is not None:
            rec["note"] = modes
        elif not rec["converged"] and outer is not None:
            rec["note"] = outer.convergence_problem()
    except Exception as error:  # every failure is recorded, none hides
        rec |= {
            "converged": False,
            "ofv": None,
            "n_steps": 0,
            "error": f"{type(error).__name__}: {error}",
            "estimates": None,
        }
    return rec


def _worker(args):
    return _one(*args)


# ----------------------------------------------------------------------------- intervals


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The `level` percentile interval (quantiles `(1 -+ level) / 2`, linear interpolation
    between order statistics, numpy's default)."""
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [a, 1.0 - a])
    return float(lo), float(hi)


def bca_interval(
    values: np.ndarray, estimate: float, jackknife: np.ndarray, level: float
) -> tuple[float, float]:
    """The BCa interval (Efron 1987): bias correction `z0 = Phi^-1(#{v < est} + #{v = est}/2) / B)`,
    acceleration `a = sum d^3 / (6 (sum d^2)^1.5)` with `d = mean(jack) - jack_i` (the
    leave-one-subject-out estimates), quantiles `Phi(z0 + (z0 + z) / (1 - a (z0 + z)))`."""
    b = values.size
    share = (np.sum(values < estimate) + 0.5 * np.sum(values == estimate)) / b
    if not 0.0 < share < 1.0:
        return math.nan, math.nan
    z0 = scipy.stats.norm.ppf(share)
    d = np.mean(jackknife) - jackknife
    den = 6.0 * np.sum(d**2) ** 1.5
    acc = float(np.sum(d**3) / den) if den > 0 else 0.0
    z = scipy.stats.norm.ppf([(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    q = scipy.stats.norm.cdf(z0 + (z0 + z) / (1.0 - acc * (z0 + z)))
    lo, hi = np.quantile(values, q)
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- bootstrap


def bootstrap(
    pm: PopulationModel,
    data: Dataset,
    fit: PopulationFit | None = None,
    *,
    n: int = 200,
    key,
    estimator: AbstractEstimator | None = None,
    stratify: str | None = None,
    level: float = 0.95,
    derived: Derived | None = None,
    bca: bool = False,
    start: PopulationFit | Mapping[str, Any] | None = None,
    max_steps: int = 500,
    gtol: float = 1e-3,
    results_file: str | os.PathLike | None = None,
    workers: int = 1,
    progress: bool = False,
) -> BootstrapResult:
    """Nonparametric case bootstrap of a population fit: subjects resampled with replacement,
    each resample refitted from the original estimates, percentile intervals of every
    estimate.

    **Arguments:**

    - `pm`, `data`: the model and the data that were fitted.
    - `fit`: the original `PopulationFit` (fitted here with `estimator` when not given).
    - `n`: resamples (PsN's default is 200; 1000 or more for the tails of a 95% interval).
    - `key`: a `jax.random` key (keyword-only); the same key draws the same resamples.
    - `estimator`: `FOCEI()` or `Laplace()` for the refits (default: the fit's own).
    - `stratify`: a covariate of the data (a study, a formulation, a genotype group, ...):
      subjects are drawn within each of its values, keeping each stratum's size (PsN's
      `-stratify_on`).
    - `level`: of the intervals (0.95: the 2.5th and 97.5th percentiles).
    - `derived`: `{name: fn}` quantities computed from each resample's natural-scale
      population values (`{"theta": {...}, "omega": matrix, "sigma": {...}}`), e.g.
      `{"k": lambda p: p["theta"]["CL"] / p["theta"]["V"]}`; their intervals too.
    - `bca`: also the bias-corrected and accelerated intervals (Efron 1987), whose
      acceleration needs one leave-one-subject-out refit per subject (the jackknife).
    - `start`: where every refit starts (a `PopulationFit` or unconstrained population
      values); default the original estimates.
    - `max_steps`, `gtol`: of each refit's outer loop (as in `fit_population`).
    - `results_file`: a JSON-lines file to which each resample is appended as it finishes;
      calling again with the same file, data, model, key and settings continues where it
      stopped (the resamples done are read, not refitted).
    - `workers`: refits run in this many processes (`concurrent.futures`, spawned: each
      compiles its own objective, so it pays for more than a few dozen resamples); 1 runs
      them here, one after another. The model's `typical` must then be picklable (a
      module-level function, not a lambda).
    - `progress`: a progress bar (rich).

    **Returns:** a `BootstrapResult`. A resample whose refit raises (e.g. `SubjectError`) or
    does not converge is counted and listed (`BootstrapResult.failures`) and left out of the
    intervals, whose `n_used` says how many resamples they rest on.
    """
    if not (isinstance(n, int | np.integer) and n >= 2):
        raise ValueError(f"bootstrap: n must be an integer >= 2 resamples, got {n!r}.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap: level must be in (0, 1), got {level}.")
    if data.ids is None:
        raise ValueError("bootstrap: the data have no subject IDs (use Dataset.from_records).")
    if not (isinstance(workers, int | np.integer) and workers >= 1):
        raise ValueError(f"bootstrap: workers must be an integer >= 1, got {workers!r}.")
    fit, est = resolve_fit(pm, data, fit, estimator, "bootstrap")
    x_fit = np.asarray(ravel_pytree(fit.phi)[0], dtype=float)
    if start is None:
        x0 = x_fit
    else:
        phi_start = start.phi if isinstance(start, PopulationFit) else start
        x0 = np.asarray(ravel_pytree(phi_start)[0], dtype=float)
        if x0.shape != x_fit.shape:
            raise ValueError(
                f"bootstrap: start has {x0.shape[0]} population values, the model {x_fit.shape[0]}."
            )
    original = parameter_rows(pm, x_fit, derived)
    labels = list(original)
    index = draw_resamples(data, int(n), key, stratify)
    ids = [_plain(i) for i in np.asarray(data.ids).tolist()]
    header = {
        "ids": ids,
        "labels": labels,
        "n_parameters": int(x_fit.size),
        "stratify": stratify,
        "estimator": est.name,
        "start": [float(v) for v in x0],
        "max_steps": int(max_steps),
        "gtol": float(gtol),
        "first_resample": [int(i) for i in index[0]],
    }
    store = _ResultsFile(results_file, header)
    for b, rec in store.done.items():
        if b >= n or rec["subjects"] != [int(i) for i in index[b]]:
            raise ValueError(
                f"bootstrap: resample {b} of results file {store.path} drew other subjects "
                "than this key draws; give the key of that run or another file."
            )
    todo = [b for b in range(int(n)) if b not in store.done]
    jobs = [(pm, data, index[b], x0, est, derived, max_steps, gtol, b) for b in todo]
    with _progress(progress, len(todo), "bootstrap") as advance:
        if workers == 1 or len(jobs) < 2:
            for job in jobs:
                store.append(_one(*job))
                advance()
        else:
            import concurrent.futures
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(int(workers), mp_context=ctx) as pool:
                for rec in pool.map(_worker, jobs, chunksize=max(1, len(jobs) // (4 * workers))):
                    store.append(rec)
                    advance()
    records = [store.done[b] for b in range(int(n))]
    jack = None
    if bca:
        jack = _jackknife(pm, data, x_fit, est, derived, max_steps, gtol, progress)
    return _result(records, original, labels, jack, level, stratify, fit.ofv, est.name, ids)


def _plain(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


class _progress:
    """A rich progress bar (or nothing): `with _progress(on, total, what) as advance:`."""

    def __init__(self, enabled: bool, total: int, what: str):
        self.enabled, self.total, self.what = enabled, total, what
        self.bar = None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

        self.bar = Progress(
            f"[bold]{self.what}", BarColumn(), TaskProgressColumn(), TimeRemainingColumn()
        )
        bar = self.bar
        bar.__enter__()
        task = bar.add_task(self.what, total=self.total)
        return lambda: bar.advance(task)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


def _jackknife(pm, data, x_fit, est, derived, max_steps, gtol, progress) -> pd.DataFrame:
    """Leave-one-subject-out refits (for the BCa acceleration): one row per subject left
    out, the estimates by label, `converged` and `error`."""
    n_sub = data.n_subjects
    rows = []
    with _progress(progress, n_sub, "jackknife") as advance:
        for i in range(n_sub):
            keep = np.delete(np.arange(n_sub), i)
            rec = _one(pm, data, keep, x_fit, est, derived, max_steps, gtol, i)
            row = {"left_out": _plain(np.asarray(data.ids)[i]), "converged": rec["converged"]}
            row["error"] = rec["error"]
            row |= {k: (math.nan if v is None else v) for k, v in (rec["estimates"] or {}).items()}
            rows.append(row)
            advance()
    return pd.DataFrame(rows)


def _result(records, original, labels, jack, level, stratify, fit_ofv, method, ids):
    res_rows, est_rows = [], []
    for rec in records:
        used = bool(rec["converged"]) and rec["estimates"] is not None
        res_rows.append(
            {
                "resample": rec["resample"],
                "converged": bool(rec["converged"]),
                "used": used,
                "ofv": math.nan if rec["ofv"] is None else rec["ofv"],
                "n_steps": rec["n_steps"],
                "raised": rec["estimates"] is None,
                "error": rec["error"] or (None if rec["converged"] else rec.get("note")),
                "subjects": [ids[i] for i in rec["subjects"]],
            }
        )
        for lab in labels:
            v = (rec["estimates"] or {}).get(lab)
            if rec["estimates"] is not None:
                est_rows.append(
                    {
                        "resample": rec["resample"],
                        "label": lab,
                        "value": math.nan if v is None else v,
                    }
                )
    resamples = pd.DataFrame(res_rows)
    estimates = pd.DataFrame(est_rows, columns=["resample", "label", "value"])
    used_ids = set(resamples.loc[resamples["used"], "resample"])
    jack_ok = None
    if jack is not None:
        jack_ok = jack[jack["converged"].astype(bool)]
        if len(jack_ok) < len(jack):
            jack_ok = None  # an acceleration from a partial jackknife would be another number
    rows = []
    for lab in labels:
        kind, name = lab.split("[", 1)
        vals = estimates.loc[
            (estimates["label"] == lab) & estimates["resample"].isin(sorted(used_ids)), "value"
        ].to_numpy(dtype=float)
        vals = vals[np.isfinite(vals)]
        est = original[lab]
        row = {"kind": kind, "parameter": name[:-1], "label": lab, "estimate": est}
        if vals.size >= 2:
            lo, hi = percentile_interval(vals, level)
            row |= {
                "median": float(np.median(vals)),
                "mean": float(np.mean(vals)),
                "se": float(np.std(vals, ddof=1)),
                "bias": float(np.mean(vals)) - est,
                "ci_low": lo,
                "ci_high": hi,
            }
        else:
            row |= dict.fromkeys(("median", "mean", "se", "bias", "ci_low", "ci_high"), math.nan)
        row["bca_low"], row["bca_high"] = math.nan, math.nan
        if jack_ok is not None and vals.size >= 2 and lab in jack_ok:
            row["bca_low"], row["bca_high"] = bca_interval(
                vals, est, jack_ok[lab].to_numpy(dtype=float), level
            )
        row["n_used"] = int(vals.size)
        rows.append(row)
    n_conv = int(np.sum(resamples["converged"].to_numpy()))
    n_failed = int(np.sum(resamples["raised"].to_numpy()))
    return BootstrapResult(
        intervals=pd.DataFrame(rows),
        estimates=estimates,
        resamples=resamples,
        n=len(records),
        n_converged=n_conv,
        n_failed=n_failed,
        n_not_converged=len(records) - n_conv - n_failed,
        level=level,
        stratify=stratify,
        fit_ofv=float(fit_ofv),
        method=method,
        jackknife=jack,
    )
