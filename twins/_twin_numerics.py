"""Compiled numerics of `DigitalTwin`: predictions of posterior draws and the dose search.

Module-level jitted functions (`equinox.filter_jit`) that take the population model as an
argument, so that every twin of an equal model reuses them for the same shapes.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp

import calibration

_SMOOTH = 0.05  # width (log scale) of the normal CDFs replacing the window's indicator


@eqx.filter_jit
def _metric_draws(pm, auc, theta, cov, full, scale, grid, eta, u):
    """The metric of every posterior draw when the planned doses are `exp(u)` units."""
    amount = full.amount * ((1.0 - scale) + scale * jnp.exp(u))
    reg = eqx.tree_at(lambda r: r.amount, full, amount)

    def one(e):
        y = pm.predict(pm.individual_params(theta, cov, e), reg, grid)
        return jax.scipy.integrate.trapezoid(y, grid) if auc else y[-1]

    return jax.vmap(one)(eta)


def _log_metric(pm, auc, theta, cov, full, scale, grid, eta):
    def log_metric(u):
        draws = _metric_draws(pm, auc, theta, cov, full, scale, grid, eta, u)
        return jnp.log(jnp.maximum(draws, 1e-300))

    return log_metric


# Module-level jits (not closures made per call), so that a second recommendation with the
# same shapes reuses the compiled functions.
@eqx.filter_jit
def _gap_value_grad(pm, auc, theta, cov, full, scale, grid, eta, bounds, u):
    log_metric = _log_metric(pm, auc, theta, cov, full, scale, grid, eta)
    return jax.value_and_grad(_gap(log_metric, bounds))(u)


@eqx.filter_jit
def _probability_value_grad(pm, auc, theta, cov, full, scale, grid, eta, bounds, u):
    log_metric = _log_metric(pm, auc, theta, cov, full, scale, grid, eta)
    return jax.value_and_grad(_smoothed_probability(log_metric, bounds))(u)


def _gap(log_metric, bounds):
    # The geometric mean over the draws (smooth, unlike the median) aims at the centre.
    return lambda u: jnp.mean(log_metric(u)) - 0.5 * (bounds[0] + bounds[1])


def _smoothed_probability(log_metric, bounds):
    cdf = jax.scipy.stats.norm.cdf
    return lambda u: jnp.mean(
        cdf((log_metric(u) - bounds[0]) / _SMOOTH) - cdf((log_metric(u) - bounds[1]) / _SMOOTH)
    )


def _newton_gap(u, g, s):
    step = jnp.clip(jnp.where(jnp.abs(s) > 1e-8, g / s, 0.0), -2.0, 2.0)
    return jnp.where(jnp.isfinite(step), u - step, u)


def _ascent_step(g, h):
    step = jnp.where(h < 0, -g / jnp.where(h < 0, h, -1.0), jnp.sign(g) * 0.1)
    return jnp.clip(jnp.where(jnp.isfinite(step), step, 0.0), -0.5, 0.5)


@functools.partial(jax.jit, static_argnums=0)
def _optimise_affine(steps, without, per_unit, bounds, u0):
    """Linear kinetics: the metric is affine in the planned dose (superposition), so two
    simulations give it exactly for every dose; the 1-d optimisation runs on those."""

    def log_metric(u):
        return jnp.log(jnp.maximum(without + jnp.exp(u) * per_unit, 1e-300))

    gap = jax.value_and_grad(_gap(log_metric, bounds))
    u = jax.lax.fori_loop(0, 8, lambda _, u: _newton_gap(u, *gap(u)), u0)
    prob = _smoothed_probability(log_metric, bounds)
    dprob = jax.value_and_grad(prob)
    curvature = jax.grad(lambda x: dprob(x)[1])

    def ascent(_, carry):
        u, best_u, best_p = carry
        p, g = dprob(u)
        better = p > best_p
        return (
            u + _ascent_step(g, curvature(u)),
            jnp.where(better, u, best_u),
            jnp.where(better, p, best_p),
        )

    u, best_u, best_p = jax.lax.fori_loop(0, steps, ascent, (u, u, -1.0))
    return jnp.where(prob(u) > best_p, u, best_u)


def optimise_dose(pm, auc, steps, theta, cov, full, scale, grid, eta, bounds, u0):
    """Log-dose of the planned doses: Newton on the geometric mean's gap to the window's
    centre, then Newton ascent on the smoothed probability of the window; returns the best
    log-dose and the metric of every draw there. Linear models take the metric by
    superposition (exact); others simulate at every step (gradients through the model)."""
    sim = functools.partial(_metric_draws, pm, auc, theta, cov, full, scale, grid, eta)
    if pm.model.is_linear:
        without = sim(jnp.asarray(-jnp.inf))
        per_unit = sim(jnp.zeros(())) - without
        best = _optimise_affine(steps, without, per_unit, bounds, u0)
        return best, without + jnp.exp(best) * per_unit

    args = (pm, auc, theta, cov, full, scale, grid, eta, bounds)
    u = u0
    for _ in range(8):
        u = _newton_gap(u, *_gap_value_grad(*args, u))

    def curvature(u, h=1e-3):
        # Central difference of the exact gradient: second reverse-mode derivatives do not
        # go through an ODE solved with diffrax's checkpointed adjoint.
        return (
            _probability_value_grad(*args, u + h)[1] - _probability_value_grad(*args, u - h)[1]
        ) / (2.0 * h)

    best_u, best_p = u, -1.0
    for _ in range(steps + 1):
        p, g = _probability_value_grad(*args, u)
        if float(p) > best_p:
            best_u, best_p = u, float(p)
        u = u + _ascent_step(g, curvature(u))
    return best_u, _metric_draws(*args[:-1], best_u)


@eqx.filter_jit
def predict_draws(pm: calibration.PopulationModel, theta, cov, regimen, times, eta):
    """The observed output at `times` of every draw `eta` `(n_draws, n_eta)` (one compiled
    call per model value and shapes)."""

    def one(e):
        params = pm.individual_params(theta, cov, e)
        return pm.predict(params, regimen, times)

    return jax.vmap(one)(eta)


def with_residual(error, sigma, y, key):
    """`y` as measured: the error model's noise added to every prediction."""
    return error.observe(y, sigma, jax.random.normal(key, y.shape))
