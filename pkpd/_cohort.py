"""`simulate_cohort`: many patients on one regimen and one sampling schedule."""

from __future__ import annotations

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np

from . import _engine as E
from ._custom_types import Array, Float, Params, Times
from ._models._base import AbstractModel, ODESolver
from ._regimen import Regimen
from ._simulate import _static_schedule, interval_saves, simulate


def _patient_max_rms(x: Array) -> Array:
    """Error norm of a stacked cohort: the largest per-patient RMS (every patient in tolerance)."""
    leaves = jax.tree_util.tree_leaves(x)
    sq = sum(jnp.sum(jnp.reshape(leaf, (leaf.shape[0], -1)) ** 2, axis=1) for leaf in leaves)
    size = sum(int(np.prod(leaf.shape[1:])) for leaf in leaves)
    return jnp.sqrt(jnp.max(sq) / size)


def simulate_cohort(
    model: AbstractModel,
    params: Params,
    regimen: Regimen,
    times: Times,
    *,
    solver: ODESolver = ODESolver(),
    mesh: jax.sharding.Mesh | None = None,
    chunk_size: int | None = 512,
) -> Float[Array, "patients times"] | Float[Array, "patients times outputs"]:
    """Simulate a cohort sharing one regimen and one sampling schedule.

    The result equals `jax.vmap(simulate, (None, 0, None, None))(model, params, regimen, times)`.
    Linear models are exactly that. ODE models, when the regimen and times are concrete and
    no parameter moves the event times, are integrated as one stacked system per event
    interval (diffrax, shared step size, error norm = the largest per-patient RMS, so every
    patient meets `rtol`/`atol`): the solver's bookkeeping is paid once per step for the whole
    cohort instead of once per patient. Otherwise it falls back to `jax.vmap(simulate)`.

    **Arguments:**

    - `model`, `regimen`, `times`, `solver`: as `simulate`.
    - `params`: parameter values with a leading patient axis (scalars are shared).
    - `mesh`: a one-axis `jax.sharding.Mesh` to split the patients over its devices (every
      core of a CPU as XLA host devices, or several GPUs); each device simulates its share
      independently (`jax.shard_map`). The cohort is padded to a multiple of the device count.
    - `chunk_size`: for stacked ODE solves, the number of patients integrated together (each
      stack with its own step sizes, one after another); `None` for one stack.

    **Returns:** `(patients, times)` or `(patients, times, outputs)`.
    """
    if mesh is not None:
        return _sharded(model, params, regimen, times, solver, mesh, chunk_size)
    model.check_params(params)
    leaves = [jnp.asarray(v) for v in params.values()]
    sizes = {leaf.shape[0] for leaf in leaves if leaf.ndim >= 1}
    if len(sizes) != 1:
        raise ValueError(
            "simulate_cohort: expected parameters with one leading patient axis of a common "
            f"size, got shapes { {k: jnp.shape(v) for k, v in params.items()} }."
        )
    n_pat = sizes.pop()
    batched = {k: jnp.asarray(v).ndim >= 1 for k, v in params.items()}
    in_axes = {k: 0 if b else None for k, b in batched.items()}
    schedule = None if model.is_linear else _static_schedule(model, params, regimen, times)
    if schedule is None:
        return jax.vmap(
            lambda p: simulate(model, p, regimen, times, solver=solver), in_axes=(in_axes,)
        )(params)
    if chunk_size and n_pat > chunk_size:
        # Patients are integrated in stacks of `chunk_size`: each stack takes the steps its
        # own hardest patient needs, and its arrays stay in cache.
        n_chunks = -(-n_pat // chunk_size)
        pad = n_chunks * chunk_size - n_pat

        def split(v):
            v = jnp.asarray(v)
            if pad:
                v = jnp.concatenate([v, jnp.repeat(v[-1:], pad, axis=0)])
            return jnp.reshape(v, (n_chunks, chunk_size, *v.shape[1:]))

        shared = {k: v for k, v in params.items() if in_axes[k] is None}
        qs = {k: split(v) for k, v in params.items() if in_axes[k] == 0}

        def one(q):
            return _stacked_ode(
                model, {**shared, **q}, in_axes, chunk_size, regimen, solver, schedule
            )

        y = jax.lax.map(one, qs)
        return jnp.reshape(y, (n_chunks * chunk_size, *y.shape[2:]))[:n_pat]
    return _stacked_ode(model, params, in_axes, n_pat, regimen, solver, schedule)


def _sharded(model, params, regimen, times, solver, mesh, chunk_size):
    from jax.sharding import PartitionSpec

    if len(mesh.axis_names) != 1:
        raise ValueError(f"simulate_cohort: expected a mesh with one axis, got {mesh.axis_names}.")
    axis = mesh.axis_names[0]
    n_dev = mesh.devices.size
    arrays = {k: jnp.asarray(v) for k, v in params.items()}
    sizes = {v.shape[0] for v in arrays.values() if v.ndim >= 1}
    if len(sizes) != 1:
        raise ValueError("simulate_cohort: expected parameters with one leading patient axis.")
    n_pat = sizes.pop()
    pad = (-n_pat) % n_dev

    def padded(v):
        if v.ndim == 0 or pad == 0:
            return v
        return jnp.concatenate([v, jnp.repeat(v[-1:], pad, axis=0)])

    arrays = {k: padded(v) for k, v in arrays.items()}
    specs = {k: PartitionSpec(axis) if v.ndim >= 1 else PartitionSpec() for k, v in arrays.items()}
    fn = jax.shard_map(
        lambda q: simulate_cohort(model, q, regimen, times, solver=solver, chunk_size=chunk_size),
        mesh=mesh,
        in_specs=(specs,),
        out_specs=PartitionSpec(axis),
        check_vma=False,
    )
    return fn(arrays)[:n_pat]


def _stacked_ode(model, params, in_axes, n_pat, regimen, solver, schedule):
    perm, t_sorted, _, idx, t_out = schedule
    n = model.n_states
    n_valid = int(np.sum(np.isfinite(t_sorted)))
    vp = jax.vmap  # shorthand
    x_init = vp(model.initial_state, in_axes=(in_axes,))(params)
    if n_valid == 0:
        states = jnp.broadcast_to(x_init[:, None, :], (n_pat, t_out.size, n))
        return _outputs(model, params, in_axes, states)

    def per_patient(p):
        doses = E.dose_quantities(model, p, regimen)
        ev = E.event_entries(regimen, doses)
        s, _ = E.sort_entries(ev, perm)
        ss_x, ss_r = E.ss_tables(model, solver, p, regimen, doses, s)
        return s, ss_x, ss_r

    s, ss_x, ss_r = vp(per_patient, in_axes=(in_axes,))(params)
    keep = slice(0, n_valid)
    s = E.Entries(*(a[:, keep] for a in s))
    ss_x, ss_r = ss_x[:, keep], ss_r[:, keep]
    t_ev, t_next, ts, pos = interval_saves(t_sorted, idx, t_out, n_valid)

    def field(t, y, args):
        x, r = y, args
        return vp(model.vector_field, in_axes=(None, 0, in_axes))(t, x, params) + r

    controller = dfx.PIDController(rtol=solver.rtol, atol=solver.atol, norm=_patient_max_rms)

    def body(carry, inputs):
        x, r = carry
        e, sx, sr, t0, t1, tk = inputs
        x, r = vp(
            lambda p, ee, a, b, xx, rr: E.apply_entry(model, p, ee, a, b, xx, rr),
            in_axes=(in_axes, 0, 0, 0, 0, 0),
        )(params, e, sx, sr, x, r)
        sol = dfx.diffeqsolve(
            dfx.ODETerm(field),
            solver.solver,
            t0,
            t1,
            None,
            x,
            args=r,
            stepsize_controller=controller,
            saveat=dfx.SaveAt(ts=tk, t1=True),
            max_steps=solver.max_steps,
            adjoint=solver.adjoint,
            throw=True,
        )
        assert sol.ys is not None
        return (sol.ys[-1], r), sol.ys[:-1]

    # Entries come patient-major; the scan runs over entries.
    s_t = E.Entries(*(jnp.swapaxes(a, 0, 1) for a in s))
    inputs = (
        s_t,
        jnp.swapaxes(ss_x, 0, 1),
        jnp.swapaxes(ss_r, 0, 1),
        jnp.asarray(t_ev),
        jnp.asarray(t_next),
        jnp.asarray(ts),
    )
    r0 = jnp.zeros_like(x_init)
    _, ys = jax.lax.scan(body, (x_init, r0), inputs)  # (entries, width, patients, n)
    states = ys[np.clip(idx, 0, None), pos]  # (times, patients, n)
    states = jnp.where(jnp.asarray(idx < 0)[:, None, None], x_init[None, :, :], states)
    return _outputs(model, params, in_axes, jnp.swapaxes(states, 0, 1))


def _outputs(model, params, in_axes, states):
    y = jax.vmap(lambda p, xs: jax.vmap(lambda x: model.output(p, x))(xs), in_axes=(in_axes, 0))(
        params, states
    )
    return y[..., 0] if len(model.output_names) == 1 else y
