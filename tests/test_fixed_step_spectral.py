"""`PKPD` with `FixedStep` propagates its linear PK part by a closed-form half step for the
mammillary models (`_spectral_half_step`): `e^{K tau}` and `Gamma @ rate` equal the matrix
exponential of the augmented system `[[K, I], [0, 0]] tau` by scipy (an independent
implementation), for random parameters, short and long steps, and an absorption
rate equal to an eigenvalue of the disposition (the coincidence the depot models avoid
elsewhere); a whole warfarin INR course equals the general matrix-exponential path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import pkpd
from pkpd._models._pd import _SPECTRA, _spectral_half_step

jax.config.update("jax_enable_x64", True)

MODELS = [
    pkpd.OneCompartment(),
    pkpd.TwoCompartment(),
    pkpd.ThreeCompartment(),
    pkpd.OneCompartmentOral(),
    pkpd.TwoCompartmentOral(),
    pkpd.ThreeCompartmentOral(),
]


def _reference(k: np.ndarray, rate: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """`(Phi, Gamma @ rate)` from scipy's expm of the augmented system."""
    n = k.shape[0]
    aug = np.zeros((2 * n, 2 * n))
    aug[:n, :n], aug[:n, n:] = k * tau, np.eye(n) * tau
    e = scipy.linalg.expm(aug)
    return e[:n, :n], e[:n, n:] @ rate


@pytest.mark.parametrize("model", MODELS, ids=lambda m: type(m).__name__)
def test_half_step_is_the_matrix_exponential(model):
    rng = np.random.default_rng(3)
    for trial in range(12):
        p = {n: float(rng.lognormal(0.0, 0.8)) for n in model.param_names}
        if "KA" in p and trial % 3 == 0:  # KA equal to an eigenvalue of the disposition
            lams, _, _ = _SPECTRA[type(model)]({**p, "KA": 1.0})
            p["KA"] = float(-lams[trial % lams.shape[0]])
        tau = [0.5, 1e-4, 0.37, 2.0][trial % 4]
        rate = rng.uniform(0.0, 100.0, model.n_states)
        lams, projs, ka = _SPECTRA[type(model)](p)
        phi, inc = _spectral_half_step(lams, projs, ka, jnp.asarray(rate), tau)
        ref_phi, ref_inc = _reference(np.asarray(model.matrix(p)), rate, tau)
        # absolute on Phi (entries at most 1), relative to tau * |rate| on the increment
        np.testing.assert_allclose(np.asarray(phi), ref_phi, rtol=0, atol=1e-13)
        np.testing.assert_allclose(np.asarray(inc), ref_inc, rtol=0, atol=1e-13 * tau * rate.max())


def test_warfarin_course_equals_the_matrix_exponential_path():
    """Hamberg's PK/INR model, 5 mg daily for 10 days with `FixedStep(1.0)`: the INR and
    the concentration by the closed-form half step equal those of the general path (the
    matrix exponential of the augmented system, taken for a PK model without closed form)."""
    import twins

    drug = twins.drugs.get("warfarin_hamberg2007")
    tw = twins.DigitalTwin(drug, {"ID": "w", "AGE": 60.0, "CYP2C9": "*1/*3", "VKORC1": "-1639 GA"})
    model = tw.pm.model
    eta = jnp.zeros(len(tw.pm.omega))
    params = {k: float(v) for k, v in tw.pm.individual_params(tw.theta, tw.covariates, eta).items()}

    class _Opaque(pkpd.TwoCompartmentOral):  # the same PK, not in the closed-form table
        pass

    general = pkpd.PKPD(_Opaque(), model.pd)
    assert type(model.pk) in _SPECTRA and type(general.pk) not in _SPECTRA
    reg = drug.regimen(10, amount=5.0, interval=24.0)
    times = jnp.linspace(0.0, 264.0, 45)
    solver = pkpd.FixedStep(1.0)
    fast = pkpd.simulate(model, params, reg, times, solver=solver)
    slow = pkpd.simulate(general, params, reg, times, solver=solver)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(slow), rtol=1e-11, atol=1e-13)
    assert float(jnp.max(fast[:, 1])) > 1.5  # the INR rose: the check compares a course
