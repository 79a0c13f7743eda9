"""The conditional-mode search (calibration's inner loop) reaches the mode with the
first-order curvature of FOCE-I where its Newton steps overshoot.

A vancomycin twin with two levels: FOCE-I's curvature is about 0.6 of the true one in every
direction (large residuals), so plain damped Newton steps overshoot; before the secant
correction and backtracking, 200 iterations left the gradient at 1e-2 and the twin reported
`converged=False` 0.002 from the mode (on the eta scale). The reference is scipy's BFGS on
the same negative log posterior, written in the test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

import calibration as C
import pkpd
import twins


def _twin(estimator):
    drug = twins.drugs.get("vancomycin_goti2018")
    patient = twins.Patient("VAN-2", 20.18, "male", 68.0, 186.4, labs={"serum_creatinine": 0.76})
    tw = twins.DigitalTwin(drug, patient, estimator=estimator)
    tw.give(pkpd.repeat(pkpd.infusion(1000.0, rate=1000.0), ii=12.0, addl=2))
    tw.observe(times=[11.5, 23.5], values=[7.47, 16.9])
    tw.update()
    return tw


def test_foce_i_twin_with_two_levels_reaches_its_mode():
    focei = _twin(C.FOCEI())
    assert focei.posterior.converged

    # scipy's BFGS on the negative log posterior, -log p(DV | eta) + eta' Omega^-1 eta / 2,
    # written here from the model's predictions and its combined error model
    pm, theta, sigma = focei.pm, focei.theta, focei.sigma
    omega_inv = jnp.asarray(np.linalg.inv(focei.omega))
    times = jnp.asarray(focei.observations["TIME"].to_numpy(dtype=float))
    dv = jnp.asarray(focei.observations["DV"].to_numpy(dtype=float))

    @jax.jit
    def f(eta):
        params = pm.individual_params(theta, focei.covariate_arrays, eta)
        pred = pkpd.simulate(pm.model, params, focei.history, times).reshape(-1)
        sd = pm.error.sd(pred, sigma)
        return jnp.sum(0.5 * ((dv - pred) / sd) ** 2 + jnp.log(sd)) + 0.5 * eta @ omega_inv @ eta

    grad = jax.jit(jax.grad(f))
    ref = scipy.optimize.minimize(
        lambda e: float(f(jnp.asarray(e))),
        np.zeros(3),
        jac=lambda e: np.asarray(grad(jnp.asarray(e))),
        method="BFGS",
        options={"gtol": 1e-10},
    )
    assert ref.success
    np.testing.assert_allclose(focei.posterior.mode, ref.x, atol=1e-6)
