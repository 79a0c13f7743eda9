"""Trial endpoints: per-patient values computed from a simulated `Course`.

Each endpoint is a frozen dataclass deriving from `Endpoint`, with a `kind` (how it is
summarised: mean, proportion, time to event) and a unit. Exposure endpoints (`AUC`, `Cmax`,
`TargetAttainment` on them) read the per-period AUC and Cmax that the chunk simulator
computes with `pkpd.advance` when `needs_exposure` is set.

With `Trial(visits=...)` (slipped and missed visits, `twins.trials._visits`) the endpoints
that read measured values (`visit_aware`: `TimeInRange`, `AnyAbove`, `TimeToRange`,
`FinalLevel`, `EventRisk`) use each patient's own visits that happened, in order, at the
days they happened (`Course["visit_day"]`, `["observed"]`): a missed visit is not a value,
and consecutive values are consecutive *measured* values.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import jax.numpy as jnp
import numpy as np

from ..drugs import AUCOver, Metric, Peak, Trough

Source = Literal["measured", "true"]


class Course(dict):
    """What endpoints see for a chunk of patients (all arrays, patient axis first).

    - `days` `(P + 1,)`: the start of every period and the end of the trial (days from the
      first dose); `level` `(n, P + 1)`: the true (noise-free) output there, before that
      period's dose (a trough for once-per-period dosing);
    - `visit_days` `(V,)`, `measured` `(n, V)`: the visits and what was measured;
    - `doses` `(n, P)`: the amount prescribed in each period (given, unless
      `Trial(adherence=...)`: then `taken` `(n, P)` the amounts taken and `adherence`
      `(n, P)` 1.0 / 0.0 per period);
    - `params`: each patient's model parameters, `{name: (n,)}`;
    - `interval_h`: the dosing period (h);
    - `auc`, `cmax` `(n, P)`: the AUC and highest value of the true output within each
      period, when an endpoint needs them (`Trial.exposure_steps`);
    - with `Trial(visits=...)`: `visit_day` `(n, V)` the day each patient's visit happened
      (its scheduled day when missed), `attended` `(n, V)`, and `measured` NaN at the
      visits that did not happen; `observed` then marks the visits that happened (and,
      with dropout, before the patient left).
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
    #: Whether the endpoint, reading measured values, uses each patient's own visit days and
    #: only the visits that happened (`Trial(visits=...)`; a trial with visits refuses a
    #: measured-value endpoint without it).
    visit_aware: ClassVar[bool] = False

    @abc.abstractmethod
    def __call__(self, course: Mapping[str, Any]) -> dict[str, Any]:
        """`{column: (n,) array}` for this endpoint."""

    def describe(self) -> dict[str, Any]:
        fields = {f.name: plain_value(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"type": type(self).__name__, **fields, "kind": self.kind, "unit": self.unit}


def plain_value(x: Any) -> Any:
    """JSON-friendly and canonical (tuples as lists, integral floats kept as floats)."""
    if isinstance(x, Mapping):
        return {str(k): plain_value(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    if isinstance(x, list | tuple):
        return [plain_value(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int | float | np.number):
        return float(x)
    return repr(x)


def _series(course, source: Source):
    if source == "measured":
        return course["visit_days"], course["measured"]
    return course["days"], course["level"]


def _observed(course, source: Source):
    """The mask of observed values (`Trial(dropout=...)`: a prefix of each patient's
    series), or None when every value is observed."""
    key = "observed" if source == "measured" else "observed_days"
    return None if key not in course else np.asarray(course[key], dtype=bool)


def observed_values(course: Mapping[str, Any], source: Source):
    """`(t, y, m)`: the times, values and observed mask an endpoint reads from `course`.

    `source="measured"`: the visit days `(V,)` and the measured values `(n, V)`;
    `"true"`: the period starts `(P + 1,)` and the noise-free output. `m` is None when
    every value is observed, else a mask of `y`'s shape (a prefix of each patient's series
    with dropout). With `Trial(visits=...)` and measured values, each patient's visits
    that happened (and were observed), in order, moved to the front: `t` and `y` `(n, V)`,
    `t` the day each happened, and `m` a prefix mask, as dropout's (the padding after it
    repeats the last time, so it adds no time). Public for endpoints outside this module
    (COAG's `WindowTimeInRange`)."""
    return _values(course, source)


def _values(course, source: Source):
    """`(t, y, m)`: `_series` and `_observed`; with `Trial(visits=...)` and measured values,
    each patient's visits that happened (and were observed), in order, moved to the front
    (`_compact`): `t` and `y` `(n, V)` and `m` a prefix mask, as dropout's."""
    t, y = _series(course, source)
    m = _observed(course, source)
    if source == "measured" and "visit_day" in course:
        assert m is not None  # `observed`: the visits that happened
        t, y, m = _compact(np.asarray(course["visit_day"], dtype=float), np.asarray(y), m)
    return t, y, m


def _compact(t: np.ndarray, y: np.ndarray, m: np.ndarray):
    """Each row's values where `m`, in their order, first; the rest of the row repeats the
    last of them (its time too: the padding adds no time; 0 where there is none), masked."""
    order = np.argsort(~m, axis=-1, kind="stable")
    k = m.sum(-1)
    t2 = np.take_along_axis(t, order, axis=-1)
    y2 = np.take_along_axis(y, order, axis=-1)
    keep = np.arange(m.shape[-1])[None, :] < k[:, None]
    last = np.maximum(k - 1, 0)[:, None]
    t2 = np.where(keep, t2, np.take_along_axis(t2, last, axis=-1))
    y2 = np.where(keep, y2, np.where(k[:, None] > 0, np.take_along_axis(y2, last, axis=-1), 0.0))
    return t2, y2, keep


def _at(t, index):
    """`t[index]` per patient: `t` `(T,)` or `(n, T)`, `index` `(n,)`."""
    t = jnp.asarray(t)
    if t.ndim == 1:
        return t[index]
    return jnp.take_along_axis(t, jnp.asarray(index)[:, None], axis=-1)[:, 0]


def _in_range_fraction_observed(t, y, low, high, m):
    """`_in_range_fraction` over each patient's observed prefix (`m`): NaN with fewer than
    two observed values."""
    y = jnp.asarray(y)
    t = jnp.asarray(t, dtype=y.dtype)
    y0, y1 = y[..., :-1], y[..., 1:]
    dt = jnp.broadcast_to(jnp.diff(t), y0.shape)
    lo = jnp.minimum(y0, y1)
    hi = jnp.maximum(y0, y1)
    span = hi - lo
    overlap = jnp.clip(jnp.minimum(hi, high) - jnp.maximum(lo, low), 0.0, None)
    flat = span <= 0
    inside = (lo >= low) & (lo <= high)
    frac = jnp.where(flat, inside.astype(y.dtype), overlap / jnp.where(flat, 1.0, span))
    both = jnp.asarray(m[..., 1:])
    spent = jnp.where(both, frac * dt, 0.0).sum(-1)
    follow = jnp.where(both, dt, 0.0).sum(-1)
    # times the reciprocal, as `_in_range_fraction`: the same bits when every value is
    # observed (XLA divides by a scalar that way; by an array it divides exactly)
    return jnp.where(follow > 0, spent * (1.0 / jnp.where(follow > 0, follow, 1.0)), jnp.nan)


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
    return (frac * dt).sum(-1) * (1.0 / (t[-1] - t[0]))


@dataclasses.dataclass(frozen=True)
class TimeInRange(Endpoint):
    r"""Percentage of time with the output in `[low, high]` (Rosendaal interpolation).

    Between two consecutive values the output is interpolated linearly and the time inside
    the range is counted, from the first value to the last. With `source="measured"` the
    values are those measured at the visits (as TTR is computed in clinical trials); with
    `"true"` the noise-free output at the start of every period. With dropout, over each
    patient's follow-up; with `Trial(visits=...)`, between the measured values of the visits
    that happened, at the days they happened (interpolated across a missed visit).

    References: Rosendaal FR, Cannegieter SC, van der Meer FJ, Briet E. A method to
    determine the optimal intensity of oral anticoagulant therapy. Thromb Haemost
    1993;69(3):236-239.
    """

    low: float = 2.0
    high: float = 3.0
    source: Source = "measured"
    unit: ClassVar[str] = "% of time"
    visit_aware: ClassVar[bool] = True

    def __call__(self, course):
        t, y, m = _values(course, self.source)
        if m is not None:  # dropout: over each patient's follow-up
            return {self.name: 100.0 * _in_range_fraction_observed(t, y, self.low, self.high, m)}
        return {self.name: 100.0 * _in_range_fraction(t, y, self.low, self.high)}


@dataclasses.dataclass(frozen=True)
class AnyAbove(Endpoint):
    """Whether the output reached `threshold` or more at least once (an adverse-event proxy)."""

    threshold: float = 4.0
    source: Source = "measured"
    kind: ClassVar[str] = "proportion"
    unit: ClassVar[str] = "% of patients"
    visit_aware: ClassVar[bool] = True

    def __call__(self, course):
        _, y, m = _values(course, self.source)
        if m is not None:  # dropout: the observed values only
            return {self.name: ((jnp.asarray(y) >= self.threshold) & m).any(-1)}
        return {self.name: (y >= self.threshold).any(-1)}


@dataclasses.dataclass(frozen=True)
class TimeToRange(Endpoint):
    """Days from the first dose to the first value in `[low, high]`; censored at the last
    value when never reached (`<name>_event` False).

    With `consecutive = k` (default 1) the range counts as reached only at the first of `k`
    consecutive values in range (the definition of several trials: a therapeutic INR is
    two consecutive INRs in 2.0-3.0); the time is that of the first of them, and a run
    still unconfirmed at the last value is not an event. With `Trial(visits=...)` the
    values are the *measured* values of the visits that happened (two consecutive measured
    INRs: a missed visit between them does not break the run), at the days they happened."""

    low: float = 2.0
    high: float = 3.0
    source: Source = "measured"
    consecutive: int = 1
    kind: ClassVar[str] = "time_to_event"
    unit: ClassVar[str] = "days"
    visit_aware: ClassVar[bool] = True

    def __post_init__(self):
        k = self.consecutive
        if isinstance(k, float) and k.is_integer():
            object.__setattr__(self, "consecutive", int(k))
            k = int(k)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(
                f"TimeToRange {self.name!r}: consecutive must be an integer >= 1, got {k!r}."
            )

    def __call__(self, course):
        t, y, m = _values(course, self.source)
        ok = (jnp.asarray(y) >= self.low) & (jnp.asarray(y) <= self.high)
        last = jnp.asarray(t)[-1]
        if m is not None:  # dropout: observed values only, censored at the last observed
            ok = ok & m
            last = _at(t, jnp.maximum(m.sum(-1) - 1, 0))
        k = self.consecutive
        if k > 1:  # in range here and at the next k - 1 values
            width = ok.shape[-1]
            run = ok
            for j in range(1, k):
                shifted = jnp.concatenate(
                    [ok[..., j:], jnp.zeros((*ok.shape[:-1], min(j, width)), dtype=bool)], axis=-1
                )[..., :width]
                run = run & shifted
            ok = run
        event = ok.any(-1)
        first = jnp.argmax(ok, axis=-1)
        time = jnp.where(event, _at(t, first), last)
        return {self.name: time, f"{self.name}_event": event}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.consecutive == 1:  # as before the field existed (the spec hash is unchanged)
            out.pop("consecutive")
        return out


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
class DosesTaken(Endpoint):
    """The share of prescribed doses the patient took (% of the periods with a prescribed
    dose), with `Trial(adherence=...)`; 100 without (every dose is taken)."""

    unit: ClassVar[str] = "% of doses"

    def __call__(self, course):
        doses = np.asarray(course["doses"])
        taken = np.asarray(course.get("adherence", np.ones_like(doses)))
        prescribed = doses > 0
        n = prescribed.sum(-1)
        got = (prescribed & (taken > 0.5)).sum(-1)
        return {self.name: np.where(n > 0, 100.0 * got / np.maximum(n, 1), np.nan)}


@dataclasses.dataclass(frozen=True)
class EventRisk(Endpoint):
    r"""The risk (%) of at least one clinical event over the trial from a hazard that
    depends on the level: $100\,(1 - e^{-\sum_k h(y_k)\,\Delta t_k})$, with $h$ constant
    within bands of the level (`rates`, events per 100 patient-years, one more than
    `bounds`; a value equal to a bound falls in the upper band) and $y_k$ the level at the
    start of interval $k$, held over it (the daily noise-free output with `source="true"`;
    the measured values held from visit to visit with `"measured"`). With dropout, only the
    observed follow-up counts. The mean over patients is the expected share of patients
    with an event (a Poisson process given the course; no event is drawn).

    Give the rates from a published INR-bleeding relation and name it in `reference`: the
    package ships none (the per-INR-band rates of ISCOAT, Palareti G et al. Lancet
    1996;348:423-428, or of Fihn SD et al. Ann Intern Med 1993;118:511-520, are not held in
    a verified transcription here).
    """

    bounds: tuple[float, ...] = ()
    rates: tuple[float, ...] = (0.0,)
    source: Source = "true"
    reference: str = ""
    unit: ClassVar[str] = "% of patients (expected)"
    visit_aware: ClassVar[bool] = True

    def __post_init__(self):
        bounds = tuple(float(b) for b in self.bounds)
        rates = tuple(float(r) for r in self.rates)
        if any(not math.isfinite(b) for b in bounds) or list(bounds) != sorted(set(bounds)):
            raise ValueError(
                f"EventRisk {self.name!r}: bounds must be finite and increasing, got {bounds}."
            )
        if len(rates) != len(bounds) + 1:
            raise ValueError(
                f"EventRisk {self.name!r}: expected {len(bounds) + 1} rates (one per band: "
                f"len(bounds) + 1), got {len(rates)}."
            )
        if any(not math.isfinite(r) or r < 0 for r in rates):
            raise ValueError(
                f"EventRisk {self.name!r}: rates must be finite and >= 0 (events per 100 "
                f"patient-years), got {rates}."
            )
        object.__setattr__(self, "bounds", bounds)
        object.__setattr__(self, "rates", rates)

    def __call__(self, course):
        t, y, m = _values(course, self.source)
        y = np.asarray(y, dtype=float)
        dt = np.diff(np.asarray(t, dtype=float))  # days
        band = np.searchsorted(np.asarray(self.bounds), y[..., :-1], side="right")
        h = np.asarray(self.rates)[band] / 100.0 / 365.25  # per day
        if m is not None:
            h = np.where(m[..., 1:], h, 0.0)
        return {self.name: 100.0 * -np.expm1(-(h * dt).sum(-1))}


@dataclasses.dataclass(frozen=True)
class Dropped(Endpoint):
    """Time to dropout (`Trial(dropout=...)`): the day the patient left, censored at the end
    of the trial for those who stayed (`<name>_event` True for those who left)."""

    kind: ClassVar[str] = "time_to_event"
    unit: ClassVar[str] = "days"

    def __call__(self, course):
        n = np.asarray(course["level"]).shape[0]
        day = np.asarray(course.get("dropout_day", np.full(n, np.inf)), dtype=float)
        end = float(np.asarray(course["days"])[-1])
        left = day < end
        return {self.name: np.where(left, day, end), f"{self.name}_event": left}


@dataclasses.dataclass(frozen=True)
class FinalLevel(Endpoint):
    """The output at the end of the trial (true or as measured at the last visit; with
    dropout or visit realism, the last measured value)."""

    source: Source = "true"
    visit_aware: ClassVar[bool] = True

    def __call__(self, course):
        _, y, m = _values(course, self.source)
        if m is not None:  # dropout: the last observed value
            last = np.maximum(m.sum(-1) - 1, 0)
            return {self.name: np.take_along_axis(np.asarray(y), last[:, None], axis=-1)[:, 0]}
        return {self.name: y[..., -1]}


#: What the course reads for a metric: the per-period AUC, the per-period Cmax, or the level.
Reading = Literal["auc", "cmax", "trough"]

#: The metric names of earlier releases (`TargetAttainment(metric="auc")`), and of a spec.
READINGS: tuple[Reading, ...] = ("auc", "cmax", "trough")


def metric_from_reading(reading: str, hours: float | None) -> tuple[Metric, float | None]:
    """The metric a name of earlier releases meant (`"auc"`, `"cmax"`, `"trough"`, as in a
    spec's `metric = "auc"`) with the `hours` that go with it: `"auc"` becomes
    `AUCOver(hours)` (default 24; hours then belong to the metric: None is returned),
    `"cmax"` `Peak()` over `hours`, `"trough"` `Trough()`."""
    if reading == "auc":
        return AUCOver(24.0 if hours is None else hours), None
    if reading == "cmax":
        return Peak(), hours
    if reading == "trough":
        return Trough(), hours
    raise ValueError(f"expected a metric 'auc', 'cmax' or 'trough', got {reading!r}.")


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


def _metric(course, metric: Reading, end_h: float | None, hours: float, who: str):
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

    Computed period by period by `pkpd.advance`: the composite Simpson rule on
    `Trial.exposure_steps` sub-steps between consecutive dosing entries (the arrival of a
    dose after its lag, the end of an infusion: where the curve has a kink), so it
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
    taken on the grid of `Trial.exposure_steps` points between dosing entries: exact for IV
    doses (the end of an infusion is a grid point), the grid's resolution for oral doses."""

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
    """Probability of target attainment: the share of patients whose `metric` lies in
    `[low, high]` (either bound may be omitted), e.g. AUC24 in 400-600 mg.h/L for
    vancomycin (Rybak MJ et al. Am J Health Syst Pharm 2020;77(11):835-864).

    `metric` is a target metric of `twins.drugs` (the types a drug's `Target` holds), read
    on the window ending at `end_h` (default: the end of the trial) as the `AUC`, `Cmax` and
    `Ctrough` endpoints read it: `AUCOver(hours)` the AUC of the last `hours` (default
    `AUCOver(24)`), `Peak()` the highest value over `hours` (default 24), `Trough()` the
    level just before the dose at `end_h`. The names `"auc"`, `"cmax"` and `"trough"` still
    work, with a `DeprecationWarning`, for one release (`"auc"` takes `hours`, default 24).
    """

    metric: Metric = AUCOver(24.0)  # noqa: RUF009  # frozen, hashable: a safe default
    low: float | None = None
    high: float | None = None
    end_h: float | None = None
    hours: float | None = None
    kind: ClassVar[str] = "proportion"
    unit: ClassVar[str] = "% of patients"

    def __post_init__(self):
        metric = self.metric
        if isinstance(metric, str):
            if metric not in READINGS:
                raise ValueError(
                    f"{self.name}: metric must be a twins.drugs metric (AUCOver(hours), Peak(), "
                    f"Trough()), got {metric!r}."
                )
            new, hours = metric_from_reading(metric, self.hours)
            object.__setattr__(self, "hours", hours)
            warnings.warn(
                f"TargetAttainment(metric={metric!r}) is deprecated; pass metric="
                f"twins.drugs.{new!r} (a name will be refused in the next release).",
                DeprecationWarning,
                stacklevel=3,
            )
            object.__setattr__(self, "metric", new)
        elif not isinstance(metric, AUCOver | Peak | Trough):
            raise TypeError(
                f"{self.name}: metric must be twins.drugs.AUCOver(hours), Peak() or Trough(), "
                f"got {metric!r}."
            )
        if isinstance(self.metric, AUCOver) and self.hours not in (None, self.metric.hours):
            raise ValueError(
                f"{self.name}: hours = {self.hours:g} but the metric is {self.metric!r}; the "
                "AUC's window is the metric's hours (leave hours out)."
            )
        if isinstance(self.metric, Trough) and self.hours is not None:
            raise ValueError(f"{self.name}: a trough is read at end_h; hours does not apply.")
        if self.low is None and self.high is None:
            raise ValueError(f"{self.name}: give a target: low, high or both.")
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ValueError(f"{self.name}: expected low < high, got {self.low} and {self.high}.")

    @property
    def reading(self) -> tuple[Reading, float]:
        """What the course reads (`"auc"`, `"cmax"` or `"trough"`) and over how many hours."""
        if isinstance(self.metric, AUCOver):
            return "auc", float(self.metric.hours)
        hours = 24.0 if self.hours is None else float(self.hours)
        return ("cmax" if isinstance(self.metric, Peak) else "trough"), hours

    @property
    def needs_exposure(self) -> bool:  # type: ignore[override]
        return not isinstance(self.metric, Trough)

    def describe(self) -> dict[str, Any]:
        # In the form of earlier releases (the metric's reading and its hours), so that the
        # hash of a spec, and with it resuming a results folder, does not change.
        reading, hours = self.reading
        return {**super().describe(), "metric": reading, "hours": hours}

    def __call__(self, course):
        reading, hours = self.reading
        value = _metric(course, reading, self.end_h, 0.0 if reading == "trough" else hours,
                        self.name)  # fmt: skip
        ok = np.ones(np.shape(value), dtype=bool)
        if self.low is not None:
            ok &= np.asarray(value) >= self.low
        if self.high is not None:
            ok &= np.asarray(value) <= self.high
        return {self.name: ok}
