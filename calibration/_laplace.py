"""Maximum-likelihood (Laplace) population fits and individual MAP estimates.

The population fast mode maximises the Laplace approximation of the marginal likelihood:
for each subject the conditional mode `eta_i` of `p(y_i, eta | population)` is found by a
damped Newton iteration (exact gradient and Hessian by JAX; all subjects vmapped, or beyond
256 subjects in lanes fed from a queue, so that the cost follows the sum of the subjects'
iterations), and

    -log p(y_i) ~= f_i(eta_i) + 1/2 log det H_i - d/2 log(2 pi),
    f_i(eta) = -log p(y_i | eta) - log N(eta; 0, Omega),  H_i = d^2 f_i / d eta^2 at eta_i,

with the exact Hessian (NONMEM's `METHOD=COND LAPLACIAN`; FOCE-I replaces H by its
first-order, Gauss-Newton form). The outer BFGS over the population parameters uses central
finite differences of this objective, as NONMEM's outer loop does: each of the 2p + 1 evaluations
of one gradient has its own conditional modes. `gradient="implicit"` differentiates through
the inner optimisation by implicit differentiation instead (the exact gradient at the converged
modes: one evaluation and one gradient per step, and the standard errors from differences of
that gradient); its program takes longer to compile, so it pays on large data sets.

References: Wang Y. Derivation of various NONMEM estimation methods. J Pharmacokinet
Pharmacodyn 2007;34:575-593 (the Laplace and FOCE-I objectives and their relation to NONMEM's
methods). Beal SL, Sheiner LB. NONMEM Users Guides. ICON, 1989-2011.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.optimize
from jax.flatten_util import ravel_pytree

from ._data import Dataset
from ._estimators import FOCEI, AbstractEstimator, Laplace, resolve_estimator
from ._failures import SubjectError, check_error_data, domain_reasons, explain_nonfinite
from ._model import PopulationModel, observation_loglik, residual_sd


class ConvergenceWarning(UserWarning):
    """An estimation did not converge, or its diagnostics (R-hat, ESS, divergences) are poor."""


@dataclasses.dataclass(frozen=True)
class IndividualFit:
    """Conditional modes (MAP) of each subject's etas and their Laplace covariance.

    - `eta`: `(subjects, n_eta)` modes; `cov`: `(subjects, n_eta, n_eta)` inverse Hessians;
    - `params`: individual parameters by name, `(subjects,)` each;
    - `converged`: `(subjects,)` whether each optimisation succeeded;
    - `kappa`: for a model with IOV, `(subjects, occasions, n_iov)` the modes of the
      inter-occasion effects, NaN for occasions a subject does not have (`params` then hold
      each subject's parameters without them);
    - `random_cov`: for a model with IOV, `(subjects, n_random, n_random)` the inverse
      curvature of all the random effects of each subject, etas then kappas occasion-major
      (`PopulationModel.n_random`; `cov` is its eta block). The etas and kappas of a
      subject are correlated a posteriori (both move its parameters on an occasion); an
      occasion it does not have leaves its kappas at their prior (mode 0, variance
      omega_IOV^2).
    """

    ids: np.ndarray
    eta: np.ndarray
    cov: np.ndarray
    params: dict[str, np.ndarray]
    converged: np.ndarray
    eta_names: tuple[str, ...]
    kappa: np.ndarray | None = None
    random_cov: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class PopulationFit:
    """A population fit: estimates, their uncertainty and the individual modes.

    - `phi`: the estimate on the unconstrained scale (pytree), `population`: on the natural
      scale (`theta`, `omega` matrix, `sigma`);
    - `table`: the estimates table (`pandas.DataFrame`);
    - `ofv`: -2 log-likelihood (Laplace approximation), `converged`, `n_steps`;
    - `individual`: the conditional modes at the estimate (`IndividualFit`);
    - `cov_phi`: covariance of the unconstrained estimate (inverse Hessian), or None;
    - `estimator`: the `FOCEI()` or `Laplace()` used, `method` its name (`"focei"`,
      `"laplace"`);
    - `diagnostics`: `gradient_evaluations` (finite-difference gradients computed),
      `rejected_evaluations` (objective evaluations of the outer search and the covariance
      step rejected because a subject's term was not finite) and `rejected_subjects`
      (`{subject ID: reason}` for the subjects that caused them, the first reason seen).
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
    estimator: AbstractEstimator | None = None
    diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        state = "converged" if self.converged else "NOT converged"
        return (
            f"PopulationFit({self.method.upper()}, {state} in {self.n_steps} steps, "
            f"-2LL {self.ofv:.4f}, {len(self.individual.ids)} subjects, "
            f"{len(self.table)} estimates; calibration.fit_summary(fit, data) for OFV, AIC, "
            "BIC and the condition number)"
        )

    def __str__(self) -> str:
        with pd.option_context("display.max_rows", None, "display.width", 200):
            table = self.table.to_string(index=False, float_format=lambda x: f"{x:.5g}")
        return f"{self!r}\n{table}"


def _n_random(pm: PopulationModel, obs) -> int:
    """Random effects of one subject (static): etas and, with IOV, kappas per occasion."""
    return pm.n_random(obs["occasion_start"].shape[-1])


def _subject_arrays(data: Dataset):
    cov = {k: jnp.asarray(v) for k, v in data.covariates.items()}
    return cov, data.regimen, data.arrays()


def _inner(
    pm: PopulationModel,
    nat,
    chol,
    cov,
    reg,
    obs,
    eta0,
    *,
    estimator: AbstractEstimator,
    max_steps: int = 200,
):
    """Conditional mode of one subject's eta by damped Newton (Levenberg-Marquardt) on the
    estimator's curvature plus a structured secant correction, with backtracking.

    The first-order (FOCE-I) curvature underestimates the true one where residuals are
    large, so its Newton steps overshoot and the plain iteration converges linearly, or
    crawls (vancomycin twins with two levels: the gradient still at 1e-2 after 200
    iterations). As in NL2SOL (Dennis, Gay & Welsch 1981, ACM Trans Math Softw 7:348-368),
    a matrix `S` learnt from the gradients of accepted steps (a Powell symmetric Broyden
    update: Powell 1970, Nonlinear Programming, Academic Press, pp 31-65; of the part of the
    Hessian the curvature leaves out) is added to
    the curvature in the step (not for the exact Hessian of `Laplace`). A downhill step
    that does not decrease the objective is halved along its own direction; otherwise (an
    uphill step of an indefinite curvature, a point outside the domain) the damping rises.
    The curvature returned (for the objective's log-determinant and the covariance) is the
    estimator's own.

    Starts from `eta0` (zeros, or the modes at a nearby population value: the outer loop's
    finite differences then take a few iterations each). Returns the mode, the negative log
    joint there, the curvature matrix (exact or first order, see
    `AbstractEstimator.local_model`), whether it converged (gradient below
    1e-6 * (1 + |f|) in the infinity norm, or the Newton step left below 1e-7 in every
    random effect, a relative 1e-7 of each parameter: where the subject's terms cancel to a
    small `f` the gradient's rounding noise can stay above the first test at the mode itself;
    the iteration aims at 1e-11, because the log-determinant term of the population
    objective moves at first order with the mode, and stops short of it where a downhill
    step halved below 1e-12 still does not decrease f: there f's rounding noise decides) and
    whether the subject's parameters at the mode are inside the model's domain (outside, the
    negative log joint is `+inf`: no step is accepted and the subject's term is not finite).
    """
    state = _newton_start(eta0)
    state = jax.lax.while_loop(
        lambda st: ~_newton_finished(st, max_steps),
        lambda st: _newton_step(pm, nat, chol, cov, reg, obs, st, estimator=estimator),
        state,
    )
    return _newton_result(pm, nat, cov, obs, state)


# The state of one subject's conditional-mode search (`_inner`): the accepted point `eta`,
# `fval`, gradient `g` and curvature `h` there, the candidate `cand` to evaluate next, the
# damping `lam`, the iteration `k`, `done`, and the secant correction `S`.


def _newton_start(eta0):
    d = eta0.shape[-1]
    zero_h = jnp.zeros((d, d), eta0.dtype)
    return (
        eta0,
        jnp.asarray(jnp.inf, eta0.dtype),
        jnp.zeros_like(eta0),
        zero_h,
        eta0,
        jnp.asarray(1e-3, eta0.dtype),
        jnp.asarray(0),
        jnp.asarray(False),
        zero_h,
    )


def _newton_finished(state, max_steps: int):
    return state[7] | (state[6] > max_steps)


def _newton_step(pm, nat, chol, cov, reg, obs, state, *, estimator: AbstractEstimator):
    """One iteration of `_inner`'s search: one evaluation of `fgh`, at the candidate `cand`
    (the model and its derivatives are traced, and compiled, once). The first evaluation
    is at `eta0` itself; its gradient and curvature give the first step even where
    `f(eta0)` is not finite (a start outside the domain)."""
    _, fgh = estimator.local_model(pm, nat, chol, cov, reg, obs)
    secant = estimator.name != "laplace"  # the exact Hessian leaves nothing out
    eta, fval, g, h, cand, lam, k, _, S = state
    eye = jnp.eye(eta.shape[-1], dtype=eta.dtype)
    fc, gc, hc = fgh(cand)
    first = k == 0
    ok = jnp.isfinite(fc) & (fc <= fval)
    take = ok | first
    step = cand - eta
    # the secant condition (h + S) step = change of gradient, for the accepted step
    resid = (gc - g) - hc @ step - S @ step
    ss = step @ step
    learn = ok & ~first & (ss > 0) & jnp.all(jnp.isfinite(resid))
    ss1 = jnp.where(ss > 0, ss, 1.0)
    psb = (jnp.outer(resid, step) + jnp.outer(step, resid)) / ss1 - (resid @ step) * jnp.outer(
        step, step
    ) / ss1**2
    S = jnp.where(learn & secant, S + psb, S)
    # halve a rejected step that points downhill; otherwise (an indefinite curvature's
    # uphill step, or a start outside the domain) raise the damping
    back = ~ok & ~first & jnp.isfinite(fval) & (g @ step < 0)
    eta = jnp.where(ok, cand, eta)
    fval = jnp.where(ok, fc, fval)
    g = jnp.where(take, gc, g)
    h = jnp.where(take, hc, h)
    lam = jnp.where(first | back, lam, jnp.where(ok, lam * 0.1, jnp.maximum(lam, 1e-6) * 10.0))
    small = jnp.isfinite(fval) & (jnp.max(jnp.abs(g)) <= 1e-11 * (1.0 + jnp.abs(fval)))
    # A downhill step halved below 1e-12 without decreasing f: f's rounding noise, not its
    # slope, decides there (the mode is as close as f can tell; the state would not move
    # again, and under vmap one such subject kept every subject's loop running to
    # `max_steps`).
    stalled = back & (jnp.max(jnp.abs(step)) < 2e-12)
    done = small | stalled | (ok & ~first & (jnp.max(jnp.abs(step)) < 1e-12))
    corrected = -jnp.linalg.solve(h + S + lam * eye, g)
    plain = -jnp.linalg.solve(h + lam * eye, g)
    descent = jnp.all(jnp.isfinite(corrected)) & (g @ corrected < 0)
    newton = eta + jnp.where(descent, corrected, plain)
    cand = jnp.where(back, eta + 0.5 * step, newton)
    return eta, fval, g, h, cand, lam, k + 1, done, S


def _newton_result(pm, nat, cov, obs, state):
    """`_inner`'s result from the search's final state."""
    eta, fval, g, h = state[:4]
    in_dom = pm.subject_in_domain(nat["theta"], cov, eta, obs["occasion_start"].shape[-1])
    small_g = jnp.max(jnp.abs(g)) <= 1e-6 * (1.0 + jnp.abs(fval))
    left = jnp.linalg.solve(h, g)  # the Newton step still to go
    small_step = jnp.all(jnp.isfinite(left)) & (jnp.max(jnp.abs(left)) <= 1e-7)
    converged = jnp.isfinite(fval) & (small_g | small_step)
    return eta, fval, h, converged, in_dom


def _zeros(pm: PopulationModel, data: Dataset) -> jnp.ndarray:
    """Starting random effects of every subject (the population typical values)."""
    return jnp.zeros((data.n_subjects, pm.n_random(data.n_occasions)))


def _lanes(n_subjects: int) -> int:
    """How many subjects' searches run side by side (`_modes_arrays`): all of them up to
    256 subjects; beyond, a power of two near an eighth of them (at least 128)."""
    if n_subjects <= 256:
        return n_subjects
    return max(128, 1 << (n_subjects // 8).bit_length() - 1)


def _modes_arrays(pm: PopulationModel, phi, cov, reg, obs, eta0, estimator: AbstractEstimator):
    """Every subject's `_inner` search. Up to 256 subjects, one vmapped loop; beyond, the
    searches run in `_lanes` lanes fed from a queue (`_queued_searches`)."""
    nat = pm.natural(phi)
    chol = pm.random_cholesky(phi, obs["occasion_start"].shape[-1])
    n = eta0.shape[0]
    lanes = _lanes(n)
    if lanes >= n:
        return jax.vmap(lambda c, r, o, e: _inner(pm, nat, chol, c, r, o, e, estimator=estimator))(
            cov, reg, obs, eta0
        )
    states = _queued_searches(pm, nat, chol, cov, reg, obs, eta0, estimator, lanes)
    return jax.vmap(lambda c, o, st: _newton_result(pm, nat, c, o, st))(cov, obs, states)


def _queued_searches(pm, nat, chol, cov, reg, obs, eta0, estimator, lanes: int, max_steps=200):
    """The final `_inner` states of every subject's search, run `lanes` at a time: a lane
    whose subject has finished takes the next subject of the queue.

    Under a single vmap a search's loop runs until the slowest subject has finished, every
    subject paying for every iteration (cost: the most iterations times the subjects);
    with the queue the cost follows the sum of the subjects' own iterations (measured on
    1,000 two-compartment subjects: a mean of 12, a maximum of 45-72 per evaluation).
    Each subject's iterations are those of `_inner`, so its mode is the same."""
    n = eta0.shape[0]
    states = jax.vmap(_newton_start)(eta0)
    take = lambda tree, idx: jax.tree_util.tree_map(lambda a: a[idx], tree)

    def step(c, r, o, st):
        new = _newton_step(pm, nat, chol, c, r, o, st, estimator=estimator)
        # a lane whose subject finished (the queue empty) leaves its state as it is
        idle = _newton_finished(st, max_steps)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(idle, a, b), st, new)

    def body(carry):
        states, lane, nxt = carry
        new = jax.vmap(step)(take(cov, lane), take(reg, lane), take(obs, lane), take(states, lane))
        states = jax.tree_util.tree_map(lambda a, b: a.at[lane].set(b), states, new)
        fin = _newton_finished(new, max_steps)
        # the finished lanes take the next subjects, in lane order, while the queue lasts
        queue = nxt + jnp.cumsum(fin) - 1
        refill = fin & (queue < n)
        lane = jnp.where(refill, queue, lane)
        return states, lane, nxt + jnp.sum(refill)

    def cond(carry):
        states, lane, _ = carry
        return ~jnp.all(_newton_finished(take(states, lane), max_steps))

    carry = (states, jnp.arange(lanes), jnp.asarray(lanes))
    return jax.lax.while_loop(cond, body, carry)[0]


def _neg_loglik(
    pm: PopulationModel, phi, data: Dataset, estimator: AbstractEstimator | None = None
):
    """-log L (Laplace approximation, exact or first-order curvature, FOCE-I by default)
    summed over subjects."""
    est = FOCEI() if estimator is None else estimator
    return _neg_loglik_arrays(pm, phi, *_subject_arrays(data), _zeros(pm, data), est)[0]


def _neg_loglik_arrays(pm: PopulationModel, phi, cov, reg, obs, eta0, estimator: AbstractEstimator):
    """`(-log L, conditional modes, curvatures, converged, terms, in_domain)`, the modes found
    from `eta0`; `terms` is each subject's share of -log L (not finite for a subject that
    cannot be evaluated, which makes -log L not finite: the callers look at `terms`) and
    `in_domain` whether its parameters are inside the model's domain."""
    modes, fval, hess, ok, in_dom = _modes_arrays(pm, phi, cov, reg, obs, eta0, estimator)
    chol_h = jnp.linalg.cholesky(hess)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol_h, axis1=-2, axis2=-1)), axis=-1)
    d = pm.n_random(obs["occasion_start"].shape[-1])
    terms = fval + 0.5 * logdet - 0.5 * d * math.log(2 * math.pi)
    return jnp.sum(terms), modes, hess, ok, terms, in_dom


