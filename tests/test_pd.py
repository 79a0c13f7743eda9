"""PD models and their composition with PK models (`pkpd.PKPD`) against references.

References: closed forms (Bateman superposition mapped through Emax; the effect-site
concentration after IV boluses into a one-compartment model), `scipy.integrate.solve_ivp`
(DOP853, rtol 1e-10, atol 1e-12) piecewise between events, and central finite differences.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_ode_models import (
    TIGHT,
    TIMES,
    as_params,
    assert_close,
    mixed_regimen,
    piecewise_reference,
    rhs_1cmt_mm,
    simulate_fixed,
)

import pkpd

simulate = eqx.filter_jit(pkpd.simulate)  # the regimen is traced: general event path


def emax_np(p, c):
    return p["E0"] + p["EMAX"] * c / (p["EC50"] + c)


def sigmoid_np(p, c):
    cg = np.maximum(c, 0.0) ** p["GAMMA"]
    return p["E0"] + p["EMAX"] * cg / (p["EC50"] ** p["GAMMA"] + cg)


EFFECTS = {
    "emax": (pkpd.Emax(), dict(E0=5.0, EMAX=-4.0, EC50=0.8), emax_np),
    "sigmoid": (pkpd.SigmoidEmax(), dict(E0=5.0, EMAX=20.0, EC50=0.8, GAMMA=2.5), sigmoid_np),
}


# ----------------------------------------------------------------------------- direct effects


@pytest.mark.parametrize("name", sorted(EFFECTS))
def test_direct_effect_on_linear_pk_equals_closed_form(name):
    pd_model, pd_params, effect = EFFECTS[name]
    model = pkpd.PKPD(pkpd.OneCompartmentOral(), pd_model)
    assert model.is_linear and model.output_names == ("C", "E")
    assert model.state_names == ("depot", "central")
    ka, cl, v = 1.3, 5.0, 40.0
    p = dict(KA=ka, CL=cl, V=v, **pd_params)
    # Oral 100 mg every 12 h (3 doses), and 60 mg infused into the central compartment
    # (compartment 2) over 2 h at 6 h.
    regimen = pkpd.repeat(pkpd.oral(100.0), ii=12.0, addl=2) + pkpd.infusion(
        60.0, duration=2.0, time=6.0, cmt=2
    )
    times = np.linspace(0.0, 40.0, 81)
    y = np.asarray(simulate(model, as_params(**p), regimen, times))
    k = cl / v
    c = np.zeros_like(times)
    for t_dose in (0.0, 12.0, 24.0):
        s = np.clip(times - t_dose, 0.0, None)
        c += 100.0 * ka / (v * (ka - k)) * (np.exp(-k * s) - np.exp(-ka * s))
    rate, t_on, t_off = 30.0, 6.0, 8.0
    during = rate / cl * (1.0 - np.exp(-k * np.clip(times - t_on, 0.0, 2.0)))
    c += np.where(times > t_off, during * np.exp(-k * np.clip(times - t_off, 0.0, None)), during)
    np.testing.assert_allclose(y[:, 0], c, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(y[:, 1], effect(p, c), rtol=1e-10)
    assert y[0, 1] == pytest.approx(p["E0"])


def test_direct_effect_on_ode_pk_against_solve_ivp():
    pd_model, pd_params, effect = EFFECTS["sigmoid"]
    model = pkpd.PKPD(pkpd.OneCompartmentMM(), pd_model)
    assert not model.is_linear
    p = dict(VMAX=20.0, KM=2.0, V=30.0, **pd_params)
    regimen, events = mixed_regimen(100.0, 1, 1)
    y = np.asarray(simulate_fixed(model, as_params(**p), regimen, TIMES))
    c = piecewise_reference(rhs_1cmt_mm(p), [0.0], events, TIMES)[:, 0] / p["V"]
    assert_close(y[:, 0], c)
    assert_close(y[:, 1], effect(p, c))


def test_sigmoid_emax_is_finite_and_differentiable_at_zero():
    p = as_params(E0=1.0, EMAX=2.0, EC50=0.5, GAMMA=1.7)
    c = jnp.array([0.0, 1e-300, 0.5, 1e3])
    e = pkpd.SigmoidEmax().effect_of(p, c)
    np.testing.assert_allclose(e, [1.0, 1.0, 2.0, 1.0 + 2.0 / (1.0 + (0.5e-3) ** 1.7)])
    grads = jax.grad(lambda q: jnp.sum(pkpd.SigmoidEmax().effect_of(q, c)))(p)
    assert all(bool(jnp.isfinite(g)) for g in grads.values())


# ----------------------------------------------------------------------- effect compartment


def effect_site_closed_form(dose, v, k, ke0, dose_times, times):
    c = np.zeros_like(times)
    ce = np.zeros_like(times)
    for t_dose in dose_times:
        s = np.clip(times - t_dose, 0.0, None)
        on = times >= t_dose
        c += np.where(on, dose / v * np.exp(-k * s), 0.0)
        ce += dose / v * ke0 / (ke0 - k) * (np.exp(-k * s) - np.exp(-ke0 * s))
    return c, ce


@pytest.mark.parametrize("path", ["analytic", "diffrax"])
def test_effect_compartment_equals_closed_form(path):
    """IV boluses into a one-compartment model: C = D/V e^{-kt} and
    Ce = D/V ke0/(ke0 - k) (e^{-kt} - e^{-ke0 t}), superposed over the doses."""
    if path == "analytic":
        pk, pd_name = pkpd.OneCompartment(), "sigmoid"
    else:
        pk, pd_name = pkpd.AsODE(pkpd.OneCompartment()), "emax"
    pd_model, pd_params, effect = EFFECTS[pd_name]
    model = pkpd.PKPD(pk, pkpd.EffectCompartment(pd_model))
    assert model.is_linear == (path == "analytic")
    assert model.state_names == ("central", "effect")
    assert model.param_names == ("CL", "V", "KE0", *pd_model.param_names)
    cl, v, ke0 = 5.0, 50.0, 0.7
    p = dict(CL=cl, V=v, KE0=ke0, **pd_params)
    regimen = pkpd.repeat(pkpd.bolus(100.0), ii=12.0, addl=1)
    times = np.linspace(0.0, 30.0, 61)
    run = simulate_fixed if path == "analytic" else simulate
    y = np.asarray(run(model, as_params(**p), regimen, times, solver=TIGHT))
    c, ce = effect_site_closed_form(100.0, v, cl / v, ke0, (0.0, 12.0), times)
    rtol = 1e-10 if path == "analytic" else 1e-7
    np.testing.assert_allclose(y[:, 0], c, rtol=rtol)
    np.testing.assert_allclose(y[:, 1], effect(p, ce), rtol=rtol, atol=1e-12)
    # Hysteresis: the effect peaks after the concentration does (C peaks at the dose).
    assert times[np.argmax(np.abs(y[:25, 1] - p["E0"]))] > 0.5


# ----------------------------------------------------------------------- indirect response


def ir_rhs(kind, p):
    k = p["CL"] / p["V"]

    def f(t, x):
        c = x[0] / p["V"]
        r = x[1]
        if kind in ("I", "II"):
            drug = p["IMAX"] * c / (p["IC50"] + c)
        else:
            drug = p["EMAX"] * c / (p["EC50"] + c)
        dr = {
            "I": p["KIN"] * (1.0 - drug) - p["KOUT"] * r,
            "II": p["KIN"] - p["KOUT"] * (1.0 - drug) * r,
            "III": p["KIN"] * (1.0 + drug) - p["KOUT"] * r,
            "IV": p["KIN"] - p["KOUT"] * (1.0 + drug) * r,
        }[kind]
        return np.array([-k * x[0], dr])

    return f


IR = {
    "I": (pkpd.IndirectResponseI(), dict(IMAX=0.9, IC50=0.5), -1),
    "II": (pkpd.IndirectResponseII(), dict(IMAX=0.9, IC50=0.5), +1),
    "III": (pkpd.IndirectResponseIII(), dict(EMAX=3.0, EC50=0.5), +1),
    "IV": (pkpd.IndirectResponseIV(), dict(EMAX=3.0, EC50=0.5), -1),
}
IR_TIMES = np.unique(np.concatenate([TIMES, np.linspace(40.0, 60.0, 11)]))


def ir_regimen(dose):
    """The mixed regimen, then a reset (EVID 3) at 40 h and a bolus at 44 h."""
    regimen, events = mixed_regimen(dose, 1, 1)
    regimen = regimen + pkpd.reset(time=40.0) + pkpd.bolus(dose, time=44.0)
    return regimen, [*events, ("reset", 40.0), ("bolus", 44.0, 1, dose)]


def ir_params(kind):
    return dict(CL=5.0, V=50.0, KIN=12.0, KOUT=0.4, **IR[kind][1])


@pytest.mark.parametrize("kind", sorted(IR))
def test_indirect_response_against_solve_ivp(kind):
    pd_model, _, direction = IR[kind]
    model = pkpd.PKPD(pkpd.OneCompartment(), pd_model)
    assert not model.is_linear and model.state_names == ("central", "response")
    p = ir_params(kind)
    r0 = p["KIN"] / p["KOUT"]
    regimen, events = ir_regimen(100.0)
    y = np.asarray(simulate(model, as_params(**p), regimen, IR_TIMES, solver=TIGHT))
    ref = piecewise_reference(ir_rhs(kind, p), [0.0, r0], events, IR_TIMES)
    assert_close(y[:, 0], ref[:, 0] / p["V"])
    assert_close(y[:, 1], ref[:, 1])
    # The drug moves the response the documented way, and the reset restores R0.
    moved = direction * (y[:, 1] - r0)
    assert moved.max() > 0.1 * r0 and moved.min() > -1e-9 * r0
    np.testing.assert_allclose(y[IR_TIMES == 40.0, 1], r0, rtol=1e-12)
    # No drug: the response stays at its baseline R0 = KIN / KOUT.
    regimen0, _ = ir_regimen(0.0)
    y0 = np.asarray(simulate(model, as_params(**p), regimen0, IR_TIMES, solver=TIGHT))
    np.testing.assert_array_equal(y0[:, 0], 0.0)
    np.testing.assert_allclose(y0[:, 1], r0, rtol=1e-12)


def test_gradient_wrt_pd_parameter_matches_finite_differences():
    """d/dIC50 of the summed response of an indirect response model (diffrax, through the
    engine's static-schedule path) against central differences."""
    model = pkpd.PKPD(pkpd.OneCompartment(), pkpd.IndirectResponseI())
    base = as_params(**ir_params("I"))
    regimen = pkpd.bolus(100.0) + pkpd.infusion(100.0, duration=2.0, time=6.0)
    times = np.linspace(0.0, 24.0, 9)
    solver = pkpd.ODESolver(rtol=1e-10, atol=1e-10)

    @jax.jit
    def loss(ic50):
        y = pkpd.simulate(model, dict(base, IC50=ic50), regimen, times, solver=solver)
        return jnp.sum(y[:, 1])

    ic50 = jnp.asarray(0.5)
    grad = jax.grad(loss)(ic50)
    h = 1e-4 * ic50
    fd = (loss(ic50 + h) - loss(ic50 - h)) / (2.0 * h)
    assert abs(float(grad)) > 1.0
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


# ----------------------------------------------------------------------------- composition


def test_pkpd_composition_rules():
    linear = pkpd.PKPD(pkpd.TwoCompartment(), pkpd.Emax())
    p = as_params(CL=4.0, V1=20.0, Q=3.0, V2=60.0, E0=0.0, EMAX=1.0, EC50=1.0)
    np.testing.assert_array_equal(linear.matrix(p), pkpd.TwoCompartment().matrix(p))
    assert linear.param_names == ("CL", "V1", "Q", "V2", "E0", "EMAX", "EC50")
    # Linear PK + effect compartment: block matrix with the KE0 * C input row.
    link = pkpd.PKPD(pkpd.TwoCompartment(), pkpd.EffectCompartment())
    k = np.asarray(link.matrix(dict(p, KE0=jnp.asarray(0.3))))
    np.testing.assert_allclose(k[:2, :2], pkpd.TwoCompartment().matrix(p))
    np.testing.assert_allclose(k[2], [0.3 / 20.0, 0.0, -0.3])
    np.testing.assert_array_equal(k[:2, 2], 0.0)
    # Indirect response: baseline initial state, no matrix.
    ir = pkpd.PKPD(pkpd.OneCompartmentOral(), pkpd.IndirectResponseIV())
    q = as_params(KA=1.0, CL=1.0, V=10.0, KIN=6.0, KOUT=0.5, EMAX=1.0, EC50=1.0)
    np.testing.assert_allclose(ir.initial_state(q), [0.0, 0.0, 12.0])
    with pytest.raises(TypeError, match="linear"):
        ir.matrix(q)
    # Parameters must be distinct between PK and PD.
    with pytest.raises(ValueError, match="EC50"):
        pkpd.PKPD(
            pkpd.ODEModel(lambda t, x, p: -x, state_names=("central",), param_names=("EC50",)),
            pkpd.Emax(),
        )
    with pytest.raises(TypeError, match="PD model"):
        pkpd.PKPD(pkpd.OneCompartment(), pkpd.OneCompartment())  # type: ignore[arg-type]
