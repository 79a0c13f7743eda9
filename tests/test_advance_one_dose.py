"""`pkpd.advance` with one dose at a run-time time inside a window of static length (a
trial's dose taken early or late, `twins.DoseTiming`): the superposition path against the
general event path and `pkpd.simulate` for linear models (exact), against the general path
(PK states) and diffrax at tight tolerance (the INR) for the Hamberg warfarin PK/PD model
under `FixedStep`, and the small matrix exponential it uses against scipy's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import pkpd
from pkpd._advance import _expm_times
from twins.drugs import warfarin

TIGHT = pkpd.ODESolver(rtol=1e-11, atol=1e-12)
OFFSETS = (0.0, 0.3, 5.0, 7.1, 10.0, 13.7, 23.9)


def _both(model, params, x, amount, t0, o, solver, length=24.0):
    """(one-dose path, general path) over [t0, t0 + length] with a dose at t0 + o."""
    dose = pkpd.oral(amount, time=t0 + o)
    one = pkpd.advance(model, params, x, dose, t0, t0 + length, solver=solver, length=length)
    general = pkpd.advance(model, params, x, dose, t0, t0 + length, solver=solver)
    return np.asarray(one.state), np.asarray(general.state)


@pytest.mark.parametrize(
    "model, params",
    [
        (pkpd.OneCompartmentOral(), {"KA": 0.9, "CL": 4.0, "V": 40.0, "F1": 0.6}),
        (pkpd.TwoCompartmentOral(), {"KA": 1.3, "CL": 3.0, "V1": 20.0, "Q": 2.0, "V2": 50.0}),
    ],
)
def test_linear_models_are_exact(model, params):
    params = {k: jnp.asarray(v) for k, v in params.items()}
    x = jnp.asarray(np.linspace(1.0, 3.0, model.n_states))
    for o in OFFSETS:
        one, general = _both(model, params, x, 100.0, 48.0, o, pkpd.FixedStep(2.0))
        np.testing.assert_allclose(one, general, rtol=1e-12, atol=1e-12, err_msg=f"o={o}")
    # a dose outside the window is not given in it
    before = pkpd.oral(100.0, time=10.0)
    one = pkpd.advance(model, params, x, before, 48.0, 72.0, solver=TIGHT, length=24.0)
    free = model.propagate(params, x, jnp.zeros_like(x), 0.0, 24.0, TIGHT)
    np.testing.assert_allclose(one.state, free, rtol=1e-12)
    # a course of jittered doses window by window against pkpd.simulate of the same doses
    offsets = np.array([2.0, 9.5, 15.25, 0.0, 21.0])
    times = 24.0 * np.arange(6)
    ref = pkpd.simulate(model, params, pkpd.concatenate(
        [pkpd.oral(50.0, time=24.0 * k + o) for k, o in enumerate(offsets)]), times,
        solver=TIGHT)  # fmt: skip
    x, got = model.initial_state(params), [0.0]
    for k, o in enumerate(offsets):
        x = pkpd.advance(model, params, x, pkpd.oral(50.0, time=24.0 * k + o), 24.0 * k,
                         24.0 * (k + 1), solver=TIGHT, length=24.0).state  # fmt: skip
        got.append(float(model.output(params, x)[0]))
    ref = np.asarray(ref).reshape(times.size, -1)[:, 0]
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def _warfarin():
    model = pkpd.PKPD(pkpd.TwoCompartmentOral(), warfarin.HambergINR())
    params = {"KA": 2.0, "CL": 0.358, "V1": 13.8, "Q": 0.131, "V2": 6.59, "EC50": 4.61,
              "GAMMA": 0.424, "EMAX": 1.0, "MTT1": 11.6, "MTT2": 120.0, "LAMBDA": 3.61,
              "INRMAX": 20.0, "BASE": 1.0, "F1": 0.5}  # fmt: skip
    return model, {k: jnp.asarray(v) for k, v in params.items()}


def test_warfarin_pk_exact_and_inr_within_the_fixed_step_error():
    model, params = _warfarin()
    solver = pkpd.FixedStep(2.0)

    def window(solver, length):
        @jax.jit
        def step(x, t0, o):
            dose = pkpd.oral(5.0, time=t0 + o)
            return pkpd.advance(model, params, x, dose, t0, t0 + 24.0, solver=solver,
                                length=length).state  # fmt: skip

        return step

    one, general, tight = window(solver, 24.0), window(solver, None), window(TIGHT, None)
    x = model.initial_state(params)
    for k in range(5):  # five days of 5 mg at the period starts (a dose at offset 0)
        x = one(x, 24.0 * k, 0.0)
    for o in OFFSETS:
        a, b, ref = (np.asarray(f(x, 120.0, o)) for f in (one, general, tight))
        np.testing.assert_allclose(a[:3], b[:3], rtol=1e-11, err_msg=f"o={o}")
        inr = [float(model.output(params, jnp.asarray(s))[1]) for s in (a, b, ref)]
        # the general path ends a step at the dose, the one-dose path keeps the window's
        # steps (a kink inside one): both within FixedStep(2)'s documented error (2e-3)
        assert abs(inr[0] - inr[2]) < 1e-3 and abs(inr[1] - inr[2]) < 1e-3, (o, inr)
        if o % 2.0 == 0.0:  # the dose at a step's end: the same steps as the general path
            np.testing.assert_allclose(a, b, rtol=1e-10, err_msg=f"o={o}")
    # two weeks of jittered doses against diffrax
    offsets = np.random.default_rng(0).uniform(6.0, 14.0, 14)
    x1 = x2 = model.initial_state(params)
    worst = 0.0
    for k, o in enumerate(offsets):
        x1, x2 = one(x1, 24.0 * k, o), tight(x2, 24.0 * k, o)
        worst = max(worst, abs(float(model.output(params, x1)[1] - model.output(params, x2)[1])))
    assert 0.0 < worst < 2e-3, worst


def test_small_matrix_exponential_against_scipy():
    rng = np.random.default_rng(1)
    for scale in (1e-3, 0.1, 1.0, 5.0, 60.0):
        a = rng.normal(size=(4, 4)) * scale
        v = rng.normal(size=4)
        want = scipy.linalg.expm(a)
        np.testing.assert_allclose(_expm_times(jnp.asarray(a), jnp.asarray(v)), want @ v,
                                   rtol=1e-10, atol=1e-12 * np.abs(want).max())  # fmt: skip
        np.testing.assert_allclose(_expm_times(jnp.asarray(a), jnp.eye(4)), want, rtol=1e-10,
                                   atol=1e-12 * np.abs(want).max())  # fmt: skip
    # jittable and vmappable (the trial engine's use)
    f = jax.jit(jax.vmap(_expm_times))
    a = jnp.asarray(rng.normal(size=(3, 3, 3)))
    out = f(a, jnp.ones((3, 3)))
    for i in range(3):
        np.testing.assert_allclose(out[i], scipy.linalg.expm(np.asarray(a[i])) @ np.ones(3),
                                   rtol=1e-11)  # fmt: skip
