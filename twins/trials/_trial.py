"""Virtual trials: a population x arms x endpoints, simulated period by period.

A `Trial` gives every virtual patient every arm (the same patients, the same assay noise:
common random numbers), simulates the drug's population model one dosing period at a time
so that adaptive arms can change the dose from simulated measurements, and reduces each
patient's course to endpoint values. `run_trial` does it chunk by chunk, writes Parquet
parts atomically and resumes an interrupted run (`twins._trial_io`).

The simulation of one chunk is one `jax.jit` call per arm: the patient axis is vmapped (and
sharded over the local devices when there are several), the periods are a `lax.scan`, and
the drug's model is advanced over each period by `model.propagate` with the trial's solver
(by default `pkpd.FixedStep(1.0)`: exact linear PK, RK4 for PD states).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np

import pkpd

from .._population import Population
from ..drugs import Drug

Source = Literal["measured", "true"]

#: Virtual patients are drawn in blocks of this size, block b from `fold_in(key, b)`, so that
#: patient i is the same whatever N and the chunk size are.
POPULATION_BLOCK = 1000


# ----------------------------------------------------------------------------- dosing rules


@dataclasses.dataclass(frozen=True)
class Nomogram:
    r"""An INR- (or level-) guided dose adjustment table.

    A measured value in band $b$ (`bounds` cut the real line into `len(bounds) + 1` bands;
    a value equal to a bound falls in the upper band) changes the maintenance dose by the
    fraction `change[b]` and withholds the next `hold[b]` doses.

    **Fields:**

    - `bounds`: increasing cut points (in the units of the measured output).
    - `change`: fractional dose change per band (`0.1` = +10%), `len(bounds) + 1` values.
    - `hold`: number of doses withheld per band (non-negative integers).
    - `reference`: where the table comes from.
    """

    bounds: tuple[float, ...]
    change: tuple[float, ...]
    hold: tuple[int, ...]
    reference: str = ""

    def __post_init__(self):
        b = np.asarray(self.bounds, dtype=float)
        if b.ndim != 1 or b.size == 0 or not np.all(np.isfinite(b)) or np.any(np.diff(b) <= 0):
            raise ValueError(f"Nomogram: bounds must increase strictly, got {self.bounds!r}.")
        if len(self.change) != b.size + 1 or len(self.hold) != b.size + 1:
            raise ValueError(
                f"Nomogram: expected {b.size + 1} values in change and in hold (one per band), "
                f"got {len(self.change)} and {len(self.hold)}."
            )
        if any(c <= -1 or not math.isfinite(c) for c in self.change):
            raise ValueError(f"Nomogram: each change must be > -1 (-100%), got {self.change!r}.")
        if any(int(h) != h or h < 0 for h in self.hold):
            raise ValueError(f"Nomogram: hold must be non-negative integers, got {self.hold!r}.")

    def __call__(self, measured, dose):
        """`(new dose, doses to withhold)` for arrays of measured values and current doses."""
        band = jnp.searchsorted(jnp.asarray(self.bounds), measured, side="right")
        change = jnp.asarray(self.change)[band]
        hold = jnp.asarray(self.hold, dtype=jnp.int32)[band]
        return dose * (1.0 + change), hold


InitialFn = Callable[[Mapping[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]


class Arm(abc.ABC):
    """One arm of a trial: how each patient is dosed, period by period.

    Subclasses give `start` (the doses before any measurement, from the covariates, in
    NumPy) and `step` (jittable: the dose of one period and the updated state, given the
    value measured at the start of that period, if any).
    """

    name: str
    label: str
    description: str
    visits: tuple[int, ...]

    @abc.abstractmethod
    def start(self, covariates: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Initial per-patient state (arrays with the patient axis first)."""

    @abc.abstractmethod
    def step(self, period, measured, is_visit, state) -> tuple[Any, dict[str, Any]]:
        """`(amount given in this period, new state)` for one patient."""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "description": self.description,
            "visits_day": [v + 1 for v in self.visits],
        }

    def check_drug(self, drug: Drug) -> None:
        """Raise `ValueError` if the arm cannot dose `drug` (checked when the trial is
        built; an arm that needs something of the drug, such as `TwinArm`'s target, says so
        here). Any drug by default."""
        del drug


