"""Estimators as strategy objects: the curvature of the Laplace approximation and the twin's
updates.

- `FOCEI()` and `Laplace()` say how the curvature of each subject's negative log joint at its
  conditional mode is computed (`fit_population`, `individual_map`, `DigitalTwin`): the
  first-order (Gauss-Newton) form with the interaction term, or the exact Hessian.
- `MAP()` and `NUTS(...)` say how a `twins.DigitalTwin` updates its posterior.

References: Wang Y. Derivation of various NONMEM estimation methods. J Pharmacokinet
Pharmacodyn 2007;34:575-593 (FOCE-I and Laplace); Hoffman MD, Gelman A. The No-U-Turn
Sampler. J Mach Learn Res 2014;15:1593-1623 (NUTS).
"""

from __future__ import annotations

import abc
import warnings
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from ._model import ByOutput, Exponential, PopulationModel, eta_logprior, observation_loglik


def value_and_jacobian(fn, x):
    """`(fn(x), d fn / d x)` from one trace of `fn`: forward mode (few random effects, many
    observations), or reverse mode when the model cannot be differentiated forward: an ODE
    solved with diffrax's `RecursiveCheckpointAdjoint` (a custom VJP) supports reverse mode
    only."""

    def with_value(x):
        y = fn(x)
        return y, y

    try:
        jac, value = jax.jacfwd(with_value, has_aux=True)(x)
    except TypeError as error:
        if "custom_vjp" not in str(error):
            raise
        jac, value = jax.jacrev(with_value, has_aux=True)(x)
    return value, jac


def jacobian(fn, x):
    """`d fn / d x` (see `value_and_jacobian`)."""
    return value_and_jacobian(fn, x)[1]


class AbstractEstimator(eqx.Module):
    """The curvature of the Laplace approximation: how the Hessian of each subject's negative
    log joint `f(eta) = -log p(y_i | eta) - log N(eta; 0, Omega)` at its conditional mode is
    computed. `FOCEI()` or `Laplace()`."""

    #: The estimator's name (`PopulationFit.method`): `"focei"` or `"laplace"`.
    name: ClassVar[str]

    @abc.abstractmethod
    def local_model(self, pm: PopulationModel, nat, chol, cov, reg, obs) -> tuple[Any, Any]:
        """`f(eta)` (negative log joint of one subject) and `fgh(eta) -> (f, gradient,
        curvature)`, for natural-scale population values `nat`, the Cholesky factor `chol`
        of the random effects' covariance and one subject's covariates, regimen and
        observations."""


def _subject_terms(pm: PopulationModel, nat, chol, cov, reg, obs):
    err, sigma = pm.error, nat["sigma"]
    n_occasions = obs["occasion_start"].shape[-1]
    which = pm.which(obs)

    def predict(eta):
        return pm.predict_random(nat["theta"], cov, reg, obs, eta)

    def nll_obs(fv):
        return -observation_loglik(
            err, sigma, fv, obs["dv"], obs["observed"], obs["blq"], obs["lloq"], which
        )

    def outside(eta, value):
        """`+inf` for random effects whose parameters are outside the model's domain (the
        conditional-mode search then rejects them, and the subject's term is not finite)."""
        ok = pm.subject_in_domain(nat["theta"], cov, eta, n_occasions)
        return jnp.where(ok, value, jnp.inf)

    def f(eta):
        return outside(eta, jnp.sum(nll_obs(predict(eta))) - eta_logprior(chol, eta))

    return predict, nll_obs, f, outside


class Laplace(AbstractEstimator):
    """The exact Hessian of the negative log joint (second derivatives through the model):
    NONMEM's `METHOD=COND LAPLACIAN`. Slower to compile than `FOCEI()`; needed when the
    first-order form is poor (few observations per subject, strongly non-normal
    likelihoods, many censored values)."""

    name: ClassVar[str] = "laplace"

    def local_model(self, pm, nat, chol, cov, reg, obs):
        _, _, f, _ = _subject_terms(pm, nat, chol, cov, reg, obs)

        def grad_and_aux(eta):
            value, grad = jax.value_and_grad(f)(eta)
            return grad, (value, grad)

        def fgh(eta):
            # Forward over reverse, the value and gradient riding along: the model is traced
            # once for all three (jax.hessian plus separate f and grad calls traced it three
            # times, and compiling those copies dominated a twin's first update).
            hess, (value, grad) = jax.jacfwd(grad_and_aux, has_aux=True)(eta)
            return value, grad, hess

        return f, fgh


