"""`simulate`: one patient, one regimen, outputs at given times."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _engine as E
from ._custom_types import Array, Float, Params, Times
from ._models._base import AbstractModel, ODESolver
from ._regimen import Regimen


def simulate_states(
    model: AbstractModel,
    params: Params,
    regimen: Regimen,
    times: Times,
    *,
    solver: ODESolver = ODESolver(),
) -> Float[Array, "times states"]:
    """The state (compartment amounts in mg, and PD states) at each output time.

    Same arguments and conventions as `simulate`.
    """
    return _solve(model, params, regimen, times, solver, lambda x: x)


def _solve(model, params, regimen, times, solver, fn):
    """States at `times` mapped through `fn` (the output function, or the identity)."""
    model.check_params(params)
    times = jnp.asarray(times, dtype=jnp.result_type(float))
    if times.ndim != 1:
        raise ValueError(f"simulate: expected a 1-d array of output times, got shape {times.shape}.")
    doses = E.dose_quantities(model, params, regimen)
    ev = E.event_entries(regimen, doses)
    x_init = model.initial_state(params)
    n = model.n_states
    if model.is_linear:
        # Events only in the scan; outputs are propagated from the last event before them,
        # vectorised over times (one fused loop: the states at the outputs are never stored).
        s, _ = E.sort_entries(ev)
        m = s.time.shape[0]
        ss_x, ss_r = E.ss_tables(model, solver, params, regimen, doses, s)
        p_entries = E.broadcast_params(params, m)
        xs, rs = E.run(model, solver, p_entries, s, ss_x, ss_r, x_init)
        idx = jnp.searchsorted(s.time, times, side="right") - 1
        before = idx < 0
        j = jnp.clip(idx, 0)
        t0 = jnp.where(before, times, s.time[j])

        def at(jj, b, a, t):
            x = jnp.where(b, x_init, xs[jj])
            r = jnp.where(b, jnp.zeros_like(x), rs[jj])
            return fn(model.propagate(params, x, r, a, t, solver))

        return jax.vmap(at)(j, before, t0, times)
    # ODE models: outputs are entries of the timeline (after events at equal times).
    out = E.output_entries(times, jnp.full(times.shape, jnp.inf), n)
    allent = E.concat_entries(ev, out, 0)
    s, perm = E.sort_entries(allent)
    m = s.time.shape[0]
    ss_x, ss_r = E.ss_tables(model, solver, params, regimen, doses, s)
    xs, _ = E.run(model, solver, E.broadcast_params(params, m), s, ss_x, ss_r, x_init)
    inv = jnp.argsort(perm)
    n_ev = ev.time.shape[0]
    return jax.vmap(fn)(xs[inv[n_ev:]])


def simulate(
    model: AbstractModel,
    params: Params,
    regimen: Regimen,
    times: Times,
    *,
    solver: ODESolver = ODESolver(),
) -> Float[Array, " times"] | Float[Array, "times outputs"]:
    """Simulate one patient: the model's output at each time.

    Pure and composable with `jax.jit` (`equinox.filter_jit`), `jax.vmap` (patients with
    different regimens: pad them to one length with `pkpd.stack`) and `jax.grad` (every
    parameter, lag time, bioavailability and infusion duration included).

    At a time equal to a dose time the output is taken after the dose (post-dose).

    **Arguments:**

    - `model`: a PK or PK/PD model, e.g. `pkpd.OneCompartmentOral()`.
    - `params`: parameter values by name (`{"CL": 5.0, "V": 50.0, "KA": 1.0}`), plus the
      optional NONMEM dosing parameters `F<n>`, `ALAG<n>`, `D<n>`, `R<n>` of compartment `n`.
    - `regimen`: the dosing events, a `pkpd.Regimen`.
    - `times`: output times (h), 1-d.
    - `solver`: how ODE models are integrated (`pkpd.ODESolver`); linear models are exact.

    **Returns:** shape `(times,)` for single-output models (concentration in mg/L for PK
    models), `(times, outputs)` for models with several outputs (`model.output_names`).
    """
    y = _solve(model, params, regimen, times, solver, lambda x: model.output(params, x))
    return y[:, 0] if len(model.output_names) == 1 else y