@dataclasses.dataclass(frozen=True, eq=False)
class DosingArm(Arm):
    r"""Loading doses, a maintenance dose, and rules that adjust it at the visits.

    - Fixed regimen: `initial` gives the same dose to everyone and `rules` is empty.
    - Covariate- or genotype-guided: `initial` computes the doses from the covariates
      (`Population.covariates()` keys: `AGE`, `WT`, `CYP2C9`, `VKORC1`, ...).
    - Adaptive (titration): `rules` change the maintenance dose from the value measured at
      each visit (with assay noise), e.g. an INR `Nomogram`.

    **Fields:**

    - `name`, `label`, `description`: identifiers for the results and the report.
    - `initial`: `initial(covariates) -> (loading, maintenance)`: `loading` an array
      `(patients, L)` of the doses of the first L periods (mg), `maintenance` `(patients,)`
      the dose of every later period (mg).
    - `visits`: days (1-based: day 1 is the first dosing day) on which the output is
      measured, in the morning before that day's dose.
    - `rules`: `((days, rule), ...)`: at a visit on one of `days` (1-based), `rule(measured,
      dose) -> (new dose, doses withheld)` updates the maintenance dose. The first rule whose
      days contain the visit applies.
    - `dose_step`: doses are rounded to multiples of this (mg; tablet strengths), and never
      fall below one step except while withheld.
    """

    name: str
    label: str
    description: str
    initial: InitialFn
    visits: tuple[int, ...] = ()
    rules: tuple[tuple[tuple[int, ...], Callable], ...] = ()
    dose_step: float = 0.5

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"DosingArm: name must be a word ([A-Za-z0-9_]), got {self.name!r}.")
        days = [int(d) for d in self.visits]
        if any(d < 1 for d in days) or days != sorted(set(days)):
            raise ValueError(
                f"DosingArm {self.name!r}: visits must be increasing days >= 1, got "
                f"{self.visits!r}."
            )
        for rule_days, _ in self.rules:
            missing = sorted(set(rule_days) - set(days))
            if missing:
                raise ValueError(
                    f"DosingArm {self.name!r}: rule days {missing} are not visit days."
                )
        if not self.dose_step > 0:
            raise ValueError(f"DosingArm {self.name!r}: dose_step must be > 0.")
        # Stored 0-based (period index); describe() reports 1-based days.
        object.__setattr__(self, "visits", tuple(d - 1 for d in days))
        object.__setattr__(
            self, "rules", tuple((tuple(int(d) - 1 for d in ds), r) for ds, r in self.rules)
        )

    def describe(self) -> dict[str, Any]:
        fn = self.initial
        return {
            **super().describe(),
            "initial": f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}",
            "rules": [{"days": [d + 1 for d in days], "rule": repr(r)} for days, r in self.rules],
            "dose_step": self.dose_step,
        }

    def start(self, covariates):
        loading, maintenance = self.initial(covariates)
        n = len(covariates["ID"])
        loading = np.asarray(loading, dtype=float)
        maintenance = np.asarray(maintenance, dtype=float)
        if loading.ndim != 2 or loading.shape[0] != n or maintenance.shape != (n,):
            raise ValueError(
                f"DosingArm {self.name!r}: initial must return loading (patients, L) and "
                f"maintenance (patients,), got shapes {loading.shape} and {maintenance.shape} "
                f"for {n} patients."
            )
        for what, values in (("loading", loading), ("maintenance", maintenance)):
            bad = ~np.isfinite(values) | (values < 0)
            if bad.any():
                i = int(np.argwhere(bad)[0][0])
                raise ValueError(
                    f"DosingArm {self.name!r}: the {what} dose of patient "
                    f"{covariates['ID'][i]} is {values[i]}; expected a finite dose >= 0 (mg)."
                )
        return {
            "loading": loading,
            "dose": self._round(maintenance),
            "hold": np.zeros(n, dtype=np.int32),
        }

    def _round(self, dose):
        xp = jnp if isinstance(dose, jax.Array) else np
        return xp.maximum(xp.round(dose / self.dose_step), 1.0) * self.dose_step

    def step(self, period, measured, is_visit, state):
        dose, hold = state["dose"], state["hold"]
        for days, rule in self.rules:
            applies = is_visit & jnp.isin(period, jnp.asarray(days, dtype=jnp.int32))
            new_dose, new_hold = rule(measured, dose)
            dose = jnp.where(applies, self._round(new_dose), dose)
            hold = jnp.where(applies, new_hold, hold)
        loading = state["loading"]
        n_load = loading.shape[-1]
        in_loading = period < n_load
        load = loading[jnp.clip(period, 0, max(n_load - 1, 0))] if n_load else 0.0
        held = hold > 0
        amount = jnp.where(in_loading, load, jnp.where(held, 0.0, dose))
        hold = jnp.where(in_loading, hold, jnp.maximum(hold - 1, 0))
        return amount, {"loading": loading, "dose": dose, "hold": hold}


