"""Virtual trials: a population x arms x endpoints, simulated period by period.

A `Trial` gives every virtual patient every arm (the same patients, the same assay noise:
common random numbers), simulates the drug's population model one dosing period at a time
so that adaptive arms can change the dose from simulated measurements, and reduces each
patient's course to endpoint values. `run_trial` does it chunk by chunk, writes Parquet
parts atomically and resumes an interrupted run (`twins.trials.run_trial`).

The simulation of one chunk is one `jax.jit` call per arm: the patient axis is vmapped (and
sharded over the local devices when there are several), the periods are a `lax.scan`, and
each period's dose goes through the `pkpd` event engine (`pkpd.advance`, with the drug's
route building the dose record), so that lag times, bioavailability, infusions and their
ends behave exactly as in `pkpd.simulate`; the model is advanced with the trial's solver
(by default `pkpd.FixedStep(1.0)`: exact linear PK, RK4 for PD states).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import pkpd

from .._population import Population
from ..drugs import Drug
from ._arms import Arm
from ._arms import DosingArm as DosingArm
from ._arms import Nomogram as Nomogram
from ._endpoints import AUC, Cmax, Course, Ctrough, Endpoint, TargetAttainment, plain_value
from ._endpoints import AnyAbove as AnyAbove  # re-exported for older imports of this module
from ._endpoints import FinalLevel as FinalLevel
from ._endpoints import MeanDose as MeanDose
from ._endpoints import TimeInRange as TimeInRange
from ._endpoints import TimeToRange as TimeToRange
from ._subgroups import Subgroup, subgroup

#: Virtual patients are drawn in blocks of this size, block b from `fold_in(key, b)`, so that
#: patient i is the same whatever N and the chunk size are.
POPULATION_BLOCK = 1000


def describe_population(population: Any) -> dict[str, Any]:
    """What determines the virtual patients: the sampler and its arguments, or a hash of a
    fixed cohort's table (part of the spec hash, so that editing either starts afresh)."""
    if isinstance(population, Population):
        frame = population.to_dataframe()
        digest = hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()
        return {"fixed_cohort_rows": len(frame), "sha256": digest}
    func = getattr(population, "func", population)
    name = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
    return {
        "sampler": name,
        "args": plain_value(list(getattr(population, "args", ()))),
        "keywords": plain_value(dict(getattr(population, "keywords", {}) or {})),
    }


# ----------------------------------------------------------------------------- the trial


PopulationSource = Population | Callable[..., Population]


