"""Gradients against finite differences; jit == eager; vmap == loop; no recompilation."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    LINEAR_MODEL_IDS,
    LINEAR_MODELS,
    REGIMEN_FIELDS,
    ModelCase,
    max_rel_err,
    tree_allclose,
)

import pkpd

TIMES = np.array([0.3, 1.1, 2.2, 3.4, 5.3, 7.9, 10.4, 15.6, 25.1])
simulate = eqx.filter_jit(pkpd.simulate)


def traced(params: dict) -> dict:
    """Parameters as arrays, so that `filter_jit` traces them (Python floats are static)."""
    return {k: jnp.asarray(v) for k, v in params.items()}


def central_differences(f, x: dict[str, float], rel: float = 1e-6) -> dict[str, float]:
    """Central finite differences of a scalar `f(dict)` in every entry of `x` (float64)."""
    out = {}
    for k, v in x.items():
        h = rel * max(abs(v), 1e-2)
        up, down = dict(x), dict(x)
        up[k], down[k] = v + h, v - h
        out[k] = (float(f(up)) - float(f(down))) / (2.0 * h)
    return out


def check_grad(f, x: dict[str, float], rtol: float = 1e-5) -> None:
    """`jax.grad(f)` against central differences, every entry; all gradients nonzero.

    One compilation: the finite differences reuse the jitted value-and-gradient function.
    """
    vg = jax.jit(jax.value_and_grad(f))

    def value(p):
        return vg({k: jnp.asarray(v) for k, v in p.items()})[0]

    g = vg({k: jnp.asarray(v) for k, v in x.items()})[1]
    fd = central_differences(value, x)
    for k in x:
        assert np.isfinite(float(g[k])) and fd[k] != 0.0, (k, g[k], fd[k])
        scale = max(abs(fd[k]), 1e-6 * max(abs(v) for v in fd.values()))
        assert abs(float(g[k]) - fd[k]) <= rtol * scale, f"d/d{k}: grad {g[k]}, FD {fd[k]}"


def _dosing(case: ModelCase) -> tuple[pkpd.Regimen, dict[str, float]]:
    """A regimen whose lag, F and infusion duration come from the parameters.

    An extravascular dose with `ALAG<o>` and `F<o>`, an infusion into the central
    compartment with `RATE=-2` (duration `D<c>`), and a second extravascular dose.
    """
    o, c = case.oral_cmt, case.central
    reg = (
        pkpd.bolus(100.0, cmt=o, time=0.0)
        + pkpd.infusion(60.0, rate=pkpd.MODELLED_DURATION, cmt=c, time=4.0)
        + pkpd.bolus(80.0, cmt=o, time=12.0)
    )
    # In IV models (o == c) ALAG1 and F1 act on the infusion too.
    return reg, {f"ALAG{o}": 0.45, f"F{o}": 0.7, f"D{c}": 2.5}


# The matrix-exponential models share one propagation code path (`AbstractLinearModel`), so
# ThreeCompartmentOral stands for the four of them; the two one-compartment models have their
# own closed forms.
GRAD_MODELS = [LINEAR_MODELS[0], LINEAR_MODELS[1], LINEAR_MODELS[5]]


@pytest.mark.parametrize("case", GRAD_MODELS, ids=[c.name for c in GRAD_MODELS])
def test_grad_every_parameter(case: ModelCase):
    """d/dp of the summed concentrations for every model parameter, ALAG, F and D."""
    reg, extra = _dosing(case)
    x = {**case.params, **extra}

    def total(p):
        return jnp.sum(pkpd.simulate(case.model, p, reg, TIMES))

    check_grad(total, x)


def test_grad_regimen_lag_bioav_duration_amount_time():
    """d/d of values given to the constructors: `lag`, `bioav`, `duration`, amount, time."""
    case = LINEAR_MODELS[1]  # OneCompartmentOral

    def total(v):
        reg = pkpd.oral(
            v["amount"], time=v["time"], lag=v["lag"], bioav=v["bioav"]
        ) + pkpd.infusion(50.0, duration=v["duration"], cmt=2, time=6.0)
        return jnp.sum(pkpd.simulate(case.model, case.params, reg, TIMES))

    check_grad(total, {"amount": 100.0, "time": 0.2, "lag": 0.6, "bioav": 0.8, "duration": 3.0})


def test_grad_duration_by_regimen_equals_by_parameter():
    """`infusion(duration=d)` and `RATE=-2` with `D2 = d` give the same value and gradient."""
    case = LINEAR_MODELS[1]  # OneCompartmentOral

    def by_regimen(d):
        reg = pkpd.infusion(100.0, duration=d, cmt=2, time=1.0)
        return jnp.sum(pkpd.simulate(case.model, case.params, reg, TIMES))

    def by_param(d):
        reg = pkpd.infusion(100.0, rate=pkpd.MODELLED_DURATION, cmt=2, time=1.0)
        return jnp.sum(pkpd.simulate(case.model, {**case.params, "D2": d}, reg, TIMES))

    d = jnp.asarray(3.7)
    va, ga = jax.jit(jax.value_and_grad(by_regimen))(d)
    vb, gb = jax.jit(jax.value_and_grad(by_param))(d)
    assert float(ga) != 0.0
    np.testing.assert_allclose([float(va), float(ga)], [float(vb), float(gb)], rtol=1e-12)


@pytest.mark.parametrize(
    "case", [LINEAR_MODELS[0], LINEAR_MODELS[1]], ids=[LINEAR_MODEL_IDS[0], LINEAR_MODEL_IDS[1]]
)
def test_grad_steady_state(case: ModelCase):
    """Through SS=1 (infusion longer than the interval, lag and F) and SS=2."""
    c, o = case.central, case.oral_cmt
    reg = pkpd.steady_state(
        pkpd.infusion(100.0, rate=pkpd.MODELLED_DURATION, cmt=c), ii=12.0
    ) + pkpd.steady_state(pkpd.bolus(40.0, cmt=o, time=6.0), ii=12.0, ss=2)
    # ALAG + D = 0.8 + 14 h spans two intervals: raise the static bound to cover it.
    reg = pkpd.Regimen(
        **{f: getattr(reg, f) for f in REGIMEN_FIELDS},
        ss_intervals=3,
        has_ss=True,
        has_reset=True,
        has_infusion=True,
    )
    x = {**case.params, f"ALAG{c}": 0.8, f"F{c}": 0.9, f"D{c}": 14.0}

    def total(p):
        return jnp.sum(pkpd.simulate(case.model, p, reg, TIMES))

    check_grad(total, x)


# ----------------------------------------------------------------------------- jit, vmap


def _mixed(case: ModelCase, *, modelled: bool, steady: bool) -> tuple[pkpd.Regimen, dict]:
    """Bolus, infusion, lag, F, ADDL, a reset and optionally a steady state.

    With `modelled`, lag and F are the parameters `ALAG<o>`, `F<o>` (which the eager path
    cannot schedule statically); otherwise they are in the regimen.
    """
    o, c = case.oral_cmt, case.central
    lag = {} if modelled else {"lag": 0.4, "bioav": 0.9}
    reg = (
        pkpd.repeat(pkpd.bolus(100.0, cmt=o, **lag), ii=8.0, addl=1)
        + pkpd.infusion(50.0, duration=3.0, cmt=c, time=2.0)
        + pkpd.reset(time=15.0)
    )
    if steady:
        reg = reg + pkpd.steady_state(pkpd.infusion(30.0, rate=5.0, cmt=c, time=16.0), ii=12.0)
    else:
        reg = reg + pkpd.bolus(30.0, cmt=c, time=16.0)
    params = {**case.params, f"ALAG{o}": 0.4, f"F{o}": 0.9} if modelled else case.params
    return reg, params


@pytest.mark.parametrize(
    ("case", "modelled", "steady"),
    [
        (LINEAR_MODELS[1], False, True),
        (LINEAR_MODELS[0], False, False),
        (LINEAR_MODELS[1], True, False),
    ],
    ids=["OneCompartmentOral-SS", "OneCompartment", "OneCompartmentOral-ALAG-param"],
)
def test_jit_equals_eager(case: ModelCase, modelled: bool, steady: bool):
    """Eager (concrete regimen: static schedule) and jitted (traced) paths agree.

    Without a steady state, also on a padded regimen, eagerly (eager calls are slow).
    """
    reg, params = _mixed(case, modelled=modelled, steady=steady)
    times = np.concatenate([TIMES, [8.0, 15.0, 16.0, 20.0, 30.0]])
    eager = pkpd.simulate(case.model, params, reg, times)
    jitted = simulate(case.model, traced(params), reg, times)
    assert np.max(np.asarray(eager)) > 0
    assert tree_allclose(eager, jitted, rtol=1e-12, atol=1e-15)
    if not steady:
        padded = pkpd.simulate(case.model, params, reg.pad(reg.n_events + 3), times)
        assert tree_allclose(padded, jitted, rtol=1e-12, atol=1e-15)


def test_jit_equals_eager_ode():
    """The same for the ODE path (no steady state: see test_linear_models.py)."""
    case = LINEAR_MODELS[1]
    model = pkpd.AsODE(case.model)
    solver = pkpd.ODESolver(rtol=1e-10, atol=1e-12)
    o, c = case.oral_cmt, case.central
    reg = (
        pkpd.repeat(pkpd.bolus(100.0, cmt=o, lag=0.4, bioav=0.9), ii=8.0, addl=1)
        + pkpd.infusion(50.0, duration=3.0, cmt=c, time=2.0)
        + pkpd.reset(time=15.0)
        + pkpd.bolus(30.0, cmt=c, time=16.0)
    )
    times = np.concatenate([TIMES, [8.0, 15.0, 16.0, 20.0, 30.0]])
    eager = pkpd.simulate(model, case.params, reg, times, solver=solver)
    jitted = simulate(model, traced(case.params), reg, times, solver=solver)
    exact = simulate(case.model, traced(case.params), reg, times)
    assert max_rel_err(jitted, exact, floor=1e-6 * float(np.max(exact))) <= 1e-6
    assert max_rel_err(eager, jitted, floor=1e-6 * float(np.max(exact))) <= 1e-8


def test_vmap_different_regimens_equals_loop():
    """Patients with different regimens (and parameters), padded with `stack`, vmapped."""
    case = LINEAR_MODELS[1]
    regs = [
        pkpd.oral(100.0),
        pkpd.repeat(pkpd.oral(50.0, lag=0.5), ii=6.0, addl=3),
        pkpd.infusion(80.0, duration=2.0, cmt=2, time=1.0)
        + pkpd.reset(time=9.0)
        + pkpd.oral(10.0, time=9.0),
        pkpd.steady_state(pkpd.infusion(60.0, rate=20.0, cmt=2), ii=12.0),
    ]
    cl = jnp.array([4.0, 5.0, 6.0, 7.0])
    params = {"KA": jnp.full(4, case.params["KA"]), "CL": cl, "V": jnp.full(4, 50.0)}
    batched = eqx.filter_jit(jax.vmap(lambda p, r: pkpd.simulate(case.model, p, r, TIMES)))(
        params, pkpd.stack(regs)
    )
    assert batched.shape == (4, TIMES.size)
    for i, reg in enumerate(regs):
        one = simulate(case.model, {k: v[i] for k, v in params.items()}, reg, TIMES)
        np.testing.assert_allclose(
            np.asarray(batched[i]), np.asarray(one), rtol=1e-12, atol=1e-15, err_msg=f"patient {i}"
        )
    assert len({tuple(np.round(np.asarray(b), 8)) for b in batched}) == 4


def test_no_recompilation():
    """Second calls with new values of the same shapes do not retrace."""
    case = LINEAR_MODELS[1]
    params = traced(case.params)
    traces = {"one": 0, "batch": 0}

    @eqx.filter_jit
    def one(params, regimen, times):
        traces["one"] += 1
        return pkpd.simulate(case.model, params, regimen, times)

    @eqx.filter_jit
    def batch(params, regimens, times):
        traces["batch"] += 1
        return jax.vmap(lambda r: pkpd.simulate(case.model, params, r, times))(regimens)

    def regimen(amount, t, ii):
        return pkpd.repeat(pkpd.oral(amount, time=t, lag=0.3), ii=ii, addl=2)

    a = one(params, regimen(100.0, 0.0, 8.0), TIMES)
    b = one({**params, "CL": jnp.asarray(7.0)}, regimen(50.0, 1.0, 6.0), TIMES + 0.5)
    assert traces["one"] == 1
    assert not np.allclose(np.asarray(a), np.asarray(b))
    # Steady-state regimens with the same static bound (ss_intervals) share the compilation.
    s1 = pkpd.steady_state(pkpd.infusion(100.0, rate=20.0, cmt=2), ii=12.0)
    s2 = pkpd.steady_state(pkpd.infusion(70.0, rate=10.0, cmt=2), ii=10.0)
    assert s1.ss_intervals == s2.ss_intervals
    one(params, s1, TIMES)
    one(params, s2, TIMES)
    assert traces["one"] == 2

    regs = [regimen(100.0, 0.0, 8.0), regimen(20.0, 2.0, 12.0)]
    batch(params, pkpd.stack(regs), TIMES)
    batch({**params, "V": jnp.asarray(30.0)}, pkpd.stack(regs[::-1]), TIMES * 2.0)
    assert traces["batch"] == 1