# ----------------------------------------------------------------------------- endpoints


class Course(dict):
    """What endpoints see for a chunk of patients (all arrays, patient axis first).

    - `days` `(P + 1,)`: the start of every period and the end of the trial (days from the
      first dose); `level` `(n, P + 1)`: the true (noise-free) output there, before that
      period's dose (a trough for once-per-period dosing);
    - `visit_days` `(V,)`, `measured` `(n, V)`: the visits and what was measured;
    - `doses` `(n, P)`: the amount given in each period;
    - `params`: each patient's model parameters, `{name: (n,)}`;
    - `interval_h`: the dosing period (h);
    - `auc`, `cmax` `(n, P)`: the AUC and highest value of the true output within each
      period, when an endpoint needs them (`Trial.exposure_steps`).
    """


@dataclasses.dataclass(frozen=True)
class Endpoint(abc.ABC):
    """A per-patient endpoint computed from a `Course`."""

    name: str
    label: str
    kind: ClassVar[str] = "mean"
    unit: ClassVar[str] = ""
    #: Whether the endpoint needs the AUC and Cmax of every period (`Course["auc"]`, `["cmax"]`).
    needs_exposure: ClassVar[bool] = False

    @abc.abstractmethod
    def __call__(self, course: Mapping[str, Any]) -> dict[str, Any]:
        """`{column: (n,) array}` for this endpoint."""

    def describe(self) -> dict[str, Any]:
        fields = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"type": type(self).__name__, **fields, "kind": self.kind, "unit": self.unit}


