"""`advance`: the engine's timeline applied over one window `[t0, t1)`, state in, state out.

`simulate` runs a whole regimen from the initial state. Adaptive dosing (a trial arm that
changes the dose from a measured value, a digital twin that is given one dose at a time)
needs the same engine one window at a time: the state and the running zero-order inputs at
`t0`, the regimen of the doses given so far, and the state at `t1`. `advance` builds the
timeline of the regimen exactly as `simulate` does (`F<n>`, `ALAG<n>`, `R<n>`, `D<n>`,
infusions, resets: `dose_quantities`, `event_entries`, `sort_entries`), applies the entries
that fall in `[t0, t1)` and propagates between them with the model's `propagate`. Entries
before `t0` are taken as already applied (they were, in an earlier window), entries at or
after `t1` are left for a later one, so a run of adjacent windows applies every entry once.

With `exposure_steps` it also integrates the output over the window, segment by segment
between consecutive entries (where the curve is smooth), and records the highest value on
`exposure_steps` equal sub-steps of each segment. For a linear model with a linear output
(`AbstractLinearModel`, or the concentration of a linear `PKPD`) the AUC is exact: the state
is augmented with the integral of the output, and one transition of the augmented system
over the sub-step `h = (tb - ta) / steps` (`exposure_transition`: a closed form or one
matrix exponential) is applied `steps` times, a matrix-vector product each, which also gives
the sub-step values for Cmax. Any other model integrates the output by the composite Simpson
rule on the sub-steps, each propagated by the model. This is the project's one model-AUC
implementation (`advance`, `interval_exposure`); `simulate_cohort(exposure=True)` instead
reports the linear trapezoid over the caller's output times, as an NCA of those samples
would.

References: Beal SL, Sheiner LB, Boeckmann AJ, Bauer RJ. NONMEM Users Guides (1989-2009),
Icon Development Solutions (event records); Van Loan CF (1978). *IEEE Trans Autom Control*
23:395-404 (integrals of the matrix exponential); Simpson's rule: Atkinson KE (1989). An
Introduction to Numerical Analysis, 2nd ed., Wiley, section 5.1.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _engine as E
from ._custom_types import Array, ArrayLike, Params
from ._models._base import (
    AbstractLinearModel,
    AbstractModel,
    FixedStep,
    ODESolver,
    expm_exposure_transition,
    linear_output,
)
from ._models._pd import PKPD
from ._regimen import Regimen
from ._simulate import concrete


class Advanced(NamedTuple):
    """The result of `advance`.

    - `state`: the state at `t1` (after every entry in `[t0, t1)`).
    - `rates`: the zero-order inputs running at `t1` (infusions still on), mg/h per state.
    - `auc`, `cmax`: the integral and the highest value of the output over `[t0, t1]`
      (`None` without `exposure_steps`).
    """

    state: Array
    rates: Array
    auc: Array | None
    cmax: Array | None


def simpson_weights(steps: int) -> np.ndarray:
    """The composite Simpson weights `1, 4, 2, ..., 4, 1` of `steps` (even, >= 2) sub-steps."""
    if steps < 2 or steps % 2:
        raise ValueError(f"simpson_weights: expected an even number of steps >= 2, got {steps}.")
    w = np.full(steps + 1, 2.0)
    w[1::2] = 4.0
    w[0] = w[-1] = 1.0
    return w


def even_steps(k: float) -> int:
    """The smallest even number of sub-steps >= `k` (at least 2), for `simpson_weights`."""
    return max(2, 2 * int(np.ceil(k / 2)))


def advance(
    model: AbstractModel,
    params: Params,
    state: ArrayLike,
    regimen: Regimen,
    t0: ArrayLike,
    t1: ArrayLike,
    *,
    solver: ODESolver,
    rates: ArrayLike | None = None,
    exposure_steps: int | None = None,
    output: int = 0,
    checks: bool = True,
    length: float | None = None,
    doses_at_start: bool = False,
) -> Advanced:
    r"""Advance `state` from `t0` to `t1` through the entries of `regimen` in `[t0, t1)`.

    One patient (`jax.vmap` it for a cohort); jittable, with the regimen's values traced.

    **Arguments:**

    - `model`, `params`, `solver`: as `simulate` (`params` scalars for one patient).
    - `state`: the state at `t0`.
    - `regimen`: the doses given so far (and any in the window); times are absolute (h),
      the same clock as `t0` and `t1`. Steady-state records (SS=1/2) may come before the
      window (take the state at `t0` from `state_before`, which applies them as `simulate`
      does); one inside the window is refused (`ValueError` when the times are known on the
      host, else a runtime error).
    - `t0`, `t1`: the window (h), `t0 <= t1`.
    - `rates`: the zero-order inputs running at `t0` (`Advanced.rates` of the previous
      window); default none.
    - `exposure_steps`: with an even number >= 2, also the AUC and the maximum of output
      `output` over the window. The maximum is taken on that many equal sub-steps between
      consecutive entries; the AUC is exact for a linear model with a linear output
      (`exact_exposure`), else by Simpson's rule on the same sub-steps.
    - `checks`: the engine's runtime checks of the doses (compartment in range, a modelled
      rate or duration > 0). They run as host callbacks inside compiled code, which is
      costly in a loop of windows: a caller that has checked its doses beforehand (a trial
      arm, with `twins.trials.dose_window`) passes `False`.
    - `length`, `doses_at_start`: for a window whose doses are all given at its start (a
      trial's dosing period): `length` is `t1 - t0` as a Python number and
      `doses_at_start=True` the caller's word that every dose of `regimen` that falls in the
      window is given at `t0` (checked with `checks`). When, besides, nothing moves or
      spreads a dose (no `ALAG<n>` parameter, no infusion or reset in the regimen) and the
      model is autonomous (`model.autonomous`: its vector field does not read the time),
      the doses are applied and the window is propagated as `[0, length]`: a fixed-step
      solver then takes a static number of steps, about 5x faster inside `jax.jit` than a
      count computed at run time. Otherwise the general path runs (same results).

    **Returns:** an `Advanced` (state and running inputs at `t1`, and the exposure).
    """
    if exposure_steps is not None:
        simpson_weights(exposure_steps)  # checks the count
    n = model.n_states
    dtype = jnp.result_type(float)
    x = jnp.asarray(state, dtype=dtype)
    r = jnp.zeros(n, dtype) if rates is None else jnp.asarray(rates, dtype=dtype)
    t0 = jnp.asarray(t0, dtype=dtype)
    t1 = jnp.asarray(t1, dtype=dtype)
    doses = E.dose_quantities(model, params, regimen, checks=checks)
    s, _ = E.sort_entries(E.event_entries(regimen, doses))
    inside = s.valid & (s.time >= t0) & (s.time < t1)
    if regimen.has_ss:
        x = _no_steady_state_inside(x, s, inside, t0, t1)
    s = s._replace(
        time=jnp.where(inside, s.time, t0),
        bolus=jnp.where(inside, s.bolus, 0.0),
        drate=jnp.where(inside, s.drate, 0.0),
        reset=s.reset & inside,
    )
    zero = jnp.zeros(n, dtype)
    steps = exposure_steps
    transition = exact_exposure(model, output) if steps is not None else None
    lin = linear_output(model, params, output, n) if transition is not None else None

    def level(x):
        return model.output(params, x)[output]

    def segment(x, r, ta, tb, local=False):
        """Propagate over [ta, tb] (the exposure on `steps` sub-steps). With `local`, `ta`
        and `tb` are static offsets and the model autonomous: the sub-steps are propagated
        from time 0, so a fixed-step solver takes a static number of steps."""
        if steps is None:
            x = model.propagate(params, x, r, ta, tb, solver)
            return x, jnp.zeros((), dtype), jnp.full((), -jnp.inf, dtype)
        h = (tb - ta) / steps
        if transition is not None:
            # Exact: (x, z) -> (phi x + u, z + w.x + v), z the integral of the output.
            assert lin is not None
            phi, u, w, v = transition(params, r, *lin, h)

            def exact_sub(carry, _):
                x, z = carry
                z = z + w @ x + v
                x = phi @ x + u
                return (x, z), level(x)

            y0 = level(x)
            (x, auc), ys = jax.lax.scan(exact_sub, (x, jnp.zeros((), dtype)), None, length=steps)
            cmax = jnp.where(tb > ta, jnp.maximum(y0, ys.max()), -jnp.inf)
            return x, auc, cmax

        def sub(x, j):
            if local:
                x = model.propagate(params, x, r, 0.0, h, solver)
            else:
                a = ta + h * j
                x = model.propagate(params, x, r, a, a + h, solver)
            return x, level(x)

        y0 = level(x)
        x, ys = jax.lax.scan(sub, x, jnp.arange(steps, dtype=dtype))
        w = jnp.asarray(simpson_weights(steps), dtype=dtype)
        auc = (h / 3.0) * (w[0] * y0 + w[1:] @ ys)
        # A segment of no length adds nothing (and the value before an entry at its time is
        # the end of the previous segment, already counted).
        cmax = jnp.where(tb > ta, jnp.maximum(y0, ys.max()), -jnp.inf)
        return x, auc, cmax

    def general(x, r):
        def body(carry, e):
            t, x, r, auc, cmax = carry
            te = jnp.maximum(e.time, t)  # entries outside the window sit at t: nothing moves
            x, a, c = segment(x, r, t, te)
            x, r = E.apply_entry(model, params, e, zero, zero, x, r)
            return (te, x, r, auc + a, jnp.maximum(cmax, c)), None

        init = (t0, x, r, jnp.zeros((), dtype), jnp.full((), -jnp.inf, dtype))
        (t, x, r, auc, cmax), _ = jax.lax.scan(body, init, s)
        x, a, c = segment(x, r, t, t1)
        return x, r, auc + a, jnp.maximum(cmax, c)

    def at_start(x, r):
        """Every entry of the window is at t0: apply them, then one propagation."""

        def body(carry, e):
            return E.apply_entry(model, params, e, zero, zero, *carry), None

        (x, r), _ = jax.lax.scan(body, (x, r), s)
        x, a, c = segment(x, r, 0.0, float(length), local=True)
        return x, r, a, c

    def at_start_no_inputs(x):
        """`at_start` for doses that are all bolus-like and no zero-order input running
        (no `rates` given, no infusion in the regimen): the rates are the constant zero,
        which the compiler folds into the propagation."""
        x = x + jnp.sum(jax.nn.one_hot(s.cmt, n, dtype=dtype) * s.bolus[:, None], axis=0)
        x, a, c = segment(x, zero, 0.0, float(length), local=True)
        return x, zero, a, c

    # The fast path, chosen when tracing (a branch chosen at run time, `lax.cond`, would cost
    # as much as it saves: XLA does not optimise loops inside a conditional as well): the
    # caller says every dose is given at t0, and nothing can move it (no lag parameter) or
    # spread it (no infusion, no reset).
    lags = [k for k in params if k.startswith("ALAG")]
    fast = (
        length is not None
        and doses_at_start
        and model.autonomous
        and not regimen.has_infusion
        and not regimen.has_reset
        and not lags
    )
    # One dose inside the window at a time known only at run time (a trial's dose taken
    # late or early, `twins.DoseTiming`): the window keeps its static length, and the dose
    # enters by superposition (`_one_dose`), without a propagation of run-time length.
    one_dose = (
        length is not None
        and not doses_at_start
        and rates is None
        and steps is None
        and model.autonomous
        and regimen.n_events == 1
        and not regimen.has_infusion
        and not regimen.has_reset
        and not regimen.has_ss
        and not lags
        and not any(k[:1] in "DR" and k[1:].isdigit() for k in params)
        and _one_dose_kind(model, solver) is not None
    )
    if one_dose:
        assert length is not None
        x = _one_dose(model, params, x, s, t0, float(length), solver)
        return Advanced(x, zero, None, None)
    if fast:
        if checks:
            x = eqx.error_if(
                x,
                jnp.any(doses.is_dose & (doses.t_arrival >= t0) & (doses.t_arrival != t0)
                        & (doses.t_arrival < t1)),
                "advance(doses_at_start=True): a dose of the window is not given at t0.",
            )  # fmt: skip
        if rates is None:  # no infusion (fast) and none running: no zero-order input
            x, r, auc, cmax = at_start_no_inputs(x)
        else:
            x, r, auc, cmax = at_start(x, r)
    else:
        x, r, auc, cmax = general(x, r)
    if steps is None:
        return Advanced(x, r, None, None)
    return Advanced(x, r, auc, cmax)


def _one_dose_kind(model: AbstractModel, solver: ODESolver) -> str | None:
    """Which `_one_dose` scheme applies to `model`: `"linear"` (exact propagation of any
    span: superposition of the free state and the dose), `"split"` (a `PKPD` with a linear
    PK model and PD states under `FixedStep`), or None (the general path)."""
    if isinstance(model, AbstractLinearModel) or (isinstance(model, PKPD) and model.is_linear):
        return "linear"
    if (
        isinstance(model, PKPD)
        and isinstance(model.pk, AbstractLinearModel)
        and model.pd.n_states > 0
        and isinstance(solver, FixedStep)
    ):
        return "split"
    return None


def _one_dose(model, params, x, s, t0, length: float, solver):
    r"""The state at `t0 + length` from `x` at `t0` with the one bolus-like entry of `s`
    (sorted, masked to the window: zero outside it) at its run-time time $t_0 + o$.

    - A linear model (`"linear"`): $x(L) = e^{KL}x + e^{K(L - o)}b$ (superposition; the
      first term a propagation of static length, the second of the dose vector $b$ alone):
      exact, as the general path is.
    - A `PKPD` with linear PK and PD states under `FixedStep` (`"split"`): the fixed steps
      of the window with no dose, $n = \lceil L / dt \rceil$ of $h = L/n$, as on the fast
      path; the PK state is propagated exactly on the half-step grid $t_k = k h/2$ with the
      dose entering by superposition: at the first grid point $t_j \ge o$ the state gains
      $e^{K(t_j - o)} b$, so every PK state on the grid is exact, and the PD states take
      RK4 steps driven by the exact concentration at $t$, $t + h/2$, $t + h$, as
      `FixedStep` does. Unlike the general path no step ends at the dose: in the one step
      that holds it the concentration has a kink (an oral dose) or a jump (a bolus into
      the central compartment), where RK4 loses its order (tests/test_advance_one_dose.py
      measures the error against diffrax). A dose into a PD state (not a PK compartment)
      enters at the first step end at or after it.

    The transitions over `h/2` do not depend on the dose, so with the same parameters in
    every window the compiler computes them once; only $e^{K\delta}b$ ($\delta$ the time
    from the dose to the next grid point) is computed per window: no propagation of
    run-time length and no loop with a run-time step count."""
    n = model.n_states
    dtype = x.dtype
    o = jnp.clip(s.time[0] - t0, 0.0, length)  # outside the window: bolus 0, time t0
    b = jax.nn.one_hot(s.cmt[0], n, dtype=dtype) * s.bolus[0]
    zero = jnp.zeros(n, dtype)
    if _one_dose_kind(model, solver) == "linear":
        free = model.propagate(params, x, zero, 0.0, length, solver)
        return free + model.propagate(params, b, zero, 0.0, length - o, solver)
    pk, pd = model.pk, model.pd
    m = pk.n_states
    steps = max(int(np.ceil(length / solver.dt)), 1)
    h = length / steps
    half = h / 2
    k = pk.matrix(params)
    # e^{K half 2^(i - R)}, i = 0..R, by squaring; with the same parameters in every window
    # they are computed once. The dose's e^{K delta} b, delta in [0, half): the binary
    # digits of delta / half select the powers, the remainder (below half / 2^R) a Taylor
    # polynomial: matrix-vector products only.
    powers = [_expm_times(k * (half / 2.0**_BITS), jnp.eye(m, dtype=dtype))]
    for _ in range(_BITS):
        powers.append(powers[-1] @ powers[-1])
    phi = powers[_BITS]
    j = jnp.ceil(o / half).astype(jnp.int32)  # the first half-step point at or after o
    delta = j.astype(dtype) * half - o
    unit = half / 2.0**_BITS
    count = jnp.clip(jnp.floor(delta / unit), 0, 2**_BITS - 1).astype(jnp.int32)
    v = _expm_times(k * (delta - count.astype(dtype) * unit), b[:m])
    for i in range(_BITS):
        v = jnp.where((count >> i) & 1, _matvec(powers[i], v), v)
    b_pd = b[m:]

    def conc(x_pk):
        return pk.output(params, x_pk)[0]

    def field(t, c, y):
        return pd.vector_field(t, c, y, params)

    def body(i, carry):
        xa, y, ca = carry
        t = i.astype(dtype) * h
        xm = phi @ xa + jnp.where(j == 2 * i + 1, 1.0, 0.0) * v
        xb = phi @ xm + jnp.where(j == 2 * i + 2, 1.0, 0.0) * v
        cm, cb = conc(xm), conc(xb)
        k1 = field(t, ca, y)
        k2 = field(t + half, cm, y + half * k1)
        k3 = field(t + half, cm, y + half * k2)
        k4 = field(t + h, cb, y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        y = y + jnp.where((j <= 2 * i + 2) & (j > 2 * i), 1.0, 0.0) * b_pd
        return xb, y, cb

    x_pk = x[:m] + jnp.where(j == 0, 1.0, 0.0) * v
    y = x[m:] + jnp.where(j == 0, 1.0, 0.0) * b_pd
    x_pk, y, _ = jax.lax.fori_loop(0, steps, body, (x_pk, y, conc(x_pk)))
    return jnp.concatenate([x_pk, y])


#: `_one_dose` splits the time from a dose to the next half-step point into this many
#: binary digits of half a step, and a remainder.
_BITS = 8


def _matvec(a, v):
    """`a @ v` for a small matrix, as elementwise products and a sum (which XLA fuses; a
    batched dot of tiny matrices under `jax.vmap` is slower on a CPU)."""
    return (a * v[None, :]).sum(-1)


def _expm_times(a, v, degree: int = 10):
    r"""$e^{A} v$ for a small matrix $A$ (a rate matrix times a time) and a vector (or
    matrix) $v$: $q = 2^{\lceil \log_2 \max(8\|A\|_1, 1) \rceil}$ steps of the Taylor
    polynomial of degree `degree` in $A/q$ (norm <= 1/8: truncation error below
    $8^{-11}/11! \approx 3 \times 10^{-18}$ per step at degree 10), matrix products
    only. For the spans of `_one_dose` (half a solver step over $2^8$) $q$ is 1 unless a
    rate constant exceeds about $16/dt$ (1/h); it is cheaper there than
    `jax.scipy.linalg.expm` (Pade approximants of every order, a linear solve and the
    squarings).

    References: Moler C, Van Loan C (2003). Nineteen dubious ways to compute the
    exponential of a matrix, twenty-five years later. *SIAM Rev* 45:3-49 (methods 1 and 3:
    Taylor series, scaling)."""
    norm = jnp.max(jnp.sum(jnp.abs(a), axis=0))
    e = jnp.ceil(jnp.log2(jnp.clip(8.0 * norm, 1.0, 2.0**20))).astype(jnp.int32)
    q = jnp.left_shift(jnp.int32(1), e)  # a power of two, exactly
    scaled = a / q.astype(a.dtype)

    product = _matvec if v.ndim == 1 else jnp.matmul

    def taylor(_, w):
        term, total = w, w
        for i in range(1, degree + 1):
            term = product(scaled, term) / i
            total = total + term
        return total

    return jax.lax.fori_loop(0, q, taylor, v)


def exact_exposure(model: AbstractModel, output: int):
    """The exact exposure map of `model`'s output `output` (`exposure_transition`, with the
    signature of `AbstractLinearModel.exposure_transition`), or `None` where the AUC is
    integrated by Simpson's rule.

    Exact for an `AbstractLinearModel` (whose outputs are linear in the state) and for the
    concentration (output 0) of a linear `PKPD` whose PK model is an `AbstractLinearModel`
    (with a direct effect: the PK model's own map; with an effect compartment: the matrix
    exponential of the joint system). The effect of a `PKPD` (a non-linear function of the
    concentration) and every ODE model keep Simpson's rule.
    """
    if isinstance(model, AbstractLinearModel):
        return model.exposure_transition
    if (
        isinstance(model, PKPD)
        and model.is_linear
        and output == 0
        and isinstance(model.pk, AbstractLinearModel)
    ):
        if model.pd.n_states == 0:
            return model.pk.exposure_transition

        def joint(params, rate, row, offset, dt):
            return expm_exposure_transition(model.matrix(params), rate, row, offset, dt)

        return joint
    return None


def _no_steady_state_inside(x, s, inside, t0, t1):
    """`x`, after refusing a steady-state record (SS=1/2) among the window's entries."""
    ss_inside = inside & (s.ss_slot >= 0)
    message = (
        "advance: a steady-state record (SS=1/2) falls in the window [t0, t1); window by "
        "window, steady state is only taken from before the window (pkpd.state_before)."
    )
    known = concrete(ss_inside)
    if known is not None:
        if np.any(known):
            times = np.asarray(concrete(s.time))[np.asarray(known)]
            raise ValueError(f"{message} Record time(s): {times.tolist()} h.")
        return x
    return eqx.error_if(x, jnp.any(ss_inside), message)