@eqx.filter_jit
def _objective(pm: PopulationModel, phi, data: Dataset, eta0, estimator: AbstractEstimator):
    """`(-log L, conditional modes, curvatures, converged, terms, in_domain)` (see
    `_neg_loglik_arrays`) for `data.numeric()`, the modes found from `eta0`. Compiled once
    per model (compared by value), estimator and data shapes; reused by population fits and
    individual MAP."""
    return _neg_loglik_arrays(pm, phi, *_subject_arrays(data), eta0, estimator)


@eqx.filter_jit
def _implicit_gradient(pm: PopulationModel, phi, data: Dataset, modes, estimator):
    """The gradient of -log L (flattened as `ravel_pytree(phi)`) at `phi` whose conditional
    modes are `modes`, by implicit differentiation instead of finite differences.

    Each subject's term is `T(phi) = f(phi, eta*) + log det H(phi, eta*) / 2 - d log(2 pi) / 2`
    at the mode `eta*(phi)` of `f` (its negative log joint; `H` the estimator's curvature).
    By the implicit function theorem `d eta* / d phi = -A^-1 B` (`A` the exact Hessian of
    `f` in eta, `B` its mixed second derivative), so
    `dT/dphi = dT/dphi|eta - (A^-1 dT/deta)' B`; the last term is the phi-gradient of
    `grad_eta f . v` with `v = A^-1 dT/deta` held fixed. Exact for the objective the finite
    differences approximate, given converged modes."""
    flat, unravel = ravel_pytree(phi)
    cov, reg, obs = _subject_arrays(data)

    def local(x, c, r, o):
        p = unravel(x)
        chol = pm.random_cholesky(p, o["occasion_start"].shape[-1])
        return estimator.local_model(pm, pm.natural(p), chol, c, r, o)

    def term(x, eta, c, r, o):
        fgh = local(x, c, r, o)[1]
        value, _, h = fgh(eta)
        return value + 0.5 * jnp.linalg.slogdet(h)[1]

    def f(x, eta, c, r, o):
        return local(x, c, r, o)[0](eta)

    def one(c, r, o, eta):
        g_x, g_eta = jax.grad(term, argnums=(0, 1))(flat, eta, c, r, o)
        a = jax.hessian(f, argnums=1)(flat, eta, c, r, o)
        v = jnp.linalg.solve(a, g_eta)
        mixed = jax.grad(lambda x: jax.grad(f, argnums=1)(x, eta, c, r, o) @ v)(flat)
        return g_x - mixed

    return jnp.sum(jax.vmap(one)(cov, reg, obs, modes), axis=0)