def _plain(x: Any) -> Any:
    """JSON-friendly and canonical (tuples as lists, integral floats kept as floats)."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int | float | np.number):
        return float(x)
    return repr(x)


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
        "args": _plain(list(getattr(population, "args", ()))),
        "keywords": _plain(dict(getattr(population, "keywords", {}) or {})),
    }


def _series(course, source: Source):
    if source == "measured":
        return course["visit_days"], course["measured"]
    return course["days"], course["level"]


def _in_range_fraction(t, y, low, high):
    """Rosendaal: the fraction of the time between the first and last point with y in range,
    y interpolated linearly between points."""
    y = jnp.asarray(y)
    y0, y1 = y[..., :-1], y[..., 1:]
    dt = jnp.broadcast_to(jnp.diff(jnp.asarray(t, dtype=y.dtype)), y0.shape)
    lo = jnp.minimum(y0, y1)
    hi = jnp.maximum(y0, y1)
    span = hi - lo
    overlap = jnp.clip(jnp.minimum(hi, high) - jnp.maximum(lo, low), 0.0, None)
    flat = span <= 0
    inside = (lo >= low) & (lo <= high)
    frac = jnp.where(flat, inside.astype(y.dtype), overlap / jnp.where(flat, 1.0, span))
    return (frac * dt).sum(-1) / (t[-1] - t[0])


@dataclasses.dataclass(frozen=True)
class TimeInRange(Endpoint):
    r"""Percentage of time with the output in `[low, high]` (Rosendaal interpolation).

    Between two consecutive values the output is interpolated linearly and the time inside
    the range is counted, from the first value to the last. With `source="measured"` the
    values are those measured at the visits (as TTR is computed in clinical trials); with
    `"true"` the noise-free output at the start of every period.

    References: Rosendaal FR, Cannegieter SC, van der Meer FJ, Briet E. A method to
    determine the optimal intensity of oral anticoagulant therapy. Thromb Haemost
    1993;69(3):236-239.
    """

    low: float = 2.0
    high: float = 3.0
    source: Source = "measured"
    unit: ClassVar[str] = "% of time"

    def __call__(self, course):
        t, y = _series(course, self.source)
        return {self.name: 100.0 * _in_range_fraction(t, y, self.low, self.high)}


@dataclasses.dataclass(frozen=True)
class AnyAbove(Endpoint):
    """Whether the output reached `threshold` or more at least once (an adverse-event proxy)."""

    threshold: float = 4.0
    source: Source = "measured"
    kind: ClassVar[str] = "proportion"
    unit: ClassVar[str] = "% of patients"

    def __call__(self, course):
        _, y = _series(course, self.source)
        return {self.name: (y >= self.threshold).any(-1)}


@dataclasses.dataclass(frozen=True)
class TimeToRange(Endpoint):
    """Days from the first dose to the first value in `[low, high]`; censored at the last
    value when never reached (`<name>_event` False)."""

    low: float = 2.0
    high: float = 3.0
    source: Source = "measured"
    kind: ClassVar[str] = "time_to_event"
    unit: ClassVar[str] = "days"

    def __call__(self, course):
        t, y = _series(course, self.source)
        ok = (y >= self.low) & (y <= self.high)
        event = ok.any(-1)
        first = jnp.argmax(ok, axis=-1)
        time = jnp.where(event, jnp.asarray(t)[first], jnp.asarray(t)[-1])
        return {self.name: time, f"{self.name}_event": event}


@dataclasses.dataclass(frozen=True)
class MeanDose(Endpoint):
    """Mean weekly dose (mg/week) over the last `days` days of the trial (whatever the
    dosing interval: the periods within those days, times periods per week)."""

    days: float = 28
    unit: ClassVar[str] = "mg/week"

    def __call__(self, course):
        doses = course["doses"]
        interval = float(course["interval_h"])
        periods = max(round(self.days * 24.0 / interval), 1)
        return {self.name: (168.0 / interval) * doses[..., -periods:].mean(-1)}


@dataclasses.dataclass(frozen=True)
class FinalLevel(Endpoint):
    """The output at the end of the trial (true or as measured at the last visit)."""

    source: Source = "true"

    def __call__(self, course):
        _, y = _series(course, self.source)
        return {self.name: y[..., -1]}


Metric = Literal["auc", "cmax", "trough"]


def _window(course, end_h: float | None, hours: float, who: str) -> tuple[int, int]:
    """The periods `[first, stop)` of the window of `hours` ending at `end_h` (default: the
    end of the trial); both must fall on period boundaries."""
    tau = float(course["interval_h"])
    n_periods = len(course["days"]) - 1
    end = n_periods * tau if end_h is None else float(end_h)
    stop, first = end / tau, (end - hours) / tau
    if not (math.isclose(stop, round(stop)) and math.isclose(first, round(first))):
        raise ValueError(
            f"{who}: the window of {hours:g} h ending at {end:g} h must start and end on dose "
            f"times (multiples of the {tau:g}-h dosing period)."
        )
    first_i, stop_i = round(first), round(stop)
    if not 0 <= first_i < stop_i <= n_periods:
        raise ValueError(
            f"{who}: the window of {hours:g} h ending at {end:g} h is outside the trial "
            f"(0-{n_periods * tau:g} h)."
        )
    return first_i, stop_i


def _metric(course, metric: Metric, end_h: float | None, hours: float, who: str):
    if metric == "trough":
        tau = float(course["interval_h"])
        n_periods = len(course["days"]) - 1
        at = n_periods if end_h is None else float(end_h) / tau
        if not (math.isclose(at, round(at)) and 0 <= round(at) <= n_periods):
            raise ValueError(
                f"{who}: a trough is taken just before a dose; end_h = {end_h} h is not a dose "
                f"time of the trial (multiples of {tau:g} h up to {n_periods * tau:g} h)."
            )
        return course["level"][..., round(at)]
    if "auc" not in course:
        raise ValueError(
            f"{who}: the course has no AUC or Cmax; the trial records them only when one of "
            "its endpoints needs them (Trial.exposure_steps sets their resolution)."
        )
    first, stop = _window(course, end_h, hours, who)
    if metric == "auc":
        return course["auc"][..., first:stop].sum(-1)
    return course["cmax"][..., first:stop].max(-1)


@dataclasses.dataclass(frozen=True)
class AUC(Endpoint):
    """Area under the true output curve over the `hours` ending at `end_h` (hours from the
    first dose; default the end of the trial), e.g. the AUC24 at steady state.

    Computed period by period with the composite Simpson rule on `Trial.exposure_steps`
    sub-steps per period (split at the end of an infusion, where the curve has a kink), so it
    is accurate to the solver's tolerance for smooth curves; the window must start and end on
    dose times. Units: the output's times hours (mg.h/L for a concentration)."""

    end_h: float | None = None
    hours: float = 24.0
    needs_exposure: ClassVar[bool] = True
    unit: ClassVar[str] = "output x h"

    def __call__(self, course):
        return {self.name: _metric(course, "auc", self.end_h, self.hours, self.name)}


