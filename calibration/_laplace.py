"""Maximum-likelihood (Laplace) population fits and individual MAP estimates.

The population fast mode maximises the Laplace approximation of the marginal likelihood:
for each subject the conditional mode `eta_i` of `p(y_i, eta | population)` is found by BFGS
(optimistix; all subjects vmapped), and

    -log p(y_i) ~= f_i(eta_i) + 1/2 log det H_i - d/2 log(2 pi),
    f_i(eta) = -log p(y_i | eta) - log N(eta; 0, Omega),  H_i = d^2 f_i / d eta^2 at eta_i,

with the exact Hessian (NONMEM's `METHOD=COND LAPLACIAN`; FOCE-I replaces H by its
first-order, Gauss-Newton form). Gradients with respect to the population parameters go through
the conditional modes by implicit differentiation (optimistix `ImplicitAdjoint`), so the outer
BFGS sees the exact gradient of the approximate likelihood.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pandas as pd
from jax.flatten_util import ravel_pytree

from ._data import Dataset
from ._model import PopulationModel, eta_logprior


class ConvergenceWarning(UserWarning):
    """An estimation did not converge, or its diagnostics (R-hat, ESS, divergences) are poor."""


@dataclasses.dataclass(frozen=True)
class IndividualFit:
    """Conditional modes (MAP) of each subject's etas and their Laplace covariance.

    - `eta`: `(subjects, n_eta)` modes; `cov`: `(subjects, n_eta, n_eta)` inverse Hessians;
    - `params`: individual parameters by name, `(subjects,)` each;
    - `converged`: `(subjects,)` whether each optimisation succeeded.
    """

    ids: np.ndarray
    eta: np.ndarray
    cov: np.ndarray
    params: dict[str, np.ndarray]
    converged: np.ndarray
    eta_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class PopulationFit:
    """A population fit: estimates, their uncertainty and the individual modes.

    - `phi`: the estimate on the unconstrained scale (pytree), `population`: on the natural
      scale (`theta`, `omega` matrix, `sigma`);
    - `table`: the estimates table (`pandas.DataFrame`);
    - `ofv`: -2 log-likelihood (Laplace approximation), `converged`, `n_steps`;
    - `individual`: the conditional modes at the estimate (`IndividualFit`);
    - `cov_phi`: covariance of the unconstrained estimate (inverse Hessian), or None.
    """

    model: PopulationModel
    phi: dict[str, Any]
    population: dict[str, Any]
    table: pd.DataFrame
    ofv: float
    converged: bool
    n_steps: int
    individual: IndividualFit
    cov_phi: np.ndarray | None
    method: str


def _subject_arrays(data: Dataset):
    cov = {k: jnp.asarray(v) for k, v in data.covariates.items()}
    return cov, data.regimen, data.arrays()


def _inner(pm: PopulationModel, nat, chol, cov, reg, obs, *, max_steps: int = 256):
    """Conditional mode of one subject's eta and the negative log joint there."""

    def f(eta, args):
        nat, chol = args
        return -(pm.subject_loglik(nat, cov, reg, obs, eta) + eta_logprior(chol, eta))

    sol = optx.minimise(
        f,
        optx.BFGS(rtol=1e-10, atol=1e-10),
        jnp.zeros(pm.n_eta),
        args=(nat, chol),
        max_steps=max_steps,
        throw=False,
    )
    eta = sol.value
    hess = jax.hessian(f)(eta, (nat, chol))
    return eta, f(eta, (nat, chol)), hess, sol.result == optx.RESULTS.successful


def _modes(pm: PopulationModel, phi, data: Dataset):
    nat = pm.natural(phi)
    chol = pm.omega_cholesky(phi)
    cov, reg, obs = _subject_arrays(data)
    return jax.vmap(lambda c, r, o: _inner(pm, nat, chol, c, r, o))(cov, reg, obs)


