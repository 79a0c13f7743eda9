"""The time-major path of `simulate_cohort`: linear models, instantaneous doses on a known grid.

One transition matrix per distinct step length and patient, then a `lax.scan` over the time
grid that advances the whole cohort and writes one row of outputs per time (and the
exposure). `pkpd._cohort` chooses it when `time_major_plan` says it applies.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _engine as E

# The time-major path handles at most this many runs of equal step length (one scan each).
MAX_TM_RUNS = 64


def trapezoid_weights(t):
    """Weights `w` with `sum(w * y)` = the linear-trapezoid AUC of `y` on the grid `t`."""
    xp = np if isinstance(t, np.ndarray) else jnp
    if t.shape[0] < 2:
        return xp.zeros_like(t)
    dt = xp.diff(t)
    return xp.concatenate([dt[:1], dt[1:] + dt[:-1], dt[-1:]]) / 2.0


class TimeMajorPlan(NamedTuple):
    """Static layout of the time-major path (see `time_major_plan`)."""

    x0_dose: np.ndarray  # (states,) amounts given at the first grid point
    dose: np.ndarray  # (points, states) amounts arriving at the next point (last row unused)
    weight: np.ndarray  # (points,) trapezoid weight of each grid point (0 if not an output)
    is_output: np.ndarray  # (points,) bool
    runs: list[tuple[int, int, float]]  # (start, stop, step to the next point)
    rows: np.ndarray | None  # grid point of each output time (None: one point per output)
    f_cmts: tuple[int, ...]  # compartments (0-based) with an F<n> parameter


def time_major_plan(model, params, regimen, t_out):
    """The grid, doses and runs of the time-major path, or None when it does not apply."""
    if t_out.size == 0 or np.any(np.diff(t_out) < 0):
        return None
    n = model.n_states
    with jax.ensure_compile_time_eval():
        doses = E.dose_quantities(model, {}, regimen, checks=False)
        d = {k: np.asarray(v) for k, v in doses._asdict().items()}
    mask = np.asarray(regimen.mask)
    if np.any(mask & (d["is_reset"] | d["is_ss"] | (d["is_dose"] & d["is_infusion"]))):
        return None
    give = d["is_dose"] & mask & (d["t_arrival"] <= t_out[-1])
    t_dose = d["t_arrival"][give]
    grid = np.union1d(t_out, t_dose)
    dose = np.zeros((grid.size, n))
    np.add.at(dose, (np.searchsorted(grid, t_dose), d["cmt"][give]), d["amount"][give])
    # Before the first dose the state stays at the initial state (as in `simulate`).
    first = np.searchsorted(grid, t_dose.min()) if t_dose.size else grid.size
    step = np.diff(grid)
    step[: max(first, 0)] = 0.0
    step = np.append(step, step[-1] if step.size else 0.0)
    cuts = np.flatnonzero(np.diff(step)) + 1
    starts = np.concatenate([[0], cuts]).astype(int)
    stops = np.concatenate([cuts, [grid.size]]).astype(int)
    if starts.size > MAX_TM_RUNS:
        return None
    pos = np.searchsorted(grid, t_out)
    weight = np.zeros(grid.size)
    np.add.at(weight, pos, trapezoid_weights(t_out.astype(float)))
    is_output = np.zeros(grid.size, dtype=bool)
    is_output[pos] = True
    rows = None if pos.size == grid.size and np.all(pos == np.arange(grid.size)) else pos
    f_cmts = tuple(i for i in range(n) if f"F{i + 1}" in params)
    return TimeMajorPlan(
        x0_dose=dose[0],
        dose=np.concatenate([dose[1:], np.zeros((1, n))]),
        weight=weight,
        is_output=is_output,
        runs=[(int(a), int(b), float(step[a])) for a, b in zip(starts, stops, strict=True)],
        rows=rows,
        f_cmts=f_cmts,
    )


def time_major(model, params, in_axes, n_pat, solver, plan):
    """Linear model, instantaneous doses on a known grid: a scan over time, all patients at once.

    The state is kept as one `(patients,)` vector per compartment; each grid point records the
    outputs, then advances by the transition matrix of its step (computed once per distinct
    step and patient) and adds the doses arriving at the next point (times `F<n>`).
    """
    n = model.n_states
    vp = jax.vmap
    x_init = vp(model.initial_state, in_axes=(in_axes,))(params)  # (patients, states)
    x_init = jnp.broadcast_to(x_init, (n_pat, n))
    f = [
        jnp.broadcast_to(jnp.asarray(params[f"F{i + 1}"], dtype=float), (n_pat,))
        if i in plan.f_cmts
        else None
        for i in range(n)
    ]

    def transition(dt):
        """(states, states, patients): column k is the state after `dt` from unit amount in k."""

        def one(p):
            zero = jnp.zeros(n)
            cols = vp(lambda e: model.propagate(p, e, zero, 0.0, dt, solver))(jnp.eye(n))
            return cols.T

        return jnp.transpose(vp(one, in_axes=(in_axes,))(params), (1, 2, 0))

    k = len(model.output_names)

    def outputs(x):
        y = vp(model.output, in_axes=(in_axes, 0))(params, jnp.stack(x, axis=1))
        y = jnp.broadcast_to(y, (n_pat, k))
        return y[:, 0] if k == 1 else y

    def add_dose(x, amounts):
        return [xi + (amounts[i] if f[i] is None else amounts[i] * f[i]) for i, xi in enumerate(x)]

    x = add_dose([x_init[:, i] for i in range(n)], jnp.asarray(plan.x0_dose))
    shape = (n_pat,) if k == 1 else (n_pat, k)
    auc = jnp.zeros(shape)
    cmax = jnp.full(shape, -jnp.inf)
    every_point = bool(np.all(plan.is_output))
    pieces = []
    for start, stop, dt in plan.runs:
        phi = transition(dt)

        def body(carry, inputs, phi=phi):
            x, auc, cmax = carry
            amounts, w, out = inputs
            y = outputs(x)
            auc = auc + w * y
            top = jnp.maximum(cmax, y)
            cmax = top if every_point else jnp.where(out, top, cmax)
            x = [sum(phi[i, j] * x[j] for j in range(n)) for i in range(n)]
            return (add_dose(x, amounts), auc, cmax), y

        sl = slice(start, stop)
        inputs = (
            jnp.asarray(plan.dose[sl]),
            jnp.asarray(plan.weight[sl]),
            jnp.asarray(plan.is_output[sl]),
        )
        (x, auc, cmax), ys = jax.lax.scan(body, (x, auc, cmax), inputs, unroll=4)
        pieces.append(ys)
    ys = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces)  # (points, patients[, k])
    if plan.rows is not None:
        ys = ys[plan.rows]
    return jnp.moveaxis(ys, 0, 1), auc, cmax