@eqx.filter_jit
def subject_params(pm: PopulationModel, phi, covariates, eta):
    """Every subject's parameters (without IOV) at its etas `eta` (subjects, n_eta)."""
    nat = pm.natural(phi)
    n = eta.shape[0]
    params = jax.vmap(lambda c, e: pm.individual_params(nat["theta"], c, e))(covariates, eta)
    return {k: jnp.broadcast_to(v, (n,)) for k, v in params.items()}


@eqx.filter_jit
def _observation_terms(pm: PopulationModel, phi, data: Dataset, b):
    """Predictions, residual SDs and log-likelihoods `(subjects, obs)` of every observation at
    the random effects `b` (only computed to explain a subject that failed)."""
    nat = pm.natural(phi)
    cov, reg, obs = _subject_arrays(data)

    def one(c, r, o, e):
        f = pm.predict_random(nat["theta"], c, r, o, e)
        which = pm.which(o)
        ll = observation_loglik(
            pm.error, nat["sigma"], f, o["dv"], o["observed"], o["blq"], o["lloq"], which
        )
        return f, residual_sd(pm.error, nat["sigma"], f, which), ll

    return jax.vmap(one)(cov, reg, obs, b)


def _reasons(pm: PopulationModel, phi, data: Dataset, out, bad: np.ndarray, at: str):
    """`{subject ID: reason}` for the subjects `bad` (a mask) of the objective's output `out`
    at `phi`: parameters outside the domain (named, with their values), or the first
    observation whose likelihood is not finite (row, time, DV, prediction)."""
    modes, in_dom = out[1], np.asarray(out[5])
    index = np.flatnonzero(bad)
    found: dict[Any, str] = {}
    outside = index[~in_dom[index]]
    if outside.size:
        cov = {k: jnp.asarray(v) for k, v in data.covariates.items()}
        params = subject_params(pm, phi, cov, modes[:, : pm.n_eta])
        found |= domain_reasons(pm.model, jax.device_get(params), data, outside)
    rest = index[in_dom[index]]
    if rest.size:
        pred, sd, ll = (np.asarray(a) for a in _observation_terms(pm, phi, data.numeric(), modes))
        found |= explain_nonfinite(pm, data, rest, pred, sd, ll, at=at)
    ids = data.ids.tolist() if data.ids is not None else list(range(data.n_subjects))
    reasons = {}
    for i in index:
        reasons[ids[i]] = found.get(
            ids[i], "individual parameters outside their domain on some occasion (IOV)"
        )
    return reasons