def _neg_loglik(pm: PopulationModel, phi, data: Dataset):
    """-log L (Laplace) summed over subjects."""
    _, fval, hess, _ = _modes(pm, phi, data)
    chol_h = jnp.linalg.cholesky(hess)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol_h, axis1=-2, axis2=-1)), axis=-1)
    d = pm.n_eta
    return jnp.sum(fval + 0.5 * logdet - 0.5 * d * math.log(2 * math.pi))


def individual_map(
    pm: PopulationModel, data: Dataset, population: PopulationFit | dict[str, Any] | None = None
) -> IndividualFit:
    """MAP estimates of every subject's parameters given population values (one vmapped call).

    **Arguments:**

    - `pm`, `data`: the model and the subjects (thousands are fine: one compiled call).
    - `population`: a `PopulationFit`, or population parameters on the unconstrained scale
      (`pm.initial()` form); by default the model's initial values (the prior).

    **Returns:** an `IndividualFit`; the covariance of each mode is the inverse Hessian of the
    negative log posterior (the Laplace approximation of the individual posterior).
    """
    if isinstance(population, PopulationFit):
        phi = population.phi
    else:
        phi = pm.initial() if population is None else population
    return _individual(pm, phi, data)


def _individual(pm: PopulationModel, phi, data: Dataset) -> IndividualFit:
    eta, _, hess, ok = jax.jit(lambda p: _modes(pm, p, data))(phi)
    nat = pm.natural(phi)
    cov = {k: jnp.asarray(v) for k, v in data.covariates.items()}
    params = jax.vmap(lambda c, e: pm.individual_params(nat["theta"], c, e))(cov, eta)
    ok = np.asarray(ok)
    if not ok.all():
        bad = data.ids[~ok][:10].tolist()
        warnings.warn(
            f"individual MAP did not converge for {int((~ok).sum())} subject(s): IDs {bad}",
            ConvergenceWarning,
            stacklevel=3,
        )
    return IndividualFit(
        ids=data.ids,
        eta=np.asarray(eta),
        cov=np.asarray(jnp.linalg.inv(hess)),
        params={k: np.asarray(jnp.broadcast_to(v, (data.n_subjects,))) for k, v in params.items()},
        converged=ok,
        eta_names=pm.eta_names,
    )


def fit_population(
    pm: PopulationModel,
    data: Dataset,
    *,
    max_steps: int = 500,
    rtol: float = 1e-7,
    standard_errors: bool = True,
) -> PopulationFit:
    """Maximum-likelihood population estimates by the Laplace approximation (the fast mode).

    **Arguments:**

    - `pm`: the population model (its values are the starting point).
    - `data`: a `Dataset`.
    - `max_steps`, `rtol`: of the outer BFGS (optimistix).
    - `standard_errors`: compute the covariance of the estimates from the Hessian of
      -log L (central differences of its exact gradient).

    A failed or unfinished optimisation, a non-positive-definite Hessian or an individual
    mode that did not converge emits a `ConvergenceWarning` and sets `converged=False`.
    """
    phi0 = pm.initial()
    flat0, unravel = ravel_pytree(phi0)

    def objective(flat, _):
        return _neg_loglik(pm, unravel(flat), data)

    solver = optx.BFGS(rtol=rtol, atol=rtol)
    sol = jax.jit(lambda x: optx.minimise(objective, solver, x, max_steps=max_steps, throw=False))(
        flat0
    )
    flat = sol.value
    converged = bool(sol.result == optx.RESULTS.successful)
    n_steps = int(sol.stats["num_steps"])
    ofv = float(2.0 * jax.jit(objective)(flat, None))
    if not converged or not math.isfinite(ofv):
        warnings.warn(
            f"population fit did not converge after {n_steps} steps "
            f"({optx.RESULTS[sol.result]}; -2LL={ofv:.4f})",
            ConvergenceWarning,
            stacklevel=2,
        )
        converged = False
    cov_phi = None
    if standard_errors:
        cov_phi = _covariance(lambda x: objective(x, None), flat)
        if cov_phi is None:
            warnings.warn(
                "the Hessian of -log L is not positive definite at the estimate: "
                "no standard errors",
                ConvergenceWarning,
                stacklevel=2,
            )
    phi = unravel(flat)
    ind = _individual(pm, phi, data)
    if not ind.converged.all():
        converged = False
    table = estimates_table(pm, phi, cov_phi, ind)
    return PopulationFit(
        model=pm,
        phi=phi,
        population=jax.tree_util.tree_map(np.asarray, pm.natural(phi)),
        table=table,
        ofv=ofv,
        converged=converged,
        n_steps=n_steps,
        individual=ind,
        cov_phi=cov_phi,
        method="laplace",
    )


