"""`simulate`: one patient, one regimen, outputs at given times."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _engine as E
from ._custom_types import Array, Float, Params, Times
from ._models._base import AbstractModel, ODESolver
from ._regimen import MODELLED_DURATION, MODELLED_RATE, Regimen


def simulate_states(
    model: AbstractModel,
    params: Params,
    regimen: Regimen,
    times: Times,
    *,
    solver: ODESolver = ODESolver(),
    checks: bool = True,
    order: Times | None = None,
) -> Float[Array, "times states"]:
    """The state (compartment amounts in mg, and PD states) at each output time.

    Same arguments and conventions as `simulate`.
    """
    return _solve(model, params, regimen, times, solver, lambda x: x, checks, order)


def _solve(model, params, regimen, times, solver, fn, checks=True, order=None):
    """States at `times` mapped through `fn` (the output function, or the identity); `order`
    places each output among the events at its time (see `simulate`)."""
    model.check_params(params)
    model.check_domain(params)
    check_regimen(model, params, regimen)
    schedule = None if order is not None else static_schedule(model, params, regimen, times)
    times = jnp.asarray(times, dtype=jnp.result_type(float))
    if times.ndim != 1:
        raise ValueError(
            f"simulate: expected a 1-d array of output times, got shape {times.shape}."
        )
    order = _output_order(order, times)
    if checks:  # on the parameters themselves: a concrete regimen's doses stay constants
        params = E.checked_params(model, params)
    doses = E.dose_quantities(model, params, regimen, checks=checks, domain=False)
    ev = E.event_entries(regimen, doses)
    x_init = model.initial_state(params)
    n = model.n_states
    if model.is_linear:
        # Events only in the scan; outputs are propagated from the last event before them,
        # vectorised over times (one fused loop: the states at the outputs are never stored).
        s, _ = E.sort_entries(ev, None if schedule is None else schedule[0])
        m = s.time.shape[0]
        ss_x, ss_r = E.ss_tables(model, solver, params, regimen, doses, s)
        p_entries = E.broadcast_params(params, m)
        xs, rs = E.run(model, solver, p_entries, s, ss_x, ss_r, x_init)
        if schedule is not None:
            return _outputs_by_run(model, params, solver, fn, xs, rs, x_init, times, schedule)
        if order is None:
            idx = jnp.searchsorted(s.time, times, side="right") - 1
        else:
            idx = _last_event_before(ev, times, order, n)
        before = idx < 0
        j = jnp.clip(idx, 0)
        t0 = jnp.where(before, times, s.time[j])

        def at(jj, b, a, t):
            x = jnp.where(b, x_init, xs[jj])
            r = jnp.where(b, jnp.zeros_like(x), rs[jj])
            return fn(model.propagate(params, x, r, a, t, solver))

        return jax.vmap(at)(j, before, t0, times)
    if schedule is not None:
        return _ode_by_interval(
            model, params, regimen, solver, fn, ev, doses, x_init, times, schedule
        )
    # ODE models: outputs are entries of the timeline (after events at equal times, or at
    # their `order` among them).
    out = E.output_entries(times, jnp.full(times.shape, jnp.inf) if order is None else order, n)
    allent = E.concat_entries(ev, out, 0)
    s, perm = E.sort_entries(allent)
    m = s.time.shape[0]
    ss_x, ss_r = E.ss_tables(model, solver, params, regimen, doses, s)
    xs, _ = E.run(model, solver, E.broadcast_params(params, m), s, ss_x, ss_r, x_init)
    inv = jnp.argsort(perm)
    n_ev = ev.time.shape[0]
    return jax.vmap(fn)(xs[inv[n_ev:]])


_MAX_RUNS = 512


def _output_order(order, times):
    """`order` as a float array of the shape of `times` (None stays None)."""
    if order is None:
        return None
    order = jnp.asarray(order, dtype=times.dtype)
    if order.shape != times.shape:
        raise ValueError(
            f"simulate: expected one order per output time, shape {times.shape}, got {order.shape}."
        )
    return order


def _last_event_before(ev, times, order, n_states):
    """For each output, the position (in the sorted events, as `sort_entries` sorts them) of
    the last event before it in (time, order), -1 for none: the events and the outputs are
    sorted together and the events before each output counted."""
    n_ev = ev.time.shape[0]
    allent = E.concat_entries(ev, E.output_entries(times, order, n_states), 0)
    perm = jnp.lexsort((allent.sub, allent.order, allent.time))
    events_so_far = jnp.cumsum(perm < n_ev)
    return events_so_far[jnp.argsort(perm)[n_ev:]] - 1


def check_regimen(model: AbstractModel, params: Params, regimen: Regimen) -> None:
    """Raise a `ValueError` for doses the model cannot take (when the regimen is concrete).

    Doses must go into a compartment of the model; `RATE=-2` needs the parameter `D<cmt>` (or a
    duration in the regimen) and `RATE=-1` the parameter `R<cmt>`. Traced regimens are
    checked inside the computation (`equinox.error_if`).
    """
    fields = [concrete(getattr(regimen, f)) for f in ("cmt", "evid", "rate", "duration", "mask")]
    if any(f is None for f in fields):
        return
    cmt, evid, rate, duration, mask = (np.asarray(f) for f in fields)
    n = model.n_states
    doses = mask & (evid != 3)
    for k in np.flatnonzero(doses & ((cmt < 1) | (cmt > n))):
        raise ValueError(
            f"regimen event {k}: dose into compartment cmt={int(cmt[k])}; expected 1..{n} "
            f"({type(model).__name__} compartments {list(model.state_names)})."
        )
    for k in np.flatnonzero(doses & (rate == MODELLED_DURATION)):
        if f"D{int(cmt[k])}" not in params and not duration[k] > 0:
            raise ValueError(
                f"regimen event {k}: RATE=-2 (modelled duration) needs the parameter "
                f"D{int(cmt[k])} or a duration > 0."
            )
    for k in np.flatnonzero(doses & (rate == MODELLED_RATE)):
        if f"R{int(cmt[k])}" not in params:
            raise ValueError(
                f"regimen event {k}: RATE=-1 (modelled rate) needs the parameter R{int(cmt[k])}."
            )


def check_inputs(model: AbstractModel, params: Params, regimen: Regimen) -> None:
    """Check on the host what the engine's run-time checks refuse, before anything is compiled.

    The checks that `simulate`, `advance`, `state_before` and `interval_exposure` run inside
    compiled code with `checks=True` (as `equinox.error_if` host callbacks), here on
    concrete values: every parameter finite and inside the model's domain
    (`AbstractModel.check_domain`), every dose into a compartment of the model, `RATE=-2`
    with `D<cmt>` (or a duration) and `RATE=-1` with `R<cmt>` (`check_regimen`), and each
    steady-state dose's lag shorter than its interval `II`, its lag plus infusion within the
    regimen's `ss_intervals`. A caller that has passed this check calls those functions with
    `checks=False`: the compiled program then holds no host callback, and JAX's persistent
    compilation cache keeps it (JAX does not write programs with host callbacks to it).

    **Arguments:**

    - `model`, `regimen`: as `simulate` (one patient's regimen: events on the last axis).
    - `params`: parameter values by name; a value may have leading axes (posterior draws,
      patients), and every value is checked.

    **Raises:** `ValueError` naming the parameter and its value, or the event; `TypeError`
    for traced values (inside `jax.jit` nothing is known yet: keep `checks=True` there).
    """
    leaves = [v for v in params.values() if not isinstance(v, str)]
    leaves += jax.tree_util.tree_leaves(regimen)
    if any(concrete(leaf) is None for leaf in leaves):
        raise TypeError(
            "check_inputs: expected concrete values (it checks on the host); inside jax.jit "
            "keep checks=True."
        )
    model.check_domain(params)
    check_regimen(model, params, regimen)  # (reads only which parameters are present)
    if not regimen.has_ss:
        return
    n = model.n_states
    cmt = np.clip(np.asarray(regimen.cmt) - 1, 0, n - 1)
    evid, ss, ii = (np.asarray(a) for a in (regimen.evid, regimen.ss, regimen.ii))
    mask = np.asarray(regimen.mask)

    def per_event(prefix: str, default: float) -> np.ndarray:
        """(batch..., events) values of `<prefix><cmt>` for every event."""
        cols = [np.asarray(params.get(f"{prefix}{c + 1}", default), dtype=float) for c in range(n)]
        stacked = np.stack(np.broadcast_arrays(*cols), axis=-1)  # (batch..., n)
        return stacked[..., cmt]

    lag = np.asarray(regimen.lag) + per_event("ALAG", 0.0)
    f = np.asarray(regimen.bioav) * per_event("F", 1.0)
    amount = np.asarray(regimen.amount) * f
    rate = np.asarray(regimen.rate)
    d_param = per_event("D", np.nan)
    d_mod = np.where(np.isnan(d_param), np.asarray(regimen.duration), d_param)
    r_mod = per_event("R", np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        duration = np.where(
            rate > 0,
            amount / np.where(rate > 0, rate, 1.0),
            np.where(
                rate == MODELLED_DURATION,
                d_mod,
                np.where(rate == MODELLED_RATE, amount / np.where(r_mod > 0, r_mod, 1.0), 0.0),
            ),
        )
    ss_dose = mask & (evid != 3) & (evid != 2) & (evid != 0) & (ss > 0) & (ii > 0)
    long_lag = ss_dose & (lag >= ii)
    if long_lag.any():
        at = tuple(int(i) for i in np.argwhere(long_lag)[0])
        k = at[-1]
        raise ValueError(
            f"regimen event {k}: steady-state dose (SS={int(ss[k])}) with a lag time of "
            f"{float(lag[at]):g} h and II = {float(ii[k]):g} h; expected the lag time to be "
            "shorter than the interval II (a lag >= II is not supported)."
        )
    too_long = ss_dose & (lag + duration > (regimen.ss_intervals + 1) * ii)
    if too_long.any():
        at = tuple(int(i) for i in np.argwhere(too_long)[0])
        k = at[-1]
        raise ValueError(
            f"regimen event {k}: steady-state dose whose lag + infusion duration "
            f"({float((lag + duration)[at]):g} h) spans more intervals than the regimen's "
            f"ss_intervals ({regimen.ss_intervals}) allows at II = {float(ii[k]):g} h; build "
            "the regimen with the values known, or raise ss_intervals."
        )


def concrete(x) -> np.ndarray | None:
    if isinstance(x, jax.core.Tracer):  # pyright: ignore[reportAttributeAccessIssue]
        return None
    try:
        return np.asarray(x)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None


def static_schedule(model, params, regimen, times):
    """The event order and, for each output, the last event before it, when known at trace time.

    When the regimen and the output times are concrete (not traced: the common case of a cohort
    sharing one regimen and one sampling schedule under `jax.vmap`) and no parameter moves the
    event times (`ALAG<n>`, `D<n>`, `R<n>`, and `F<n>` with infusions), the outputs are computed
    in contiguous runs sharing their last event: no gather, one fused loop. The numbers are the
    same as in the general path.
    """
    t_out = concrete(times)
    if t_out is None or t_out.ndim != 1:
        return None
    if any(concrete(leaf) is None for leaf in jax.tree_util.tree_leaves(regimen)):
        return None
    prefixes = ("ALAG", "D", "R") + (("F",) if regimen.has_infusion else ())
    for key in params:
        for pre in prefixes:
            if key.startswith(pre) and key[len(pre) :].isdigit():
                return None
    with jax.ensure_compile_time_eval():
        ev = E.event_entries(regimen, E.dose_quantities(model, {}, regimen, checks=False))
        time, order, sub = (np.asarray(a) for a in (ev.time, ev.order, ev.sub))
    perm = np.lexsort((sub, order, time))
    t_sorted = time[perm]
    t_out = t_out.astype(float)
    idx = np.searchsorted(t_sorted, t_out, side="right") - 1
    cuts = np.flatnonzero(np.diff(idx)) + 1
    starts = np.concatenate([[0], cuts]).astype(int)
    stops = np.concatenate([cuts, [idx.size]]).astype(int)
    if starts.size > _MAX_RUNS or idx.size == 0 or not np.all(np.isfinite(t_out)):
        return None
    runs = [(int(a), int(b), int(idx[a])) for a, b in zip(starts, stops, strict=True)]
    return perm, t_sorted, runs, idx, t_out


def interval_saves(t_sorted, idx, t_out, n_valid):
    """Static layout of one solve per event interval (ODE models with a known schedule).

    **Returns:** the event times, the end of each interval (the next event, or the last
    output), the output times saved in each interval (padded with the interval's end), and
    the position of each output among its interval's saves.
    """
    t_ev = t_sorted[:n_valid]
    t_last = max(float(np.max(t_out)), float(t_ev[-1]))
    t_next = np.append(t_ev[1:], t_last)
    counts = np.bincount(idx[idx >= 0], minlength=n_valid)
    width = max(1, int(counts.max()) if counts.size else 1)
    ts = np.repeat(t_next[:, None], width, axis=1)
    pos = np.zeros(idx.size, dtype=int)
    fill = np.zeros(n_valid, dtype=int)
    for i in np.argsort(t_out, kind="stable"):
        k = idx[i]
        if k >= 0:
            ts[k, fill[k]] = t_out[i]
            pos[i] = fill[k]
            fill[k] += 1
    return t_ev, t_next, ts, pos


def _ode_by_interval(model, params, regimen, solver, fn, ev, doses, x_init, times, schedule):
    """ODE path with a static schedule: one diffrax solve per event interval."""
    perm, t_sorted, _, idx, t_out = schedule
    n_valid = int(np.sum(np.isfinite(t_sorted)))
    if n_valid == 0:
        return jax.vmap(fn)(jnp.broadcast_to(x_init, (t_out.size, x_init.size)))
    s, _ = E.sort_entries(ev, perm)
    ss_x, ss_r = E.ss_tables(model, solver, params, regimen, doses, s)
    keep = slice(0, n_valid)
    s = E.Entries(*(a[keep] for a in s))
    ss_x, ss_r = ss_x[keep], ss_r[keep]
    _, t_next, ts, pos = interval_saves(t_sorted, idx, t_out, n_valid)
    ys = E.run_saving(
        model, solver, params, s, ss_x, ss_r, x_init, jnp.asarray(t_next), jnp.asarray(ts)
    )
    states = ys[np.clip(idx, 0, None), pos]
    states = jnp.where(jnp.asarray(idx < 0)[:, None], x_init[None, :], states)
    return jax.vmap(fn)(states)


def _outputs_by_run(model, params, solver, fn, xs, rs, x_init, times, schedule):
    """Outputs of a known schedule, run by run (outputs sharing their last event).

    Each run is one fused, vectorised evaluation of the closed form from its event's state
    (a static slice), and the runs are concatenated: no per-output gather.
    """
    _, t_sorted, runs, _, _ = schedule
    pieces = []
    for start, stop, j in runs:
        tb = times[start:stop]
        if j < 0:
            x, r, t0 = x_init, jnp.zeros_like(x_init), tb
        else:
            x, r, t0 = xs[j], rs[j], jnp.full(tb.shape, t_sorted[j])
        pieces.append(
            jax.vmap(lambda a, b, x=x, r=r: fn(model.propagate(params, x, r, a, b, solver)))(t0, tb)
        )
    return jnp.concatenate(pieces)


def simulate(
    model: AbstractModel,
    params: Params,
    regimen: Regimen,
    times: Times,
    *,
    solver: ODESolver = ODESolver(),
    checks: bool = True,
    order: Times | None = None,
) -> Float[Array, " times"] | Float[Array, "times outputs"]:
    """Simulate one patient: the model's output at each time.

    Pure and composable with `jax.jit` (`equinox.filter_jit`), `jax.vmap` (patients with
    different regimens: pad them to one length with `pkpd.stack`) and `jax.grad` (every
    parameter, lag time, bioavailability and infusion duration included).

    At a time equal to a dose time the output is taken after the dose (post-dose), unless
    `order` places it before.

    **Arguments:**

    - `model`: a PK or PK/PD model, e.g. `pkpd.OneCompartmentOral()`.
    - `params`: parameter values by name (`{"CL": 5.0, "V": 50.0, "KA": 1.0}`), plus the
      optional NONMEM dosing parameters `F<n>`, `ALAG<n>`, `D<n>`, `R<n>` of compartment `n`.
    - `regimen`: the dosing events, a `pkpd.Regimen`.
    - `times`: output times (h), 1-d.
    - `solver`: how ODE models are integrated (`pkpd.ODESolver`); linear models are exact.
    - `checks`: the run-time checks of traced values (inside `jax.jit`): every parameter in
      its domain (`model.domain_rules()`: a clearance > 0, `F<n>` >= 0, every value
      finite), naming the parameter, and the doses (compartment, modelled rate or
      duration > 0). Concrete values are always checked, before anything is computed,
      with a `ValueError` naming the value. Pass `False` only where the caller deals with
      values outside the domain itself: an estimator evaluating trial points, which rejects
      them (`calibration` does), or a trial that checked its patients beforehand.
    - `order`: optional, one value per output time: its place among the events at the same
      time, compared with the events' `Regimen.order` (smaller first). Records read by
      `pkpd.regimen_from_records` have the record's position as their order, so an output
      with the position of its own record is taken where NONMEM takes it: an observation
      listed before a dose at its time is predicted before that dose (a trough). The default,
      `+inf` for every output, takes each output after every event at its time.

    **Raises:** `ValueError` for a parameter outside its domain or an impossible dose
    (concrete values); `equinox.EquinoxRuntimeError` (`jax.errors.JaxRuntimeError` under
    `jax.jit`) for the same found at run time, naming the parameter and the rules;
    `FloatingPointError` for a non-finite result of concrete values.

    **Returns:** shape `(times,)` for single-output models (concentration in mg/L for PK
    models), `(times, outputs)` for models with several outputs (`model.output_names`).
    """
    y = _solve(
        model, params, regimen, times, solver, lambda x: model.output(params, x), checks, order
    )
    check_finite(y, times, "simulate")
    return y[:, 0] if len(model.output_names) == 1 else y


def check_finite(y: Array, times: Times, who: str) -> None:
    """Raise `FloatingPointError` if a concrete result holds a non-finite value (parameters
    in their domain but so extreme that the arithmetic overflows); traced results (inside
    `jax.jit`) are left to the caller."""
    if isinstance(y, jax.core.Tracer):  # pyright: ignore[reportAttributeAccessIssue]
        return
    bad = ~np.isfinite(np.asarray(y))
    if bad.any():
        rows = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))
        t = np.asarray(times)[rows[:5]]
        raise FloatingPointError(
            f"{who}: the result is not finite at times {t.tolist()} h (of {len(rows)} output "
            "times): the parameters are in their domain but so extreme that the arithmetic "
            "overflows; check their values and units."
        )


def simulate_piecewise(
    model: AbstractModel,
    params: Params,
    change_times: Float[Array, " changes"],
    regimen: Regimen,
    times: Times,
    *,
    solver: ODESolver = ODESolver(),
    checks: bool = True,
    order: Times | None = None,
    output_segment: Any = None,
) -> Float[Array, " times"] | Float[Array, "times outputs"]:
    """Simulate one patient whose parameters change at given times (occasions, periods).

    Parameters are piecewise constant: segment `k` runs from `change_times[k - 1]` to
    `change_times[k]` (the first from the start, the last to the end). This is the time-varying
    parameter convention of NONMEM for inter-occasion variability: the amounts carried over at a
    change propagate with the new parameters; a dose at a change time takes the new segment's
    `F`, lag and duration; an output at a change time uses the new segment's output parameters
    (e.g. its volume). Change times equal to `+inf` are never reached (padding).

    **Arguments:**

    - `model`, `regimen`, `times`, `solver`, `checks`: as `simulate` (every segment's
      parameters are checked; a concrete value outside the domain is named with its
      segment index).
    - `params`: parameter values by name, each of shape `(segments,)` with
      `segments = len(change_times) + 1` (a scalar applies to every segment).
    - `change_times`: sorted times (h) at which the next segment starts.
    - `order`: as `simulate` (the place of each output among the events at its time).
    - `output_segment`: optional, the segment whose output parameters apply to each output
      (an observation's own occasion: a trough recorded at the time its next occasion
      starts, listed before that occasion's dose, belongs to the occasion before); by
      default the segment holding its time, the new one at a change time.

    **Returns:** as `simulate`.
    """
    change = jnp.asarray(change_times, dtype=jnp.result_type(float))
    k = change.shape[0] + 1
    seg = {n: jnp.broadcast_to(jnp.asarray(v), (k,)) for n, v in params.items()}
    first = {n: v[0] for n, v in seg.items()}
    model.check_params(first)
    model.check_domain(seg)
    if checks:
        seg = E.checked_params(model, seg)
        first = {n: v[0] for n, v in seg.items()}
    check_regimen(model, first, regimen)
    times = jnp.asarray(times, dtype=jnp.result_type(float))
    if times.ndim != 1:
        raise ValueError(
            f"simulate_piecewise: expected a 1-d array of output times, got shape {times.shape}."
        )
    # A dose at a change time belongs to the new segment; so does an output.
    ev_seg = jnp.searchsorted(change, regimen.time, side="right")
    ev_params = {n: v[ev_seg] for n, v in seg.items()}
    doses = E.dose_quantities(model, ev_params, regimen, checks=checks, domain=False)
    ev = E.event_entries(regimen, doses)
    order = _output_order(order, times)
    out = E.output_entries(
        times, jnp.full(times.shape, jnp.inf) if order is None else order, model.n_states
    )
    s, perm = E.sort_entries(E.concat_entries(ev, out, 0))
    ss_x, ss_r = E.ss_tables(model, solver, ev_params, regimen, doses, s)
    # The parameters of the segment holding (t_previous, t] govern the advance up to t.
    entry_params = {n: v[jnp.searchsorted(change, s.time, side="left")] for n, v in seg.items()}
    xs, _ = E.run(model, solver, entry_params, s, ss_x, ss_r, model.initial_state(first))
    states = xs[jnp.argsort(perm)[ev.time.shape[0] :]]
    if output_segment is None:
        output_segment = jnp.searchsorted(change, times, side="right")
    else:
        output_segment = jnp.clip(jnp.asarray(output_segment, dtype=jnp.int32), 0, k - 1)
    out_params = {n: v[output_segment] for n, v in seg.items()}
    y = jax.vmap(model.output)(out_params, states)
    return y[:, 0] if len(model.output_names) == 1 else y