def check_start(pm: PopulationModel, data: Dataset, phi, who: str, where: str) -> None:
    """Before any estimation: refuse data the error model cannot explain (`RecordError`) and
    subjects whose typical parameters (etas 0) at the starting values `phi` are outside the
    model's domain (`SubjectError` naming each subject, parameter, value, covariates and
    row). Their likelihood is zero for every eta (the sign of a parameter does not depend
    on its eta), so no estimator can start; the check costs no simulation."""
    check_error_data(pm, data, who)
    cov = {k: jnp.asarray(v) for k, v in data.covariates.items()}
    params = subject_params(pm, phi, cov, jnp.zeros((data.n_subjects, pm.n_eta)))
    reasons = domain_reasons(pm.model, jax.device_get(params), data, np.arange(data.n_subjects))
    if reasons:
        raise SubjectError(
            who,
            reasons,
            f"Their parameters at {where} are outside the model's domain for every eta "
            "(their likelihood is zero). " + _REMOVE_HINT,
        )


_REMOVE_HINT = (
    "Correct or remove the subject's records (Dataset.subset keeps the others), or start from "
    "population values at which its parameters are valid."
)


def individual_map(
    pm: PopulationModel,
    data: Dataset,
    population: PopulationFit | dict[str, Any] | None = None,
    *,
    estimator: AbstractEstimator | None = None,
    method: str | None = None,
    start: Any = None,
) -> IndividualFit:
    """MAP estimates of every subject's parameters given population values (one vmapped call).

    **Arguments:**

    - `pm`, `data`: the model and the subjects (thousands are fine: one compiled call).
    - `population`: a `PopulationFit`, or population parameters on the unconstrained scale
      (`pm.initial()` form); by default the model's initial values (the prior).
    - `estimator`: `calibration.Laplace()` (the default here): the covariance of each mode
      is the inverse of the exact Hessian of the negative log posterior (the Laplace
      approximation of the individual posterior); `calibration.FOCEI()`: the inverse of its
      first-order (Gauss-Newton) form, cheaper to compile. The modes are the same.
    - `method`: deprecated spelling of `estimator` (`"laplace"` or `"focei"`; a
      `DeprecationWarning`).
    - `start`: where each subject's conditional-mode search starts, `(n_subjects, n_eta)`
      etas (a warm start: the previous modes of twins given one more level); default the
      typical values (etas 0). Kappas (IOV) start at 0. The modes found are the same to
      the inner optimiser's tolerance; a start closer to the mode takes fewer Newton steps.

    **Returns:** an `IndividualFit`.
    """
    if isinstance(population, PopulationFit):
        phi = population.phi
    else:
        phi = pm.initial() if population is None else population
    est = resolve_estimator(estimator, method, default=Laplace(), fn="individual_map")
    return _individual(pm, phi, data, est, who="individual_map", start=start)