def _covariance(fn, flat, step: float = 1e-4) -> np.ndarray | None:
    """Inverse Hessian of `fn` at `flat` by central differences of its gradient."""
    grad = jax.jit(jax.grad(fn))
    n = flat.shape[0]
    cols = []
    for k in range(n):
        e = jnp.zeros(n).at[k].set(step)
        cols.append((grad(flat + e) - grad(flat - e)) / (2 * step))
    h = np.asarray(jnp.stack(cols, axis=1))
    h = 0.5 * (h + h.T)
    if not np.all(np.isfinite(h)) or np.min(np.linalg.eigvalsh(h)) <= 0:
        return None
    return np.linalg.inv(h)


def estimates_table(pm: PopulationModel, phi, cov_phi, ind: IndividualFit | None) -> pd.DataFrame:
    """Tidy estimates: estimate, SE, RSE%, 95% CI, BSV as CV% and eta-shrinkage.

    Log-scale parameters get delta-method SEs (`SE = estimate * SE(log)`) and intervals
    `exp(log estimate +- 1.96 SE(log))`; omega rows give the variance, the CV%
    `sqrt(exp(omega^2) - 1)` and the SD-based shrinkage `1 - SD(eta_i) / omega`.
    """
    flat, unravel = ravel_pytree(phi)
    se_flat = np.sqrt(np.diag(cov_phi)) if cov_phi is not None else np.full(flat.shape, np.nan)
    se = unravel(jnp.asarray(se_flat))
    rows = []
    for k, u in phi["theta"].items():
        u, s = float(u), float(se["theta"][k])
        if k in pm.unconstrained:
            rows.append(_row("theta", k, u, s, u - 1.96 * s, u + 1.96 * s))
        else:
            est = math.exp(u)
            rows.append(
                _row("theta", k, est, est * s, math.exp(u - 1.96 * s), math.exp(u + 1.96 * s))
            )
    omega = np.asarray(pm.natural(phi)["omega"])
    for i, name in enumerate(pm.eta_names):
        var = float(omega[i, i])
        s = 2.0 * var * float(se["omega"]["log_sd"][i])
        lo = var * math.exp(-2 * 1.96 * float(se["omega"]["log_sd"][i]))
        hi = var * math.exp(2 * 1.96 * float(se["omega"]["log_sd"][i]))
        row = _row("omega", name, var, s, lo, hi)
        row["cv_pct"] = 100.0 * math.sqrt(math.expm1(var))
        if ind is not None:
            row["shrinkage_pct"] = 100.0 * (1.0 - float(np.std(ind.eta[:, i])) / math.sqrt(var))
        rows.append(row)
    if pm.omega_block:
        for i in range(pm.n_eta):
            for j in range(i):
                r = omega[i, j] / math.sqrt(omega[i, i] * omega[j, j])
                rows.append(
                    _row("corr", f"{pm.eta_names[i]}~{pm.eta_names[j]}", r, np.nan, np.nan, np.nan)
                )
    for k, u in phi["sigma"].items():
        u, s = float(u), float(se["sigma"][k])
        est = math.exp(u)
        rows.append(_row("sigma", k, est, est * s, math.exp(u - 1.96 * s), math.exp(u + 1.96 * s)))
    return pd.DataFrame(rows)


def _row(kind, name, est, se, lo, hi) -> dict[str, Any]:
    return {
        "kind": kind,
        "parameter": name,
        "estimate": est,
        "se": se,
        "rse_pct": 100.0 * abs(se / est) if est else np.nan,
        "ci_low": lo,
        "ci_high": hi,
        "cv_pct": np.nan,
        "shrinkage_pct": np.nan,
    }
