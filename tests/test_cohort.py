"""`pkpd.simulate_cohort` equals `jax.vmap(pkpd.simulate)` on every path, exposure included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import LINEAR_MODEL_IDS, LINEAR_MODELS, ModelCase, max_rel_err

import pkpd

N_PAT = 7


def _cohort_params(base: dict[str, float], seed: int = 0) -> dict[str, jax.Array]:
    """`base` with 30% log-normal variability per patient."""
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(v * np.exp(0.3 * rng.standard_normal(N_PAT))) for k, v in base.items()}


def _reference(model, params, regimen, times):
    return jax.vmap(lambda p: pkpd.simulate(model, p, regimen, times))(params)


def _trapezoid(y, t):
    return np.trapezoid(np.asarray(y), np.asarray(t), axis=1)


def _check(model, params, regimen, times, *, rtol=1e-12):
    y, ex = pkpd.simulate_cohort(model, params, regimen, times, exposure=True)
    ref = _reference(model, params, regimen, times)
    assert y.shape == ref.shape
    scale = float(np.max(np.abs(ref))) or 1.0
    assert max_rel_err(y, ref, floor=scale) < rtol
    assert max_rel_err(ex.auc, _trapezoid(y, times)) < 1e-12
    assert max_rel_err(ex.auc, _trapezoid(ref, times)) < rtol
    np.testing.assert_array_equal(np.asarray(ex.cmax), np.asarray(y).max(axis=1))
    assert max_rel_err(ex.cmax, np.asarray(ref).max(axis=1)) < rtol
    return y


@pytest.mark.parametrize("case", LINEAR_MODELS, ids=LINEAR_MODEL_IDS)
def test_linear_multiple_doses_on_grid(case: ModelCase):
    """Time-major path: doses on the output grid, post-dose outputs at dose times."""
    regimen = pkpd.repeat(pkpd.bolus(100.0, cmt=case.oral_cmt), ii=12.0, addl=5)
    times = np.arange(0.0, 84.0, 1.0)
    _check(case.model, _cohort_params(case.params), regimen, times)


@pytest.mark.parametrize(
    "case",
    [
        # The two- and three-compartment cases run in the extended suite (the one-compartment
        # case covers the same code path in `make test`).
        pytest.param(c, id=i, marks=pytest.mark.extended if i != "OneCompartmentOral" else ())
        for c, i in zip(LINEAR_MODELS[1::2], LINEAR_MODEL_IDS[1::2], strict=True)
    ],
)
def test_linear_irregular_grid_lag_and_f(case: ModelCase):
    """Doses off the grid, a fixed lag, F per patient, duplicated and pre-dose output times."""
    regimen = pkpd.repeat(pkpd.oral(250.0, time=2.0, lag=0.35, bioav=0.9), ii=8.0, addl=4)
    regimen = regimen + pkpd.bolus(40.0, time=13.3, cmt=case.central)
    times = np.array([0.0, 0.5, 1.0, 2.0, 2.0, 3.0, 4.5, 6.0, 9.0, 12.0, 13.3, 18.0, 30.0, 50.0])
    params = {**_cohort_params(case.params), "F1": jnp.linspace(0.5, 1.0, N_PAT)}
    _check(case.model, params, regimen, times)


@pytest.mark.extended
def test_linear_pd_models():
    """PK/PD models: an effect compartment (linear state, nonlinear output) and an Emax."""
    pk = LINEAR_MODELS[3]
    regimen = pkpd.repeat(pkpd.oral(100.0), ii=24.0, addl=3)
    times = np.linspace(0.0, 96.0, 49)
    link = pkpd.PKPD(pk.model, pkpd.EffectCompartment())
    params = _cohort_params({**pk.params, "KE0": 0.4, "E0": 10.0, "EMAX": 50.0, "EC50": 1.5})
    y = _check(link, params, regimen, times)
    assert y.shape == (N_PAT, times.size, 2)
    direct = pkpd.PKPD(pk.model, pkpd.Emax())
    _check(
        direct, _cohort_params({**pk.params, "E0": 5.0, "EMAX": 20.0, "EC50": 2.0}), regimen, times
    )


@pytest.mark.extended
def test_linear_fallbacks_agree():
    """Infusions, steady state and resets take the per-patient path: same numbers."""
    case = LINEAR_MODELS[2]
    params = _cohort_params(case.params)
    times = np.linspace(0.0, 48.0, 25)
    regimens = [
        pkpd.repeat(pkpd.infusion(500.0, duration=1.5), ii=12.0, addl=3),
        pkpd.steady_state(pkpd.bolus(100.0), ii=12.0) + pkpd.bolus(100.0, time=12.0),
        pkpd.bolus(100.0) + pkpd.reset(time=20.0) + pkpd.bolus(50.0, time=30.0),
    ]
    for regimen in regimens:
        _check(case.model, params, regimen, times)


@pytest.mark.extended
def test_first_dose_after_first_output():
    """Outputs before the first dose: the initial state (zero, or a PD baseline) is kept."""
    regimen = pkpd.oral(100.0, time=10.0) + pkpd.oral(100.0, time=22.5)
    times = np.linspace(0.0, 48.0, 25)
    pk = {"KA": 1.0, "CL": 5.0, "V": 50.0}
    linear = pkpd.PKPD(pkpd.OneCompartmentOral(), pkpd.EffectCompartment())
    _check(
        linear,
        _cohort_params({**pk, "KE0": 0.3, "E0": 1.0, "EMAX": 4.0, "EC50": 1.0}),
        regimen,
        times,
    )
    turnover = pkpd.PKPD(pkpd.OneCompartmentOral(), pkpd.IndirectResponseI())
    base = {**pk, "KIN": 10.0, "KOUT": 0.5, "IMAX": 0.9, "IC50": 1.0}
    _check(turnover, _cohort_params(base), regimen, times, rtol=1e-6)


def test_ode_stacked_and_chunked():
    """Stacked diffrax solve (chunks of 3 patients) against per-patient solves."""
    model = pkpd.TwoCompartmentMM()
    base = {"VMAX": 50.0, "KM": 10.0, "V1": 20.0, "Q": 10.0, "V2": 40.0}
    regimen = pkpd.repeat(pkpd.bolus(500.0), ii=24.0, addl=2)
    times = np.linspace(0.0, 72.0, 37)
    params = _cohort_params(base)
    y, ex = pkpd.simulate_cohort(model, params, regimen, times, chunk_size=3, exposure=True)
    ref = _reference(model, params, regimen, times)
    assert max_rel_err(y, ref, floor=float(np.max(ref))) < 1e-5
    assert max_rel_err(ex.auc, _trapezoid(y, times)) < 1e-12
    # Stacks grouped by stiffness (the default) are returned in the caller's order: the
    # patients differ, so a wrong inverse permutation would fail the comparison above. The
    # caller's order gives the same answer to the tolerance.
    assert len({float(v) for v in np.asarray(params["VMAX"])}) > 3
    y_plain = pkpd.simulate_cohort(model, params, regimen, times, chunk_size=3, order_stacks=False)
    assert max_rel_err(y_plain, ref, floor=float(np.max(ref))) < 1e-5


def test_mesh_matches_unsharded():
    """Sharding over a one-axis mesh (one device here) changes nothing, padding included."""
    case = LINEAR_MODELS[1]
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("patients",))
    params = _cohort_params(case.params)
    regimen = pkpd.repeat(pkpd.oral(100.0), ii=12.0, addl=3)
    times = np.arange(0.0, 49.0)
    y, ex = pkpd.simulate_cohort(case.model, params, regimen, times, mesh=mesh, exposure=True)
    y0, ex0 = pkpd.simulate_cohort(case.model, params, regimen, times, exposure=True)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y0), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(ex.auc), np.asarray(ex0.auc), rtol=1e-14)


# Extended: the time-major layout's gradient and jit compile for about a minute; the layout's
# values stay checked in make test.
@pytest.mark.extended
def test_time_major_is_differentiable_and_jits():
    """Gradients through the time-major path equal those through `simulate`."""
    case = LINEAR_MODELS[1]
    regimen = pkpd.repeat(pkpd.oral(100.0), ii=12.0, addl=3)
    times = np.arange(0.0, 49.0)
    params = _cohort_params(case.params)

    def total_auc(p):
        return jnp.sum(pkpd.simulate_cohort(case.model, p, regimen, times, exposure=True)[1].auc)

    dt = np.diff(times)
    w = jnp.asarray(np.concatenate([dt[:1], dt[1:] + dt[:-1], dt[-1:]]) / 2.0)

    def total_ref(p):
        return jnp.sum(_reference(case.model, p, regimen, times) * w[None, :])

    g = jax.jit(jax.grad(total_auc))(params)
    g_ref = jax.grad(total_ref)(params)
    for k in params:
        assert max_rel_err(g[k], g_ref[k]) < 1e-10, k


def test_exposure_needs_sorted_times():
    case = LINEAR_MODELS[0]
    with pytest.raises(ValueError, match="non-decreasing"):
        pkpd.simulate_cohort(
            case.model,
            _cohort_params(case.params),
            pkpd.bolus(100.0),
            np.array([0.0, 2.0, 1.0]),
            exposure=True,
        )


def test_stacks_keep_order_when_the_field_cannot_be_differentiated():
    """A vector field with a host callback (no JVP rule) cannot give the Jacobian that groups
    stacks by stiffness: the cohort is then solved in the caller's order, with the same
    answer."""

    def host_decay(k, x):
        return np.asarray(-k * x)

    def field(t, x, p):
        shape = jax.ShapeDtypeStruct(x.shape, x.dtype)
        return jax.pure_callback(host_decay, shape, p["K"], x, vmap_method="sequential")

    model = pkpd.ODEModel(
        field,
        state_names=("central",),
        param_names=("K", "V"),
        output_fn=lambda p, x: x[0:1] / p["V"],
        output_names=("C",),
    )
    k = jnp.asarray([0.1, 0.3, 0.05, 0.2, 0.15])
    params = {"K": k, "V": jnp.full(5, 10.0)}
    times = np.linspace(0.0, 24.0, 7)
    y = pkpd.simulate_cohort(model, params, pkpd.bolus(100.0), times, chunk_size=2)
    exact = 10.0 * np.exp(-np.asarray(k)[:, None] * times[None, :])
    assert max_rel_err(y, exact, floor=10.0) < 1e-5