class FOCEI(AbstractEstimator):
    """The first-order (Gauss-Newton) curvature with the interaction term, as NONMEM's FOCE-I:
    `J' W J + Omega^-1`, `J` the Jacobian of the predictions and `W` the expected information
    of each observation, including the variance's dependence on the prediction; for censored
    observations (M3) `W` is the exact second derivative of `-log P(DV < LLOQ)`. Needs only
    first derivatives of the model, so it compiles fast."""

    name: ClassVar[str] = "focei"

    def local_model(self, pm, nat, chol, cov, reg, obs):
        predict, nll_obs, f, outside = _subject_terms(pm, nat, chol, cov, reg, obs)
        err, sigma = pm.error, nat["sigma"]
        d = chol.shape[0]
        chol_inv = jax.scipy.linalg.solve_triangular(chol, jnp.eye(d), lower=True)
        omega_inv = chol_inv.T @ chol_inv

        def weights(fv):
            """Expected information of each observation about its prediction."""
            if isinstance(err, ByOutput):
                info = err.each(
                    pm.which(obs),
                    lambda k, p, fk: _information(p.error, err.part_sigma(sigma, k), fk),
                    fv,
                )
            else:
                info = _information(err, sigma, fv)
            # Censored observations: the exact curvature of -log Phi((LLOQ - f) / sd).
            g1 = jax.grad(lambda x: jnp.sum(nll_obs(x)))
            exact = jax.grad(lambda x: jnp.sum(g1(x)))(fv)  # separable: the Hessian's diagonal
            return jnp.where(obs["observed"], jnp.where(obs["blq"], exact, info), 0.0)

        def fgh(eta):
            fv, jac = value_and_jacobian(predict, eta)
            nll, vjp = jax.vjp(lambda x: jnp.sum(nll_obs(x)), fv)
            (g_f,) = vjp(jnp.ones(()))
            fval = outside(eta, nll - eta_logprior(chol, eta))
            grad = jac.T @ g_f + omega_inv @ eta
            w = weights(fv)
            return fval, grad, (jac * w[:, None]).T @ jac + omega_inv

        return f, fgh


def _information(err, sigma, fv):
    """Expected (Fisher) information of each observation about its prediction `fv`, for a
    single error model: `1 / var + (d var / d f)^2 / (2 var^2)` (the interaction term of
    FOCE-I), on the log scale for `Exponential`."""
    if isinstance(err, Exponential):
        return 1.0 / (err.sd(fv, sigma) ** 2 * jnp.where(fv != 0, fv, 1.0) ** 2)
    var = lambda x: err.sd(x, sigma) ** 2
    v = var(fv)
    dv = jax.vmap(jax.grad(lambda x: var(x)))(fv)
    return 1.0 / v + 0.5 * (dv / v) ** 2


_ESTIMATORS: dict[str, type[AbstractEstimator]] = {"focei": FOCEI, "laplace": Laplace}


def resolve_estimator(
    estimator: Any, method: Any, *, default: AbstractEstimator, fn: str, old: str = "method"
) -> AbstractEstimator:
    """The estimator given as `estimator=`, or by the deprecated string keyword `old`
    (`method="focei"` or `"laplace"`: a `DeprecationWarning` naming the replacement), or
    `default`. Raises `TypeError` for both keywords or a wrong type, `ValueError` for an
    unknown string."""
    if method is not None:
        if estimator is not None:
            raise TypeError(f"{fn}: give estimator= or the deprecated {old}=, not both.")
        if not isinstance(method, str) or method not in _ESTIMATORS:
            raise ValueError(
                f"{fn}: {old} must be 'focei' or 'laplace', got {method!r}; pass "
                "estimator=calibration.FOCEI() or calibration.Laplace()."
            )
        replacement = _ESTIMATORS[method]
        warnings.warn(
            f"{fn}: {old}={method!r} is deprecated; pass "
            f"estimator=calibration.{replacement.__name__}().",
            DeprecationWarning,
            stacklevel=3,
        )
        return replacement()
    if estimator is None:
        return default
    if not isinstance(estimator, AbstractEstimator):
        hint = (
            f" (estimator=calibration.{_ESTIMATORS[estimator].__name__}())"
            if isinstance(estimator, str) and estimator in _ESTIMATORS
            else ""
        )
        raise TypeError(
            f"{fn}: estimator must be calibration.FOCEI() or calibration.Laplace(), got "
            f"{estimator!r}{hint}."
        )
    return estimator


# ----------------------------------------------------------------------------- twin updates


class MAP(eqx.Module):
    """Update a twin's posterior by the mode of its etas and the Laplace approximation around
    it (covariance: the inverse curvature, by the twin's `estimator`, `FOCEI()` or
    `Laplace()`), as `calibration.individual_map`. Milliseconds once compiled."""


class NUTS(eqx.Module):
    """Update a twin's posterior by NUTS draws (`calibration.fit_individual_nuts`, which
    takes the same settings).

    **Fields:** `num_warmup`, `num_samples`, `num_chains` (draws per chain; at least 4 chains
    for R-hat), `chain_method` (`"vectorized"`, `"sequential"` or `"parallel"`),
    `target_accept` (NUTS's target acceptance probability), `max_tree_depth`,
    `progress_bar`.
    """

    num_warmup: int = eqx.field(default=1000, static=True)
    num_samples: int = eqx.field(default=1000, static=True)
    num_chains: int = eqx.field(default=4, static=True)
    chain_method: str = eqx.field(default="vectorized", static=True)
    target_accept: float = eqx.field(default=0.8, static=True)
    max_tree_depth: int = eqx.field(default=10, static=True)
    progress_bar: bool = eqx.field(default=False, static=True)

    def options(self) -> dict[str, Any]:
        """The settings as keywords of `calibration.fit_individual_nuts`."""
        return {
            "num_warmup": self.num_warmup,
            "num_samples": self.num_samples,
            "num_chains": self.num_chains,
            "chain_method": self.chain_method,
            "target_accept": self.target_accept,
            "max_tree_depth": self.max_tree_depth,
            "progress_bar": self.progress_bar,
        }
