"""Linear compartment models against independent references.

(a) the analytic engine against a closed form written here: sums of exponentials from the
    eigen-decomposition of K, superposed over every dose, with the infinite series of a
    steady-state dose summed as a geometric series;
(b) the analytic engine against the ODE path `pkpd.AsODE(model)` (diffrax);
(c) the ODE path against `scipy.integrate.solve_ivp` (DOP853), integrated piecewise between
    events, with steady states reached by integrating a long dosing history;
(d) the `KA == CL/V` limit of `OneCompartmentOral`.

Each check runs every dosing scenario of one model in a single `jax.vmap` over regimens padded
with `pkpd.stack`, so that there is one compilation per model and path.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
from helpers import LINEAR_MODEL_IDS, LINEAR_MODELS, ModelCase, max_rel_err

import pkpd

TIMES = np.arange(0.0, 48.0 + 1e-9, 0.5)
ODE_SOLVER = pkpd.ODESolver(rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- scenarios


@dataclasses.dataclass(frozen=True)
class Rec:
    """One NONMEM dose or reset record (the test's own, independent description)."""

    time: float
    amt: float = 0.0
    cmt: int = 1
    rate: float = 0.0  # > 0: infusion given by its rate (mg/h)
    dur: float = 0.0  # > 0: infusion given by its duration (h)
    lag: float = 0.0
    f: float = 1.0
    ii: float = 0.0
    addl: int = 0
    ss: int = 0
    evid: int = 1


def scenarios(case: ModelCase) -> dict[str, list[Rec]]:
    """Dosing scenarios for one model. `o` is the extravascular compartment, `c` the central."""
    c, o = case.central, case.oral_cmt
    return {
        "bolus": [Rec(1.0, 100.0, cmt=o), Rec(6.0, 40.0, cmt=c)],
        "infusion_rate": [Rec(2.0, 100.0, cmt=c, rate=40.0), Rec(10.0, 30.0, cmt=o, rate=7.5)],
        "infusion_duration": [Rec(0.5, 100.0, cmt=c, dur=3.5, f=0.7)],
        "lag_f": [
            Rec(0.0, 100.0, cmt=o, lag=0.75, f=0.6),
            Rec(3.0, 50.0, cmt=c, lag=1.25, f=0.9),
            Rec(12.0, 60.0, cmt=c, rate=15.0, lag=2.2, f=0.5),
        ],
        "addl": [
            Rec(0.0, 100.0, cmt=o, ii=8.0, addl=4, lag=0.5),
            Rec(1.0, 50.0, cmt=c, rate=25.0, ii=8.0, addl=3),
        ],
        "ss1_bolus": [
            Rec(0.0, 30.0, cmt=c),
            Rec(4.0, 100.0, cmt=o, ii=12.0, ss=1, addl=2, lag=1.0, f=0.8),
        ],
        "ss1_infusion": [Rec(4.0, 100.0, cmt=c, rate=25.0, ii=12.0, ss=1, addl=1)],
        "ss1_infusion_longer_than_ii": [
            Rec(4.0, 100.0, cmt=c, rate=4.0, ii=12.0, ss=1, addl=1, lag=0.5)
        ],
        "ss1_duration": [Rec(4.0, 100.0, cmt=c, dur=15.0, f=0.9, ii=12.0, ss=1)],
        "ss2": [
            Rec(0.0, 100.0, cmt=o),
            Rec(6.0, 50.0, cmt=o, ii=12.0, ss=2),
            Rec(18.0, 50.0, cmt=c, rate=10.0, ii=12.0, ss=2),
        ],
        "ss_constant_infusion": [Rec(5.0, 0.0, cmt=c, rate=10.0, ss=1), Rec(20.0, 40.0, cmt=o)],
        "evid3": [
            Rec(0.0, 100.0, cmt=o),
            Rec(2.0, 80.0, cmt=c, rate=20.0),
            Rec(5.0, evid=3),
            Rec(8.0, 60.0, cmt=o),
        ],
        "evid4": [
            Rec(0.0, 100.0, cmt=c, rate=10.0),
            Rec(6.0, 70.0, cmt=o, evid=4, ii=12.0, addl=1),
        ],
    }


def has_ss(recs: list[Rec]) -> bool:
    return any(r.ss for r in recs)


def to_regimen(recs: list[Rec]) -> pkpd.Regimen:
    """The regimen of the records, built with the public constructors."""
    parts = []
    for r in recs:
        if r.evid == 3:
            parts.append(pkpd.reset(time=r.time))
            continue
        kw = dict(time=r.time, cmt=r.cmt, lag=r.lag, bioav=r.f)
        if r.rate > 0:
            dose = pkpd.infusion(r.amt, rate=r.rate, **kw)
        elif r.dur > 0:
            dose = pkpd.infusion(r.amt, duration=r.dur, **kw)
        else:
            dose = pkpd.bolus(r.amt, **kw)
        if r.ss:
            dose = pkpd.steady_state(dose, ii=r.ii, ss=r.ss)
        if r.evid == 4:
            dose = pkpd.reset(time=r.time) + dose
        if r.addl:
            dose = pkpd.repeat(dose, ii=r.ii, addl=r.addl)
        parts.append(dose)
    return pkpd.concatenate(parts)


def _dose(r: Rec) -> tuple[float, float, float]:
    """(bioavailable amount, rate, duration) with NONMEM's rules for F and infusions."""
    amount = r.f * r.amt
    if r.rate > 0:
        return amount, r.rate, amount / r.rate
    if r.dur > 0:
        return amount, amount / r.dur, r.dur
    return amount, 0.0, 0.0


# ----------------------------------------------------------------------------- (a) closed form


@dataclasses.dataclass(frozen=True)
class Pulse:
    """A bolus (`rate == 0`) or an infusion from `start` to `end`, counted from `rec` on.

    With `period`, the pulse stands for itself and its copies shifted by `-k * period`
    (k = 1, 2, ...), all of which have ended by `rec`.
    """

    rec: float
    start: float
    end: float
    amount: float
    rate: float
    cmt: int
    period: float | None = None


def pulses(recs: list[Rec]) -> tuple[list[Pulse], list[float]]:
    """Every input of the regimen as pulses, and the reset times (EVID 3/4 and SS=1)."""
    out: list[Pulse] = []
    resets: list[float] = []
    for r in recs:
        if r.evid in (3, 4) or r.ss == 1:
            resets.append(r.time)
        if r.evid == 3:
            continue
        c = r.cmt - 1
        amount, rate, dur = _dose(r)
        bolus = amount if rate == 0 else 0.0
        for k in range(r.addl + 1):
            t = r.time + k * r.ii
            a = t + r.lag
            if k == 0 and r.ss and r.ii == 0:
                # Constant infusion at steady state: it ran forever and stops at the record.
                out.append(Pulse(t, -np.inf, t, 0.0, r.rate, c))
            elif k == 0 and r.ss:
                # The earlier doses at a - j*ii, j >= 1. From j = k0 on they ended by t.
                k0 = max(1, math.ceil((r.lag + dur) / r.ii))
                for j in range(1, k0 + 1):
                    s = a - j * r.ii
                    out.append(Pulse(t, s, s + dur, bolus, rate, c, r.ii if j == k0 else None))
            if amount > 0:
                out.append(Pulse(t, a, a + dur, bolus, rate, c))
    return out, resets


def closed_form_states(k_mat: np.ndarray, recs: list[Rec], times: np.ndarray) -> np.ndarray:
    """Amounts at `times` (post-event at equal times) by superposition of exponentials."""
    lam, vec = np.linalg.eig(k_mat)
    assert np.all(np.abs(lam.imag) == 0) and np.all(lam.real < 0)
    lam, vec = lam.real, vec.real
    inv = np.linalg.inv(vec)
    plist, resets = pulses(recs)
    x = np.zeros((len(times), k_mat.shape[0]))
    for i, t in enumerate(times):
        for p in plist:
            if t < p.rec or t < p.start or any(p.rec < r <= t for r in resets):
                continue
            if p.rate == 0:
                w = p.amount * np.exp(lam * (t - p.start))
            else:
                u = min(t, p.end)
                w = p.rate * (np.exp(lam * (t - p.start)) - np.exp(lam * (t - u))) / lam
            if p.period is not None:
                w = w / (1.0 - np.exp(lam * p.period))
            x[i] += vec @ (w * inv[:, p.cmt])
    return x


# ----------------------------------------------------------------------------- (c) solve_ivp


def _advance(k_mat, x, t0, t1, active):
    """Integrate dx/dt = K x + rates from t0 to t1, splitting at infusion ends."""
    while t0 < t1:
        nxt = min([e for (_, _, e) in active if t0 < e < t1] + [t1])
        b = np.zeros(k_mat.shape[0])
        for c, rate, _ in active:
            b[c] += rate
        sol = scipy.integrate.solve_ivp(
            lambda _, y, b=b: k_mat @ y + b,
            (t0, nxt),
            x,
            method="DOP853",
            rtol=1e-10,
            atol=1e-12,
        )
        assert sol.success, sol.message
        x = sol.y[:, -1]
        active = [a for a in active if a[2] > nxt]
        t0 = nxt
    return x, active


def _run(k_mat, actions, out_times, t0, x, active):
    """Apply time-sorted actions; states at `out_times` (after the actions at equal times)."""
    stops = sorted({a[0] for a in actions} | set(out_times))
    outs = {}
    t = t0
    queue = list(actions)
    for s in stops:
        x, active = _advance(k_mat, x, t, s, active)
        t = s
        while queue and queue[0][0] == s:
            _, kind, data = queue.pop(0)
            if kind == "reset":
                x, active = np.zeros_like(x), []
            elif kind == "bolus":
                x = x.copy()
                x[data[0]] += data[1]
            elif kind == "start":
                active = [*active, data]
            else:  # steady state: (ss, state, running infusions)
                ss, x_ss, act_ss = data
                x, active = (x_ss, act_ss) if ss == 1 else (x + x_ss, active + act_ss)
        if s in out_times:
            outs[s] = x
    return np.array([outs[s] for s in out_times]), (x, active)


def _steady_state(k_mat, r: Rec, n_hist: int):
    """State and running infusions at an SS record after `n_hist` earlier doses (ODE)."""
    c = r.cmt - 1
    amount, rate, dur = _dose(r)
    if r.ii == 0:
        b = np.zeros(k_mat.shape[0])
        b[c] = r.rate
        return np.linalg.solve(k_mat, -b), []
    starts = [r.time + r.lag - j * r.ii for j in range(n_hist, 0, -1)]
    actions = [
        (s, "bolus", (c, amount)) if rate == 0 else (s, "start", (c, rate, s + dur)) for s in starts
    ]
    _, (x, active) = _run(k_mat, actions, [r.time], starts[0], np.zeros(k_mat.shape[0]), [])
    return x, active


def solve_ivp_states(k_mat: np.ndarray, recs: list[Rec], times: np.ndarray) -> np.ndarray:
    """Amounts at `times`, integrated piecewise with scipy's DOP853."""
    slowest = float(np.min(np.abs(np.linalg.eigvals(k_mat).real)))
    actions = []
    for r in recs:
        if r.evid in (3, 4):
            actions.append((r.time, "reset", None))
        if r.evid == 3:
            continue
        c = r.cmt - 1
        amount, rate, dur = _dose(r)
        for k in range(r.addl + 1):
            t = r.time + k * r.ii
            a = t + r.lag
            if k == 0 and r.ss:
                n_hist = math.ceil(36.0 / (slowest * r.ii)) if r.ii > 0 else 0
                x_ss, act = _steady_state(k_mat, r, n_hist)
                actions.append((t, "ss", (r.ss, x_ss, act)))
            if amount > 0:
                if rate == 0:
                    actions.append((a, "bolus", (c, amount)))
                else:
                    actions.append((a, "start", (c, rate, a + dur)))
    actions.sort(key=lambda e: e[0])  # stable: record order at equal times
    out, _ = _run(
        k_mat, actions, list(times), min(times[0], actions[0][0]), np.zeros(k_mat.shape[0]), []
    )
    return out


# ----------------------------------------------------------------------------- pkpd runs


@eqx.filter_jit
def _batch(model, params, regimens, times, solver):
    return jax.vmap(lambda reg: pkpd.simulate(model, params, reg, times, solver=solver))(regimens)


def _select(case: ModelCase, steady: bool | None) -> dict[str, list[Rec]]:
    return {k: v for k, v in scenarios(case).items() if steady is None or has_ss(v) == steady}


def _concentration(case: ModelCase, states: np.ndarray) -> np.ndarray:
    return states[..., case.central - 1] / case.params[case.volume]


def analytic(case: ModelCase) -> dict[str, np.ndarray]:
    """Concentrations of every scenario through the analytic engine (one vmapped call)."""
    scen = scenarios(case)
    regs = pkpd.stack([to_regimen(v) for v in scen.values()])
    conc = np.asarray(_batch(case.model, case.params, regs, TIMES, pkpd.ODESolver()))
    return dict(zip(scen, conc, strict=True))


def numeric(case: ModelCase, steady: bool) -> dict[str, np.ndarray]:
    """Concentrations through the ODE path (`AsODE`, tight tolerances)."""
    scen = _select(case, steady)
    regs = pkpd.stack([to_regimen(v) for v in scen.values()])
    conc = _batch(pkpd.AsODE(case.model), case.params, regs, TIMES, ODE_SOLVER)
    return dict(zip(scen, np.asarray(conc), strict=True))


def _report(errors: dict[str, float], tol: float) -> str:
    return "; ".join(f"{k}: {v:.2e}" for k, v in errors.items() if not v <= tol)


# ----------------------------------------------------------------------------- tests


def test_reference_matrix_matches_model():
    """The test's own K agrees with the model's, so (a) and (c) model the same system."""
    for case in LINEAR_MODELS:
        np.testing.assert_allclose(
            np.asarray(case.model.matrix(case.params)), case.matrix(), rtol=1e-14, atol=0
        )


def test_closed_form_reference_is_sound():
    """The test's closed form against brute force with matrix exponentials (scipy.linalg.expm).

    A steady-state infusion longer than the interval, summed over 600 earlier doses one by
    one, so that an error in the reference itself cannot hide or fake an engine bug.
    """
    case = LINEAR_MODELS[3]
    k_mat = case.matrix()
    recs = [Rec(4.0, 100.0, cmt=2, rate=4.0, ii=12.0, ss=1, lag=0.5)]
    times = np.array([4.0, 9.3, 20.0, 31.7])
    ref = closed_form_states(k_mat, recs, times)
    _, rate, dur = _dose(recs[0])

    def infused(lo, hi):
        """Amounts at `hi` from infusing `rate` into cmt 2 over [lo, hi], from zero."""
        aug = np.zeros((4, 4))
        aug[:3, :3] = k_mat * (hi - lo)
        aug[1, 3] = rate * (hi - lo)
        return scipy.linalg.expm(aug)[:3, 3]

    full = infused(0.0, dur)
    step = scipy.linalg.expm(k_mat * 12.0)
    brute = np.zeros_like(ref)
    for i, t in enumerate(times):
        for j in range(0, 601):
            s = 4.5 - j * 12.0
            if s >= t:
                continue
            if s + dur > t:  # still running at t
                brute[i] += infused(s, t)
                continue
            # Every earlier dose has ended too: add them one by one, 12 h apart.
            y = scipy.linalg.expm(k_mat * (t - s - dur)) @ full
            for _ in range(j, 601):
                brute[i] += y
                y = step @ y
            break
    np.testing.assert_allclose(ref, brute, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("case", LINEAR_MODELS, ids=LINEAR_MODEL_IDS)
def test_against_references(case: ModelCase):
    """(a) analytic engine vs closed form, every scenario: rtol 1e-9 (atol 1e-14 of the peak);
    (b) analytic vs ODE path, rtol 1e-6, and (c) ODE path vs solve_ivp, rtol 1e-8 (atol
    1e-12 of the peak), for bolus, infusion by rate and by duration, lag and F, ADDL/II, EVID
    3 and 4 (steady states: the next test).

    One test per model, so that each path compiles once; every failing check is reported.
    """
    conc = analytic(case)
    ode = numeric(case, steady=False)
    k_mat = case.matrix()
    err_a, err_b, err_c = {}, {}, {}
    for name, recs in scenarios(case).items():
        ref = _concentration(case, closed_form_states(k_mat, recs, TIMES))
        peak = np.max(np.abs(ref))
        err_a[name] = max_rel_err(conc[name], ref, floor=1e-5 * peak)
        if name in ode:
            err_b[name] = max_rel_err(conc[name], ode[name], floor=1e-6 * peak)
            ivp = _concentration(case, solve_ivp_states(k_mat, recs, TIMES))
            err_c[name] = max_rel_err(ode[name], ivp, floor=1e-4 * peak)
    failures = [
        f"({label}) {what}: {_report(err, tol)}"
        for label, what, err, tol in (
            ("a", "analytic vs closed form", err_a, 1e-9),
            ("b", "analytic vs ODE path", err_b, 1e-6),
            ("c", "ODE path vs solve_ivp", err_c, 1e-8),
        )
        if max(err.values()) > tol
    ]
    assert len(err_b) == len(err_c) >= 7 and not failures, "\n".join(failures)


# The ODE steady state (Newton on the one-interval map, through diffrax) costs about 15 s of
# compilation per model, so the ODE path's steady states are checked on one model, with a
# depot and a central compartment (the code path does not depend on the model). The analytic
# steady states of all six models are checked against the closed form above.
@pytest.mark.extended
@pytest.mark.parametrize("case", [LINEAR_MODELS[1]], ids=[LINEAR_MODEL_IDS[1]])
def test_ode_path_steady_state(case: ModelCase):
    """(b) and (c) for SS=1 bolus and infusion (also longer than II), SS=2, constant SS.

    (b) against the closed form (rtol 1e-6), which stands in for the analytic engine here.
    """
    ode = numeric(case, steady=True)
    k_mat = case.matrix()
    err_b, err_c = {}, {}
    for name, recs in _select(case, steady=True).items():
        ref = _concentration(case, closed_form_states(k_mat, recs, TIMES))
        peak = np.max(np.abs(ref))
        err_b[name] = max_rel_err(ode[name], ref, floor=1e-6 * peak)
        ivp = _concentration(case, solve_ivp_states(k_mat, recs, TIMES))
        err_c[name] = max_rel_err(ode[name], ivp, floor=1e-4 * peak)
    assert len(err_b) >= 6
    assert max(err_b.values()) <= 1e-6, "ODE vs closed form: " + _report(err_b, 1e-6)
    assert max(err_c.values()) <= 1e-8, "ODE vs solve_ivp: " + _report(err_c, 1e-8)


def test_solve_ivp_reference_steady_state():
    """The solve_ivp reference's steady states (long history) agree with the closed form.

    Checks the reference itself on a model the ODE steady-state test above does not cover.
    """
    case = LINEAR_MODELS[2]
    k_mat = case.matrix()
    times = np.array([0.0, 4.0, 10.0, 17.5, 30.0, 48.0])
    for name, recs in _select(case, steady=True).items():
        ode = solve_ivp_states(k_mat, recs, times)
        ref = closed_form_states(k_mat, recs, times)
        assert max_rel_err(ode, ref, floor=1e-4 * np.max(ref)) <= 1e-8, name


# ----------------------------------------------------------------------------- (d) ka == k


def _bateman(ka: float, k: float, v: float, dose: float, times: np.ndarray) -> np.ndarray:
    """Concentration after an oral bolus at t = 0 (Bateman 1910), for any ka and k.

    Written as `D ka t e^{-k t} (1 - e^{-z}) / z / V` with `z = (ka - k) t` and `expm1`, which
    is accurate to rounding also for `ka` near `k` (scipy.linalg.expm is not: about 1e-8
    relative error at ka = k (1 - 1e-9), t = 72 h).
    """
    z = (ka - k) * times
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = np.where(z == 0.0, 1.0, -np.expm1(-z) / z)
    return dose * ka * times * np.exp(-k * times) * phi / v


def test_one_compartment_oral_ka_equals_k():
    """(d) finite and continuous at KA == CL/V, equal to the limit D k t e^{-kt} / V."""
    model = pkpd.OneCompartmentOral()
    cl, v, dose = 5.0, 50.0, 100.0
    k = cl / v
    times = np.array([0.0, 0.01, 0.5, 1.0, 3.0, 7.0, 10.0, 24.0, 72.0])
    reg = pkpd.oral(dose)
    sim = eqx.filter_jit(lambda ka: pkpd.simulate(model, {"KA": ka, "CL": cl, "V": v}, reg, times))

    at = np.asarray(sim(jnp.asarray(k)))
    limit = dose * k * times * np.exp(-k * times) / v
    assert np.all(np.isfinite(at))
    np.testing.assert_allclose(at, limit, rtol=1e-12, atol=1e-15)

    # Around the limit: relative offsets on both sides of the series switch (|ka-k| t = 1e-3)
    # and far from it.
    for rel in (-1e-1, -1e-3, -1e-5, -1e-9, 1e-12, 1e-9, 1e-5, 1e-4, 1e-3, 1e-1):
        ka = k * (1.0 + rel)
        got = np.asarray(sim(jnp.asarray(ka)))
        ref = _bateman(ka, k, v, dose, times)
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-15, err_msg=f"ka=k*(1{rel:+})")

    # The gradient in KA is finite at the limit and continuous across it.
    grad = jax.grad(lambda ka: jnp.sum(sim(ka)))
    g0 = float(grad(jnp.asarray(k)))
    g_lo = float(grad(jnp.asarray(k * (1 - 1e-7))))
    g_hi = float(grad(jnp.asarray(k * (1 + 1e-7))))
    assert np.isfinite(g0)
    assert abs(g_lo - g0) <= 1e-5 * abs(g0) and abs(g_hi - g0) <= 1e-5 * abs(g0)
    # d/dka of sum_t C(t) by central differences of the expm reference
    h = 1e-4 * k
    fd = (
        np.sum(_bateman(k + h, k, v, dose, times)) - np.sum(_bateman(k - h, k, v, dose, times))
    ) / (2 * h)
    assert abs(g0 - fd) <= 1e-6 * abs(fd)