def _start(pm: PopulationModel, data: Dataset, start: Any, who: str) -> jnp.ndarray:
    """The random effects the modes are searched from: `start`'s etas (kappas 0), checked."""
    eta0 = _zeros(pm, data)
    if start is None:
        return eta0
    s = np.asarray(start, dtype=float)
    want = (data.n_subjects, pm.n_eta)
    if s.shape != want:
        raise ValueError(f"{who}: start must have shape (subjects, etas) = {want}, got {s.shape}.")
    bad = ~np.isfinite(s).all(axis=1)
    if bad.any():
        ids = data.ids[bad][:10].tolist()
        raise ValueError(f"{who}: start has non-finite etas for subject(s) {ids}.")
    return eta0.at[:, : pm.n_eta].set(jnp.asarray(s, dtype=eta0.dtype))


def _individual(
    pm: PopulationModel,
    phi,
    data: Dataset,
    estimator: AbstractEstimator,
    *,
    who: str,
    start: Any = None,
) -> IndividualFit:
    check_start(pm, data, phi, who, "the population values given")
    out = _objective(pm, phi, data.numeric(), _start(pm, data, start, who), estimator)
    _, b, hess, ok = out[:4]
    failed = ~np.isfinite(np.asarray(out[4]))
    d = pm.n_eta
    cov_b = jnp.linalg.inv(hess)
    eta = b[:, :d]
    kappa = b[:, d:].reshape(data.n_subjects, data.n_occasions, len(pm.iov)) if pm.iov else None
    nat = pm.natural(phi)
    cov = {k: jnp.asarray(v) for k, v in data.covariates.items()}
    params = jax.vmap(lambda c, e: pm.individual_params(nat["theta"], c, e))(cov, eta)
    ok = np.asarray(ok) & ~failed
    fit = IndividualFit(
        ids=data.ids,
        eta=_nan_rows(eta, failed),
        cov=_nan_rows(cov_b[:, :d, :d], failed),
        params={
            k: _nan_rows(jnp.broadcast_to(v, (data.n_subjects,)), failed) for k, v in params.items()
        },
        converged=ok,
        eta_names=pm.eta_names,
        kappa=None
        if kappa is None
        else np.where(
            np.isfinite(data.occasion_start)[:, :, None], _nan_rows(kappa, failed), np.nan
        ),
        random_cov=_nan_rows(cov_b, failed) if pm.iov else None,
    )
    if failed.any():
        reasons = _reasons(pm, phi, data, out, failed, at="at the population values given")
        raise SubjectError(
            who,
            reasons,
            "Their conditional modes cannot be found; the other subjects' estimates are in "
            "this error's `result` (the failed subjects' rows are NaN). " + _REMOVE_HINT,
            result=fit,
        )
    if not ok.all():
        bad = data.ids[~ok][:10].tolist()
        warnings.warn(
            f"individual MAP did not converge for {int((~ok).sum())} subject(s): IDs {bad}",
            ConvergenceWarning,
            stacklevel=3,
        )
    return fit


def _nan_rows(a, rows: np.ndarray) -> np.ndarray:
    """`a` on the host with the leading-axis `rows` (a mask) set to NaN."""
    out = np.array(a, dtype=float)
    out[rows] = np.nan
    return out


def fit_population(
    pm: PopulationModel,
    data: Dataset,
    *,
    estimator: AbstractEstimator | None = None,
    max_steps: int = 500,
    gtol: float = 1e-3,
    standard_errors: bool = True,
    method: str | None = None,
    gradient: str = "differences",
) -> PopulationFit:
    """Maximum-likelihood population estimates by the Laplace approximation (the fast mode).

    **Arguments:**

    - `pm`: the population model (its values are the starting point).
    - `data`: a `Dataset`.
    - `estimator`: `calibration.FOCEI()` (the default here) approximates each subject's
      curvature by its first-order (Gauss-Newton) form with the interaction term, as
      NONMEM's FOCE-I; `calibration.Laplace()` uses the exact Hessian (NONMEM's
      `LAPLACIAN`), slower to compile, needed when the first-order form is poor (few
      observations per subject, strongly non-normal likelihoods).
    - `max_steps`, `gtol`: of the outer BFGS (`scipy.optimize.minimize`), which stops when
      the largest gradient component of -log L falls below `gtol`. A stop on the noise of
      the finite differences counts as converged when BFGS's predicted remaining step is
      below 1e-3 for every (log-scale) parameter.
    - `standard_errors`: compute the covariance of the estimates from the Hessian of
      -log L (central second differences; with `gradient="implicit"`, central
      differences of the implicit gradient).
    - `method`: deprecated spelling of `estimator` (`"focei"` or `"laplace"`; a
      `DeprecationWarning`).
    - `gradient`: how the outer loop gets the gradient of -log L: `"differences"` (the
      default, central finite differences, each evaluation with its own conditional modes
      as NONMEM's outer loop: `2 P + 1` evaluations for `P` population parameters) or
      `"implicit"` (the exact gradient at the converged modes by implicit
      differentiation, one evaluation and one gradient per step: much faster per step on
      large data sets, but its program compiles for longer, about a minute on 2 CPU
      cores; see benchmarks/calibration_speed.py).

    A failed or unfinished optimisation, a non-positive-definite Hessian or an individual
    mode that did not converge emits a `ConvergenceWarning` and sets `converged=False`.

    **Subjects that cannot be evaluated** (see docs/calibration.md, "When a subject fails"):
    a subject whose term of -log L is not finite at the initial estimates (its parameters
    outside the model's domain, e.g. a negative clearance from a covariate model; an
    observation the error model cannot explain) raises `SubjectError` naming every such
    subject and the reason, before any optimisation (an `Exponential` error with `DV <= 0`
    raises `RecordError` naming the subject and row). At a trial point of the outer search
    such a subject makes the point's objective `+inf`: the point is rejected (the line search
    backs off; a finite-difference neighbour that is rejected gives a one-sided difference),
    never a NaN in the gradient. `PopulationFit.diagnostics` counts the rejected evaluations
    and names the subjects that caused them.

    The fit is `objective_values` (the objective of the subjects at the points the outer
    loop asks for) driven by `minimize_objective` (the outer loop); a fit whose subjects are
    not in one place (`surrogates.federated`) puts the same two together.
    """
    est = resolve_estimator(estimator, method, default=FOCEI(), fn="fit_population")
    phi0 = pm.initial()
    check_start(pm, data, phi0, "fit_population", "the initial estimates")
    flat0, unravel = ravel_pytree(phi0)
    if gradient not in ("differences", "implicit"):
        raise ValueError(
            f"fit_population: gradient must be 'differences' or 'implicit', got {gradient!r}."
        )
    stencils = _Stencils(pm, data, est, "fit_population")
    outer = minimize_objective(
        stencils,
        np.asarray(flat0),
        max_steps=max_steps,
        gtol=gtol,
        standard_errors=standard_errors,
        who="fit_population",
        rejected=lambda: stencils.rejected,
        value_and_gradient=stencils.value_and_gradient if gradient == "implicit" else None,
    )
    converged = outer.converged
    if not converged:
        warnings.warn(outer.convergence_problem(), ConvergenceWarning, stacklevel=2)
    if standard_errors and outer.cov is None:
        warnings.warn(f"{outer.cov_problem}: no standard errors", ConvergenceWarning, stacklevel=2)
    phi = unravel(jnp.asarray(outer.x))
    ind = _individual(pm, phi, data, est, who="fit_population")
    if not ind.converged.all():
        converged = False
    table = estimates_table(pm, phi, outer.cov, ind)
    return PopulationFit(
        model=pm,
        phi=phi,
        population=jax.tree_util.tree_map(np.asarray, pm.natural(phi)),
        table=table,
        ofv=outer.ofv,
        converged=converged,
        n_steps=outer.n_steps,
        individual=ind,
        cov_phi=outer.cov,
        method=est.name,
        estimator=est,
        diagnostics={
            "gradient_evaluations": outer.gradient_evaluations,
            "rejected_evaluations": outer.rejected_evaluations,
            "rejected_subjects": dict(stencils.rejected),
        },
    )