@dataclasses.dataclass(frozen=True, eq=False)
class Trial:
    r"""A virtual trial: a population x arms x endpoints.

    **Fields:**

    - `name`, `description`: identifiers for the results and the report.
    - `drug`: a `twins.Drug`; its population model gives each patient's parameters
      (typical values from the covariates, log-normal between-subject variability) and
      its residual error model gives the assay noise of the measured values.
    - `population`: a fixed `Population` (patients are taken in order; N must not exceed its
      size) or a sampler `sampler(n, *, key) -> Population` such as
      `functools.partial(Population.sample, ancestry="White")`.
    - `arms`: the `Arm`s.
    - `reference_arm`: the arm the others are compared with (default the first).
    - `endpoints`: the `Endpoint`s.
    - `days`: trial duration in dosing periods (days for once-daily drugs).
    - `interval`: the dosing period (h).
    - `output`: index of the model output that is measured (default the drug model's).
    - `subgroups`: what to report endpoints by: `Subgroup` objects (`AgeGroup()`,
      `RenalFunction()`, `PopulationColumn("ancestry")`, `CovariateLevels("CYP2C9")`) or
      their names (`"age_group"`, `"renal_function"`, `"ancestry"`, `"sex"`, or a key of
      `Population.covariates()`); stored as `Subgroup` objects.
    - `covariates`: numeric covariate keys for the population summary.
    - `bands_edges`: bin edges of the histogram behind the median/5-95% bands of the output.
    - `solver`: how the model is advanced over a period (default `pkpd.FixedStep(1.0)`).
    - `exposure_steps`: sub-steps at which the output is evaluated for AUC and Cmax
      endpoints, between consecutive dosing entries of a period (the dose's arrival after
      any lag, the end of an infusion): composite Simpson rule, made even (`pkpd.advance`).
      Used only when an endpoint needs them, since it multiplies the work.
    - `published`: published figures to show beside the simulated ones,
      `{arm: {endpoint: value}}` plus `"source"` and `"notes"`.
    - `published_differences`: published differences against the reference arm,
      `{arm: {endpoint: {"estimate", "ci_low", "ci_high"}}}`.
    - `assumptions`: statements of what had to be assumed (shown in the report).
    """

    name: str
    drug: Drug
    population: PopulationSource
    arms: tuple[Arm, ...]
    endpoints: tuple[Endpoint, ...]
    days: int
    interval: float = 24.0
    description: str = ""
    output: int | None = None
    subgroups: tuple[Subgroup | str, ...] = ()
    covariates: tuple[str, ...] = ("AGE", "WT", "HT")
    bands_edges: tuple[float, ...] = tuple(np.geomspace(0.5, 20.0, 401).tolist())
    solver: Any = pkpd.FixedStep(1.0)
    exposure_steps: int = 24
    published: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    published_differences: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reference_arm: str | None = None
    assumptions: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.drug, Drug):
            raise TypeError(f"Trial {self.name!r}: drug must be a twins.Drug.")
        for arm in self.arms:
            if not isinstance(arm, Arm):
                raise TypeError(
                    f"Trial {self.name!r}: arms must be twins.Arm objects, got "
                    f"{type(arm).__name__}."
                )
        if not self.arms:
            raise ValueError(f"Trial {self.name!r}: at least one arm is needed.")
        try:
            groups = tuple(subgroup(g) for g in self.subgroups)
        except TypeError as error:
            raise TypeError(f"Trial {self.name!r}: subgroups: {error}") from None
        names = [g.name for g in groups]
        if len(set(names)) != len(names):
            raise ValueError(f"Trial {self.name!r}: subgroup names must be unique: {names}.")
        object.__setattr__(self, "subgroups", groups)
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"Trial {self.name!r}: arm names must be unique, got {names}.")
        if self.reference_arm is not None and self.reference_arm not in names:
            raise ValueError(
                f"Trial {self.name!r}: reference_arm {self.reference_arm!r} is not one of the "
                f"arms {names}."
            )
        enames = [e.name for e in self.endpoints]
        if len(set(enames)) != len(enames):
            raise ValueError(f"Trial {self.name!r}: endpoint names must be unique: {enames}.")
        if not (isinstance(self.days, int) and self.days >= 1):
            raise ValueError(f"Trial {self.name!r}: days must be an integer >= 1.")
        if not (isinstance(self.exposure_steps, int) and self.exposure_steps >= 2):
            raise ValueError(
                f"Trial {self.name!r}: exposure_steps must be an integer >= 2, got "
                f"{self.exposure_steps!r}."
            )
        # Windows of exposure endpoints are checked now, not after the first chunk.
        dummy = {
            "interval_h": float(self.interval),
            "days": np.zeros(self.days + 1),
            "level": np.zeros((1, self.days + 1)),
            "auc": np.zeros((1, self.days)),
            "cmax": np.zeros((1, self.days)),
        }
        for e in self.endpoints:
            if isinstance(e, AUC | Cmax | Ctrough | TargetAttainment):  # exposure windows
                try:
                    e(dummy)
                except ValueError as error:
                    raise ValueError(f"Trial {self.name!r}, endpoint {error}") from None
        for arm in self.arms:
            try:
                arm.check_drug(self.drug)  # e.g. TwinArm: its target exists
            except ValueError as error:
                raise ValueError(f"Trial {self.name!r}, arm {arm.name!r}: {error}") from None
        for arm in self.arms:
            late = [v + 1 for v in arm.visits if v > self.days]
            if late:
                raise ValueError(
                    f"Trial {self.name!r}, arm {arm.name!r}: visits on days {late} fall after "
                    f"the end of the trial (day {self.days + 1} morning at the latest)."
                )

    @property
    def subgroup_names(self) -> tuple[str, ...]:
        """The names of `subgroups` (the columns of the results)."""
        return tuple(g.name for g in self.subgroups)  # type: ignore[union-attr]

    @property
    def needs_exposure(self) -> bool:
        """Whether an endpoint needs the AUC and Cmax of every period."""
        return any(getattr(e, "needs_exposure", False) for e in self.endpoints)

    @property
    def output_index(self) -> int:
        return self.drug.model.output if self.output is None else self.output

    def describe(self) -> dict[str, Any]:
        """The trial as plain data (for spec.json and the report)."""
        return {
            "name": self.name,
            "description": self.description,
            "drug": self.drug.name,
            "duration_days": self.days * self.interval / 24.0,
            "interval_h": self.interval,
            "population": describe_population(self.population),
            "arms": [a.describe() for a in self.arms],
            "reference_arm": self.reference_arm or self.arms[0].name,
            "endpoints": [e.describe() for e in self.endpoints],
            "solver": repr(self.solver),
            **({"exposure_steps": self.exposure_steps} if self.needs_exposure else {}),
            "assumptions": list(self.assumptions),
        }


