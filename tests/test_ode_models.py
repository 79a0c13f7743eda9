"""ODE PK models (Michaelis-Menten, transit absorption, user-defined) against references.

References: `scipy.integrate.solve_ivp` (DOP853, rtol 1e-10, atol 1e-12) integrated piecewise
between dosing events, with right-hand sides written here in NumPy independently of the
package; and Savic et al.'s closed form for the transit chain.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import pkpd

TIGHT = pkpd.ODESolver(rtol=1e-10, atol=1e-12)
simulate = eqx.filter_jit(pkpd.simulate)
simulate_states = eqx.filter_jit(pkpd.simulate_states)


def simulate_fixed(model, params, regimen, times, solver=TIGHT):
    """`simulate` jitted with the regimen and times known at trace time (closed over), which
    lets the engine use its static event schedule; `simulate` above traces the regimen."""
    return jax.jit(lambda p: pkpd.simulate(model, p, regimen, times, solver=solver))(params)


def as_params(**values):
    return {k: jnp.asarray(v, dtype=float) for k, v in values.items()}


def piecewise_reference(rhs, x0, events, times, method="DOP853"):
    """States at `times` (post-dose at dose times) by `solve_ivp` between events.

    `rhs(t, x)` is the vector field without input (NumPy). `events` is a list of
    `("bolus", time, cmt, amount)`, `("infusion", time, cmt, amount, duration)` or
    `("reset", time)`; `cmt` is 1-based. Events at one time apply in list order.
    """
    x0 = np.asarray(x0, dtype=float)
    n = x0.size
    times = np.asarray(times, dtype=float)
    actions = []  # (time, list position, function of (x, rate) -> (x, rate))
    for pos, ev in enumerate(events):
        kind, t = ev[0], float(ev[1])
        if kind == "bolus":
            _, _, cmt, amount = ev
            hot = np.eye(n)[cmt - 1]
            actions.append((t, pos, lambda x, r, h=hot, a=amount: (x + a * h, r)))
        elif kind == "infusion":
            _, _, cmt, amount, duration = ev
            hot = np.eye(n)[cmt - 1] * amount / duration
            actions.append((t, pos, lambda x, r, h=hot: (x, r + h)))
            actions.append((t + duration, pos, lambda x, r, h=hot: (x, r - h)))
        elif kind == "reset":
            actions.append((t, pos, lambda x, r: (x0.copy(), np.zeros(n))))
        else:
            raise ValueError(kind)
    actions.sort(key=lambda a: (a[0], a[1]))
    starts = sorted({a[0] for a in actions} | {float(times[0])})
    out = np.full((times.size, n), np.nan)
    x, rate = x0.copy(), np.zeros(n)
    for i, t0 in enumerate(starts):
        for t_act, _, act in actions:
            if t_act == t0:
                x, rate = act(x, rate)
        t1 = starts[i + 1] if i + 1 < len(starts) else max(float(times[-1]), t0)
        last = i + 1 == len(starts)
        sel = (times >= t0) & ((times <= t1) if last else (times < t1))
        if t1 == t0:
            out[sel] = x
            continue
        t_eval = np.union1d(times[sel], [t1])
        sol = solve_ivp(
            lambda t, y, r=rate: rhs(t, y) + r,
            (t0, t1),
            x,
            method=method,
            t_eval=t_eval,
            rtol=1e-10,
            atol=1e-12,
        )
        assert sol.success, sol.message
        out[sel] = sol.y[:, np.searchsorted(t_eval, times[sel])].T
        x = sol.y[:, -1]
    assert not np.isnan(out).any()
    return out


def assert_close(actual, desired, rtol=1e-6):
    actual, desired = np.asarray(actual), np.asarray(desired)
    atol = 1e-8 * np.max(np.abs(desired))
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------- models and references


def mm(vmax, km, c):
    return vmax * c / (km + c)


def rhs_1cmt_mm(p):
    return lambda t, x: np.array([-mm(p["VMAX"], p["KM"], x[0] / p["V"])])


def rhs_1cmt_oral_mm(p):
    def f(t, x):
        c = x[1] / p["V"]
        return np.array([-p["KA"] * x[0], p["KA"] * x[0] - mm(p["VMAX"], p["KM"], c)])

    return f


def rhs_2cmt_mm(p):
    def f(t, x):
        c1 = x[0] / p["V1"]
        d2 = p["Q"] * c1 - p["Q"] * x[1] / p["V2"]
        return np.array([-mm(p["VMAX"], p["KM"], c1) - d2, d2])

    return f


def rhs_2cmt_oral_mm(p):
    inner = rhs_2cmt_mm(p)

    def f(t, x):
        d = inner(t, x[1:])
        return np.array([-p["KA"] * x[0], p["KA"] * x[0] + d[0], d[1]])

    return f


def rhs_transit(p, n):
    ktr = (n + 1) / p["MTT"]

    def f(t, x):
        dx = np.zeros(n + 3)
        dx[0] = -ktr * x[0]
        for i in range(1, n + 1):
            dx[i] = ktr * x[i - 1] - ktr * x[i]
        dx[n + 1] = ktr * x[n] - p["KA"] * x[n + 1]
        dx[n + 2] = p["KA"] * x[n + 1] - p["CL"] / p["V"] * x[n + 2]
        return dx

    return f


def parallel_elimination(t, x, params):
    """User-defined vector field: linear and saturable elimination in parallel."""
    c = x[0] / params["V"]
    return jnp.stack([-params["CL"] * c - params["VMAX"] * c / (params["KM"] + c)])


def concentration_central(params, x):
    return x[0:1] / params["V"]


USER_MODEL = pkpd.ODEModel(
    parallel_elimination,
    state_names=("central",),
    param_names=("CL", "VMAX", "KM", "V"),
    output_fn=concentration_central,
    output_names=("C",),
)


def rhs_parallel(p):
    def f(t, x):
        c = x[0] / p["V"]
        return np.array([-p["CL"] * c - mm(p["VMAX"], p["KM"], c)])

    return f


W2 = dict(VMAX=50.0, KM=10.0, V1=20.0, Q=10.0, V2=40.0)


class Case(NamedTuple):
    model: pkpd.AbstractModel
    params: dict
    rhs: Callable  # params -> NumPy vector field (t, x) -> dx/dt
    observed: int  # 0-based state whose amount / volume is the output
    volume: str
    bolus_cmt: int
    infusion_cmt: int


CASES = {
    "1cmt-mm": Case(pkpd.OneCompartmentMM(), dict(VMAX=20.0, KM=2.0, V=30.0), rhs_1cmt_mm,
                    0, "V", 1, 1),
    "1cmt-oral-mm": Case(pkpd.OneCompartmentOralMM(), dict(KA=0.8, VMAX=20.0, KM=2.0, V=30.0),
                         rhs_1cmt_oral_mm, 1, "V", 1, 2),
    "2cmt-mm": Case(pkpd.TwoCompartmentMM(), W2, rhs_2cmt_mm, 0, "V1", 1, 1),
    "2cmt-oral-mm": Case(pkpd.TwoCompartmentOralMM(), dict(KA=1.2, **W2), rhs_2cmt_oral_mm,
                         1, "V1", 1, 2),
    "user-ode": Case(USER_MODEL, dict(CL=3.0, VMAX=20.0, KM=2.0, V=30.0), rhs_parallel,
                     0, "V", 1, 1),
}  # fmt: skip

TIMES = np.unique(np.concatenate([np.linspace(0.0, 48.0, 33), [10.0, 11.3, 13.0, 24.0, 36.0]]))


def mixed_regimen(dose, bolus_cmt, inf_cmt):
    """A bolus at 0, an infusion of 2 * dose over 3 h at 10 h, boluses at 24 and 36 h."""
    regimen = (
        pkpd.bolus(dose, cmt=bolus_cmt)
        + pkpd.infusion(2 * dose, duration=3.0, time=10.0, cmt=inf_cmt)
        + pkpd.repeat(pkpd.bolus(dose, time=24.0, cmt=bolus_cmt), ii=12.0, addl=1)
    )
    events = [
        ("bolus", 0.0, bolus_cmt, dose),
        ("infusion", 10.0, inf_cmt, 2 * dose, 3.0),
        ("bolus", 24.0, bolus_cmt, dose),
        ("bolus", 36.0, bolus_cmt, dose),
    ]
    return regimen, events


@pytest.mark.parametrize("name", sorted(CASES))
def test_bolus_infusion_multiple_doses_against_solve_ivp(name):
    case = CASES[name]
    model, p = case.model, case.params
    regimen, events = mixed_regimen(200.0, case.bolus_cmt, case.infusion_cmt)
    y = simulate(model, as_params(**p), regimen, TIMES, solver=TIGHT)
    x0 = np.zeros(model.n_states)
    ref = piecewise_reference(case.rhs(p), x0, events, TIMES)[:, case.observed]
    ref = ref / p[case.volume]
    assert y.shape == TIMES.shape
    assert_close(y, ref)
    # Post-dose at dose times: the 36 h bolus is seen at 36 h (IV: a jump of dose / V).
    k = int(np.flatnonzero(TIMES == 36.0)[0])
    if case.bolus_cmt - 1 == case.observed:
        assert float(y[k] - y[k - 1]) > 0.5 * 200.0 / p[case.volume]


# Extended: the W2 benchmark's workload; the ODE models' solve_ivp comparisons stay in make
# test.
@pytest.mark.extended
def test_w2_benchmark_workload():
    """W2 "2cmt-mm-iv": 500 mg every 24 h, 7 doses, output hourly to 168 h."""
    regimen = pkpd.repeat(pkpd.bolus(500.0), ii=24.0, addl=6)
    times = np.arange(0.0, 169.0)
    y = simulate_fixed(pkpd.TwoCompartmentMM(), as_params(**W2), regimen, times)
    events = [("bolus", 24.0 * k, 1, 500.0) for k in range(7)]
    ref = piecewise_reference(rhs_2cmt_mm(W2), np.zeros(2), events, times)[:, 0] / W2["V1"]
    assert_close(y, ref)
    # Saturable elimination: the trough rises from dose to dose (accumulation).
    troughs = np.asarray(y)[23:168:24]
    assert np.all(np.diff(troughs) > 0)


def test_transit_against_solve_ivp_and_savic_closed_form():
    """Transit chain: boluses into compartment 1, an infusion into the central compartment
    (compartment n + 3). After a bolus D at t_d, A_n(t) = D (ktr s)^n exp(-ktr s) / n! with
    s = t - t_d (Savic et al. 2007), superposed over the boluses."""
    n, dose = 3, 200.0
    model = pkpd.TransitAbsorption(n)
    assert model.state_names == (
        "dose",
        "transit1",
        "transit2",
        "transit3",
        "absorption",
        "central",
    )
    assert model.is_linear
    p = dict(MTT=2.0, KA=1.0, CL=5.0, V=50.0)
    regimen, events = mixed_regimen(dose, 1, n + 3)
    x = np.asarray(simulate_states(model, as_params(**p), regimen, TIMES))
    ref = piecewise_reference(rhs_transit(p, n), np.zeros(n + 3), events, TIMES)
    assert_close(x[:, -1] / p["V"], ref[:, -1] / p["V"])
    assert_close(x, ref)
    ktr = (n + 1) / p["MTT"]
    a_n = np.zeros_like(TIMES)
    for t_dose in (0.0, 24.0, 36.0):
        s = np.clip(TIMES - t_dose, 0.0, None)
        a_n += dose * (ktr * s) ** n * np.exp(-ktr * s) / math.factorial(n)
    np.testing.assert_allclose(x[:, n], a_n, rtol=1e-9, atol=1e-12 * dose)


def test_transit_rejects_bad_n():
    with pytest.raises(ValueError, match="n_transit"):
        pkpd.TransitAbsorption(-1)
    with pytest.raises(ValueError, match="n_transit"):
        pkpd.TransitAbsorption(2.5)  # type: ignore[arg-type]


def test_ode_model_defaults_and_errors():
    def decay(t, x, params):
        return -params["K"] * x

    def baseline(params):
        return jnp.stack([params["R0"], 0.0])

    model = pkpd.ODEModel(
        decay, state_names=("a", "b"), param_names=("K", "R0"), initial_fn=baseline
    )
    assert model.output_names == ("a", "b") and model.n_states == 2
    assert not model.is_linear
    p = as_params(K=0.5, R0=3.0)
    x = jnp.array([2.0, 4.0])
    np.testing.assert_array_equal(model.output(p, x), x)
    np.testing.assert_allclose(model.vector_field(jnp.asarray(0.0), x, p), [-1.0, -2.0])
    np.testing.assert_array_equal(model.initial_state(p), [3.0, 0.0])
    with pytest.raises(ValueError, match="output_names"):
        pkpd.ODEModel(
            decay, state_names=("a",), param_names=("K",), output_fn=concentration_central
        )
    with pytest.raises(ValueError, match="missing parameter"):
        pkpd.simulate(USER_MODEL, as_params(CL=1.0, V=2.0), pkpd.bolus(1.0), [0.0])