# ------------------------------------------------- the objective at points, and the outer loop


@dataclasses.dataclass(frozen=True)
class ObjectiveValues:
    """-log L of a set of subjects at several population values (`objective_values`).

    - `values`: `(points,)` the Laplace (or FOCE-I) approximation of -log L, the sum of the
      subjects' terms; `+inf` at a point where some subject's term is not finite (a point
      the outer search rejects);
    - `rejected`: `{subject ID: reason}` for the subjects that made a point `+inf` (the first
      reason seen for each).
    """

    values: np.ndarray
    rejected: dict[Any, str]


class _Stencils:
    """-log L of the subjects of `data` at the rows of `points`, as the outer loop of
    `fit_population` asks for it (the callable `evaluate` of `minimize_objective`).

    One compiled objective evaluated point by point (a vmap over points would batch the
    subjects' Newton loops over points too: measured much slower to compile and run). The
    first point is the base, its modes found from zero; they start the Newton iterations
    of the other points (all within a finite-difference step of it). `rejected` gathers
    `{subject ID: reason}` of the subjects that made a point `+inf`."""

    def __init__(self, pm: PopulationModel, data: Dataset, est: AbstractEstimator, who: str):
        self.pm, self.data, self.est, self.who = pm, data, est, who
        self.design = data.numeric()
        self.zeros = _zeros(pm, data)
        self.unravel = ravel_pytree(pm.initial())[1]
        self.rejected: dict[Any, str] = {}
        self.modes = self.zeros  # the last point's modes (start of the next search)

    def _evaluate(self, x, eta0, *, start: bool = False):
        """-log L at `x` (`+inf` when a subject's term is not finite: a rejected point) and
        the conditional modes (zero for the subjects that failed)."""
        pm, data = self.pm, self.data
        phi = self.unravel(jnp.asarray(x))
        out = _objective(pm, phi, self.design, eta0, self.est)
        bad = ~np.isfinite(np.asarray(out[4]))
        if bad.any() and eta0 is not self.zeros:
            # The failing subjects again from zero etas (a warm start may be what failed).
            out = _objective(
                pm, phi, self.design, jnp.where(jnp.asarray(bad)[:, None], 0.0, eta0), self.est
            )
            bad = ~np.isfinite(np.asarray(out[4]))
        modes = out[1]
        if not bad.any():
            return float(out[0]), modes
        if start:
            raise SubjectError(
                self.who,
                _reasons(pm, phi, data, out, bad, at="at the initial estimates"),
                "Their term of the objective is not finite at the initial estimates, so the "
                "population fit cannot start. " + _REMOVE_HINT,
            )
        known = self.rejected
        if any(sid not in known for sid in np.asarray(data.ids)[bad].tolist()):
            reasons = _reasons(pm, phi, data, out, bad, at="at a trial point of the search")
            for sid, why in reasons.items():
                known.setdefault(sid, why)
        return math.inf, jnp.where(jnp.asarray(bad)[:, None], 0.0, modes)

    def value_and_gradient(self, x) -> tuple[float, np.ndarray]:
        """-log L at `x` and its gradient by implicit differentiation (`_implicit_gradient`),
        the modes searched from the last point's; `(inf, 0)` for a rejected point."""
        value, modes = self._evaluate(np.asarray(x, dtype=float), self.modes)
        if not math.isfinite(value):
            return math.inf, np.zeros(np.size(x))
        self.modes = modes
        phi = self.unravel(jnp.asarray(x))
        grad = np.asarray(_implicit_gradient(self.pm, phi, self.design, modes, self.est))
        if not np.all(np.isfinite(grad)):
            return math.inf, np.zeros(np.size(x))
        return value, grad

    def __call__(self, points, *, start: bool = False) -> np.ndarray:
        points = np.asarray(points, dtype=float)
        v0, modes = self._evaluate(points[0], self.zeros, start=start)
        if not math.isfinite(v0):  # a rejected point: its neighbours are not needed
            return np.full(len(points), math.inf)
        if not bool(jnp.all(jnp.isfinite(modes))):
            modes = self.zeros
        rest = [self._evaluate(x, modes)[0] for x in points[1:]]
        return np.array([v0, *rest])


