"""Optimising a dosing policy by gradients of the trial endpoint through the cohort.

The endpoint of a T1D trial is the time in range 70-180 mg/dL with a penalty on the time
below 70 (Battelino et al. 2019). Counted as `cgm_metrics` counts it, its gradient is zero
almost everywhere, so the optimisation uses smooth surrogates of the indicator functions
(`smooth_metrics`: logistic functions of width `scale` mg/dL) and differentiates them
through the vmapped closed-loop simulation (`simulate_policy`) with `jax.grad`; `optax.adam`
takes the steps.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import pkpd

from ._cgm import CGMSensor
from ._closed_loop import SENSOR, SOLVER, MealPlan, Policy, simulate_policy
from ._patients import VirtualPatient

#: The width (mg/dL) of the logistic functions standing for the indicators of the range.
SMOOTH_SCALE = 5.0
#: The weight of the time below 70 mg/dL in the objective: 1 % of time below 70 costs as
#: much as 4 % of time in range.
TBR_WEIGHT = 4.0


class SmoothMetrics(NamedTuple):
    """Smooth surrogates of three consensus metrics (percent of readings, per patient)."""

    time_in_range: Any
    time_below_70: Any
    time_below_54: Any


def smooth_metrics(glucose, scale: float = SMOOTH_SCALE) -> SmoothMetrics:
    r"""Smooth time in range 70-180, below 70 and below 54 (percent) of each trace.

    Each indicator is replaced by a logistic function $\sigma(u) = 1/(1 + e^{-u})$ of width
    $s$ = `scale` (mg/dL):

    $$\widetilde{TIR} = 100\,\overline{\sigma\big(\tfrac{g - 70}{s}\big)\,
      \sigma\big(\tfrac{180 - g}{s}\big)}, \qquad
      \widetilde{TBR}_{70} = 100\,\overline{\sigma\big(\tfrac{70 - g}{s}\big)}, \qquad
      \widetilde{TBR}_{54} = 100\,\overline{\sigma\big(\tfrac{54 - g}{s}\big)}$$

    (means over the readings, the last axis). They tend to the counted metrics as
    $s \to 0$; a reading $2s$ inside the range counts 0.88, $4s$ inside 0.98.

    **Arguments:** `glucose` `(..., readings)` (mg/dL); `scale` (mg/dL), > 0.
    """
    g = jnp.asarray(glucose)
    sig = jax.nn.sigmoid
    return SmoothMetrics(
        time_in_range=100.0 * jnp.mean(sig((g - 70.0) / scale) * sig((180.0 - g) / scale), -1),
        time_below_70=100.0 * jnp.mean(sig((70.0 - g) / scale), -1),
        time_below_54=100.0 * jnp.mean(sig((54.0 - g) / scale), -1),
    )


def objective(glucose, *, tbr_weight: float = TBR_WEIGHT, scale: float = SMOOTH_SCALE):
    r"""The trial endpoint to maximise, smooth: $\widetilde{TIR} - w\,\widetilde{TBR}_{70}$
    (percent, `smooth_metrics`), averaged over patients (the leading axes).

    **Arguments:** `glucose` `(patients, readings)`; `tbr_weight` $w$ (default 4);
    `scale` as `smooth_metrics`.
    """
    m = smooth_metrics(glucose, scale)
    return jnp.mean(m.time_in_range - tbr_weight * m.time_below_70)


def split_patients(
    patients: Mapping[str, VirtualPatient] | Sequence[VirtualPatient],
    *,
    test_per_group: int = 3,
    seed: int = 0,
) -> tuple[list[VirtualPatient], list[VirtualPatient]]:
    """Split patients into a training and a held-out set, stratified by age group.

    In each group (`adolescent`, `adult`, `child`) `test_per_group` patients, drawn at
    random with `seed`, are held out; the rest train. Each list keeps the input order.

    **Returns:** `(train, test)`.
    """
    items = list(patients.values()) if isinstance(patients, Mapping) else list(patients)
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for group in sorted({p.group for p in items}):
        names = [p.name for p in items if p.group == group]
        if test_per_group >= len(names):
            raise ValueError(
                f"split_patients: group {group!r} has {len(names)} patients; cannot hold out "
                f"{test_per_group} and train on the rest."
            )
        held.update(rng.choice(names, size=test_per_group, replace=False).tolist())
    train = [p for p in items if p.name not in held]
    test = [p for p in items if p.name in held]
    return train, test


@dataclasses.dataclass(frozen=True)
class Optimised:
    """What `optimise_policy` returns.

    - `theta`: the optimised parameters; `theta0` where it started.
    - `history`: the smooth objective (`objective`, percent) before each step, and after
      the last (`steps + 1` values).
    - `seconds`: wall time (the first step's compilation included); `compile_seconds`.
    """

    theta: Any
    theta0: Any
    history: np.ndarray
    seconds: float
    compile_seconds: float


def optimise_policy(
    policy: Policy,
    patients: Sequence[VirtualPatient],
    plan: MealPlan,
    *,
    key: jax.Array,
    steps: int = 40,
    learning_rate: float = 0.05,
    theta0: Any = None,
    tbr_weight: float = TBR_WEIGHT,
    scale: float = SMOOTH_SCALE,
    sensor: CGMSensor = SENSOR,
    solver: pkpd.ODESolver = SOLVER,
) -> Optimised:
    """Maximise the smooth endpoint (`objective`) of a cohort over the policy's parameters.

    The objective is the mean over `patients` of the smooth time in range minus
    `tbr_weight` times the smooth time below 70, on the CGM readings of the closed-loop
    simulation through `plan` (the same noise, from `key`, at every step: common random
    numbers). Its gradient with respect to `theta` goes through the vmapped simulation
    (`jax.value_and_grad`, one compiled function); Adam (`optax.adam(learning_rate)`)
    takes `steps` steps.

    **Returns:** an `Optimised`.
    """
    theta = policy.initial_theta() if theta0 is None else theta0
    if theta is None:
        raise ValueError("optimise_policy: the policy has no parameters to optimise.")
    start = jax.tree.map(jnp.asarray, theta)

    def loss(th):
        course = simulate_policy(
            policy, th, list(patients), plan, key=key, sensor=sensor, solver=solver
        )
        return -objective(course.cgm, tbr_weight=tbr_weight, scale=scale)

    value_and_grad = eqx.filter_jit(jax.value_and_grad(loss))
    opt = optax.adam(learning_rate)
    state = opt.init(start)
    theta = start
    history = []
    t0 = time.perf_counter()
    compile_seconds = 0.0
    for k in range(steps + 1):
        tk = time.perf_counter()
        value, grad = value_and_grad(theta)
        history.append(-float(value))
        if k == 0:
            compile_seconds = time.perf_counter() - tk
        if k == steps:
            break
        # optax's bias correction raises a float to an integer count, which the strict
        # dtype promotion of the tests refuses (as in surrogates/_training.py).
        with jax.numpy_dtype_promotion("standard"):
            updates, state = opt.update(grad, state, theta)
            theta = optax.apply_updates(theta, updates)
    return Optimised(
        theta=jax.tree.map(np.asarray, theta),
        theta0=jax.tree.map(np.asarray, start),
        history=np.asarray(history),
        seconds=time.perf_counter() - t0,
        compile_seconds=compile_seconds,
    )
