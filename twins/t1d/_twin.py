"""The twin-guided policy: a twin fitted to each day's CGM sets the next day's boluses.

Each patient's twin is the UVA/Padova model at the patient's nominal parameters (the
virtual patient it was sampled around) with one unknown: the insulin sensitivity, a
log-normal multiplier of `Vmx` (insulin-dependent glucose utilisation). Once a day, at
midnight, the twin's posterior given every CGM reading so far is its MAP estimate and
Laplace variance (`twin_map`: the model `twin_model` states as a
`calibration.PopulationModel`, with an additive CGM error, fitted by Gauss-Newton through
the closed-loop replay of the doses given). The twin then predicts the next day (the day
just past's meals again: the twin knows only the past) for a grid of carbohydrate-ratio
factors, at three points of its posterior (Gauss-Hermite), and the next day's boluses use
the factor that maximises the expected smooth endpoint (`objective`). The correction term
is `BasalBolus`'s.

`calibration.individual_map(twin_model(), twin_dataset(...))` fits the same model to the
same data through `pkpd.simulate` of the whole regimen (tests/test_t1d_policies.py checks
that the modes agree); it takes minutes per night there (the regimen is traced, so every
dose and reading is an entry of the engine's timeline with its own ODE solve, and the
curvature is taken in reverse mode), so the nightly fit is `twin_map`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import calibration
import pkpd

from ._cgm import CGMSensor
from ._closed_loop import (
    SENSOR,
    SOLVER,
    Course,
    MealPlan,
    cohort_noise,
    patient_constants,
    samples_per_day,
    simulate_policy,
)
from ._optimise import TBR_WEIGHT, smooth_metrics
from ._patients import VirtualPatient, basal_insulin, insulin_bolus, meal, stack_params
from ._policies import FactorBasalBolus, GivenBoluses

_MODEL = pkpd.UVAPadova()
#: The parameter the twin estimates: a log-normal multiplier of it.
SENSITIVITY = "Vmx"
#: The CGM error the twin assumes: additive, SD 12 mg/dL (the Breton-Kovatchev sensor
#: error's SD is 11.7 mg/dL, its mean 0.7).
CGM_SD = 12.0
#: The factors of the carbohydrate ratio the twin chooses from.
FACTORS = tuple(np.round(np.geomspace(0.5, 2.0, 13), 4).tolist())
#: Gauss-Hermite points and weights (three, probabilists'): exact for polynomials of
#: degree 5 in the standard normal.
_GH_Z = np.array([-np.sqrt(3.0), 0.0, np.sqrt(3.0)])
_GH_W = np.array([1.0, 4.0, 1.0]) / 6.0


def _typical(theta, covariates):
    """The twin's typical values: the patient's nominal parameters (its covariates)."""
    del theta
    return {k: covariates[k] for k in _MODEL.param_names}


def twin_model(prior_sd: float = 0.3, cgm_sd: float = CGM_SD) -> calibration.PopulationModel:
    """The twin's `calibration.PopulationModel`: `pkpd.UVAPadova` at the patient's nominal
    parameters (the covariates), `Vmx` log-normal with SD `prior_sd`, the CGM (`Gsub`,
    output 1) observed with an additive error of SD `cgm_sd` (mg/dL)."""
    return calibration.PopulationModel(
        model=_MODEL,
        theta={},
        omega={SENSITIVITY: prior_sd**2},
        error=calibration.Additive(cgm_sd),
        typical=_typical,
        output=1,
    )


def twin_dataset(
    nominal: Sequence[VirtualPatient],
    plan: MealPlan,
    boluses: np.ndarray,
    basal: np.ndarray,
    cgm: np.ndarray,
    *,
    upto_day: int,
    every: int = 3,
    sensor: CGMSensor = SENSOR,
) -> calibration.Dataset:
    """The twins' data: each patient's doses and CGM readings of days `0 .. upto_day - 1`.

    Doses as `twins.t1d` builds them (`basal_insulin`, `meal`, `insulin_bolus`); the
    readings every `every`-th sample (15 min by default). Padded to the whole plan's size
    (events and readings), so that every day's fit has the same shapes (one compilation).

    **Arguments:** `nominal`: the patients the twins are centred on; `plan`; `boluses`
    `(patients, meals)` and `basal` `(patients,)` as given; `cgm` `(patients, samples)`.
    """
    n = len(nominal)
    dt = sensor.sample_time / 60.0
    per_day = samples_per_day(sensor)
    end = plan.days * 24.0
    carbs = plan.for_patients(n).reshape(n, -1)
    n_meals = upto_day * len(plan.times)
    meal_times = [d * 24.0 + t for d in range(plan.days) for t in plan.times]
    regimens = []
    for i in range(n):
        reg = basal_insulin(float(basal[i]), stop=end)
        for m in range(n_meals):
            if carbs[i, m] > 0:
                reg = reg + meal(float(carbs[i, m]), time=meal_times[m])
            if boluses[i, m] > 0:
                reg = reg + insulin_bolus(float(boluses[i, m]), time=meal_times[m])
        regimens.append(reg.pad(1 + 3 * plan.n_meals))
    idx = np.arange(0, plan.days * per_day, every)
    seen = idx < upto_day * per_day
    times = np.broadcast_to(np.where(seen, idx * dt, (upto_day * per_day - 1) * dt), (n, idx.size))
    dv = np.where(seen, np.asarray(cgm)[:, idx], 0.0)
    observed = np.broadcast_to(seen, (n, idx.size))
    params = stack_params(list(nominal))
    return calibration.Dataset(
        ids=np.array([p.name for p in nominal]),
        regimen=pkpd.stack(regimens),
        time=np.array(times),
        dv=dv,
        observed=np.array(observed),
        blq=np.zeros((n, idx.size), dtype=bool),
        lloq=np.zeros((n, idx.size)),
        occasion=np.zeros((n, idx.size), dtype=np.int32),
        covariates={k: np.asarray(v) for k, v in params.items()},
        records=None,
        occasion_start=np.zeros((n, 1)),
    )


def _map_function(twin_params, basal, plan, *, prior_sd, cgm_sd, iterations, sensor, solver):
    """The twins' MAP and Laplace variance of the log sensitivity multiplier, compiled:
    `(eta0, given boluses, readings, observed mask) -> (mode, variance)`, one value per
    patient (each twin's predictions depend on its own eta alone)."""
    n = int(np.shape(basal)[0])
    per_day = samples_per_day(sensor)
    forward = pkpd.ODESolver(
        solver.solver, rtol=solver.rtol, atol=solver.atol, max_steps=solver.max_steps,
        adjoint=dfx.ForwardMode(),
    )  # fmt: skip
    p0 = {k: jnp.asarray(v) for k, v in twin_params.items()}
    zeros = jnp.zeros((n, plan.days * per_day))
    prior_prec = 1.0 / prior_sd**2
    obs_prec = 1.0 / cgm_sd**2

    def predict(eta, given):
        p = dict(p0, **{SENSITIVITY: p0[SENSITIVITY] * jnp.exp(eta)})
        c = {"basal": jnp.asarray(basal), "boluses": given}
        out = simulate_policy(
            GivenBoluses(), None, p, plan, constants=c, sensor=sensor, solver=forward,
            noise=zeros,
        )  # fmt: skip
        return out.gsub

    def curvature(eta, given, y, mask):
        f, jac = jax.jvp(lambda e: predict(e, given), (eta,), (jnp.ones_like(eta),))
        r = jnp.where(mask, f - y, 0.0)
        j = jnp.where(mask, jac, 0.0)
        grad = obs_prec * jnp.sum(j * r, axis=1) + prior_prec * eta
        hess = obs_prec * jnp.sum(j * j, axis=1) + prior_prec
        return grad, hess

    @eqx.filter_jit
    def fit(eta0, given, y, mask):
        def step(eta, _):
            grad, hess = curvature(eta, given, y, mask)
            return eta - jnp.clip(grad / hess, -0.5, 0.5), None

        eta, _ = jax.lax.scan(step, eta0, None, length=iterations)
        _, hess = curvature(eta, given, y, mask)
        return eta, 1.0 / hess

    return fit


def twin_map(
    nominal: Sequence[VirtualPatient],
    plan: MealPlan,
    boluses: np.ndarray,
    basal: np.ndarray,
    cgm: np.ndarray,
    *,
    upto_day: int,
    every: int = 3,
    prior_sd: float = 0.3,
    cgm_sd: float = CGM_SD,
    iterations: int = 6,
    eta0: np.ndarray | None = None,
    sensor: CGMSensor = SENSOR,
    solver: pkpd.ODESolver = SOLVER,
) -> tuple[np.ndarray, np.ndarray]:
    r"""The twins' posterior of the log sensitivity multiplier $\eta$ given the CGM readings
    of days `0 .. upto_day - 1`: its mode and Laplace SD, one per patient.

    The model is `twin_model`'s (the same as `calibration.individual_map` fits on
    `twin_dataset`): readings every `every`-th sample, additive normal error of SD `cgm_sd`,
    prior $\eta \sim N(0, \text{prior\_sd}^2)$. The predictions are the closed-loop
    replay of the doses given (`GivenBoluses` through `simulate_policy`, one solve between
    meals); $\partial f / \partial \eta$ by forward mode (`jax.jvp`, diffrax
    `ForwardMode`); `iterations` Gauss-Newton steps from `eta0` (default 0), each at most
    0.5 on the log scale. The variance is the inverse Gauss-Newton curvature (FOCE's).

    **Returns:** `(mode, sd)`, arrays `(patients,)`.
    """
    n = len(nominal)
    fit = _map_function(
        stack_params(list(nominal)), np.asarray(basal, dtype=float), plan, prior_sd=prior_sd,
        cgm_sd=cgm_sd, iterations=iterations, sensor=sensor, solver=solver,
    )  # fmt: skip
    y, mask = _observed(cgm, upto_day, every, plan.days, sensor)
    eta = np.zeros(n) if eta0 is None else np.asarray(eta0, dtype=float)
    mode, var = fit(jnp.asarray(eta), jnp.asarray(boluses, dtype=float), y, mask)
    return np.asarray(mode), np.sqrt(np.asarray(var))


def _observed(cgm, upto_day, every, days, sensor):
    per_day = samples_per_day(sensor)
    idx = np.arange(days * per_day)
    mask = (idx % every == 0) & (idx < upto_day * per_day)
    y = np.zeros((np.shape(cgm)[0], days * per_day))
    y[:, : np.shape(cgm)[1]] = np.asarray(cgm)[:, : days * per_day]
    return jnp.asarray(y), jnp.asarray(np.broadcast_to(mask, y.shape))


@dataclasses.dataclass(frozen=True)
class TwinCourse:
    """What `twin_guided` returns: the `Course` of the arm, and the twins' daily record.

    - `course`: the patients' course (as `simulate_policy`'s, over the whole plan).
    - `factors` `(patients, days)`: the carbohydrate-ratio factor used each day (1 on day 1).
    - `eta`, `sd` `(patients, days - 1)`: each night's posterior mode and SD of the log
      sensitivity multiplier (`log(Vmx / Vmx_nominal)`).
    - `seconds`: wall time of each night's fit and choice.
    """

    course: Course
    factors: np.ndarray
    eta: np.ndarray
    sd: np.ndarray
    seconds: np.ndarray


def twin_guided(
    patients: Sequence[VirtualPatient],
    nominal: Sequence[VirtualPatient],
    plan: MealPlan,
    *,
    key: jax.Array,
    prior_sd: float = 0.3,
    factors: Sequence[float] = FACTORS,
    tbr_weight: float = TBR_WEIGHT,
    sensor: CGMSensor = SENSOR,
    solver: pkpd.ODESolver = SOLVER,
    every: int = 3,
    iterations: int = 4,
) -> TwinCourse:
    """Run the twin-guided arm: day by day, with each night's twin fit setting the next
    day's carbohydrate-ratio factor (module docstring).

    **Arguments:**

    - `patients`: the (true) virtual patients; `nominal`: the patients their twins are
      centred on (the same list for the 30 of simglucose; for a sampled population, the
      patients each was sampled around), with the quest data (CR, CF) and basal rate.
    - `plan`, `key`, `sensor`, `solver`: as `simulate_policy` (the same `key` gives the
      same noise as the other arms: common random numbers).
    - `prior_sd`: the twins' prior SD of the log sensitivity multiplier.
    - `factors`: the carbohydrate-ratio factors the twin chooses from.
    - `tbr_weight`: of the objective the twin maximises (`objective`).
    - `every`: the twin sees every `every`-th CGM reading (15 min by default).
    - `iterations`: Gauss-Newton steps of each night's fit (`twin_map`), each from the
      previous night's mode.

    **Returns:** a `TwinCourse`.
    """
    n = len(patients)
    if len(nominal) != n:
        raise ValueError(
            f"twin_guided: expected one nominal patient per patient, got {len(nominal)} for {n}."
        )
    per_day = samples_per_day(sensor)
    days = plan.days
    noise = cohort_noise(sensor, n, days * per_day, key=key)
    consts = patient_constants(list(nominal))
    truth = {k: jnp.asarray(v) for k, v in stack_params(list(patients)).items()}
    twin_params = stack_params(list(nominal))
    fit = _map_function(
        twin_params, consts["basal"], plan, prior_sd=prior_sd, cgm_sd=CGM_SD,
        iterations=iterations, sensor=sensor, solver=solver,
    )  # fmt: skip
    grid = np.asarray(factors, dtype=float)
    k_f, k_g = grid.size, _GH_Z.size
    policy = FactorBasalBolus()
    carbs = plan.for_patients(n)

    # One day's plan as a template (its largest meal bounds how long eating may take); each
    # day's own carbohydrate goes in as a traced array, so one compilation serves every day.
    template = MealPlan(
        times=plan.times,
        carbs=np.full((1, 1, len(plan.times)), float(np.max(plan.carbs))),
        eat_rate=plan.eat_rate,
    )

    @eqx.filter_jit
    def true_day(x, carbs_day, noise_day, factor):
        c = dict(consts, factor=factor[:, None])
        return simulate_policy(
            policy, None, truth, template, constants=c, sensor=sensor, solver=solver,
            noise=noise_day, initial=x, carbs=carbs_day,
        )  # fmt: skip

    @eqx.filter_jit
    def replay(eta, given):
        # The twins at `k_g` posterior points, through every day so far (doses as given).
        p = {k: jnp.repeat(jnp.asarray(v), k_g) for k, v in twin_params.items()}
        p[SENSITIVITY] = p[SENSITIVITY] * jnp.exp(eta.reshape(-1))
        c = {"basal": jnp.repeat(jnp.asarray(consts["basal"]), k_g),
             "boluses": jnp.repeat(given, k_g, axis=0)}  # fmt: skip
        full = MealPlan(times=plan.times, carbs=np.repeat(carbs, k_g, axis=0))
        out = simulate_policy(
            GivenBoluses(), None, p, full, constants=c, sensor=sensor, solver=solver,
            noise=jnp.zeros((n * k_g, days * per_day)),
        )  # fmt: skip
        return out.day_states

    @eqx.filter_jit
    def candidates(eta, x, carbs_day):
        # Each twin point from its predicted state, the next day under each factor.
        p = {k: jnp.repeat(jnp.asarray(v), k_g * k_f) for k, v in twin_params.items()}
        p[SENSITIVITY] = p[SENSITIVITY] * jnp.exp(jnp.repeat(eta.reshape(-1), k_f))
        c = {k: jnp.repeat(jnp.asarray(v), k_g * k_f) for k, v in consts.items()}
        c["factor"] = jnp.tile(jnp.asarray(grid), n * k_g)[:, None]
        out = simulate_policy(
            policy, None, p, template, constants=c, sensor=sensor, solver=solver,
            noise=jnp.zeros((n * k_g * k_f, per_day)), initial=jnp.repeat(x, k_f, axis=0),
            carbs=jnp.repeat(carbs_day, k_g * k_f, axis=0),
        )  # fmt: skip
        m = smooth_metrics(out.gsub)
        score = (m.time_in_range - tbr_weight * m.time_below_70).reshape(n, k_g, k_f)
        return jnp.einsum("g,igf->if", jnp.asarray(_GH_W), score)

    x = jax.vmap(_MODEL.initial_state)(truth)
    factor = np.ones(n)
    used, etas, sds, seconds, parts = [], [], [], [], []
    mode = np.zeros(n)
    meals_per_day = len(plan.times)
    for d in range(days):
        out = true_day(
            x, carbs[:, d : d + 1], noise[:, d * per_day : (d + 1) * per_day], jnp.asarray(factor)
        )
        parts.append(out)
        used.append(factor)
        x = out.state
        if d == days - 1:
            break
        t0 = time.perf_counter()
        so_far = _join(parts)
        given = np.zeros((n, plan.n_meals))
        given[:, : (d + 1) * meals_per_day] = np.asarray(so_far.boluses)
        y, mask = _observed(np.asarray(so_far.cgm), d + 1, every, days, sensor)
        m, var = fit(jnp.asarray(mode), jnp.asarray(given), y, mask)
        mode, sd = np.asarray(m), np.sqrt(np.asarray(var))
        eta = mode[:, None] + sd[:, None] * _GH_Z[None, :]
        states = replay(jnp.asarray(eta), jnp.asarray(given))  # (n * k_g, days, 15)
        x_twin = states[:, d]
        score = np.asarray(candidates(jnp.asarray(eta), x_twin, carbs[:, d : d + 1]))
        factor = grid[np.argmax(score, axis=1)]
        etas.append(mode)
        sds.append(sd)
        seconds.append(time.perf_counter() - t0)
    course = _join(parts)
    return TwinCourse(
        course=course,
        factors=np.stack(used, axis=1),
        eta=np.stack(etas, axis=1) if etas else np.zeros((n, 0)),
        sd=np.stack(sds, axis=1) if sds else np.zeros((n, 0)),
        seconds=np.asarray(seconds),
    )


def _join(parts: list[Course]) -> Course:
    """Consecutive one-day `Course`s as one."""
    cat = lambda name: np.concatenate([np.asarray(getattr(p, name)) for p in parts], axis=1)
    n_samples = sum(np.asarray(p.times).size for p in parts)
    dt = float(np.asarray(parts[0].times)[1] - np.asarray(parts[0].times)[0])
    return Course(
        times=np.arange(n_samples) * dt,
        bg=cat("bg"),
        gsub=cat("gsub"),
        cgm=cat("cgm"),
        boluses=cat("boluses"),
        meal_cgm=cat("meal_cgm"),
        basal=np.asarray(parts[-1].basal),
        state=np.asarray(parts[-1].state),
        day_states=cat("day_states"),
    )