# ----------------------------------------------------------------------------- a chunk


def population_rows(trial: Trial, start: int, stop: int, *, key) -> Population:
    """Patients `start .. stop-1` of the trial's population (block-wise, see
    `POPULATION_BLOCK`), the same whatever the chunking."""
    if isinstance(trial.population, Population):
        if stop > len(trial.population):
            raise ValueError(
                f"Trial {trial.name!r}: asked for {stop} patients but the population has "
                f"{len(trial.population)}."
            )
        return trial.population[np.arange(start, stop)]
    parts = []
    b0, b1 = start // POPULATION_BLOCK, (stop - 1) // POPULATION_BLOCK
    for b in range(b0, b1 + 1):
        block = trial.population(POPULATION_BLOCK, key=jax.random.fold_in(key, b))
        lo = max(start - b * POPULATION_BLOCK, 0)
        hi = min(stop - b * POPULATION_BLOCK, POPULATION_BLOCK)
        parts.append(block[np.arange(lo, hi)])
    import pandas as pd

    frame = pd.concat([p.to_dataframe() for p in parts], ignore_index=True)
    frame["id"] = [f"V{i + 1:07d}" for i in range(start, stop)]
    return Population._from_valid(frame)


def model_covariates(drug: Drug, cov: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The drug's numeric model covariates for every patient (`Drug.covariates` per row)."""
    n = len(cov["ID"])
    keys = list(cov)
    columns = [cov[k] for k in keys]
    rows = [
        drug.covariates({k: c[i] for k, c in zip(keys, columns, strict=True)}) for i in range(n)
    ]
    names = list(rows[0]) if rows else []
    return {k: np.array([r[k] for r in rows], dtype=float) for k in names}


def dose_window(trial: Trial, params: Mapping[str, np.ndarray], ids: Any) -> int:
    """How many dosing periods the entries of one dose can span: `1 + floor((lag +
    infusion duration) / interval)` over the patients (the model's `ALAG<cmt>` and `D<cmt>`
    where it has them, else the route's duration). Each period is advanced with the doses
    of that many periods, so that a lagged dose or a long infusion that runs into a later
    period is applied there, exactly once."""
    drug = trial.drug
    cmt = drug.dosing.cmt
    n = len(next(iter(params.values()))) if params else 0
    lag = np.asarray(params.get(f"ALAG{cmt}", np.zeros(n)), dtype=float)
    default = drug.dosing.route.duration or 0.0
    duration = np.asarray(params.get(f"D{cmt}", np.full(n, default)), dtype=float)
    for name, values in ((f"ALAG{cmt}", lag), (f"D{cmt}", duration)):
        bad = ~np.isfinite(values) | (values < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"Trial {trial.name!r}: patient {ids[i]} has {name} = {values[i]}; expected a "
                "finite value >= 0 (h)."
            )
    span = float(np.max(lag + duration)) if n else 0.0
    return 1 + math.floor(span / float(trial.interval))


#: The compiled runners of each trial, for as long as the trial lives (the key is weak, and
#: the runners hold its arms and model, not the trial): every chunk and every run of the
#: same trial object compiles once, and nothing outlives its trial.
_RUNNERS: weakref.WeakKeyDictionary[Trial, dict[Any, Any]] = weakref.WeakKeyDictionary()


def trial_runners(trial: Trial) -> dict[Any, Any]:
    """The compiled runners of `trial` (`simulate_chunk`'s default `runners`), keyed by arm
    name, dose window and mesh; dropped when the trial is."""
    return _RUNNERS.setdefault(trial, {})


def make_runner(trial: Trial, arm: Arm, window: int, mesh: Any = None):
    """The jitted simulation of one arm for a chunk: parameters -> course arrays.

    Each period's dose is given through the `pkpd` event engine (`pkpd.advance`): the drug's
    route builds the dose record and the model's `F`, `ALAG`, `R` and `D` apply exactly as
    in `pkpd.simulate`; `window` periods of doses (`dose_window`) are kept so that a dose's
    entries falling in a later period are applied there. Build it once per trial, arm and
    window and reuse it for every chunk of the same size: `simulate_chunk` keeps them in
    `trial_runners(trial)` (or the `runners=` dict it is given).
    """
    drug = trial.drug
    model = drug.model.model
    out_idx = trial.output_index
    route = drug.dosing.route
    cmt = drug.dosing.cmt
    n_states = model.n_states
    days = trial.days
    tau = float(trial.interval)
    visits = np.asarray(arm.visits, dtype=np.int32)
    is_visit_table = np.zeros(days + 1, dtype=bool)
    is_visit_table[visits] = True
    visit_slot = np.zeros(days + 1, dtype=np.int32)
    visit_slot[visits] = np.arange(visits.size, dtype=np.int32)
    error = drug.model.error
    sigma = {k: float(getattr(error, k)) for k in error.names}
    solver = trial.solver
    steps = _even(trial.exposure_steps) if trial.needs_exposure else None
    ages = np.arange(window - 1, -1, -1, dtype=float)  # oldest dose first

    def one(params, state, key):
        x0 = model.initial_state(params)
        r0 = jnp.zeros(n_states, dtype=x0.dtype)
        eps = jax.random.normal(key, (max(visits.size, 1),))
        eps_by_period = eps[jnp.asarray(visit_slot)]

        def level(x):
            return model.output(params, x)[out_idx]

        def body(carry, inputs):
            x, r, given, st = carry
            p, e, visit = inputs
            y = level(x)
            measured = error.observe(y, sigma, e)
            amount, st = arm.step(p, measured, visit, st)
            given = jnp.concatenate([given[1:], jnp.reshape(amount, (1,))])
            times = (p.astype(x0.dtype) - jnp.asarray(ages)) * tau
            doses = pkpd.concatenate(
                [route.dose(given[j], time=times[j], cmt=cmt) for j in range(window)]
            )
            t0 = p.astype(x0.dtype) * tau
            out = pkpd.advance(
                model, params, x, doses, t0, t0 + tau,
                solver=solver, rates=r, exposure_steps=steps, output=out_idx, checks=False,
                length=tau, doses_at_start=True,
            )  # fmt: skip
            exposure = () if out.auc is None else (out.auc, out.cmax)
            return (out.state, out.rates, given, st), (y, measured, amount, *exposure)

        periods = jnp.arange(days, dtype=jnp.int32)
        xs = (periods, eps_by_period[:days], jnp.asarray(is_visit_table[:days]))
        given0 = jnp.zeros(window, dtype=x0.dtype)
        (x_end, *_), (ys, meas, amounts, *exposure) = jax.lax.scan(
            body, (x0, r0, given0, state), xs
        )
        y_end = level(x_end)
        last_meas = error.observe(y_end, sigma, eps_by_period[days])
        ys = jnp.concatenate([ys, y_end[None]])
        meas = jnp.concatenate([meas, last_meas[None]])
        return ys, meas[visits], amounts, *exposure

    def run(params, state, keys):
        return jax.vmap(one)(params, state, keys)

    if mesh is None:
        return jax.jit(run)
    spec = jax.sharding.PartitionSpec(mesh.axis_names[0])
    # Each device simulates its own patients: no collective communication at all.
    return jax.jit(jax.shard_map(run, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False))


def _even(k: float) -> int:
    return max(2, 2 * math.ceil(k / 2))


def simulate_chunk(
    trial: Trial,
    population: Population,
    first_index: int,
    *,
    key,
    runners: dict[Any, Any] | None = None,
    mesh: Any = None,
    size: int | None = None,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Course]]:
    """Simulate every arm for one chunk of patients.

    Patient `first_index + i`'s etas and assay noise come from `fold_in(key, index)`, so
    results do not depend on the chunk size. With `size` the arrays are padded to that many
    patients (copies of the last one, dropped from the results), so that every chunk has the
    same shape and the simulation compiles once. The compiled runners are kept in `runners`
    (default: `trial_runners(trial)`, which lives as long as the trial). Returns
    `(endpoints, courses)` by arm name.
    """
    drug = trial.drug
    pm = drug.model
    n = len(population)
    cov = population.covariates()
    cov["ANCESTRY"] = population.to_dataframe()["ancestry"].to_numpy(dtype=object)
    mcov = model_covariates(drug, cov)
    size = n if size is None else int(size)
    if size < n:
        raise ValueError(f"simulate_chunk: size {size} is smaller than the {n} patients.")
    index = np.arange(first_index, first_index + size)
    k_eta, k_noise = jax.random.split(key)
    eta_keys = jax.vmap(lambda i: jax.random.fold_in(k_eta, i))(index)
    noise_keys = jax.vmap(lambda i: jax.random.fold_in(k_noise, i))(index)
    chol = jnp.linalg.cholesky(jnp.asarray(drug.omega_matrix()))
    z = jax.vmap(lambda k: jax.random.normal(k, (pm.n_eta,)))(eta_keys)
    eta = z @ chol.T
    theta = {k: jnp.asarray(v, dtype=float) for k, v in pm.theta.items()}
    cov_j = {k: jnp.asarray(_pad(v, size)) for k, v in mcov.items()}
    params = jax.vmap(lambda c, e: pm.individual_params(theta, c, e))(cov_j, eta)
    params = {k: jnp.broadcast_to(jnp.asarray(v, dtype=float), (size,)) for k, v in params.items()}
    window = dose_window(trial, {k: np.asarray(v)[:n] for k, v in params.items()}, population.ids)
    runners = trial_runners(trial) if runners is None else runners
    endpoints: dict[str, dict[str, np.ndarray]] = {}
    courses: dict[str, Course] = {}
    days = np.arange(trial.days + 1) * trial.interval / 24.0
    for arm in trial.arms:
        state = {k: jnp.asarray(_pad(v, size)) for k, v in arm.start(cov).items()}
        inputs = (params, state, noise_keys)
        if mesh is not None:
            spec = jax.sharding.PartitionSpec(mesh.axis_names[0])
            inputs = jax.device_put(inputs, jax.sharding.NamedSharding(mesh, spec))
        if getattr(arm, "host_driven", False):  # e.g. TwinArm: decisions on the host
            host_params = {k: np.asarray(v)[:n] for k, v in params.items()}
            simulate = getattr(arm, "simulate")  # noqa: B009  # host-driven arms define it
            level, measured, doses = simulate(trial, cov, host_params, noise_keys[:n])
            exposure = []
        else:
            slot = (arm.name, window, mesh)
            if slot not in runners:
                runners[slot] = make_runner(trial, arm, window, mesh)
            level, measured, doses, *exposure = runners[slot](*inputs)
        course = Course(
            days=days,
            level=np.asarray(level)[:n],
            visit_days=days[np.asarray(arm.visits, dtype=int)],
            measured=np.asarray(measured)[:n],
            doses=np.asarray(doses)[:n],
            params={k: np.asarray(v)[:n] for k, v in params.items()},
            interval_h=float(trial.interval),
        )
        if exposure:
            course["auc"] = np.asarray(exposure[0])[:n]
            course["cmax"] = np.asarray(exposure[1])[:n]
        bad = ~np.isfinite(course["level"]).all(axis=1)
        if bad.any():
            ids = population.ids[bad][:5]
            raise FloatingPointError(
                f"Trial {trial.name!r}, arm {arm.name!r}: the simulation gave non-finite "
                f"values for {int(bad.sum())} patients (first: {list(ids)}); check their "
                "parameters or use a smaller solver step."
            )
        values: dict[str, np.ndarray] = {}
        for e in trial.endpoints:
            values.update({k: np.asarray(v) for k, v in e(course).items()})
        endpoints[arm.name] = values
        courses[arm.name] = course
    return endpoints, courses


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    x = np.asarray(x)
    extra = size - x.shape[0]
    if extra == 0:
        return x
    return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)], axis=0)
