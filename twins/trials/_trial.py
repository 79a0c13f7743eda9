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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import pkpd

from .._population import Population
from .._population_sim import model_covariates as model_covariates
from ..drugs import Drug
from ._adherence import Adherence
from ._arms import Arm
from ._arms import DosingArm as DosingArm
from ._arms import Nomogram as Nomogram
from ._dropout import Dropout, observed_mask
from ._endpoints import AUC, Cmax, Course, Ctrough, Endpoint, TargetAttainment, plain_value
from ._endpoints import AnyAbove as AnyAbove  # re-exported for older imports of this module
from ._endpoints import FinalLevel as FinalLevel
from ._endpoints import MeanDose as MeanDose
from ._endpoints import TimeInRange as TimeInRange
from ._endpoints import TimeToRange as TimeToRange
from ._subgroups import Subgroup, subgroup
from ._variability import Variability
from ._visits import Visits

#: Virtual patients are drawn in blocks of this size, block b from `fold_in(key, b)`, so that
#: patient i is the same whatever N and the chunk size are.
POPULATION_BLOCK = 1000

#: Columns of the patient table that the engine writes itself (no endpoint may take them).
RESERVED_COLUMNS = ("patient", "arm", "final_dose", "status", "failure")


def describe_population(population: Any) -> dict[str, Any]:
    """What determines the virtual patients: the sampler and its arguments, or a hash of a
    fixed cohort's table (part of the spec hash, so that editing either starts afresh).

    A fixed cohort read with plausibility ranges lifted (`Population.unusual`) also records
    them, `"unusual": {column: reason}` (sorted), so that the provenance shows which
    overrides a run used; without any, the description is what it was before `unusual`
    existed (and so is the spec hash: such runs still resume)."""
    if isinstance(population, Population):
        frame = population.to_dataframe()
        digest = hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()
        described: dict[str, Any] = {"fixed_cohort_rows": len(frame), "sha256": digest}
        if population.unusual:
            described["unusual"] = {
                k: str(population.unusual[k]) for k in sorted(population.unusual)
            }
        return described
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
    - `band_points`: points per dosing period at which the noise-free output is recorded for
      the bands (default 12): at `t0 + k * interval / band_points`, `k = 0 .. band_points -
      1`, of every period (`k = 0` the level before the dose) and at the end of the trial,
      each through the event engine (`pkpd.advance` over the sub-windows, so infusions,
      lags and bioavailability are exact). With the default, a 12-h vancomycin period is
      recorded hourly (the end of a 1-h infusion, its peak, is a point) and a daily dose
      every 2 h. 1 records the level before each dose only (as before this field
      existed). The values are in `Course["curve"]` `(n, days * band_points + 1)` at
      `Course["curve_days"]`; the results keep only their histograms (`bands/`).
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
    - `adherence`: whether patients take each prescribed dose (`Adherence`: a two-state
      Markov model, Girard et al. 1998); default None: every dose is taken. The arm's
      decisions are the prescribed doses (`Course["doses"]`), the model gets those taken
      (`Course["taken"]`). With `Adherence(timing=DoseTiming(...))` each dose is taken at its
      own time within its period (`Course["dose_offset_h"]`), with `holidays=Holidays(...)`
      runs of doses are missed (`Course["holiday"]`). A `TwinArm`'s twin is told the doses
      prescribed, at their due times, not those taken (as a clinician would be).
    - `variability`: within-patient variability (`Variability` of `IOV` and
      `OrnsteinUhlenbeck` terms): log-normal factors on chosen parameters, by dosing period;
      default None: each patient's parameters are the same on every day. The factors are in
      `Course["factors"]` (`{parameter: (n, P)}`). A `TwinArm`'s twin does not know them:
      it estimates from the measured levels with the drug's population model.
    - `dropout`: patients who leave before the end (`Dropout`: random, and informative
      after a measured value at or above a threshold); default None: every patient stays.
      What happened before a patient leaves is unchanged; afterwards it is not observed
      (`Course["observed"]`, `["observed_days"]`, `["dropout_day"]`), and the endpoints
      count each patient over its own follow-up (`twins.trials._dropout`).
    - `visits`: visit-schedule realism (`Visits`: visits that slip by whole days, visits
      that are missed); default None: every visit on its scheduled day. A visit that happened
      is measured on its day and the arm decides from that value (its scheduled day's rule);
      a missed one measures and decides nothing (the dose stays). The course holds each
      patient's `visit_day` `(n, V)` and `attended` `(n, V)`, `measured` is NaN at the visits
      that did not happen, and the endpoints use only the visits that happened
      (`twins.trials._visits`); a `TwinArm` measures and decides at the visits that
      happened, on their days. Slips need arms that take a moved visit (`Arm.step_at`:
      `DosingArm` and `TwinArm` do) and a dosing period that divides a day.
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
    band_points: int = 12
    solver: Any = pkpd.FixedStep(1.0)
    exposure_steps: int = 24
    published: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    published_differences: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reference_arm: str | None = None
    assumptions: tuple[str, ...] = ()
    adherence: Adherence | None = None
    variability: Variability | None = None
    dropout: Dropout | None = None
    visits: Visits | None = None

    def __post_init__(self):
        self._check_visits()
        if self.dropout is not None and not isinstance(self.dropout, Dropout):
            raise TypeError(
                f"Trial {self.name!r}: dropout must be a twins.Dropout or None, got "
                f"{type(self.dropout).__name__}."
            )
        if self.variability is not None:
            if not isinstance(self.variability, Variability):
                raise TypeError(
                    f"Trial {self.name!r}: variability must be a twins.Variability or None, "
                    f"got {type(self.variability).__name__}."
                )
            if isinstance(self.drug, Drug):
                try:
                    self.variability.check_model(self.drug.model.model)
                except ValueError as error:
                    raise ValueError(f"Trial {self.name!r}, variability: {error}") from None
        if self.adherence is not None:
            if not isinstance(self.adherence, Adherence):
                raise TypeError(
                    f"Trial {self.name!r}: adherence must be a twins.trials.Adherence or None, "
                    f"got {type(self.adherence).__name__}."
                )
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
        taken = [e for e in enames if e in RESERVED_COLUMNS]
        if taken:
            raise ValueError(
                f"Trial {self.name!r}: the endpoint name(s) {taken} are columns the results "
                f"always hold ({list(RESERVED_COLUMNS)}); choose others."
            )
        if not (isinstance(self.days, int) and self.days >= 1):
            raise ValueError(f"Trial {self.name!r}: days must be an integer >= 1.")
        if isinstance(self.band_points, bool) or not (
            isinstance(self.band_points, int) and self.band_points >= 1
        ):
            raise ValueError(
                f"Trial {self.name!r}: band_points must be an integer >= 1 (points per dosing "
                f"period), got {self.band_points!r}."
            )
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

    def _check_visits(self) -> None:
        """The checks of `visits` and of the adherence's dose timing (what the engine needs)."""
        adherence = self.adherence
        timing = getattr(adherence, "timing", None)
        if timing is not None and not timing.due_h + timing.max_h < float(self.interval):
            raise ValueError(
                f"Trial {self.name!r}: adherence.timing: due_h + max_h ({timing.due_h:g} + "
                f"{timing.max_h:g} h) must be less than the dosing period ({self.interval:g} "
                "h): each dose is taken within its own period."
            )
        v = self.visits
        if v is None:
            return
        if not isinstance(v, Visits):
            raise TypeError(
                f"Trial {self.name!r}: visits must be a twins.Visits or None, got "
                f"{type(v).__name__}."
            )
        if v.slips:
            per_day = 24.0 / float(self.interval)
            if not (per_day >= 1 and math.isclose(per_day, round(per_day))):
                raise ValueError(
                    f"Trial {self.name!r}: visits.slip_max_days: slips are whole days, and the "
                    f"dosing period ({self.interval:g} h) does not divide a day."
                )
            fixed = [a.name for a in self.arms if type(a).step_at is Arm.step_at]
            if fixed:
                raise ValueError(
                    f"Trial {self.name!r}: visits.slip_max_days: the arms {fixed} cannot take "
                    "a visit moved from its scheduled day (they do not define Arm.step_at); "
                    "use missed visits only (slip_max_days = 0) with them."
                )
        blind = [
            e.name
            for e in self.endpoints
            if getattr(e, "source", None) == "measured" and not getattr(e, "visit_aware", False)
        ]
        if blind:
            raise ValueError(
                f"Trial {self.name!r}: visits: the endpoints {blind} read the measured values "
                "at the scheduled visit days and do not know slipped or missed visits "
                "(Endpoint.visit_aware); use source = 'true' or another endpoint."
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
    def curve_days(self) -> np.ndarray:
        """The times (days) at which the output is recorded for the bands: `band_points`
        per dosing period and the end of the trial (`days * band_points + 1` values)."""
        k = np.arange(self.days * self.band_points + 1)
        return k * float(self.interval) / self.band_points / 24.0  # period starts: exact

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
            **({"adherence": self.adherence.describe()} if self.adherence is not None else {}),
            **(
                {"variability": self.variability.describe()} if self.variability is not None else {}
            ),
            **({"dropout": self.dropout.describe()} if self.dropout is not None else {}),
            **({"visits": self.visits.describe()} if self.visits is not None else {}),
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
    timing = getattr(trial.adherence, "timing", None)
    if timing is not None:  # a dose taken up to due_h + max_h after its period start
        span += float(timing.due_h + timing.max_h)
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
    points = trial.band_points  # the output within each period, for the bands
    ages = np.arange(window - 1, -1, -1, dtype=float)  # oldest dose first
    # Only an infusion route runs zero-order inputs from one period into the next; without
    # one, `advance` is told none run (`rates=None`), and the rates stay zero.
    infused = route.duration is not None
    varying = () if trial.variability is None else trial.variability.parameters

    schedule = trial.visits is not None  # per-patient visit days (`Visits`)
    # A slipped visit's rule is that of its scheduled period (`Arm.step_at`).
    slipping = schedule and trial.visits.slips  # type: ignore[union-attr]
    timed = trial.adherence is not None and trial.adherence.timing is not None
    # Parameters that change every period in a PK/PD model with linear PK under FixedStep
    # (an OU term on CL): `pkpd.advance`'s one-dose path (transitions by a squared Taylor
    # polynomial) costs less per period than the fast path's matrix exponential, which is
    # then recomputed every period; the same fixed steps, the same results to rounding.
    split_varying = (
        bool(varying)
        and window == 1
        and not infused
        and steps is None
        and isinstance(model, pkpd.PKPD)
        and model.pk.is_linear
        and model.pd.n_states > 0
        and isinstance(solver, pkpd.FixedStep)
    )
    at_start = not (timed or split_varying)  # `advance(doses_at_start=...)`
    scheduled = jnp.asarray(visits)

    def one(params, state, key, taken, more):
        logf = (more["logf"],) if varying else ()
        base = params
        x0 = model.initial_state(params)
        r0 = jnp.zeros(n_states, dtype=x0.dtype)
        eps = jax.random.normal(key, (max(visits.size, 1),))
        if schedule:  # this patient's visits: where they happened, and which visit each is
            eps_by_period = eps[more["visit_which"]]
            visit_flags = more["visit_at"][:days]
        else:
            eps_by_period = eps[jnp.asarray(visit_slot)]
            visit_flags = jnp.asarray(is_visit_table[:days])

        def level(x):
            return model.output(params, x)[out_idx]

        def body(carry, inputs):
            x, r, given, when, st = carry
            p, e, visit, took, *rest = inputs
            params = base
            if varying:  # this period's parameters
                params = dict(base)
                for j, name in enumerate(varying):
                    params[name] = base[name] * jnp.exp(rest[0][j])

            def level(x):
                return model.output(params, x)[out_idx]

            y = level(x)
            measured = error.observe(y, sigma, e)
            if slipping:  # the rule of the visit held now is that of its scheduled period
                which = rest[-2 if timed else -1]
                amount, st = arm.step_at(p, scheduled[which], measured, visit, st)
            else:
                amount, st = arm.step(p, measured, visit, st)  # prescribed
            given = jnp.concatenate([given[1:], jnp.reshape(amount * took, (1,))])
            times = (p.astype(x0.dtype) - jnp.asarray(ages)) * tau
            if timed:  # each dose at its own time within its period
                when = jnp.concatenate([when[1:], jnp.reshape(rest[-1], (1,))])
                times = times + when
            doses = pkpd.concatenate(
                [route.dose(given[j], time=times[j], cmt=cmt) for j in range(window)]
            )
            t0 = p.astype(x0.dtype) * tau
            out = pkpd.advance(
                model, params, x, doses, t0, t0 + tau,
                solver=solver, rates=r if infused else None, exposure_steps=steps,
                output=out_idx, checks=False, length=tau, doses_at_start=at_start,
            )  # fmt: skip
            exposure = () if out.auc is None else (out.auc, out.cmax)
            curve = () if points == 1 else (within(params, x, r, doses, t0),)
            return (out.state, out.rates, given, when, st), (y, measured, amount, *exposure,
                                                            *curve)  # fmt: skip

        def within(params, x, r, doses, t0):
            """The output at `t0 + k * tau / points`, `k = 0 .. points - 1`: the period's
            doses through `pkpd.advance` over adjacent sub-windows (each entry applied once,
            in its own sub-window), from the period's start state. The period's own
            `advance` above is unchanged, so the course and endpoints are too."""
            h = tau / points

            def sub(carry, k):
                xk, rk = carry
                ta = t0 + k * h
                o = pkpd.advance(
                    model, params, xk, doses, ta, ta + h, solver=solver,
                    rates=rk if infused else None, output=out_idx, checks=False, length=h,
                    doses_at_start=at_start,
                )  # fmt: skip
                return (o.state, o.rates), model.output(params, o.state)[out_idx]

            _, ys = jax.lax.scan(sub, (x, r), jnp.arange(points - 1, dtype=x.dtype))
            return jnp.concatenate([model.output(params, x)[out_idx][None], ys])

        periods = jnp.arange(days, dtype=jnp.int32)
        xs = (periods, eps_by_period[:days], visit_flags, taken, *logf)
        if slipping:
            xs = (*xs, more["visit_which"][:days])
        if timed:
            xs = (*xs, more["offset"])
        given0 = jnp.zeros(window, dtype=x0.dtype)
        (x_end, *_), (ys, meas, amounts, *exposure) = jax.lax.scan(
            body, (x0, r0, given0, given0, state), xs
        )
        if points > 1:  # (periods, points): the level before each dose, then the rest
            inner = exposure.pop()
        if varying:  # the end of the trial: the last period's parameters
            last = dict(base)
            for j, name in enumerate(varying):
                last[name] = base[name] * jnp.exp(more["logf"][-1, j])
            y_end = model.output(last, x_end)[out_idx]
        else:
            y_end = level(x_end)
        last_meas = error.observe(y_end, sigma, eps_by_period[days])
        curve = ()
        if points > 1:  # one copy: the periods' points in time order, then the end
            curve = (jnp.concatenate([inner.reshape(-1), y_end[None]]),)
        ys = jnp.concatenate([ys, y_end[None]])
        meas = jnp.concatenate([meas, last_meas[None]])
        if schedule:  # measured on the day each visit happened
            return ys, meas[more["visit_period"]], amounts, *exposure, *curve
        return ys, meas[visits], amounts, *exposure, *curve

    def run(params, state, keys, taken, more):
        if timed:  # sub-batches in one program (`TIMED_BATCH`)
            return jax.lax.map(lambda a: one(*a), (params, state, keys, taken, more),
                               batch_size=TIMED_BATCH)  # fmt: skip
        return jax.vmap(one)(params, state, keys, taken, more)

    if mesh is None:
        return jax.jit(run)
    spec = jax.sharding.PartitionSpec(mesh.axis_names[0])
    # Each device simulates its own patients: no collective communication at all.
    return jax.jit(jax.shard_map(run, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False))


#: Patients per vmapped sub-batch of a trial with dose timing (`DoseTiming`): the general
#: `pkpd.advance` path over a whole chunk of 1,000 EU-PACT patients hung inside XLA on a
#: 2-core CPU (jax 0.10.2; every thread waiting, no CPU used), 300 ran; the chunk is run as
#: `lax.map` over sub-batches of this size, in one compiled program.
TIMED_BATCH = 256


def _even(k: float) -> int:
    return max(2, 2 * math.ceil(k / 2))


class FailedPatientsError(ValueError):
    """Some patients of a chunk could not be simulated; the others were.

    Raised by `simulate_chunk`; `run_trial` records such patients in its results instead
    (through `simulate_chunk_outcome`).

    **Attributes:**

    - `failures`: `{arm name: {patient id: reason}}`, every arm named (empty where none
      failed). A reason is a parameter outside the model's domain (by
      `pkpd.AbstractModel.domain_errors`: not finite, a clearance or volume <= 0, `F` or
      `ALAG` < 0, `D` or `R` <= 0), a simulation that gave non-finite values, or an error
      raised while simulating that patient.
    - `endpoints`, `courses`: what `simulate_chunk` would have returned for every patient,
      with the failed patients' values NaN (so their flags, such as a proportion endpoint's,
      are floats there: 1.0, 0.0 or NaN) and `courses[arm]["failure"]` holding each
      patient's reason (`""` for the patients simulated). Every other row is that patient's
      own result, the same bits as in a chunk without the failed patients.
    """

    def __init__(
        self,
        trial: str,
        failures: Mapping[str, Mapping[str, str]],
        endpoints: dict[str, dict[str, np.ndarray]],
        courses: dict[str, Course],
    ):
        self.failures = {a: dict(f) for a, f in failures.items()}
        self.endpoints = endpoints
        self.courses = courses
        parts = []
        for arm, fails in self.failures.items():
            if fails:
                shown = "; ".join(f"{pid}: {why}" for pid, why in list(fails.items())[:5])
                more = len(fails) - 5
                parts.append(
                    f"arm {arm!r}: {len(fails)} patient(s) ({shown}"
                    f"{f'; and {more} more' if more > 0 else ''})"
                )
        super().__init__(
            f"Trial {trial!r}: some patients could not be simulated; the others were (their "
            "results are in this error's `endpoints` and `courses`). " + ". ".join(parts) + "."
        )


class ChunkOutcome(NamedTuple):
    """What `simulate_chunk_outcome` returns.

    - `endpoints`: `{arm: {column: (n,) array}}`, as `simulate_chunk`'s.
    - `courses`: `{arm: Course}`; `Course["failure"]` `(n,)` holds each patient's reason
      of failure (`""` for the patients simulated).
    - `failures`: `{arm: {row: reason}}`, rows counted from 0 within the chunk.

    The values in a failed patient's row are not results (they may be another patient's
    numbers, standing in for the failed one so that the others are computed unchanged):
    mask them with `failures` before using them, as `run_trial` does.
    """

    endpoints: dict[str, dict[str, np.ndarray]]
    courses: dict[str, Course]
    failures: dict[str, dict[int, str]]


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

    **Raises:** `FailedPatientsError` (a `ValueError`) naming, per arm, every patient that
    could not be simulated and why; it carries the other patients' results, which a failed
    patient does not change (`simulate_chunk_outcome` returns them without raising).
    """
    outcome = simulate_chunk_outcome(
        trial, population, first_index, key=key, runners=runners, mesh=mesh, size=size
    )
    if not any(outcome.failures.values()):
        return outcome.endpoints, outcome.courses
    ids = population.ids.astype(str)
    named = {a: {ids[i]: why for i, why in f.items()} for a, f in outcome.failures.items()}
    endpoints, courses = {}, {}
    for arm, values in outcome.endpoints.items():
        bad = np.zeros(len(population), dtype=bool)
        bad[list(outcome.failures[arm])] = True
        endpoints[arm] = {k: _masked(v, bad) for k, v in values.items()}
        course = Course(outcome.courses[arm])
        for k in ("level", "measured", "doses", "taken", "auc", "cmax", "curve"):
            if k in course:
                course[k] = _masked(course[k], bad)
        courses[arm] = course
    raise FailedPatientsError(trial.name, named, endpoints, courses)


def adherence_flags(trial: Trial, key, index: np.ndarray) -> np.ndarray:
    """`(patients, days)`: 1.0 where patient `index[i]` takes period `p`'s dose, 0.0 where it
    misses it (`trial.adherence`; all ones without). Patient `i`'s chain is drawn from
    `fold_in(fold_in(key, ADHERENCE_STREAM), i)`: the etas and assay noise (from `key`'s
    split) stay those of the trial without adherence."""
    return adherence_draws(trial, key, index)["taken"]


def adherence_draws(trial: Trial, key, index: np.ndarray) -> dict[str, np.ndarray]:
    """`Adherence.draw_all` for patients `index` (`(patients, days)` arrays: `"taken"`,
    and `"holiday"` and `"offset_h"` when the adherence has holidays or dose timing), patient
    `i` from `fold_in(fold_in(key, ADHERENCE_STREAM), i)` (`adherence_flags`). Without
    adherence: `{"taken": ones}`."""
    if trial.adherence is None:
        return {"taken": np.ones((len(index), trial.days))}
    draw = _cached_draw(trial, ("adherence",), lambda: _adherence_draw(trial))
    return {k: np.asarray(v) for k, v in draw(key, jnp.asarray(index)).items()}


def _adherence_draw(trial: Trial):
    adherence = trial.adherence
    assert adherence is not None

    def draw(key, index):
        stream = jax.random.fold_in(key, ADHERENCE_STREAM)
        keys = jax.vmap(lambda i: jax.random.fold_in(stream, i))(index)
        return jax.vmap(lambda k: adherence.draw_all(k, trial.days))(keys)

    return jax.jit(draw)


def visit_schedule(trial: Trial, key, index: np.ndarray, arm: Arm) -> tuple[np.ndarray, ...]:
    """`(period (patients, V) int, attended (patients, V) bool)`: the realised visits of
    `arm` (`trial.visits`, `Visits.draw`) for patients `index`, patient `i` from
    `fold_in(fold_in(key, VISITS_STREAM), i)`: the etas, assay noise, adherence and
    variability stay those of the trial without visit realism, and two arms with the same
    visits get the same schedule."""
    visits = trial.visits
    assert visits is not None
    scheduled = tuple(int(v) for v in arm.visits)
    per_day = max(round(24.0 / float(trial.interval)), 1)

    def build():
        def draw(key, index):
            stream = jax.random.fold_in(key, VISITS_STREAM)
            keys = jax.vmap(lambda i: jax.random.fold_in(stream, i))(index)
            return jax.vmap(lambda k: visits.draw(k, np.asarray(scheduled), trial.days, per_day))(
                keys
            )

        return jax.jit(draw)

    draw = _cached_draw(trial, ("visits", scheduled), build)
    period, attended = draw(key, jnp.asarray(index))
    return np.asarray(period), np.asarray(attended)


def _visit_inputs(trial: Trial, period: np.ndarray, attended: np.ndarray) -> dict:
    """The runner's per-patient visit arrays: `visit_at` `(n, P + 1)` (a visit happened at
    the start of that period), `visit_which` `(n, P + 1)` (which visit: its index, 0 where
    none), `visit_period` `(n, V)` (the period of each visit; a missed one's scheduled)."""
    n = period.shape[0]
    at = np.zeros((n, trial.days + 1), dtype=bool)
    which = np.zeros((n, trial.days + 1), dtype=np.int32)
    rows, cols = np.nonzero(attended)
    at[rows, period[rows, cols]] = True
    which[rows, period[rows, cols]] = cols.astype(np.int32)
    return {"visit_at": at, "visit_which": which, "visit_period": period.astype(np.int32)}


#: Jitted samplers of each trial (adherence chains, variability factors), as `_RUNNERS`.
_DRAWS: weakref.WeakKeyDictionary[Trial, dict[Any, Any]] = weakref.WeakKeyDictionary()


def _cached_draw(trial: Trial, slot: Any, build: Callable[[], Any]):
    """The jitted sampler `slot` of `trial`, built once (compiled once per chunk shape)."""
    cache = _DRAWS.setdefault(trial, {})
    if slot not in cache:
        cache[slot] = build()
    return cache[slot]


#: The key stream of the adherence chains (`adherence_flags`).
ADHERENCE_STREAM = 0x61646865  # "adhe"

#: The key stream of the dropout times (`Dropout.times`).
DROPOUT_STREAM = 0x64726F70  # "drop"

#: The key stream of the within-patient variability (`variability_factors`).
VARIABILITY_STREAM = 0x76617269  # "vari"

#: The key stream of the realised visit schedules (`visit_schedule`).
VISITS_STREAM = 0x76697369  # "visi"


def variability_factors(trial: Trial, key, index: np.ndarray, visits) -> np.ndarray:
    """`(patients, days, parameters)`: the log factors of `trial.variability` for patients
    `index` in an arm with `visits` (0-based periods; occasions by visit use them), patient
    `i` drawn from `fold_in(fold_in(key, VARIABILITY_STREAM), i)`: the etas, assay noise and
    adherence stay those of the trial without variability."""
    variability = trial.variability
    assert variability is not None
    visits = tuple(int(v) for v in visits)

    def build():
        def draw(key, index):
            stream = jax.random.fold_in(key, VARIABILITY_STREAM)
            keys = jax.vmap(lambda i: jax.random.fold_in(stream, i))(index)
            return jax.vmap(
                lambda k: variability.log_factors(k, trial.days, float(trial.interval), visits)
            )(keys)

        return jax.jit(draw)

    draw = _cached_draw(trial, ("variability", visits), build)
    return np.asarray(draw(key, jnp.asarray(index)))


def _masked(values: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """`values` as floats with the rows `bad` NaN."""
    out = np.array(values, dtype=float)
    out[bad] = np.nan
    return out


def domain_failures(trial: Trial, params: Mapping[str, np.ndarray]) -> dict[int, str]:
    """`{row: reason}` for the patients whose parameters (`{name: (n,) array}`) are outside
    the drug model's domain, by `pkpd.AbstractModel.domain_errors` (every value finite;
    clearances, volumes and rate constants > 0; `F<n>`, `ALAG<n>` >= 0; `D<n>`, `R<n>` > 0).
    Each reason names the parameters, their values and what was expected."""
    found: dict[int, list[str]] = {}
    for name, bad, expect in trial.drug.model.model.domain_errors(dict(params)):
        values = np.asarray(params[name], dtype=float)
        for i in np.flatnonzero(np.broadcast_to(bad, values.shape)):
            found.setdefault(int(i), []).append(f"{name} = {values[i]:g} (expected {expect})")
    return {
        i: "parameters outside the model's domain: " + "; ".join(found[i]) for i in sorted(found)
    }


def simulate_chunk_outcome(
    trial: Trial,
    population: Population,
    first_index: int,
    *,
    key,
    runners: dict[Any, Any] | None = None,
    mesh: Any = None,
    size: int | None = None,
) -> ChunkOutcome:
    """`simulate_chunk` that records the patients it cannot simulate instead of raising.

    A patient fails in an arm when its parameters are outside the model's domain
    (`domain_failures`; then in every arm), when its simulated course holds a non-finite
    value, or when simulating it raises an error at run time (a solver's step limit, an
    `eqx.error_if` in an arm's rule, or a host-driven arm such as `TwinArm` that raises for
    that patient). For the simulation a failed patient's row is filled with another
    patient's inputs (the first one who does not fail); a compiled chunk computes each row
    from its own inputs alone, so every other patient's results are the same bits as in a
    chunk without the failed one. The failed patient is named with its reason in
    `ChunkOutcome.failures` and `Course["failure"]`.

    Arguments as `simulate_chunk`.
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
    # The etas and parameters of `size` rows (the same shapes in every chunk), of which
    # the first `n` are the patients'.
    index = np.arange(first_index, first_index + size)
    k_eta, k_noise = jax.random.split(key)
    eta_keys = jax.vmap(lambda i: jax.random.fold_in(k_eta, i))(index)
    noise_keys = jax.vmap(lambda i: jax.random.fold_in(k_noise, i))(index)[:n]
    drawn = adherence_draws(trial, key, index[:n])
    taken = drawn["taken"]
    chol = jnp.linalg.cholesky(jnp.asarray(drug.omega_matrix()))
    z = jax.vmap(lambda k: jax.random.normal(k, (pm.n_eta,)))(eta_keys)
    eta = z @ chol.T
    theta = {k: jnp.asarray(v, dtype=float) for k, v in pm.theta.items()}
    cov_j = {k: jnp.asarray(_pad(v, size)) for k, v in mcov.items()}
    params = jax.vmap(lambda c, e: pm.individual_params(theta, c, e))(cov_j, eta)
    own = {  # each patient's own parameters
        k: np.broadcast_to(np.asarray(v, dtype=float), (size,))[:n] for k, v in params.items()
    }
    if trial.variability is not None:
        missing = [p for p in trial.variability.parameters if p not in own]
        if missing:
            raise ValueError(
                f"Trial {trial.name!r}, variability: the drug's parameters have no {missing} "
                f"(they are {sorted(own)})."
            )
    domain = domain_failures(trial, own)
    good = [i for i in range(n) if i not in domain]
    # The patient simulated in each of the `size` rows: the padding rows repeat the last
    # patient, and a failed patient's row is another's (a stand-in; its values are dropped).
    rows = np.minimum(np.arange(size), n - 1)
    if good:
        rows[np.isin(rows, list(domain))] = good[0]
    window = dose_window(trial, {k: v[good] for k, v in own.items()}, population.ids[good])
    runners = trial_runners(trial) if runners is None else runners
    endpoints: dict[str, dict[str, np.ndarray]] = {}
    courses: dict[str, Course] = {}
    failures: dict[str, dict[int, str]] = {}
    days = np.arange(trial.days + 1) * trial.interval / 24.0
    for arm in trial.arms:
        fails = dict(domain)
        if not good:
            arrays = _nan_course(trial, arm, n)
        else:
            host = getattr(arm, "host_driven", False)  # e.g. TwinArm: decisions on the host
            slot = (arm.name, window, None if host else mesh)
            if slot not in runners:
                runners[slot] = make_runner(trial, arm, window, slot[2])
            extra: dict[str, np.ndarray] = {}
            if trial.variability is not None:
                extra["logf"] = variability_factors(trial, key, index[:n], arm.visits)
            schedule = None
            if trial.visits is not None:
                schedule = visit_schedule(trial, key, index[:n], arm)
                extra.update(_visit_inputs(trial, *schedule))
            if "offset_h" in drawn:
                extra["offset"] = drawn["offset_h"]
            if host:
                inputs = (own, noise_keys, taken, extra)
                arrays, more = _host_arm(
                    trial, arm, runners[slot], cov, inputs, schedule, good, size
                )
            else:
                state = {k: np.asarray(v) for k, v in arm.start(cov).items()}
                inputs = (own, state, noise_keys, taken, extra)
                arrays, more = _jitted_arm(trial, arm, runners[slot], inputs, rows, good, mesh)
            fails.update(more)
        level, measured, doses, *exposure = (np.asarray(x)[:n] for x in arrays)
        # The output within the periods (`band_points`).
        curve, curve_days = level, days
        if len(exposure) > (2 if trial.needs_exposure else 0):
            curve, curve_days = exposure.pop(), trial.curve_days
        for i in _non_finite(level, measured, doses, *exposure, curve):
            fails.setdefault(i, _non_finite_reason(level[i], days, own, i))
        course = Course(
            days=days,
            level=level,
            visit_days=days[np.asarray(arm.visits, dtype=int)],
            measured=measured,
            doses=doses,
            params=own,
            interval_h=float(trial.interval),
        )
        if trial.adherence is not None:
            course["adherence"] = taken
            course["taken"] = doses * taken
            if "holiday" in drawn:
                course["holiday"] = drawn["holiday"]
            if "offset_h" in drawn:
                course["dose_offset_h"] = drawn["offset_h"]
        if trial.visits is not None:  # each patient's own visit days; missed: not measured
            period, attended = visit_schedule(trial, key, index[:n], arm)
            course["visit_day"] = days[period]
            course["attended"] = attended
            course["measured"] = np.where(attended, measured, np.nan)
            measured = course["measured"]
        if trial.variability is not None:
            logf = variability_factors(trial, key, index[:n], arm.visits)
            course["factors"] = {
                name: np.exp(logf[:, :, j]) for j, name in enumerate(trial.variability.parameters)
            }
        if exposure:
            course["auc"] = exposure[0]
            course["cmax"] = exposure[1]
        course["curve"] = curve
        course["curve_days"] = curve_days
        if trial.dropout is not None:
            stream = jax.random.fold_in(key, DROPOUT_STREAM)
            dkeys = jax.vmap(lambda i, s=stream: jax.random.fold_in(s, i))(jnp.asarray(index[:n]))
            visit_day = course.get("visit_day", course["visit_days"])
            left = trial.dropout.times(dkeys, visit_day, measured)
            course["dropout_day"] = left
            course["observed"] = observed_mask(visit_day, left)
            course["observed_days"] = observed_mask(days, left)
        if trial.visits is not None:  # the visits that happened, before any dropout
            course["observed"] = course["attended"] & course.get("observed", True)
        values: dict[str, np.ndarray] = {}
        for e in trial.endpoints:
            values.update({k: np.asarray(v) for k, v in e(course).items()})
        reason = np.full(n, "", dtype=object)
        for i, why in fails.items():
            reason[i] = why
        course["failure"] = reason
        endpoints[arm.name] = values
        courses[arm.name] = course
        failures[arm.name] = dict(sorted(fails.items()))
    return ChunkOutcome(endpoints, courses, failures)


def _nan_course(trial: Trial, arm: Arm, n: int) -> list[np.ndarray]:
    """The course arrays `(level, measured, doses, *exposure, *curve)` of `n` patients none
    of whom could be simulated: NaN (masked as failures)."""
    shapes = [(n, trial.days + 1), (n, len(arm.visits)), (n, trial.days)]
    shapes += [(n, trial.days)] * (2 if trial.needs_exposure else 0)  # AUC, Cmax
    if trial.band_points > 1:  # the output within the periods
        shapes.append((n, trial.days * trial.band_points + 1))
    return [np.full(shape, np.nan) for shape in shapes]


#: Patients per try when a compiled chunk raised and the patients that make it raise are
#: searched for (a smaller compiled shape, so that many failures stay cheap to find).
_SEARCH_BATCH = 64


def _jitted_arm(
    trial: Trial, arm: Arm, runner, inputs, rows: np.ndarray, good: list[int], mesh: Any
) -> tuple[list[np.ndarray], dict[int, str]]:
    """Run a compiled arm with row `j` simulating patient `rows[j]` of `inputs` (`(params,
    state, noise keys)`, one entry per patient).

    When the run raises at run time (a solver's step limit, an `eqx.error_if`), the
    patients that make it raise are found by bisection: the patients `good` in batches of
    `_SEARCH_BATCH`, each try one compiled call of that many rows (the batch repeated),
    halving the batches that raise (an error that every patient of the first batch, two
    or more, raises alike is not a patient's: it is raised). The chunk is then run again
    with those patients' rows given to another patient. Returns the course arrays
    `(level, measured, doses, *exposure)` of the `rows.size` rows and `{patient: reason}`."""

    def call(which: np.ndarray):
        picked = jax.tree.map(lambda v: v[which], inputs)
        if mesh is not None:
            spec = jax.sharding.PartitionSpec(mesh.axis_names[0])
            picked = jax.device_put(picked, jax.sharding.NamedSharding(mesh, spec))
        return jax.block_until_ready(runner(*picked))

    try:
        return [np.asarray(x) for x in call(rows)], {}
    except RuntimeError as error:  # raised while running (equinox's error_if, XLA)
        first = error
    devices = 1 if mesh is None else mesh.size
    batch = min(rows.size, devices * max(1, _SEARCH_BATCH // devices))
    found: dict[int, str] = {}

    def search(patients: np.ndarray) -> None:
        try:
            call(np.resize(patients, batch))
            return
        except RuntimeError as error:
            if patients.size == 1:
                found[int(patients[0])] = (
                    f"the simulation raised an error: {_runtime_reason(error)}"
                )
                return
        half = patients.size // 2
        search(patients[:half])
        search(patients[half:])

    candidates = np.asarray(good)
    for start in range(0, candidates.size, batch):
        search(candidates[start : start + batch])
        if start == 0:
            _raise_if_systematic(first, [found.get(int(i)) for i in candidates[:batch]])
    rest = [i for i in good if i not in found]
    if not rest:
        return _nan_course(trial, arm, rows.size), found
    rows = rows.copy()
    rows[np.isin(rows, list(found))] = rest[0]
    return [np.asarray(x) for x in call(rows)], found


def _raise_if_systematic(error: BaseException, reasons: list[str | None]) -> None:
    """Raise `error` when the first patients searched (two or more) all failed with one
    reason: an error that is no patient's (a wrong setting, a broken model)."""
    if len(reasons) > 1 and None not in reasons and len(set(reasons)) == 1:
        raise error


def _runtime_reason(error: BaseException) -> str:
    """The message of an error raised while a compiled simulation ran, shortened."""
    text = str(error)
    if "max_steps" in text or "maximum number of solver steps" in text:
        return "the solver reached its step limit (max_steps): a stiff or extreme patient"
    lines = [ln for ln in text.splitlines() if "EquinoxRuntimeError:" in ln]
    if lines:
        return lines[-1].split("EquinoxRuntimeError:", 1)[1].strip()[:200]
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(error).__name__}: {first[:200]}"


class HostCourse(NamedTuple):
    """What a host-driven arm's `simulate(trial, cov, params, noise_keys, course)` is given
    for its `m` patients besides their covariates, parameters and noise keys: the trial's
    engine and each patient's realised visits.

    - `run(plan)`: the course arrays `(level (m, P + 1), measured (m, V), doses (m, P),
      *exposure, *curve)` of the jitted engine (`make_runner`) when the patients are
      prescribed `plan` `(m, P)` (mg per period; the arm's `step` gives them, as loading
      doses of every period): their adherence (doses taken, dose times), within-patient
      variability, visit schedule and assay noise are the trial's, the same draws as in
      the scanned arms. `measured` at a visit that did not happen is not a measurement.
    - `visit_period` `(m, V)` int, `attended` `(m, V)` bool: the period each visit happened
      in (its scheduled one when missed) and whether it happened (`visit_schedule`; every
      visit on its scheduled day without `Trial.visits`).
    - `due_h`: when each prescribed dose is due after its period start (h): the
      adherence's `DoseTiming.due_h`, else 0.
    """

    run: Callable[[np.ndarray], list[np.ndarray]]
    visit_period: np.ndarray
    attended: np.ndarray
    due_h: float


def _host_arm(trial, arm, runner, cov, inputs, schedule, good, size):
    """Simulate a host-driven arm (`arm.simulate(trial, cov, params, noise_keys, course)`,
    `course` a `HostCourse` over `runner`, the arm's jitted engine) for the patients `good`;
    when it raises, patient by patient, recording those that raise. An error that the first
    `_SEARCH_BATCH` patients (two or more) all raise alike is not a patient's: it is raised.

    `inputs`: `(params, noise_keys, taken, extra)` of every patient of the chunk (the
    engine's inputs but the arm's state); `schedule`: `visit_schedule`'s `(period,
    attended)` or None. Every engine call runs `size` rows (the patients asked for,
    repeated), so that it compiles once per chunk shape.
    Returns the course arrays `(level, measured, doses, *exposure, *curve)` of all the
    chunk's patients (NaN for those not simulated) and `{patient: reason}`."""
    simulate = getattr(arm, "simulate")  # noqa: B009  # host-driven arms define it
    params, noise_keys, taken, extra = inputs
    n = len(noise_keys)
    out = _nan_course(trial, arm, n)
    visits = np.asarray(arm.visits, dtype=int)
    if schedule is None:
        period = np.broadcast_to(visits, (n, visits.size))
        attended = np.ones((n, visits.size), dtype=bool)
    else:
        period, attended = schedule
    timing = getattr(trial.adherence, "timing", None)
    due = 0.0 if timing is None else float(timing.due_h)

    def engine(which: np.ndarray) -> HostCourse:
        rows = np.resize(which, max(size, which.size))
        picked = jax.tree.map(lambda v: v[rows], (params, noise_keys, taken, extra))

        def run(plan: np.ndarray) -> list[np.ndarray]:
            plan = np.asarray(plan, dtype=float)
            state = {
                "loading": np.resize(plan, (rows.size, plan.shape[1])),  # rows as `rows`
                "dose": np.zeros(rows.size),
                "hold": np.zeros(rows.size, dtype=np.int32),
            }
            p, k, t, e = picked
            arrays = jax.block_until_ready(runner(p, state, k, t, e))
            return [np.asarray(x)[: which.size] for x in arrays]

        return HostCourse(run, np.asarray(period)[which], np.asarray(attended)[which], due)

    def run(which):
        which = np.asarray(which)
        sub_cov = {k: np.asarray(v)[which] for k, v in cov.items()}
        sub_params = {k: v[which] for k, v in params.items()}
        keys = noise_keys[jnp.asarray(which)]
        return simulate(trial, sub_cov, sub_params, keys, engine(which))

    failures: dict[int, str] = {}
    try:
        groups = [(good, run(good))]
    except (ArithmeticError, RuntimeError, ValueError) as first:
        groups = []
        for k, i in enumerate(good):
            try:
                groups.append(([i], run([i])))
            except (ArithmeticError, RuntimeError, ValueError) as error:
                text = str(error).strip().splitlines()
                failures[i] = (
                    f"the arm raised {type(error).__name__}: {text[0][:200] if text else ''}"
                )
            if k + 1 == min(len(good), _SEARCH_BATCH):
                _raise_if_systematic(first, [failures.get(j) for j in good[: k + 1]])
    for which, arrays in groups:
        for target, values in zip(out, arrays, strict=True):
            target[np.asarray(which)] = np.asarray(values)
    return out, failures


def _non_finite(*arrays: np.ndarray) -> list[int]:
    """The rows holding a non-finite value in any of `arrays` (patient axis first)."""
    bad = np.zeros(arrays[0].shape[0], dtype=bool)
    for a in arrays:
        bad |= ~np.isfinite(np.asarray(a, dtype=float).reshape(a.shape[0], -1)).all(axis=1)
    return np.flatnonzero(bad).tolist()


def _non_finite_reason(level: np.ndarray, days: np.ndarray, params, i: int) -> str:
    bad = ~np.isfinite(level)
    when = f" (the output from day {days[int(np.argmax(bad))]:g})" if bad.any() else ""
    shown = ", ".join(f"{k} = {float(v[i]):.4g}" for k, v in params.items())
    return (
        f"the simulation gave non-finite values{when}; parameters {shown}: check them, or "
        "use a smaller solver step"
    )


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    x = np.asarray(x)
    extra = size - x.shape[0]
    if extra == 0:
        return x
    return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)], axis=0)