def state_before(
    model: AbstractModel,
    params: Params,
    regimen: Regimen,
    t: ArrayLike,
    *,
    solver: ODESolver,
    checks: bool = True,
) -> tuple[Array, Array]:
    """The state and the running zero-order inputs just before time `t`: every entry of
    `regimen` before `t` applied, none at `t` or after.

    The engine's timeline as `simulate` runs it (steady-state records SS=1/2 with their
    implied earlier doses and overlapping infusions, resets, lags, infusions), so that
    `advance` can go on from `t` (`advance(..., state, regimen, t, t1, rates=rates)`) with
    the entries at `t` still to apply. One patient; jittable.

    `checks`: the engine's run-time checks (every parameter in its domain, the doses, a
    steady-state dose's lag shorter than II), host callbacks inside compiled code; pass
    `False` after `pkpd.check_inputs` has checked the same on the host (the compiled
    program then holds no callback, and JAX's persistent compilation cache keeps it).

    **Returns:** `(state, rates)`: amounts (mg, and PD states) and mg/h per state.
    """
    dtype = jnp.result_type(float)
    t = jnp.asarray(t, dtype=dtype)
    doses = E.dose_quantities(model, params, regimen, checks=checks)
    s, _ = E.sort_entries(E.event_entries(regimen, doses))
    m = s.time.shape[0]
    x_init = jnp.asarray(model.initial_state(params), dtype=dtype)
    zero = jnp.zeros(model.n_states, dtype)
    if m == 0:
        return x_init, zero
    ss_x, ss_r = E.ss_tables(model, solver, params, regimen, doses, s, checks=checks)
    xs, rs = E.run(model, solver, E.broadcast_params(params, m), s, ss_x, ss_r, x_init)
    j = jnp.sum(s.valid & (s.time < t)) - 1  # the last entry before t (sorted by time)
    none = j < 0
    k = jnp.clip(j, 0)
    x0 = jnp.where(none, x_init, xs[k])
    r0 = jnp.where(none, zero, rs[k])
    ta = jnp.where(none, t, s.time[k])
    return model.propagate(params, x0, r0, ta, t, solver), r0