@dataclasses.dataclass(frozen=True)
class Cmax(Endpoint):
    """The highest true output over the `hours` ending at `end_h` (default: the last 24 h),
    taken on the grid of `Trial.exposure_steps` points per period plus the end of any
    infusion (exact for IV doses; for oral doses the grid's resolution)."""

    end_h: float | None = None
    hours: float = 24.0
    needs_exposure: ClassVar[bool] = True

    def __call__(self, course):
        return {self.name: _metric(course, "cmax", self.end_h, self.hours, self.name)}


@dataclasses.dataclass(frozen=True)
class Ctrough(Endpoint):
    """The true output just before the dose given at `end_h` hours (default: the end of the
    trial, i.e. before the next dose)."""

    end_h: float | None = None

    def __call__(self, course):
        return {self.name: _metric(course, "trough", self.end_h, 0.0, self.name)}


@dataclasses.dataclass(frozen=True)
class TargetAttainment(Endpoint):
    """Probability of target attainment: the share of patients whose `metric` (`"auc"`,
    `"cmax"` or `"trough"`, over the window of `AUC`/`Cmax`/`Ctrough`) lies in
    `[low, high]` (either bound may be omitted), e.g. AUC24 in 400-600 mg.h/L for
    vancomycin (Rybak MJ et al. Am J Health Syst Pharm 2020;77(11):835-864)."""

    metric: Metric = "auc"
    low: float | None = None
    high: float | None = None
    end_h: float | None = None
    hours: float = 24.0
    kind: ClassVar[str] = "proportion"
    unit: ClassVar[str] = "% of patients"

    def __post_init__(self):
        if self.metric not in ("auc", "cmax", "trough"):
            raise ValueError(
                f"{self.name}: metric must be 'auc', 'cmax' or 'trough', got {self.metric!r}."
            )
        if self.low is None and self.high is None:
            raise ValueError(f"{self.name}: give a target: low, high or both.")
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ValueError(f"{self.name}: expected low < high, got {self.low} and {self.high}.")

    @property
    def needs_exposure(self) -> bool:  # type: ignore[override]
        return self.metric != "trough"

    def __call__(self, course):
        value = _metric(course, self.metric, self.end_h, self.hours, self.name)
        ok = np.ones(np.shape(value), dtype=bool)
        if self.low is not None:
            ok &= np.asarray(value) >= self.low
        if self.high is not None:
            ok &= np.asarray(value) <= self.high
        return {self.name: ok}


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
    - `subgroups`: covariate keys (of `Population.covariates()`, or `"ancestry"`, `"sex"`)
      to report endpoints by.
    - `covariates`: numeric covariate keys for the population summary.
    - `bands_edges`: bin edges of the histogram behind the median/5-95% bands of the output.
    - `solver`: how the model is advanced over a period (default `pkpd.FixedStep(1.0)`).
    - `exposure_steps`: sub-steps per period at which the output is evaluated for AUC and
      Cmax endpoints (composite Simpson rule; made even, and split at the end of an
      infusion). Used only when an endpoint needs them, since it multiplies the work.
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
    subgroups: tuple[str, ...] = ()
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


def make_runner(trial: Trial, arm: Arm, window: int, mesh: Any = None):
    """The jitted simulation of one arm for a chunk: parameters -> course arrays.

    Each period's dose is given through the `pkpd` event engine (`pkpd.advance`): the drug's
    route builds the dose record and the model's `F`, `ALAG`, `R` and `D` apply exactly as
    in `pkpd.simulate`; `window` periods of doses (`dose_window`) are kept so that a dose's
    entries falling in a later period are applied there. Build it once per trial, arm and
    window and reuse it for every chunk of the same size (`simulate_chunk(runners=...)`).
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
                solver=solver, rates=r, exposure_steps=steps, output=out_idx,
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
    runners: dict[str, Any] | None = None,
    mesh: Any = None,
    size: int | None = None,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Course]]:
    """Simulate every arm for one chunk of patients.

    Patient `first_index + i`'s etas and assay noise come from `fold_in(key, index)`, so
    results do not depend on the chunk size. With `size` the arrays are padded to that many
    patients (copies of the last one, dropped from the results), so that every chunk has the
    same shape and the simulation compiles once. Returns `(endpoints, courses)` by arm name.
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
    runners = {} if runners is None else runners
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
            slot = (arm.name, window)
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
