"""The closed-loop cohort simulation: meals, basal insulin and a bolus policy, CGM readings.

`simulate_policy` runs every patient of a cohort through a `MealPlan` under a dosing policy
(`twins.t1d.BasalBolus`, `ParametrisedPolicy`, or any `Policy`), vmapped over patients and
differentiable in the policy's parameters. Between meals the patient is one diffrax solve of
`pkpd.UVAPadova` (saving every CGM sample time); at each meal the policy reads the CGM, sets
the bolus, and the meal and the bolus go in as `pkpd.Regimen` doses through `pkpd.advance`
(the engine's own timeline: the meal is a zero-order input of the eating time, the insulin
an instantaneous dose into the subcutaneous depot), sample time by sample time while the
patient eats; the basal insulin is an infusion running throughout (`pkpd.running_rates`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import pkpd

from ._cgm import CGMSensor, cgm_noise
from ._patients import _MIN_PER_H, EAT_RATE, VirtualPatient, stack_params

_MODEL = pkpd.UVAPadova()
#: The solver of the closed-loop simulation: diffrax Tsit5 at rtol 1e-6 (the glucose agrees
#: with rtol 1e-8 to about 1e-3 mg/dL: tests/test_t1d_policies.py).
SOLVER = pkpd.ODESolver(rtol=1e-6, atol=1e-6)
#: The default sensor (5-min readings, Breton-Kovatchev noise, 39-400 mg/dL).
SENSOR = CGMSensor()
_INSULIN = _MODEL.insulin_cmt
_MEAL = _MODEL.meal_cmt
_MARKER = _MODEL.meal_start_cmt


class PlanError(ValueError):
    """A meal plan the closed-loop simulation cannot run (the message names the field)."""


@dataclasses.dataclass(frozen=True)
class MealPlan:
    """The meals of a cohort: the same times every day, carbohydrate per patient, day, meal.

    **Fields:**

    - `times`: the meals' times of day (h), increasing, in (0, 24), each on the sensor's
      sample grid (a multiple of 5 min by default).
    - `carbs`: carbohydrate (g), shape `(patients, days, meals)` (or `(days, meals)`, the
      same for everyone), each >= 0 (0: the meal is skipped; its bolus is still computed).
    - `eat_rate`: how fast patients eat (g/min; simglucose's 5).

    Each meal is eaten at `eat_rate` and must be finished before the next one starts (a
    meal of 100 g takes 20 min at 5 g/min).
    """

    times: tuple[float, ...]
    carbs: np.ndarray
    eat_rate: float = EAT_RATE

    def __post_init__(self):
        times = tuple(float(t) for t in self.times)
        object.__setattr__(self, "times", times)
        if not times:
            raise PlanError("MealPlan.times: expected at least one meal time, got none.")
        if any(not (0.0 < t < 24.0) for t in times) or any(
            b <= a for a, b in itertools.pairwise(times)
        ):
            raise PlanError(
                f"MealPlan.times: expected increasing times of day in (0, 24) h, got {times}."
            )
        carbs = np.asarray(self.carbs, dtype=float)
        if carbs.ndim == 2:
            carbs = carbs[None]
        if carbs.ndim != 3 or carbs.shape[2] != len(times) or carbs.shape[1] < 1:
            raise PlanError(
                f"MealPlan.carbs: expected shape (patients, days, {len(times)}) or (days, "
                f"{len(times)}), got {np.shape(self.carbs)}."
            )
        bad = ~np.isfinite(carbs) | (carbs < 0)
        if bad.any():
            i, d, m = (int(v) for v in np.argwhere(bad)[0])
            raise PlanError(
                f"MealPlan.carbs[{i}, {d}, {m}]: expected carbohydrate >= 0 (g), got "
                f"{carbs[i, d, m]!r}."
            )
        if not (math.isfinite(self.eat_rate) and self.eat_rate > 0):
            raise PlanError(f"MealPlan.eat_rate: expected > 0 (g/min), got {self.eat_rate!r}.")
        object.__setattr__(self, "carbs", carbs)

    @property
    def days(self) -> int:
        return int(self.carbs.shape[1])

    @property
    def n_meals(self) -> int:
        """Meals in all (per patient): days x meals a day."""
        return self.days * len(self.times)

    def for_patients(self, n: int) -> np.ndarray:
        """`carbs` as `(n, days, meals)` (a shared plan repeated)."""
        if self.carbs.shape[0] == n:
            return self.carbs
        if self.carbs.shape[0] == 1:
            return np.repeat(self.carbs, n, axis=0)
        raise PlanError(
            f"MealPlan.carbs: holds {self.carbs.shape[0]} patients' meals, the cohort has {n}."
        )


def random_meals(
    n_patients: int,
    days: int,
    *,
    seed: int,
    times: tuple[float, ...] = (7.0, 12.0, 18.0),
    mean: tuple[float, ...] = (45.0, 70.0, 80.0),
    sd: tuple[float, ...] = (10.0, 10.0, 10.0),
    low: float = 10.0,
    high: float = 120.0,
) -> MealPlan:
    """A meal plan with normally distributed meal sizes (clipped to `[low, high]` g).

    The default day is the meal test of docs/t1d.md (45, 70 and 80 g at 07:00, 12:00 and
    18:00) with an SD of 10 g per meal (simglucose's random scenario draws 45, 70 and 80 g
    with SDs of 10 g around 07:00, 12:00 and 18:00 too, at random times; here the times are
    fixed). The same `seed` gives the same meals.
    """
    if not (len(times) == len(mean) == len(sd)):
        raise PlanError(
            f"random_meals: expected one mean and one sd per meal time, got {len(times)} "
            f"times, {len(mean)} means and {len(sd)} sds."
        )
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_patients, days, len(times)))
    carbs = np.clip(np.asarray(mean) + np.asarray(sd) * z, low, high)
    return MealPlan(times=tuple(times), carbs=carbs)


class MealContext(NamedTuple):
    """What a policy sees when a meal starts (one patient; traced values).

    - `cgm`: the CGM reading at the meal's start, before any dose (mg/dL).
    - `carbs`: the meal's carbohydrate (g), as the patient announces it.
    - `meal`: which meal of the day (0-based), `day` (0-based), `index` (0-based meal count
      from the start), `time` (h from the start).
    """

    cgm: Any
    carbs: Any
    meal: Any
    day: Any
    index: Any
    time: Any


class Policy(eqx.Module):
    """An insulin dosing policy: a basal rate, and a bolus at each meal.

    Subclasses give `basal(theta, patient)` (U/h) and `bolus(theta, patient, context)` (U);
    both jittable, for one patient. `theta` holds the policy's parameters (what gradients
    are taken with respect to; `None` for a policy without any); `patient` the patient's own
    constants (`patient_constants`: `cr` (g/U), `cf` (mg/dL per U), `basal` (U/h), and any
    arm-specific arrays).
    """

    def basal(self, theta, patient):
        return patient["basal"]

    def bolus(self, theta, patient, context: MealContext):
        raise NotImplementedError

    def initial_theta(self) -> Any:
        """The parameters the policy starts from (`None` for none)."""
        return None


def patient_constants(patients: list[VirtualPatient]) -> dict[str, np.ndarray]:
    """Each patient's carbohydrate ratio `cr` (g/U), correction factor `cf` (mg/dL per U) and
    basal rate `basal` (U/h) from the quest data and `u2ss`, one array per name."""
    return {
        "cr": np.array([p.carb_ratio for p in patients], dtype=float),
        "cf": np.array([p.correction_factor for p in patients], dtype=float),
        "basal": np.array([p.basal for p in patients], dtype=float),
    }


@dataclasses.dataclass(frozen=True)
class _Schedule:
    """The static layout of the simulation: segments from one meal to the next."""

    dt: float  # h between CGM samples
    n_samples: int  # readings from 0 to the end (exclusive)
    eat_windows: int  # sample intervals simulated through the dosing engine at each meal
    t0: np.ndarray  # (segments,) meal times (h from the start)
    t1: np.ndarray  # (segments,) the next meal or the end
    start: np.ndarray  # (segments,) sample index of each meal
    ts: np.ndarray  # (segments, K) save times after the eating windows, padded with t1
    count: np.ndarray  # (segments,) samples in each segment
    meal: np.ndarray  # (segments,) meal of the day
    day: np.ndarray  # (segments,)
    index: np.ndarray  # (segments,) meal count from the start
    lead: int  # 1 when a segment without a meal comes first (0 to the first meal)
    width: int  # samples per segment, padded
    days: int


def _schedule(plan: MealPlan, sensor: CGMSensor) -> _Schedule:
    dt = sensor.sample_time / _MIN_PER_H
    per_day = 24.0 / dt
    if abs(per_day - round(per_day)) > 1e-9:
        raise PlanError(
            f"CGMSensor.sample_time: expected a divisor of 24 h, got {sensor.sample_time} min."
        )
    per_day = round(per_day)
    slots = []
    for t in plan.times:
        k = t / dt
        if abs(k - round(k)) > 1e-9:
            raise PlanError(
                f"MealPlan.times: expected each meal on the sensor's {sensor.sample_time:g}-min "
                f"grid, got {t} h."
            )
        slots.append(round(k))
    longest = float(np.max(plan.carbs)) / plan.eat_rate / sensor.sample_time
    windows = max(1, math.ceil(longest - 1e-12))
    days = plan.days
    n = days * per_day
    starts = np.array([d * per_day + s for d in range(days) for s in slots])
    lead = int(starts[0] > 0)  # a segment from 0 to the first meal, without a meal
    if lead:
        starts = np.concatenate([[0], starts])
    ends = np.append(starts[1:], n)
    gaps = ends - starts
    if gaps.min() < windows + 1:
        raise PlanError(
            f"MealPlan: a meal of {np.max(plan.carbs):g} g takes {windows} sample times to "
            f"eat at {plan.eat_rate:g} g/min, longer than the {int(gaps.min()) - 1} before the "
            "next meal; space the meals further apart or make them smaller."
        )
    width = int(gaps.max())
    k = width - windows - 1
    ts = np.empty((starts.size, max(k, 1)))
    for i, (a, b) in enumerate(zip(starts, ends, strict=True)):
        grid = np.arange(a + windows + 1, b) * dt
        ts[i] = b * dt
        ts[i, : grid.size] = grid
    return _Schedule(
        dt=dt,
        n_samples=n,
        eat_windows=windows,
        t0=starts * dt,
        t1=ends * dt,
        start=starts,
        ts=ts,
        count=gaps,
        meal=np.concatenate([[0] * lead, np.tile(np.arange(len(plan.times)), days)]),
        day=np.concatenate([[0] * lead, np.repeat(np.arange(days), len(plan.times))]),
        index=np.concatenate([[0] * lead, np.arange(plan.n_meals)]),
        lead=lead,
        width=width,
        days=days,
    )


def _gsub(params, x):
    return _MODEL.output(params, x)[..., 1]


def _meal_regimen(carbs, bolus, time, eat_rate, marker: Any = 1.0):
    """The meal (carbohydrate at `eat_rate`, and its start marker) and the insulin bolus,
    as `pkpd` doses: what `twins.t1d.meal` and `insulin_bolus` build, for traced values."""
    return pkpd.concatenate(
        [
            pkpd.infusion(carbs, rate=eat_rate * _MIN_PER_H, time=time, cmt=_MEAL),
            pkpd.bolus(marker, time=time, cmt=_MARKER),
            pkpd.bolus(bolus, time=time, cmt=_INSULIN),
        ]
    )


class Course(NamedTuple):
    """What `simulate_policy` returns (patient axis first).

    - `times` `(n,)`: the sample times (h from the start, every `sample_time`).
    - `bg` `(patients, n)`: plasma glucose; `gsub` subcutaneous glucose (mg/dL).
    - `cgm` `(patients, n)`: the CGM readings (`gsub` with the sensor's noise, limited to
      its range).
    - `boluses` `(patients, meals)`: the insulin given at each meal (U), `meal_cgm` the
      reading the policy saw there.
    - `basal` `(patients,)`: the basal rate (U/h).
    - `state` `(patients, 15)`: the model state at the end; `day_states` `(patients, days,
      15)` at the end of each day (midnight; the last is `state`).
    """

    times: Any
    bg: Any
    gsub: Any
    cgm: Any
    boluses: Any
    meal_cgm: Any
    basal: Any
    state: Any
    day_states: Any


def _one_patient(policy, theta, params, patient, carbs, noise, x0, sched, sensor, eat_rate, solver):
    """The closed loop of one patient (traced): `carbs` `(segments,)`, `noise` `(n,)`, the
    state `x0` at the start."""
    basal = policy.basal(theta, patient)
    end = sched.n_samples * sched.dt
    # The basal insulin: an infusion from 0 to the end (running from the first sample on).
    basal_dose = pkpd.infusion(basal * end, rate=basal, time=0.0, cmt=_INSULIN)
    r0 = pkpd.running_rates(_MODEL, params, basal_dose, sched.dt)
    dt = sched.dt

    def segment(carry, xs):
        x, r = carry
        t0, t1, start, ts, meal, day, index, c, is_meal = xs
        x_before = x
        before = _MODEL.output(params, x)
        cgm0 = jnp.clip(before[1] + noise[start], sensor.low, sensor.high)
        ctx = MealContext(cgm=cgm0, carbs=c, meal=meal, day=day, index=index, time=t0)
        # The segment before the first meal (when there is one) has no meal and no bolus.
        u = jnp.where(is_meal, policy.bolus(theta, patient, ctx), 0.0)
        doses = _meal_regimen(c, u, t0, eat_rate, marker=jnp.where(is_meal, 1.0, 0.0))

        def window(carry, j):
            x, r = carry
            a = t0 + dt * j
            out = pkpd.advance(
                _MODEL, params, x, doses, a, a + dt, solver=solver, rates=r, checks=False
            )
            return (out.state, out.rates), out.state

        (x, r), eaten = jax.lax.scan(
            window, (x, r), jnp.arange(sched.eat_windows, dtype=before.dtype)
        )
        ys, x = _MODEL.propagate_saving(params, x, r, t0 + dt * sched.eat_windows, t1, ts, solver)
        states = jnp.concatenate([x_before[None], eaten, ys])
        return (x, r), (states, u, cgm0)

    xs = (
        jnp.asarray(sched.t0),
        jnp.asarray(sched.t1),
        jnp.asarray(sched.start),
        jnp.asarray(sched.ts),
        jnp.asarray(sched.meal),
        jnp.asarray(sched.day),
        jnp.asarray(sched.index),
        jnp.concatenate([jnp.zeros(sched.lead, carbs.dtype), carbs]),
        jnp.asarray(np.arange(sched.t0.size) >= sched.lead),
    )
    (x, _), (outs, boluses, meal_cgm) = jax.lax.scan(segment, (x0, r0), xs)
    boluses, meal_cgm = boluses[sched.lead :], meal_cgm[sched.lead :]
    # Segment k holds `count[k]` samples, padded to `width`: keep the real ones, in order.
    keep = np.concatenate([k * outs.shape[1] + np.arange(c) for k, c in enumerate(sched.count)])
    flat = outs.reshape(-1, outs.shape[-1])[keep]
    y = jax.vmap(lambda s: _MODEL.output(params, s))(flat)
    bg, gsub = y[:, 0], y[:, 1]
    cgm = jnp.clip(gsub + noise, sensor.low, sensor.high)
    per_day = sched.n_samples // sched.days
    # The state at the end of each day (midnight): the next day's first sample, or the end.
    ends = [flat[d * per_day] for d in range(1, sched.days)] + [x]
    return bg, gsub, cgm, boluses, meal_cgm, basal, jnp.stack(ends)


def simulate_policy(
    policy: Policy,
    theta: Any,
    patients: list[VirtualPatient] | Mapping[str, Any],
    plan: MealPlan,
    *,
    key: jax.Array | None = None,
    sensor: CGMSensor = SENSOR,
    constants: Mapping[str, Any] | None = None,
    solver: pkpd.ODESolver = SOLVER,
    noise: Any = None,
    initial: Any = None,
    carbs: Any = None,
) -> Course:
    """Simulate a cohort under a dosing policy, meal by meal (vmapped over patients).

    Traceable: call it inside `jax.jit` and differentiate a function of the result with
    respect to `theta` (`jax.grad`); the meal plan, the sensor and the patients' number are
    static.

    **Arguments:**

    - `policy`: a `Policy`; `theta` its parameters (`policy.initial_theta()`; `None` for a
      policy without any).
    - `patients`: a list of `VirtualPatient`s, or their parameters already stacked
      (`{name: (patients,) array}`, `stack_params`) with `constants` given.
    - `plan`: the `MealPlan` (its carbs for every patient, or one plan for all).
    - `key`: a JAX PRNG key for the CGM noise (`fold_in(key, patient)` per patient: the same
      patient gets the same noise in every arm, common random numbers).
    - `sensor`: the `CGMSensor`.
    - `constants`: each patient's `cr`, `cf`, `basal` (and any arm-specific arrays);
      by default `patient_constants(patients)`.
    - `solver`: `pkpd.ODESolver` (default `SOLVER`, Tsit5 at rtol 1e-6).
    - `noise`: the sensor error at every sample, `(patients, samples)` (mg/dL), instead of
      drawing it from `key` (`cgm_noise`); zeros for noise-free readings.
    - `initial`: the state at the start, `(patients, 15)`; default each patient's basal
      steady state. The model is autonomous, so a plan may start from any state (the end
      of an earlier `Course`): its clock starts at 0.
    - `carbs`: the carbohydrate `(patients, days, meals)` to eat instead of `plan.carbs`
      (traced values allowed, so that one compiled simulation serves many plans of the same
      shape); each at most `plan.carbs`' largest, which sets how long eating may take.

    **Returns:** a `Course`.
    """
    if isinstance(patients, Mapping):
        params = {k: jnp.asarray(v) for k, v in patients.items()}
        if constants is None:
            raise ValueError("simulate_policy: stacked parameters need `constants` too.")
    else:
        params = {k: jnp.asarray(v) for k, v in stack_params(list(patients)).items()}
        constants = patient_constants(list(patients)) if constants is None else constants
    n = int(next(iter(params.values())).shape[0])
    sched = _schedule(plan, sensor)
    if carbs is None:
        carbs = plan.for_patients(n)
    carbs = jnp.asarray(carbs)
    if carbs.shape != (n, plan.days, len(plan.times)):
        raise ValueError(
            f"simulate_policy: expected carbs of shape {(n, plan.days, len(plan.times))} "
            f"(patients, days, meals), got {carbs.shape}."
        )
    carbs = carbs.reshape(n, -1)
    if noise is None:
        if key is None:
            raise ValueError("simulate_policy: give a `key` for the CGM noise, or `noise`.")
        noise = cohort_noise(sensor, n, sched.n_samples, key=key)
    noise = jnp.asarray(noise)
    if noise.shape != (n, sched.n_samples):
        raise ValueError(
            f"simulate_policy: expected noise of shape {(n, sched.n_samples)} (patients, "
            f"samples), got {noise.shape}."
        )
    if initial is None:
        x0 = jax.vmap(_MODEL.initial_state)(params)
    else:
        x0 = jnp.asarray(initial)
    consts = {k: jnp.asarray(v) for k, v in constants.items()}

    def one(p, c, cb, nz, x):
        return _one_patient(policy, theta, p, c, cb, nz, x, sched, sensor, plan.eat_rate, solver)

    bg, gsub, cgm, boluses, meal_cgm, basal, day_states = jax.vmap(one)(
        params, consts, carbs, noise, x0
    )
    times = jnp.asarray(np.arange(sched.n_samples) * sched.dt)
    return Course(times, bg, gsub, cgm, boluses, meal_cgm, basal, day_states[:, -1], day_states)


def cohort_noise(sensor: CGMSensor, n_patients: int, n_samples: int, *, key: jax.Array):
    """The sensor error of `n_patients` patients at `n_samples` sample times, `(patients,
    samples)`: patient `i`'s from `fold_in(key, i)` (`cgm_noise`), so that a patient's
    noise does not depend on the others (common random numbers across arms)."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_patients))
    return jax.vmap(lambda k: cgm_noise(sensor, n_samples, key=k))(keys)


def samples_per_day(sensor: CGMSensor = SENSOR) -> int:
    """CGM readings in a day (288 at 5 min)."""
    return round(24.0 * _MIN_PER_H / sensor.sample_time)


Constants = Mapping[str, Any]
BolusFn = Callable[[Any, Constants, MealContext], Any]