def interval_exposure(
    model: AbstractModel,
    params: Params,
    regimen: Regimen,
    t0: float,
    t1: float,
    *,
    solver: ODESolver,
    steps: int = 24,
    output: int = 0,
    checks: bool = True,
) -> tuple[Array, Array]:
    """AUC and Cmax of one patient's output over `[t0, t1]` under `regimen`.

    The state and the running inputs just before `t0` come from `state_before` (the whole
    timeline, steady-state records included), then `advance` covers `[t0, t1]` with the
    exposure, segment by segment between consecutive dosing entries (so that kinks at a lag
    time or at the end of an infusion fall on segment ends). For a linear model (linear
    output) the AUC is exact and Cmax is the highest value on `steps` equal sub-steps of
    each segment (exact when the peak is at a segment end, as at the end of an infusion);
    for other models both are taken on those sub-steps, the AUC by Simpson's rule.
    Jittable; `jax.vmap` it over parameters for many patients or posterior draws.
    `checks` as `state_before` (`False` after `pkpd.check_inputs`).

    **Returns:** `(auc, cmax)`, output units x h and output units.
    """
    state, rates = state_before(model, params, regimen, t0, solver=solver, checks=checks)
    out = advance(
        model,
        params,
        state,
        regimen,
        t0,
        t1,
        solver=solver,
        rates=rates,
        exposure_steps=even_steps(steps),
        output=output,
        checks=checks,
    )
    return out.auc, out.cmax  # type: ignore[return-value]


def running_rates(model: AbstractModel, params: Params, regimen: Regimen, t: ArrayLike) -> Array:
    """The zero-order inputs running just before time `t` (infusions started before `t` and
    not ended or reset before it), mg/h per state: the `rates` that go with the state at `t`
    when the entries at `t` itself are still to be applied, as `advance` from `t` does."""
    n = model.n_states
    dtype = jnp.result_type(float)
    doses = E.dose_quantities(model, params, regimen)
    s, _ = E.sort_entries(E.event_entries(regimen, doses))
    before = s.valid & (s.time < t)
    # The last reset before t clears every earlier rate change.
    epoch = jnp.cumsum((s.reset & before).astype(jnp.int32))
    last = epoch[-1] if epoch.shape[0] else 0
    live = before & (epoch == last)
    hot = jax.nn.one_hot(s.cmt, n, dtype=dtype)
    return jnp.sum(jnp.where(live[:, None], hot * s.drate[:, None], 0.0), axis=0)