def objective_values(
    pm: PopulationModel,
    data: Dataset,
    points: Any,
    *,
    estimator: AbstractEstimator | None = None,
    start: bool = False,
) -> ObjectiveValues:
    """-log L of the subjects of `data` at several population values: the objective that
    `fit_population` minimises, for the points its outer loop asks for.

    A population objective is a sum over subjects, so the -log L of subjects held in several
    places is the sum of each place's `objective_values` at the same points (a federated fit,
    `surrogates.federated`); the conditional modes stay where the subjects are.

    **Arguments:**

    - `pm`, `data`: the model and the subjects.
    - `points`: `(points, parameters)` population values on the unconstrained scale,
      flattened as `jax.flatten_util.ravel_pytree(pm.initial())` flattens them (the first
      row the base point: its conditional modes are searched from etas 0 and start the
      search at the other rows, as in `fit_population`'s finite differences).
    - `estimator`: `calibration.FOCEI()` (the default, as in `fit_population`) or
      `calibration.Laplace()`.
    - `start`: the first row is the starting point of a fit: check the data and the
      subjects' parameters there first (`RecordError`, `SubjectError` as `fit_population`
      raises them), and raise `SubjectError` if a subject's term is not finite there.

    **Returns:** an `ObjectiveValues` (`values`: `(points,)`, `+inf` at a rejected point;
    `rejected`: the subjects that made a point `+inf`, with the reason).
    """
    est = resolve_estimator(estimator, None, default=FOCEI(), fn="objective_values")
    flat0, unravel = ravel_pytree(pm.initial())
    x = np.asarray(points, dtype=float)
    want = int(flat0.shape[0])
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != want:
        raise ValueError(
            f"objective_values: points must have shape (points, {want}) (the model's "
            f"population parameters, flattened), got {x.shape}."
        )
    if start:
        check_start(pm, data, unravel(jnp.asarray(x[0])), "objective_values", "the first point")
    stencils = _Stencils(pm, data, est, "objective_values")
    values = stencils(x, start=start)
    return ObjectiveValues(values=values, rejected=dict(stencils.rejected))


@dataclasses.dataclass(frozen=True)
class OuterLoopResult:
    """The outer loop's result (`minimize_objective`).

    - `x`: the estimate, flattened (unconstrained scale); `ofv`: -2 log-likelihood there;
    - `converged`: BFGS succeeded, or stopped on the noise of the finite differences with a
      predicted remaining step below 1e-3 for every parameter, and `ofv` is finite;
    - `n_steps`: BFGS iterations; `message`: scipy's; `largest_gradient`,
      `remaining_step`: at the end (see `convergence_problem`);
    - `cov`: covariance of `x` (inverse Hessian by second differences), or None with the
      reason in `cov_problem`;
    - `gradient_evaluations`: finite-difference gradients computed; `rejected_evaluations`:
      objective evaluations rejected because they were `+inf`.
    """

    x: np.ndarray
    ofv: float
    converged: bool
    n_steps: int
    message: str
    largest_gradient: float
    remaining_step: float
    cov: np.ndarray | None
    cov_problem: str
    gradient_evaluations: int
    rejected_evaluations: int

    def convergence_problem(self) -> str:
        """What a `ConvergenceWarning` says of an outer loop that did not converge."""
        return (
            f"population fit did not converge after {self.n_steps} steps ({self.message}; "
            f"largest gradient {self.largest_gradient:.2e}, predicted remaining step "
            f"{self.remaining_step:.2e}; -2LL={self.ofv:.4f})"
        )


def minimize_objective(
    evaluate: Any,
    x0: Any,
    *,
    max_steps: int = 500,
    gtol: float = 1e-3,
    standard_errors: bool = True,
    who: str = "minimize_objective",
    rejected: Any = None,
    value_and_gradient: Any = None,
) -> OuterLoopResult:
    """The outer loop of `fit_population`: BFGS over the population values, each gradient
    by central finite differences of -log L (each evaluation with its own conditional modes,
    as NONMEM's outer loop), then the covariance by second differences.

    **Arguments:**

    - `evaluate`: `evaluate(points, *, start) -> values`: -log L at each row of `points`
      (`(n, parameters)`, the first row the base point), `+inf` where a point is rejected;
      `start=True` for the points around `x0`. `objective_values` of one data set, or the
      sum of several places' (federated).
    - `x0`: the starting values, flattened (`ravel_pytree(pm.initial())[0]`).
    - `max_steps`, `gtol`, `standard_errors`: as in `fit_population`.
    - `who`: names the caller in errors.
    - `rejected`: a function returning `{subject or site: reason}` of what made points
      `+inf`, for the `SubjectError` raised when the objective is not finite next to `x0`.
    - `value_and_gradient`: optional `x -> (-log L, gradient)`; when given, BFGS's steps
      use it instead of central differences (which still give the first step's scaling),
      and the covariance comes from central differences of this gradient (2 P
      evaluations) instead of second differences of -log L.

    **Returns:** an `OuterLoopResult`. It warns of nothing: the caller says what it means
    (`fit_population` turns `converged=False` into a `ConvergenceWarning` with
    `convergence_problem()`).
    """
    flat0 = np.asarray(x0, dtype=float)
    n_par = flat0.shape[0]
    h = 1e-4
    offsets = np.concatenate([np.zeros((1, n_par)), h * np.eye(n_par), -h * np.eye(n_par)])
    counts = {"gradients": 0, "rejected": 0}

    def batch(points, *, start: bool = False):
        v = np.asarray(evaluate(points, start=start), dtype=float)
        # A rejected base point stands for its whole stencil (its neighbours are not needed).
        counts["rejected"] += 1 if not math.isfinite(v[0]) else int(np.sum(~np.isfinite(v)))
        return v

    # Central differences: each evaluation recomputes the conditional modes, as in NONMEM's
    # outer loop. The same evaluations give the diagonal curvature, which scales BFGS's first
    # inverse Hessian (instead of the identity). A rejected neighbour (+inf) gives a one-sided
    # difference; a rejected base point, or one with both neighbours of a parameter rejected,
    # is rejected as a whole (+inf, and a zero gradient that the line search never uses).
    def differences(x, *, start: bool = False):
        counts["gradients"] += 1
        v = batch(np.asarray(x)[None, :] + offsets, start=start)
        v0, up, down = v[0], v[1 : n_par + 1], v[n_par + 1 :]
        ok_up, ok_down = np.isfinite(up), np.isfinite(down)
        if not math.isfinite(v0) or not np.all(ok_up | ok_down):
            if math.isfinite(v0):
                counts["rejected"] += 1
            return math.inf, np.zeros(n_par), np.full(n_par, np.nan)
        up, down = np.where(ok_up, up, v0), np.where(ok_down, down, v0)
        both = ok_up & ok_down
        grad = np.where(both, (up - down) / (2 * h), (up - down) / h)
        curv = np.where(both, (up - 2 * v0 + down) / h**2, np.nan)
        return float(v0), grad, curv

    first = differences(flat0, start=True)
    if not math.isfinite(first[0]):
        raise SubjectError(
            who,
            {} if rejected is None else rejected(),
            "The objective is not finite next to the initial estimates for every change of "
            "some parameter; start from other values. " + _REMOVE_HINT,
        )

    def value_and_grad(x):
        if np.array_equal(x, flat0):
            return first[0], first[1]
        if value_and_gradient is None:
            v, g, _ = differences(x)
            return v, g
        counts["gradients"] += 1
        v, g = value_and_gradient(x)
        if not math.isfinite(v):
            counts["rejected"] += 1
        return v, g

    curv = first[2]
    scale = np.where(np.isfinite(curv) & (curv > 0), curv, np.nan)
    fallback = np.nanmedian(scale) if np.any(np.isfinite(scale)) else 1.0
    hess_inv0 = np.diag(1.0 / np.where(np.isfinite(scale), scale, fallback))
    res = scipy.optimize.minimize(
        value_and_grad,
        flat0,
        jac=True,
        method="BFGS",
        options={"maxiter": max_steps, "gtol": gtol, "hess_inv0": hess_inv0},
    )
    flat = np.asarray(res.x, dtype=float)
    ofv = 2.0 * float(res.fun)
    # Finite-difference gradients are noisy near the optimum (BFGS may stop on "precision
    # loss"); accept the fit when the predicted remaining Newton step changes no parameter by
    # more than 1e-3 on the log scale (about three significant digits, NONMEM's SIGDIGITS).
    remaining = float(np.max(np.abs(np.asarray(res.hess_inv) @ res.jac)))
    converged = (bool(res.success) or remaining < 1e-3) and math.isfinite(ofv)
    cov, problem = None, ""
    if standard_errors and value_and_gradient is not None:
        cov, problem = _covariance_from_gradients(value_and_gradient, flat, counts)
    elif standard_errors:
        cov, problem = _covariance(batch, flat)
    return OuterLoopResult(
        x=flat,
        ofv=ofv,
        converged=converged,
        n_steps=int(res.nit),
        message=str(res.message),
        largest_gradient=float(np.max(np.abs(res.jac))),
        remaining_step=remaining,
        cov=cov,
        cov_problem=problem,
        gradient_evaluations=counts["gradients"],
        rejected_evaluations=counts["rejected"],
    )


