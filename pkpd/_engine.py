"""The event engine: NONMEM dosing records -> a sorted timeline -> states.

One patient at a time (cohorts come from `jax.vmap`). Every dose or reset event of a
`Regimen` becomes up to `3 + ss_intervals` timeline entries:

- A, at the record time: reset (EVID 3/4, SS=1) and the steady state (SS=1/2);
- B, at the record time + lag: the bolus, or the start of the infusion;
- C, at the end of the infusion: its rate is removed (unless a reset came in between);
- D_k, for a steady-state infusion longer than the interval: the ends of the earlier
  doses' infusions still running at the record time.

Entries are sorted by (time, order, kind) and applied in a `lax.scan`; between entries the
model's `propagate` advances the state (closed form, matrix exponential or diffrax).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx

from ._custom_types import Array, Params
from ._models._base import AbstractModel, ODESolver
from ._regimen import MODELLED_DURATION, MODELLED_RATE, Regimen

SUB_RECORD, SUB_ARRIVAL, SUB_END, SUB_SS_END, SUB_OUTPUT = 0, 1, 2, 3, 4


class Entries(NamedTuple):
    """Timeline entries (unsorted or sorted), all of one length `m`."""

    time: Array  # (m,) h; +inf where invalid
    order: Array  # (m,) tie-break
    sub: Array  # (m,) kind, the last tie-break
    cmt: Array  # (m,) 0-based compartment
    bolus: Array  # (m,) amount added to cmt
    drate: Array  # (m,) change of the zero-order input into cmt
    reset: Array  # (m,) bool
    ss_slot: Array  # (m,) event whose steady state is applied here, -1 for none
    start: Array  # (m,) entry that started this infusion (for ends), -1 otherwise
    valid: Array  # (m,) bool
    source: Array  # (m,) event index (events) or output index (outputs)


class Doses(NamedTuple):
    """Per-event dosing quantities after F, ALAG, R and D are applied."""

    t_record: Array
    t_arrival: Array
    amount: Array  # bioavailable amount (mg)
    rate: Array  # infusion rate (mg/h), 0 for a bolus
    duration: Array  # infusion duration (h), 0 for a bolus
    is_infusion: Array
    is_dose: Array
    is_reset: Array
    is_ss: Array
    lag: Array
    cmt: Array  # 0-based


def _per_cmt(params: Params, prefix: str, n_states: int, n_events: int, default: float) -> Array:
    """(n_events, n_states) array of the parameter `<prefix><cmt>` (default where absent)."""
    cols = []
    for i in range(n_states):
        value = params.get(f"{prefix}{i + 1}", default)
        cols.append(jnp.broadcast_to(jnp.asarray(value, dtype=float), (n_events,)))
    return jnp.stack(cols, axis=-1)


def _has_any(params: Params, prefix: str, n_states: int) -> bool:
    return any(f"{prefix}{i + 1}" in params for i in range(n_states))


def dose_quantities(
    model: AbstractModel,
    ev_params: Params,
    reg: Regimen,
    *,
    checks: bool = True,
    domain: bool = True,
) -> Doses:
    """Apply the model's `F<n>`, `ALAG<n>`, `R<n>` and `D<n>` to every event.

    `ev_params` values are scalars or arrays with one value per event (the parameters in
    force on the record that generated the event). With `checks`, the doses and (with
    `domain`) every parameter are checked at run time (`equinox.error_if`: `domain_checks`),
    which is how traced values inside `jax.jit` are refused. A caller that has put the
    parameter check on the parameters themselves passes `domain=False`: the doses of a
    concrete regimen then stay constants of the program.
    """
    n = model.n_states
    m = reg.n_events
    cmt = jnp.clip(reg.cmt - 1, 0, n - 1)
    rows = jnp.arange(m)
    f = reg.bioav * _per_cmt(ev_params, "F", n, m, 1.0)[rows, cmt]
    lag = reg.lag + _per_cmt(ev_params, "ALAG", n, m, 0.0)[rows, cmt]
    amount = reg.amount * f
    is_reset = reg.mask & ((reg.evid == 3) | (reg.evid == 4))
    is_dose = reg.mask & (reg.evid != 3) & (reg.evid != 2) & (reg.evid != 0)
    given_rate = reg.rate > 0
    mod_rate = reg.rate == MODELLED_RATE
    mod_dur = reg.rate == MODELLED_DURATION
    if _has_any(ev_params, "D", n):
        d_param = _per_cmt(ev_params, "D", n, m, jnp.nan)[rows, cmt]
        d_mod = jnp.where(jnp.isnan(d_param), reg.duration, d_param)
    else:
        d_mod = reg.duration
    r_mod = (
        _per_cmt(ev_params, "R", n, m, jnp.nan)[rows, cmt]
        if _has_any(ev_params, "R", n)
        else jnp.full((m,), jnp.nan)
    )
    rate = jnp.where(given_rate, reg.rate, jnp.where(mod_rate, r_mod, 0.0))
    safe_rate = jnp.where(rate > 0, rate, 1.0)
    safe_dmod = jnp.where(d_mod > 0, d_mod, 1.0)
    rate = jnp.where(mod_dur, amount / safe_dmod, rate)
    duration = jnp.where(mod_dur, d_mod, jnp.where(given_rate | mod_rate, amount / safe_rate, 0.0))
    is_infusion = given_rate | mod_rate | mod_dur
    is_ss = is_dose & (reg.ss > 0)
    # Checks that must survive tracing (concrete regimens are checked before, with ValueError).
    if checks:
        amount = _dose_checks(amount, reg, is_dose, mod_dur, d_mod, mod_rate, r_mod, n)
        if domain:
            amount = domain_checks(model, ev_params, amount)
    return _doses(reg, lag, amount, rate, duration, is_infusion, is_dose, is_reset, is_ss, cmt)


def _dose_checks(amount, reg, is_dose, mod_dur, d_mod, mod_rate, r_mod, n):
    amount = eqx.error_if(
        amount,
        is_dose & ((reg.cmt < 1) | (reg.cmt > n)),
        f"regimen: a dose goes into a compartment outside 1..{n}.",
    )
    amount = eqx.error_if(
        amount,
        is_dose & mod_dur & ~(d_mod > 0),
        "regimen: RATE=-2 (modelled duration) needs the parameter D<cmt> or a duration > 0.",
    )
    amount = eqx.error_if(
        amount,
        is_dose & mod_rate & ~(r_mod > 0),
        "regimen: RATE=-1 (modelled rate) needs the parameter R<cmt> > 0.",
    )
    return amount


def checked_params(model: AbstractModel, params: Params) -> Params:
    """`params` carrying the run-time domain check of `domain_checks` (numeric values as
    arrays): every computation from them is checked, and nothing else is held back (the
    doses of a concrete regimen stay constants of the program)."""
    numeric = {}
    for name, value in params.items():
        if isinstance(value, str):
            continue
        v = jnp.asarray(value)
        if jnp.issubdtype(v.dtype, jnp.number):
            numeric[name] = v
    if not numeric:
        return params
    return {**params, **domain_checks(model, numeric, numeric)}


def domain_checks(model: AbstractModel, params: Params, x: Any) -> Any:
    """`x`, with a run-time check that every parameter is inside the model's domain.

    The traced counterpart of `AbstractModel.check_domain`: every numeric value finite and
    meeting its rule of `model.domain_rules()` (a clearance > 0, `F<n>` >= 0, ...), for
    values with any shape (one patient, a cohort's patient axis, one value per event).
    A few comparisons per parameter and one `equinox.branched_error_if` in all, outside any
    time loop; the error names the first parameter outside its domain and every rule it has
    (the message is fixed when the program is built, so it cannot show the value: outside
    `jax.jit`, `simulate` names it, and `simulate_cohort` the patient). Use the returned
    value, or the check is dropped.
    """
    rules = model.domain_rules()
    name_list, bad_list = [], []
    for name, value in params.items():
        if isinstance(value, str):
            continue
        v = jnp.asarray(value)
        if not jnp.issubdtype(v.dtype, jnp.number):
            continue
        bad = ~jnp.isfinite(v)
        if name in rules:
            bad = bad | rules[name][0](v)
        name_list.append(name)
        bad_list.append(jnp.any(bad))
    if not bad_list:
        return x
    bad = jnp.stack(bad_list)
    who = type(model).__name__
    messages = [
        f"{who}: parameter {name} is outside its domain: expected {name} finite"
        + (f" and {rules[name][1]}" if name in rules else "")
        + " (checked at run time; outside jax.jit the value is named, and the patient by "
        "simulate_cohort)."
        for name in name_list
    ]
    return eqx.branched_error_if(x, jnp.any(bad), jnp.argmax(bad), messages)


def _doses(reg, lag, amount, rate, duration, is_infusion, is_dose, is_reset, is_ss, cmt):
    return Doses(
        t_record=reg.time,
        t_arrival=reg.time + lag,
        amount=amount,
        rate=jnp.where(is_infusion, rate, 0.0),
        duration=duration,
        is_infusion=is_infusion,
        is_dose=is_dose,
        is_reset=is_reset | (is_ss & (reg.ss == 1)),
        is_ss=is_ss,
        lag=lag,
        cmt=cmt,
    )


def event_entries(reg: Regimen, doses: Doses) -> Entries:
    """Timeline entries A, B, C and D_k of every event (unsorted)."""
    m = reg.n_events
    k_ss = reg.ss_intervals if reg.has_ss else 0
    idx = jnp.arange(m, dtype=jnp.int32)
    inf_dose = doses.is_dose & doses.is_infusion & (doses.amount > 0) & (doses.duration > 0)
    bolus_dose = doses.is_dose & ~doses.is_infusion & (doses.amount > 0)
    zeros = jnp.zeros(m)
    neg = jnp.full((m,), -1, dtype=jnp.int32)

    def block(time, sub, bolus, drate, reset, ss_slot, start, valid):
        return Entries(
            time=jnp.where(valid, time, jnp.inf),
            order=reg.order,
            sub=jnp.full((m,), sub, dtype=jnp.int32),
            cmt=doses.cmt,
            bolus=bolus,
            drate=drate,
            reset=reset & valid,
            ss_slot=ss_slot,
            start=start,
            valid=valid,
            source=idx,
        )

    if reg.has_reset or reg.has_ss:
        # A reset cancels the doses of earlier records that have not entered yet.
        live = ~pending_cancelled(reg, doses)
        inf_dose = inf_dose & live
        bolus_dose = bolus_dose & live
    blocks = []
    if reg.has_reset or reg.has_ss:
        blocks.append(
            block(
                doses.t_record,
                SUB_RECORD,
                zeros,
                zeros,
                doses.is_reset,
                jnp.where(doses.is_ss, idx, -1),
                neg,
                doses.is_reset | doses.is_ss,
            )
        )
    b_pos = len(blocks) * m
    blocks.append(
        block(
            doses.t_arrival,
            SUB_ARRIVAL,
            jnp.where(bolus_dose, doses.amount, 0.0),
            jnp.where(inf_dose, doses.rate, 0.0),
            jnp.zeros(m, bool),
            neg,
            neg,
            bolus_dose | inf_dose,
        )
    )
    if reg.has_infusion:
        blocks.append(
            block(
                doses.t_arrival + doses.duration,
                SUB_END,
                zeros,
                -doses.rate,
                jnp.zeros(m, bool),
                neg,
                b_pos + idx,
                inf_dose,
            )
        )
    if not (reg.has_ss and reg.has_infusion):
        k_ss = 0
    for k in range(1, k_ss + 1):
        ii = reg.ii
        end = doses.t_arrival + doses.duration - k * ii
        valid = inf_dose & doses.is_ss & (ii > 0) & (end > doses.t_record)
        blocks.append(
            block(end, SUB_SS_END, zeros, -doses.rate, jnp.zeros(m, bool), neg, idx, valid)
        )
    return Entries(*(jnp.concatenate(parts) for parts in zip(*blocks, strict=True)))


def pending_cancelled(reg: Regimen, doses: Doses) -> Array:
    """(m,) bool: the doses that a reset cancels before they enter the system.

    NONMEM's rule (Users Guide VI, section V.K; help entry "SS DATA ITEM"): a reset
    (EVID 3), a reset-and-dose (EVID 4) and a steady-state dose with SS=1 "deactivate any
    previous dose event record which happens to be active": the record's additional doses
    (ADDL) and its lagged doses that have not entered the system by then are never given
    (infusions in progress are stopped by the reset itself). So a dose is cancelled when a
    reset lies, in the order of the timeline, after the record that initiated the dose (for
    an additional dose, the record carrying the ADDL: `Regimen.addl_offset`) and before the
    dose enters (its time plus lag). A record's own reset comes before its own doses, and an
    SS=2 record resets nothing, so neither cancels anything. One sort of 3m keys.
    """
    m = reg.n_events
    idx = jnp.arange(m, dtype=jnp.int32)
    off = jnp.zeros(m, jnp.int32) if reg.addl_offset is None else reg.addl_offset
    src = jnp.clip(idx - off, 0, m - 1)
    inf = jnp.full((m,), jnp.inf)
    time = jnp.concatenate(
        [jnp.where(doses.is_reset, reg.time, inf), reg.time[src], doses.t_arrival]
    )
    order = jnp.concatenate([reg.order, reg.order[src], reg.order])
    # At equal (time, order): a record's reset, then that record (the anchor), then arrivals.
    sub = jnp.repeat(jnp.arange(3, dtype=jnp.int32), m)
    is_reset = jnp.concatenate([doses.is_reset, jnp.zeros(2 * m, bool)])
    perm = jnp.lexsort((sub, order, time))
    before = jnp.cumsum(is_reset[perm].astype(jnp.int32))[jnp.argsort(perm)]
    return before[2 * m :] > before[m : 2 * m]


def output_entries(times: Array, order: Array, n_states: int) -> Entries:
    """Entries with no effect, at which the state is recorded."""
    n = times.shape[0]
    return Entries(
        time=times,
        order=order,
        sub=jnp.full((n,), SUB_OUTPUT, dtype=jnp.int32),
        cmt=jnp.zeros((n,), dtype=jnp.int32),
        bolus=jnp.zeros(n),
        drate=jnp.zeros(n),
        reset=jnp.zeros(n, bool),
        ss_slot=jnp.full((n,), -1, dtype=jnp.int32),
        start=jnp.full((n,), -1, dtype=jnp.int32),
        valid=jnp.ones(n, bool),
        source=jnp.arange(n, dtype=jnp.int32),
    )


def concat_entries(a: Entries, b: Entries, offset: int) -> Entries:
    b = b._replace(start=jnp.where(b.start >= 0, b.start + offset, -1))
    return Entries(*(jnp.concatenate([x, y]) for x, y in zip(a, b, strict=True)))


def sort_entries(e: Entries, perm: Any = None) -> tuple[Entries, Array]:
    """Sort by (time, order, kind); infusion ends cancelled by a reset lose their effect.

    `perm` may give the sorting permutation when it is known at trace time.
    """
    if perm is None:
        perm = jnp.lexsort((e.sub, e.order, e.time))
    s = Entries(*(x[perm] for x in e))
    inv = jnp.argsort(perm)
    epoch = jnp.cumsum(s.reset.astype(jnp.int32))
    start_pos = jnp.where(s.start >= 0, inv[jnp.clip(s.start, 0)], 0)
    same_epoch = epoch == epoch[start_pos]
    live = jnp.where(s.start >= 0, same_epoch, True)
    return s._replace(drate=jnp.where(live, s.drate, 0.0)), perm


# ----------------------------------------------------------------------------- steady state


def _apply_entries(
    model: AbstractModel,
    solver: ODESolver,
    params: Params,
    x0: Array,
    times: Array,
    bolus: Array,
    drate: Array,
    cmt: Array,
    t_end: Array,
) -> Array:
    """Advance `x0` from time 0 through sorted entries to `t_end` (no resets, no outputs)."""
    n = model.n_states

    def body(carry, e):
        t, x, r = carry
        te, b, dr, c = e
        x = model.propagate(params, x, r, t, te, solver)
        hot = jax.nn.one_hot(c, n, dtype=x.dtype)
        return (te, x + hot * b, r + hot * dr), None

    r0 = jnp.zeros(n, dtype=x0.dtype)
    (t, x, r), _ = jax.lax.scan(body, (jnp.zeros(()), x0, r0), (times, bolus, drate, cmt))
    return model.propagate(params, x, r, t, t_end, solver)


def steady_state(
    model: AbstractModel,
    solver: ODESolver,
    params: Params,
    doses: Doses,
    ii: Array,
    n_intervals: int,
    *,
    checks: bool = True,
) -> tuple[Array, Array]:
    """Steady-state state and running input rates at the time of one SS dose record.

    The state at the record time after infinitely many identical doses at `-k * ii`
    (k = 1, 2, ...), each with the same F, lag and infusion. Linear models solve
    `(I - Phi(ii)) x = c` exactly; ODE models solve the fixed point of the one-interval map
    by Newton's method (optimistix). With `ii == 0` an infusion given by its rate sets the
    constant-infusion steady state (the infusion itself is not continued, as NONMEM).

    With `checks`, a lag >= II and a lag + infusion spanning more than `n_intervals`
    earlier intervals are refused at run time (`equinox.error_if`, a host callback: JAX does
    not keep such a program in its persistent compilation cache). A caller that has checked
    the doses on the host (`simulate_records`, `check_inputs`) passes `False`.
    """
    n = model.n_states
    dtype = jnp.result_type(float)
    if not model.is_linear and isinstance(solver, ODESolver):
        # Newton's method differentiates the window map in forward mode.
        solver = eqx.tree_at(lambda s: s.adjoint, solver, dfx.DirectAdjoint())
    hot = jax.nn.one_hot(doses.cmt, n, dtype=dtype)
    lag, dur, rate, amt = doses.lag, doses.duration, doses.rate, doses.amount
    is_inf = doses.is_infusion
    safe_ii = jnp.where(ii > 0, ii, 1.0)
    # Prior doses k = 1..K+1 arrive at a_k = lag - (k-1) ii in the window [0, ii).
    ks = jnp.arange(1, n_intervals + 2, dtype=dtype)
    a = lag - (ks - 1.0) * safe_ii
    on = jnp.clip(a, 0.0, safe_ii)
    off = jnp.clip(a + dur, 0.0, safe_ii)
    inf_live = is_inf & (off > on)
    times = jnp.concatenate([jnp.atleast_1d(lag), on, off])
    bolus = jnp.concatenate(
        [jnp.atleast_1d(jnp.where(is_inf, 0.0, amt)), jnp.zeros_like(on), jnp.zeros_like(off)]
    )
    drate = jnp.concatenate(
        [jnp.zeros(1), jnp.where(inf_live, rate, 0.0), jnp.where(inf_live, -rate, 0.0)]
    )
    times = jnp.clip(times, 0.0, safe_ii)
    order = jnp.argsort(times, stable=True)
    times, bolus, drate = times[order], bolus[order], drate[order]
    cmts = jnp.full(times.shape, doses.cmt)
    running = jnp.sum(jnp.where(is_inf & (a < safe_ii) & (a + dur > safe_ii), rate, 0.0))

    def window(x):
        return _apply_entries(model, solver, params, x, times, bolus, drate, cmts, safe_ii)

    zero = model.initial_state(params)
    if model.is_linear:
        c = window(jnp.zeros(n, dtype))
        eye = jnp.eye(n, dtype=dtype)
        phi = jax.vmap(
            lambda col: model.propagate(params, col, jnp.zeros(n, dtype), 0.0, safe_ii, solver),
            out_axes=1,
        )(eye)
        x_interval = jnp.linalg.solve(eye - phi, c)
        k_mat = model.matrix(params)  # type: ignore[attr-defined]
        x_const = jnp.linalg.solve(k_mat, -hot * rate)
    else:
        newton = optx.Newton(rtol=solver.rtol, atol=solver.atol)
        x_interval = optx.root_find(
            lambda x, _: window(x) - x, newton, window(zero), max_steps=256
        ).value
        x_const = optx.root_find(
            lambda x, _: model.vector_field(0.0, x, params) + hot * rate,
            newton,
            zero,
            max_steps=256,
        ).value
    interval = ii > 0
    x = jnp.where(interval, x_interval, x_const)
    r = jnp.where(interval, hot * running, jnp.zeros(n, dtype))
    if not checks:
        return x, r
    x = eqx.error_if(
        x,
        interval & (lag >= ii),
        "steady-state dose: expected the lag time to be shorter than the interval II "
        "(a lag >= II is not supported).",
    )
    x = eqx.error_if(
        x,
        interval & (lag + dur > (n_intervals + 1) * ii),
        "steady-state dose: lag + infusion duration spans more intervals than the regimen's "
        "ss_intervals allows; build the regimen with the values known, or raise ss_intervals.",
    )
    return x, r


# ----------------------------------------------------------------------------- the scan


def apply_entry(model: AbstractModel, p: Params, e: Entries, sx, sr, x, r):
    """The effect of one (valid or not) timeline entry on the state and the input rates."""
    n = model.n_states
    x = jnp.where(e.reset, model.initial_state(p), x) + sx
    r = jnp.where(e.reset, jnp.zeros_like(r), r) + sr
    hot = jax.nn.one_hot(e.cmt, n, dtype=x.dtype)
    return x + hot * e.bolus, r + hot * e.drate


def run_saving(
    model: AbstractModel,
    solver: ODESolver,
    params: Params,
    s: Entries,
    ss_x: Array,
    ss_r: Array,
    x_init: Array,
    t_next: Array,
    ts: Array,
) -> Array:
    """ODE models with a known schedule: one solve per event interval, saving at `ts`.

    Entry `k` is applied at its time, then the system is integrated to `t_next[k]` with the
    states saved at `ts[k]` (padded with `t_next[k]`). Returns the saves, `(entries, K, n)`.
    """

    def body(carry, inputs):
        x, r = carry
        e, sx, sr, t1, tk = inputs
        x, r = apply_entry(model, params, e, sx, sr, x, r)
        ys, x = model.propagate_saving(params, x, r, e.time, t1, tk, solver)  # type: ignore[attr-defined]
        return (x, r), ys

    r0 = jnp.zeros_like(x_init)
    _, ys = jax.lax.scan(body, (x_init, r0), (s, ss_x, ss_r, t_next, ts))
    return ys


def run(
    model: AbstractModel,
    solver: ODESolver,
    entry_params: Params,
    s: Entries,
    ss_x: Array,
    ss_r: Array,
    x_init: Array,
) -> tuple[Array, Array]:
    """Apply sorted entries; returns the state and the input rates after every entry.

    `entry_params` holds, for each entry, the parameters governing the advance up to it
    (leaves with a leading axis of the number of entries).
    """
    n = model.n_states
    t_first = jnp.where(s.valid[0], s.time[0], 0.0)

    def body(carry, inputs):
        t, x, r = carry
        e, p, sx, sr = inputs
        t_new = jnp.where(e.valid, e.time, t)
        x = model.propagate(p, x, r, t, t_new, solver)
        x, r = apply_entry(model, p, e, sx, sr, x, r)
        return (t_new, x, r), (x, r)

    r0 = jnp.zeros(n, dtype=x_init.dtype)
    _, (xs, rs) = jax.lax.scan(body, (t_first, x_init, r0), (s, entry_params, ss_x, ss_r))
    return xs, rs


def ss_tables(
    model: AbstractModel,
    solver: ODESolver,
    ev_params: Params,
    reg: Regimen,
    doses: Doses,
    s: Entries,
    *,
    checks: bool = True,
) -> tuple[Array, Array]:
    """Steady-state states and rates for each sorted entry (zero where none); `checks` as
    `steady_state`."""
    n = model.n_states
    m_entries = s.time.shape[0]
    if not reg.has_ss:
        z = jnp.zeros((m_entries, n))
        return z, z
    m = reg.n_events
    p_ev = jax.tree_util.tree_map(
        lambda v: jnp.broadcast_to(jnp.asarray(v, float), (m,)), ev_params
    )
    xs, rs = jax.vmap(
        lambda p, d, ii: steady_state(model, solver, p, d, ii, reg.ss_intervals, checks=checks)
    )(p_ev, doses, reg.ii)
    # Stored as the increment over the initial state (zero for PK, the baseline for PD):
    # SS=1 resets to the initial state and adds it (the state becomes the steady state);
    # SS=2 adds it to the current state.
    x0 = jax.vmap(model.initial_state)(p_ev)
    use = (s.ss_slot >= 0)[:, None]
    slot = jnp.clip(s.ss_slot, 0)
    return jnp.where(use, (xs - x0)[slot], 0.0), jnp.where(use, rs[slot], 0.0)


def broadcast_params(params: Params, m: int) -> Params:
    return {k: jnp.broadcast_to(jnp.asarray(v, dtype=float), (m,)) for k, v in params.items()}


def numeric_params(params: Params) -> dict[str, Any]:
    return {k: v for k, v in params.items() if not isinstance(v, str)}
