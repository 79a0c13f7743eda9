"""Exact exposure and closed-form propagation of the linear models.

`pkpd.advance` / `pkpd.interval_exposure` integrate the output of a linear model exactly
(the state augmented with the integral of the output) and take Cmax on the sub-step grid;
the 1-, 2- and 3-compartment intravenous models propagate by their eigenvalues. References:
closed forms (Gibaldi & Perrier 1982), and an independent solution by `scipy.linalg.expm`
integrated with `scipy.integrate.quad`.

Compilation dominates the time of this file, so every exposure goes through one compiled
function per model (`_jit_exposure`) and every regimen has the same layout (`_regimen` pads
it to `SLOTS` doses with empty infusions).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
from helpers import LINEAR_MODEL_IDS, LINEAR_MODELS

import pkpd

SOLVER = pkpd.ODESolver()
CASES = {case.name: case for case in LINEAR_MODELS}
STEPS = 8
SLOTS = 6


def _reference(k, row, doses, t0, t1, steps=STEPS, effect=None):
    """AUC (quad) and Cmax (on the `steps` sub-step grid of every segment) of `row @ x`
    (or of `effect(row @ x)`) over `[t0, t1]`, the state by `scipy.linalg.expm` of
    `[[K, r], [0, 0]]` from time 0.

    `doses`: `(time, amount, cmt, duration)`, `duration=None` for a bolus; the padding of
    `_regimen` is added (its entries at 0 and 1 h split the segments there too)."""
    n = k.shape[0]
    effect = effect or (lambda c: c)
    events = []
    for t, amount, cmt, duration in _padded(doses):
        if duration is None:
            events.append((t, "bolus", cmt - 1, amount))
        else:
            events.append((t, "rate", cmt - 1, amount / duration))
            events.append((t + duration, "rate", cmt - 1, -amount / duration))
    times = sorted({e[0] for e in events} | {t0, t1})

    def prop(x, r, dt):
        aug = np.zeros((n + 1, n + 1))
        aug[:n, :n], aug[:n, n] = k * dt, r * dt
        e = scipy.linalg.expm(aug)
        return e[:n, :n] @ x + e[:n, n]

    def level(xa, r, a, s):
        return effect(row @ prop(xa, r, s - a))

    x, r, now = np.zeros(n), np.zeros(n), min(0.0, times[0])
    auc, cmax = 0.0, -np.inf
    for tb in times:
        a, b = max(now, t0), min(tb, t1)
        if b > a:
            xa = prop(x, r, a - now)
            auc += scipy.integrate.quad(
                functools.partial(level, xa, r.copy(), a), a, b, epsabs=0.0, epsrel=1e-13
            )[0]
            cmax = max(cmax, *(level(xa, r, a, g) for g in np.linspace(a, b, steps + 1)))
        x, now = prop(x, r, tb - now), tb
        for t, kind, i, value in events:
            if t == tb:
                if kind == "bolus":
                    x[i] += value
                else:
                    r[i] += value
    return auc, cmax


def _row(case):
    row = np.zeros(case.matrix().shape[0])
    row[case.central - 1] = 1.0 / case.params[case.volume]
    return row


def _padded(doses):
    """The doses and empty infusions (0 mg over 0-1 h), `SLOTS` in all."""
    return [*doses, *[(0.0, 0.0, 1, 1.0)] * (SLOTS - len(doses))]


def _regimen(doses):
    """The `_padded` doses as a regimen: one layout, so one compilation per model."""
    parts = []
    for t, amount, cmt, duration in _padded(doses):
        if duration is None:
            parts.append(pkpd.bolus(amount, time=t, cmt=cmt))
        else:
            parts.append(pkpd.infusion(amount, duration=duration, time=t, cmt=cmt))
    return pkpd.concatenate(parts)


@functools.partial(jax.jit, static_argnums=0, static_argnames="output")
def _jit_exposure(model, params, regimen, t0, t1, output=0):
    return pkpd.interval_exposure(
        model, params, regimen, t0, t1, solver=SOLVER, steps=STEPS, output=output
    )


def _exposure(model, params, regimen, t0, t1, output=0):
    """`pkpd.interval_exposure` on `STEPS` sub-steps, compiled once per model and layout."""
    auc, cmax = _jit_exposure(model, params, regimen, t0, t1, output=output)
    return float(auc), float(cmax)


def _expm_solution(k, x, r, dt):
    n = k.shape[0]
    aug = np.zeros((n + 1, n + 1))
    aug[:n, :n], aug[:n, n] = k * dt, r * dt
    e = scipy.linalg.expm(aug)
    return e[:n, :n] @ x + e[:n, n]


# --- state propagation against scipy.linalg.expm -------------------------------------------


@pytest.mark.parametrize("case", LINEAR_MODELS, ids=LINEAR_MODEL_IDS)
def test_propagation_matches_scipy_expm(case):
    k = case.matrix()
    n = k.shape[0]
    x, r = np.linspace(1.0, 3.0, n) * 100.0, np.linspace(5.0, 1.0, n)
    propagate = jax.jit(lambda x, r, t1: case.model.propagate(case.params, x, r, 3.0, t1, SOLVER))
    for dt in (0.0, 1e-7, 0.05, 1.0, 12.0, 200.0):
        ref = _expm_solution(k, x, r, dt)
        got = propagate(jnp.asarray(x), jnp.asarray(r), 3.0 + dt)
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-13 * np.abs(ref).max())
    eager = case.model.propagate(case.params, jnp.asarray(x), jnp.asarray(r), 3.0, 15.0, SOLVER)
    np.testing.assert_allclose(eager, _expm_solution(k, x, r, 12.0), rtol=1e-12)


@pytest.mark.parametrize(
    "name, params",
    [
        # Almost no distribution (eigenvalue gap about 6e-3 /h, k10 + k12 = k21).
        ("TwoCompartment", {"CL": 1.0, "V1": 10.0, "Q": 0.01, "V2": 0.01 / 0.101}),
        # Two identical peripheral compartments (Q2/V2 = Q3/V3: an eigenvalue -Q2/V2).
        ("ThreeCompartment", {"CL": 6.0, "V1": 15.0, "Q2": 3.0, "V2": 30.0, "Q3": 3.0, "V3": 30.0}),
        # Fast, stiff exchange and slow elimination.
        ("ThreeCompartment",
         {"CL": 0.05, "V1": 5.0, "Q2": 50.0, "V2": 10.0, "Q3": 0.5, "V3": 400.0}),
    ],
)  # fmt: skip
def test_closed_form_propagation_in_hard_cases(name, params):
    model = getattr(pkpd, name)()
    k = np.asarray(model.matrix(params))
    n = k.shape[0]
    x, r = np.arange(1.0, n + 1.0) * 50.0, np.full(n, 2.0)
    for dt in (1e-4, 0.5, 24.0):
        got = model.propagate(params, jnp.asarray(x), jnp.asarray(r), 0.0, dt, SOLVER)
        ref = _expm_solution(k, x, r, dt)
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("name", ["OneCompartment", "TwoCompartment", "ThreeCompartment"])
def test_closed_form_transition_matches_the_augmented_expm(name):
    """`exposure_transition` in closed form against the (n + 2) augmented matrix
    exponential (`expm_exposure_transition`), and its second derivatives (forward over
    reverse, as calibration takes them) against finite differences of the gradient."""
    from pkpd._models._base import expm_exposure_transition

    case = CASES[name]
    names = list(case.params)
    n = case.matrix().shape[0]
    rate = jnp.linspace(3.0, 1.0, n)
    row = jnp.asarray(_row(case))
    closed = jax.jit(lambda dt: case.model.exposure_transition(case.params, rate, row, 0.5, dt))
    k = jnp.asarray(case.matrix())
    augmented = jax.jit(lambda dt: expm_exposure_transition(k, rate, row, 0.5, dt))
    for dt in (0.0, 1e-6, 0.3, 30.0):
        for a, b in zip(closed(dt), augmented(dt), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)

    def scalar(logp):
        params = {k: jnp.exp(v) for k, v in zip(names, logp, strict=True)}
        phi, u, w, v = case.model.exposure_transition(params, rate, row, 0.0, 2.5)
        return jnp.sum(phi) + jnp.sum(u) + jnp.sum(w) + v

    p = jnp.log(jnp.asarray([case.params[k] for k in names]))
    grad = jax.jit(jax.grad(scalar))
    h = np.asarray(jax.jit(jax.jacfwd(jax.grad(scalar)))(p))
    eps = 1e-5
    fd = np.stack([(grad(p.at[i].add(eps)) - grad(p.at[i].add(-eps))) / (2 * eps)
                   for i in range(len(names))])  # fmt: skip
    assert np.all(np.isfinite(h))
    np.testing.assert_allclose(h, fd, rtol=1e-6, atol=1e-8 * np.abs(h).max())


# --- exposure against closed forms ----------------------------------------------------------


def test_one_compartment_closed_forms():
    model, p = pkpd.OneCompartment(), {"CL": 5.0, "V": 50.0}
    k = p["CL"] / p["V"]
    # Infusion of duration T at rate R: Cmax = R/CL (1 - e^{-kT}) at its end (a segment end);
    # AUC(0, T) = R/CL (T - (1 - e^{-kT})/k); AUC(0, infinity) = D/CL.
    dose, tinf = 600.0, 2.0
    rate = dose / tinf
    regimen = _regimen([(0.0, dose, 1, tinf)])
    auc, cmax = _exposure(model, p, regimen, 0.0, tinf)
    assert cmax == pytest.approx(rate / p["CL"] * (1.0 - np.exp(-k * tinf)), rel=1e-12)
    assert auc == pytest.approx(rate / p["CL"] * (tinf - (1.0 - np.exp(-k * tinf)) / k), rel=1e-12)
    auc, _ = _exposure(model, p, regimen, 0.0, 600.0)
    assert auc == pytest.approx(dose / p["CL"], rel=1e-12)
    # Bolus: AUC(0, T) = D/CL (1 - e^{-kT}), Cmax = D/V at the dose.
    auc, cmax = _exposure(model, p, _regimen([(0.0, 500.0, 1, None)]), 0.0, 10.0)
    assert auc == pytest.approx(500.0 / p["CL"] * (1.0 - np.exp(-k * 10.0)), rel=1e-12)
    assert cmax == pytest.approx(500.0 / p["V"], rel=1e-13)


def test_two_compartment_bolus_auc_to_infinity():
    model, p = pkpd.TwoCompartment(), CASES["TwoCompartment"].params
    auc, cmax = _exposure(model, p, _regimen([(0.0, 1000.0, 1, None)]), 0.0, 3000.0)
    assert auc == pytest.approx(1000.0 / p["CL"], rel=1e-12)
    assert cmax == pytest.approx(1000.0 / p["V1"], rel=1e-13)


SS_CASES = [CASES[n] for n in ("TwoCompartment", "OneCompartmentOral")]


@pytest.mark.parametrize("case", SS_CASES, ids=[c.name for c in SS_CASES])
def test_auc_over_a_steady_state_interval_is_dose_over_clearance(case):
    """At steady state, AUC over one dosing interval = F D / CL (an IV infusion; an oral
    dose with a lag and F1), from a dose and across the end of an infusion or a lag."""
    tau, dose = 12.0, 400.0
    params = dict(case.params)
    if case.depot is not None:
        params |= {"ALAG1": 0.7, "F1": 0.8}
        given = functools.partial(pkpd.oral, dose)
    else:
        given = functools.partial(pkpd.infusion, dose, duration=1.5)
    regimen = pkpd.concatenate(
        [pkpd.steady_state(given(), ii=tau), pkpd.repeat(given(time=tau), ii=tau, addl=2)]
    )
    for t0 in (12.0, 24.3):
        auc, _ = _exposure(case.model, params, regimen, t0, t0 + tau)
        assert auc == pytest.approx(params.get("F1", 1.0) * dose / params["CL"], rel=1e-11)


# --- exposure against scipy expm + quad -----------------------------------------------------

#: Infusions spanning segments (one starting before the window and ending inside it, one
#: starting inside and ending after it, overlapping ones), boluses into the depot (the central
#: compartment of IV models) and a short infusion; cmt 0 is the dosing compartment, -1 the
#: central one.
DOSES = [(0.0, 500.0, -1, 3.0), (4.0, 400.0, 0, None), (10.0, 300.0, -1, 4.0),
         (12.0, 200.0, -1, 20.0), (16.0, 150.0, 0, None), (20.0, 100.0, -1, 0.5)]  # fmt: skip


@pytest.mark.parametrize("case", LINEAR_MODELS, ids=LINEAR_MODEL_IDS)
def test_exposure_matches_quad_of_the_expm_solution(case):
    """Models with a depot also with a lag time `ALAG1` (their oral doses arrive later)."""
    doses = [(t, a, case.oral_cmt if c == 0 else case.central, d) for t, a, c, d in DOSES]
    regimen = _regimen(doses)
    k, row = case.matrix(), _row(case)
    variants = [(case.params, doses)]
    if case.depot is not None:
        lag = 1.25
        arrived = [(t + (lag if c == case.depot else 0.0), a, c, d) for t, a, c, d in doses]
        variants.append((case.params | {"ALAG1": lag}, arrived))
    for params, arrivals in variants:
        for t0, t1 in ((1.0, 14.0), (9.0, 33.0), (0.0, 4.0), (5.0, 5.5)):
            auc, cmax = _exposure(case.model, params, regimen, t0, t1)
            ref_auc, ref_cmax = _reference(k, row, arrivals, t0, t1)
            assert auc == pytest.approx(ref_auc, rel=1e-9)
            assert cmax == pytest.approx(ref_cmax, rel=1e-9)


def test_cmax_is_on_the_grid_and_at_most_the_true_peak():
    case = CASES["TwoCompartmentOral"]
    doses = [(0.0, 500.0, 1, None)]
    t = np.linspace(0.0, 3.0, 3001)
    x = [_expm_solution(case.matrix(), np.array([500.0, 0.0, 0.0]), np.zeros(3), s) for s in t]
    peak = max(_row(case) @ xi for xi in x)
    _, cmax = _exposure(case.model, case.params, _regimen(doses), 0.0, 12.0)
    assert peak * (1 - 0.05) < cmax <= peak * (1 + 1e-12)  # grid of 1.5 h: a little low
    _, finer = _exposure(case.model, case.params, _regimen(doses), 0.0, 3.0)
    assert cmax < finer <= peak * (1 + 1e-12)  # a grid of (3 - 1)/8 h after 1 h
    assert finer == pytest.approx(peak, rel=1e-2)


@pytest.mark.parametrize("name", ["OneCompartmentOral", "TwoCompartmentOral"])
def test_absorption_rate_at_an_eigenvalue(name):
    """KA exactly equal to, and within 1e-8 of, an eigenvalue of the disposition: exact
    exposure (the matrix exponential handles the coincidence)."""
    case = CASES[name]
    eigen = float(-np.max(np.linalg.eigvals(case.matrix()[1:, 1:]).real))
    doses = [(0.0, 300.0, 1, None), (12.0, 300.0, 1, None)]
    for ka in (eigen, eigen + 1e-8, eigen - 1e-8):
        k = case.matrix()
        k[0, 0], k[1, 0] = -ka, ka
        auc, cmax = _exposure(case.model, case.params | {"KA": ka}, _regimen(doses), 6.0, 30.0)
        ref_auc, ref_cmax = _reference(k, _row(case), doses, 6.0, 30.0)
        assert auc == pytest.approx(ref_auc, rel=1e-9)
        assert cmax == pytest.approx(ref_cmax, rel=1e-9)


# --- PKPD: the concentration exact, the effect by Simpson ---------------------------------


def test_pkpd_concentration_is_exact_and_the_effect_keeps_simpson():
    case = CASES["TwoCompartment"]
    pk, p = case.model, case.params
    doses = [(0.0, 500.0, 1, 1.0), (12.0, 500.0, 1, 1.0), (24.0, 500.0, 1, 1.0)]
    regimen = _regimen(doses)
    ref_auc, ref_cmax = _exposure(pk, p, regimen, 12.0, 36.0)
    linked = pkpd.PKPD(pk, pkpd.EffectCompartment(pkpd.Emax()))
    assert linked.is_linear
    q = p | {"KE0": 0.7, "E0": 1.0, "EMAX": 2.0, "EC50": 5.0}
    auc, cmax = _exposure(linked, q, regimen, 12.0, 36.0)
    assert auc == pytest.approx(ref_auc, rel=1e-12)
    assert cmax == pytest.approx(ref_cmax, rel=1e-12)
    direct = pkpd.PKPD(pk, pkpd.Emax())
    q = p | {"E0": 1.0, "EMAX": 2.0, "EC50": 5.0}
    assert _exposure(direct, q, regimen, 12.0, 36.0) == pytest.approx(
        (ref_auc, ref_cmax), rel=1e-13
    )
    # The effect E = E0 + EMAX C / (EC50 + C) is not linear in the state: Simpson on the
    # sub-steps (an error of order h^4), and the same grid maximum.
    auc, cmax = _exposure(direct, q, regimen, 12.0, 36.0, output=1)
    ref_auc, ref_cmax = _reference(
        case.matrix(), _row(case), doses, 12.0, 36.0, effect=lambda c: 1.0 + 2.0 * c / (5.0 + c)
    )
    assert auc == pytest.approx(ref_auc, rel=1e-4)
    assert abs(auc / ref_auc - 1.0) > 1e-9  # Simpson, not exact
    assert cmax == pytest.approx(ref_cmax, rel=1e-12)


# --- derivatives, jit, vmap -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["TwoCompartment", "TwoCompartmentOral"])
def test_gradients_match_finite_differences(name):
    """The closed form (2-compartment IV) and the matrix exponential with KA at an
    eigenvalue of the disposition (2-compartment oral)."""
    case = CASES[name]
    params = dict(case.params)
    if case.depot is not None:
        params["KA"] = float(-np.max(np.linalg.eigvals(case.matrix()[1:, 1:]).real))
    names = list(params)
    doses = [(0.0, 500.0, case.central, 2.0), (12.0, 500.0, case.oral_cmt, None),
             (24.0, 500.0, case.central, 2.0)]  # fmt: skip
    regimen = _regimen(doses)

    def auc(logp):
        q = {k: jnp.exp(v) for k, v in zip(names, logp, strict=True)}
        return _jit_exposure(case.model, q, regimen, 20.0, 36.0)[0]

    x = jnp.log(jnp.asarray([params[k] for k in names]))
    g = np.asarray(jax.jit(jax.grad(auc))(x))
    eps = 1e-5
    fd = np.array([(auc(x.at[i].add(eps)) - auc(x.at[i].add(-eps))) / (2 * eps)
                   for i in range(len(names))])  # fmt: skip
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8 * np.abs(fd).max())


# Extended: vmapped exposure over many patients compiles for half a minute; the per-patient
# exposure checks stay in make test.
@pytest.mark.extended
def test_vmap_agrees_with_one_patient_at_a_time():
    case = CASES["ThreeCompartment"]
    regimen = _regimen([(0.0, 400.0, 1, 1.0), (8.0, 400.0, 1, 1.0), (16.0, 400.0, 1, 1.0)])
    scales = np.array([0.7, 1.0, 1.4])
    batch = {k: jnp.asarray(v * scales) for k, v in case.params.items()}

    def one(params):
        return pkpd.interval_exposure(
            case.model, params, regimen, 16.0, 24.0, solver=SOLVER, steps=STEPS
        )

    aucs, cmaxs = jax.jit(jax.vmap(one))(batch)
    for i, s in enumerate(scales):
        single = _exposure(case.model, {k: v * s for k, v in case.params.items()}, regimen,
                           16.0, 24.0)  # fmt: skip
        np.testing.assert_allclose([aucs[i], cmaxs[i]], single, rtol=1e-13)
    # Scaling every clearance and volume by s leaves the amounts' time course unchanged and
    # divides the concentrations by s: AUC and Cmax scale as 1/s.
    np.testing.assert_allclose(aucs * scales, aucs[1], rtol=1e-12)
    np.testing.assert_allclose(cmaxs * scales, cmaxs[1], rtol=1e-12)


@pytest.mark.parametrize("model", ["TwoCompartment", "ThreeCompartment"])
def test_closed_form_derivatives_stay_exact_on_short_segments(model):
    """The spectral form's projectors have derivatives of size 1/gap that cancel between
    modes; summed directly, a segment of 1e-6 h lost 4e-10 of its Jacobian (enough to stall
    a conditional-mode search). Against the matrix exponential, at 1e-12 relative."""
    import jax.scipy.linalg as jsl

    m = getattr(pkpd, model)()
    n = m.n_states
    values = [4.5, 58.0, 6.5, 38.0, 1.2, 80.0][: len(m.param_names)]
    x0 = jnp.asarray([800.0, 300.0, 100.0][:n])
    rate = jnp.zeros(n).at[0].set(1000.0 / 1.5)

    def closed(th, dt):
        p = dict(zip(m.param_names, jnp.exp(th), strict=True))
        return m.propagate(p, x0, rate, 0.0, dt, pkpd.ODESolver())

    def reference(th, dt):
        p = dict(zip(m.param_names, jnp.exp(th), strict=True))
        a = jnp.zeros((n + 1, n + 1)).at[:n, :n].set(m.matrix(p) * dt).at[:n, n].set(rate * dt)
        e = jsl.expm(a)
        return e[:n, :n] @ x0 + e[:n, n]

    th = jnp.log(jnp.asarray(values))
    for dt in (1e-9, 1e-6, 1e-3):
        got, want = jax.jacfwd(closed)(th, dt), jax.jacfwd(reference)(th, dt)
        assert float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want))) < 1e-12, dt
