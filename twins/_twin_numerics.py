"""Compiled numerics of `DigitalTwin`: predictions of posterior draws (the dose search is in
`_recommend`).

Module-level jitted functions (`equinox.filter_jit`) that take the population model as an
argument, so that every twin of an equal model reuses them for the same shapes.
"""

from __future__ import annotations

import equinox as eqx
import jax

import calibration


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