def _covariance_from_gradients(
    value_and_gradient, flat, counts, step: float = 1e-3
) -> tuple[np.ndarray | None, str]:
    """Inverse Hessian of -log L at `flat` by central differences of its exact gradient
    (`value_and_gradient`, the implicit gradient), symmetrised: 2n evaluations instead of
    the 1 + 2n + n(n-1)/2 of `_covariance`, and no division of the objective's rounding
    noise by `step**2`. None and the reason when it cannot be had."""
    n = flat.shape[0]
    cols, bad = [], 0
    for j in range(n):
        e = np.zeros(n)
        e[j] = step
        (vu, gu), (vd, gd) = value_and_gradient(flat + e), value_and_gradient(flat - e)
        counts["gradients"] += 2
        bad += int(not math.isfinite(vu)) + int(not math.isfinite(vd))
        cols.append((np.asarray(gu) - np.asarray(gd)) / (2 * step))
    if bad:
        counts["rejected"] += bad
        return None, (
            f"-log L is not finite at {bad} of the {2 * n} points of the covariance step "
            f"(within {step:g} of the estimate; see "
            "PopulationFit.diagnostics['rejected_subjects'])"
        )
    h = np.stack(cols, axis=1)
    h = 0.5 * (h + h.T)
    if not np.all(np.isfinite(h)) or np.min(np.linalg.eigvalsh(h)) <= 0:
        return None, "the Hessian of -log L is not positive definite at the estimate"
    return np.linalg.inv(h), ""


def _covariance(batch, flat, step: float = 1e-3) -> tuple[np.ndarray | None, str]:
    """Inverse Hessian of -log L at `flat` by second differences: central on the diagonal,
    `f(x + e_j + e_k) - f(x + e_j) - f(x + e_k) + f(x)` off it (1 + 2n + n(n-1)/2
    evaluations); None and the reason when it cannot be had."""
    n = flat.shape[0]
    e = np.eye(n) * step
    points = [np.zeros(n)]
    for j in range(n):
        points += [e[j], -e[j]]
    pairs = [(j, k) for j in range(n) for k in range(j)]
    points += [e[j] + e[k] for j, k in pairs]
    v = batch(np.asarray(flat)[None, :] + np.stack(points))
    if not np.all(np.isfinite(v)):
        return None, (
            f"-log L is not finite at {int(np.sum(~np.isfinite(v)))} of the {v.size} points "
            f"of the covariance step (within {step:g} of the estimate; see "
            "PopulationFit.diagnostics['rejected_subjects'])"
        )
    h = np.zeros((n, n))
    for j in range(n):
        h[j, j] = (v[1 + 2 * j] - 2 * v[0] + v[2 + 2 * j]) / step**2
    for m, (j, k) in enumerate(pairs):
        both = v[1 + 2 * n + m]
        h[j, k] = h[k, j] = (both - v[1 + 2 * j] - v[1 + 2 * k] + v[0]) / step**2
    if not np.all(np.isfinite(h)) or np.min(np.linalg.eigvalsh(h)) <= 0:
        return None, "the Hessian of -log L is not positive definite at the estimate"
    return np.linalg.inv(h), ""


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
    if pm.iov:
        iov = np.asarray(pm.natural(phi)["iov"])
        for i, name in enumerate(pm.iov_names):
            var, s_log = float(iov[i]), float(se["iov"]["log_sd"][i])
            row = _row(
                "iov",
                name,
                var,
                2.0 * var * s_log,
                var * math.exp(-2 * 1.96 * s_log),
                var * math.exp(2 * 1.96 * s_log),
            )
            row["cv_pct"] = 100.0 * math.sqrt(math.expm1(var))
            if ind is not None and ind.kappa is not None:
                k_obs = ind.kappa[:, :, i][np.isfinite(ind.kappa[:, :, i])]
                row["shrinkage_pct"] = 100.0 * (1.0 - float(np.std(k_obs)) / math.sqrt(var))
            rows.append(row)
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
