"""The dose optimiser of `DigitalTwin.recommend`, as pure functions.

`recommend_dose` takes a population model at a patient's covariates, posterior draws of the
patient's etas, the doses already given and one plan of unit doses per dosing interval to
try, and returns the `Recommendation` that maximises the posterior probability of the target
window. The target's metric (`twins.drugs.AUCOver`, `Trough`, `Peak`) is read by the metric itself
through `pkpd` (`pkpd.interval_exposure` for areas and peaks), the engine the trials use.

For each interval the log-dose `u` is first set so that the posterior geometric mean of the
metric hits the window's centre (Newton steps), then moved by Newton ascent on a smoothed
posterior probability of the window (the indicator replaced by normal CDFs 5% wide on the log
scale). The reported probability is the plain fraction of draws in the window. An additive
metric (an AUC or a level) of a linear model goes by superposition: two simulations give it
exactly for every dose, and the slopes and curvatures come from JAX. Any other metric or
model is simulated at every step, at `u - h`, `u` and `u + h` (h = 1e-3), the slopes and
curvatures by central differences: one compiled simulation, where derivatives through an
adaptive ODE solve would cost several simulations each and minutes of compilation. The compiled
functions are module-level (`equinox.filter_jit`, the model and metric static), so every twin
of an equal model reuses them for the same shapes.

With `DoseConstraints` (`constrained_result`), each plan's continuous optimum is replaced by
the admissible dose (sums of available strengths, multiples of an increment, within a
minimum and maximum, each infusion lengthened to dose / maximum rate) of highest probability,
every candidate simulated in one vmapped call over the same draws; the reported probability
and metric are those of that dose. The library's defaults and their sources are in
`twins.drugs` (vancomycin: Rybak MJ et al., Am J Health Syst Pharm 2020;77:835-864).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import pkpd

from .drugs import DoseConstraints, Drug, Metric, Target

#: The solver of the pure functions here when none is given: the metrics' own default
#: (`pkpd.ODESolver()`, Tsit5, rtol 1e-6). A twin passes its own (`DigitalTwin.solver`).
ADAPTIVE = pkpd.ODESolver()

_SMOOTH = 0.05  # width (log scale) of the normal CDFs replacing the window's indicator
_TIE = 0.005  # within half a percentage point the longer interval wins


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """A dose found for a target.

    - `dose`: the amount per dose (`unit`; per kg for drugs dosed per kg), `interval` (h),
      `n_doses`, `regimen` (the plan, in absolute amounts);
    - `target`: the window; `metric_median`, `metric_lower`, `metric_upper`: the metric's
      posterior median and central 90% interval at that dose;
    - `probability`: posterior probability that the metric lies in the window at that dose;
    - `required_probability`: what was asked (None: the most probable dose was asked for), and
      `achieved`: whether `probability >= required_probability`;
    - `candidates`: one row per interval tried (dose, probability, median metric).
    - with `constraints` (`DoseConstraints`): `continuous_dose`, the unconstrained optimum
      (same unit as `dose`); `dose` is then the admissible (rounded, bounded) dose and
      `probability` and the metric are those of that dose; `duration`, the infusion duration
      (h) of each dose (lengthened by `max_rate`); `bound`, which constraint set the dose
      (`"strengths"`, `"increment"`, `"min_dose"`, `"max_dose"`, `"max_rate"`, or `""`
      for none); `loading_dose`, the loading dose (absolute amount) given first, if asked.
    - `metric_values`: the metric of every posterior draw at the recommended dose (what
      `probability` and the quantiles are computed from).
    """

    dose: float
    interval: float
    n_doses: int
    regimen: pkpd.Regimen
    target: Target
    metric_median: float
    metric_lower: float
    metric_upper: float
    probability: float
    required_probability: float | None
    achieved: bool
    unit: str
    candidates: pd.DataFrame
    continuous_dose: float | None = None
    duration: float | None = None
    bound: str = ""
    loading_dose: float | None = None
    metric_values: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        t = self.target
        asked = (
            ""
            if self.required_probability is None
            else f" (asked >= {self.required_probability:.0%}: "
            f"{'met' if self.achieved else 'NOT met'})"
        )
        return (
            f"{self.dose:.4g} {self.unit} every {self.interval:g} h: {t.metric} median "
            f"{self.metric_median:.4g} (90% {self.metric_lower:.4g}-{self.metric_upper:.4g}) "
            f"{t.unit}; P({t.low:g} <= {t.metric} <= {t.high:g}) = {self.probability:.0%}"
            f"{asked}" + self._constrained()
        )

    def _constrained(self) -> str:
        if self.continuous_dose is None:
            return ""
        parts = [f"; continuous optimum {self.continuous_dose:.4g} {self.unit}"]
        if self.bound:
            parts.append(f", bound by {self.bound}")
        if self.duration is not None:
            parts.append(f"; infused over {self.duration:.3g} h")
        if self.loading_dose is not None:
            parts.append(f"; loading dose {self.loading_dose:.4g} {self.unit} first")
        return "".join(parts)


class Plan(NamedTuple):
    """Unit doses every `interval` h from `first` (`n_doses` of them), padded to a common
    number of events; the metric is read at `end`, when the next dose would be due."""

    interval: float
    n_doses: int
    first: float
    end: float
    regimen: pkpd.Regimen


def _bucket(n: int) -> int:
    return max(8, 1 << (max(n, 1) - 1).bit_length())


def plan_doses(
    drug: Drug,
    history: pkpd.Regimen | None,
    intervals: Sequence[float],
    metric: Metric,
    *,
    start: float | None = None,
    n_doses: int | None = None,
    weight: float | None = None,
) -> list[Plan]:
    """One plan of unit doses of `drug`'s usual form per interval, after the doses in
    `history`: from `start` (default one interval after the last dose given, or 0), `n_doses`
    doses (default enough for 5 days, at least 3). All plans are padded to one number of
    events, so that the optimisation compiles once for every interval. A plan too short for
    `metric` is a `ValueError`."""
    plans = []
    for tau in intervals:
        tau = float(tau)
        first = start
        if first is None:
            first = 0.0
            if history is not None:
                given = np.asarray(history.time)[np.asarray(history.mask)]
                first = float(given.max()) + tau if given.size else 0.0
        n = n_doses or max(3, math.ceil(120.0 / tau))
        metric.check_plan(tau, n)
        plan = _unit_plan(drug, n, tau, weight)
        plan = eqx.tree_at(lambda r: r.time, plan, plan.time + first)
        plans.append(Plan(tau, n, float(first), float(first) + n * tau, plan))
    size = _bucket(max(p.regimen.n_events for p in plans))
    return [p._replace(regimen=p.regimen.pad(size)) for p in plans]


def dosing_choices(
    intervals: Sequence[float] | None, usual: float, probability: float | None
) -> list[float]:
    """The intervals a recommendation chooses from (default `[usual]`), checked with the
    required probability: `ValueError` for an interval <= 0 or a probability outside (0, 1)."""
    choices = list(intervals) if intervals is not None else [usual]
    if not choices or any(not (c > 0) for c in choices):
        raise ValueError(f"recommend: intervals must be > 0 h, got {choices}.")
    if probability is not None and not 0.0 < probability < 1.0:
        raise ValueError(f"recommend: probability must be in (0, 1), got {probability}.")
    return choices


_PLANS: dict[tuple, pkpd.Regimen] = {}


def _unit_plan(drug: Drug, n: int, tau: float, weight: float | None) -> pkpd.Regimen:
    """`drug.regimen(n, amount=1, interval=tau, start=0, weight=weight)`, kept: a service
    plans the same doses for every patient, only shifted in time (`start + k * tau` is the
    same number whichever is built first)."""
    key = (drug.name, repr(drug.dosing), n, tau, weight)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) > 4096:
            _PLANS.clear()
        plan = _PLANS[key] = drug.regimen(n, amount=1.0, interval=tau, start=0.0, weight=weight)
    return plan


def recommend_dose(
    pm: Any,
    theta: Any,
    covariates: Any,
    history: pkpd.Regimen | None,
    plans: Sequence[Plan],
    target: Target,
    eta: jax.Array,
    *,
    u0: float,
    steps: int = 12,
    probability: float | None = None,
    unit: str = "",
    who: str = "",
    constraints: DoseConstraints | None = None,
    per_kg_weight: float | None = None,
    usual_duration: float | None = None,
    loading_dose: float | None = None,
    solver: Any = ADAPTIVE,
) -> Recommendation:
    """The most probable dose of `plans` for `target` over the posterior draws `eta`
    `(n_draws, n_eta)` of a patient (population model `pm`, `theta`, `covariates`), after the
    doses in `history`. `u0` is the log-dose the search starts from; `steps` Newton ascent
    steps; `probability` a required probability (`achieved` says whether it is met); `who`
    names the patient in errors.

    With `constraints` (a `DoseConstraints`), the continuous optimum of each plan is then
    replaced by the admissible dose (`constrained_result`) of highest probability, each
    admissible dose simulated with its own infusion duration (`usual_duration` lengthened to
    `dose / max_rate`); `per_kg_weight` is the body weight (kg) when the plan's unit is per
    kg (strengths are absolute amounts). `loading_dose` (absolute, already in `history`) is
    only reported. `solver`: how an ODE model is integrated (`pkpd.ODESolver` or
    `pkpd.FixedStep`; a linear model ignores it)."""
    recs = []
    for plan in plans:
        rec = _best_for_plan(
            pm, theta, covariates, history, plan, target, eta, u0, steps, who, solver
        )
        if constraints is not None:
            rec = constrained_result(
                pm, theta, covariates, history, plan, target, eta, rec, constraints,
                per_kg_weight, usual_duration, who, solver=solver,
            )  # fmt: skip
        recs.append(rec)
    if constraints is None:
        return choose(recs, target, probability, unit)
    return choose_constrained(recs, target, probability, unit, loading_dose)


def choose_constrained(
    recs: Sequence[dict[str, Any]],
    target: Target,
    probability: float | None,
    unit: str,
    loading_dose: float | None,
) -> Recommendation:
    """`choose` among the admissible results `recs` (`constrained_result`), with the chosen
    plan's `continuous_dose`, `duration` and `bound`, and the `loading_dose` reported."""
    out = choose(recs, target, probability, unit)
    best = next(r for r in recs if r["interval"] == out.interval)
    return dataclasses.replace(
        out,
        continuous_dose=best["continuous_dose"],
        duration=best["duration"],
        bound=best["bound"],
        loading_dose=loading_dose,
    )


def constrained_intervals(
    constraints: DoseConstraints | None,
    interval: float | None,
    intervals: Sequence[float] | None,
    usual: float,
    who: str,
) -> Sequence[float] | None:
    """The intervals `recommend(interval=, intervals=, constraints=)` tries (before
    `dosing_choices`): `constraints.intervals` when neither is given; an interval asked
    for that the constraints do not allow is a `ValueError` starting with `who`."""
    if constraints is None or constraints.intervals is None:
        return intervals
    if interval is None and intervals is None:
        intervals = constraints.intervals
    asked = list(intervals) if intervals is not None else [interval or usual]
    refused = [t for t in asked if float(t) not in constraints.intervals]
    if refused:
        raise ValueError(
            f"{who}: interval(s) {refused} h are not in constraints.intervals "
            f"{list(constraints.intervals)}; expected allowed intervals (or replace "
            "the constraints' intervals)."
        )
    return intervals


def loading_dose(
    drug: Drug,
    history: pkpd.Regimen | None,
    weight: float | None,
    per_kg: Any,
    constraints: DoseConstraints,
    start: float | None,
    who: str,
) -> tuple[float, float, pkpd.Regimen]:
    """The loading dose of `recommend(loading=per_kg)` for a patient of body `weight` (kg)
    after the doses in `history`: its time (`start`, default one usual interval after the
    last dose given, or 0), its admissible amount (nearest to `per_kg * weight`, at most
    `max_loading`, infused at most at `max_rate`) and its one-dose regimen. A `ValueError`
    starting with `who` for a `per_kg` that is not a number > 0 or lies outside
    `constraints.loading_per_kg`, or a patient without a weight."""
    if not (isinstance(per_kg, int | float) and math.isfinite(per_kg) and per_kg > 0):
        raise ValueError(f"{who}: loading must be a number > 0 (mg/kg), got {per_kg!r}.")
    rng = constraints.loading_per_kg
    if rng is not None and not rng[0] <= per_kg <= rng[1]:
        raise ValueError(
            f"{who}: loading={per_kg:g} mg/kg is outside constraints.loading_per_kg "
            f"{rng} ({constraints.reference or 'the drug library'})."
        )
    if weight is None:
        raise ValueError(f"{who}: a loading dose in mg/kg needs the patient's weight (WT).")
    wanted = per_kg * float(weight)
    cap = constraints.max_loading
    doses = constraints.admissible(highest=max(2.0 * wanted, wanted + 1.0))
    if cap is not None:
        doses = doses[doses <= cap + 1e-9] if doses.size else doses
    if doses.size:
        amount = float(doses[np.argmin(np.abs(doses - wanted))])
    else:
        amount = wanted if cap is None else min(wanted, cap)
    duration = constraints.duration(amount, drug.dosing.route.duration)
    t_load = start
    if t_load is None:
        t_load = 0.0
        if history is not None:
            given = np.asarray(history.time)[np.asarray(history.mask)]
            if given.size:
                t_load = float(given.max()) + float(drug.dosing.interval)
    route = drug.dosing.route.with_duration(duration)
    reg = route.dose(amount, time=float(t_load), cmt=drug.dosing.cmt)
    return float(t_load), amount, reg


def plans_after_loading(
    drug: Drug,
    history: pkpd.Regimen | None,
    intervals: Sequence[float],
    metric: Metric,
    t_load: float,
    *,
    n_doses: int | None = None,
    weight: float | None = None,
) -> list[Plan]:
    """The plans of `recommend(loading=...)`: for each interval, the maintenance doses
    from one interval after the loading dose at `t_load`, all padded to one size."""
    plans: list[Plan] = []
    for tau in intervals:
        plans += plan_doses(
            drug, history, [tau], metric, start=t_load + float(tau), n_doses=n_doses,
            weight=weight,
        )  # fmt: skip
    size = _bucket(max(p.regimen.n_events for p in plans))
    return [p._replace(regimen=p.regimen.pad(size)) for p in plans]


_ALL = 64  # up to this many admissible doses are all simulated; beyond, the 16 nearest


def constrained_result(
    pm, theta, cov, history, plan, target, eta, rec, constraints, per_kg_weight, usual, who,
    *, solver=ADAPTIVE,
) -> dict[str, Any]:  # fmt: skip
    """The admissible dose of one plan: the dose allowed by `constraints` (sums of strengths,
    multiples of the increment, within `[min_dose, max_dose]`, infusion no longer than the
    interval at `max_rate`) with the highest posterior probability of the window, each
    candidate simulated with its own infusion duration over the same draws `eta`; `rec` is
    the plan's continuous result (`plan_result`). Up to `_ALL` admissible doses are all
    simulated, otherwise the 16 nearest the continuous optimum (log scale). `bound` names
    the constraint that set the dose. `ValueError` naming the field when no dose is
    admissible. The three steps (`admissible_candidates`, `_metric_candidates`,
    `pick_admissible`) are those `recommend_doses` takes for many patients at once."""
    cand = admissible_candidates(history, plan, rec, constraints, per_kg_weight, usual, who)
    m = cand.size
    pad = _bucket(m) - m  # a bucket of candidates: one compilation for similar counts
    stacked, u = cand.stacked(m + pad)
    values = np.asarray(
        _metric_candidates(
            pm, target.metric, theta, cov, stacked, cand.scale, cand.window, eta, u, solver
        )
    )[:m]
    return pick_admissible(plan, target, rec, constraints, cand, values, usual, who)


class Candidates(NamedTuple):
    """The admissible doses of one plan (`admissible_candidates`): `doses` (absolute
    amounts), `durations` (h, 0 for instantaneous doses), `fulls` (history and plan with the
    infusion durations of each dose, unit planned amounts), the planned events' `scale`, the
    plan's `window` `(end, interval)`, the continuous `optimum` (absolute) and `scale_w`
    (body weight for per-kg doses, else 1)."""

    doses: np.ndarray
    durations: np.ndarray
    fulls: list
    scale: jax.Array
    window: tuple
    optimum: float
    scale_w: float

    @property
    def size(self) -> int:
        return int(self.doses.size)

    def log_doses(self, n: int) -> jax.Array:
        """The candidates' log-doses (per kg where dosed per kg), padded to `n` with the
        last one."""
        doses = np.concatenate([self.doses, np.repeat(self.doses[-1:], n - self.size)])
        return jnp.log(jnp.asarray(doses) / self.scale_w)

    def stacked(self, n: int) -> tuple[pkpd.Regimen, jax.Array]:
        """The candidates' regimens stacked (leading axis `n`, the last one repeated) and
        their `log_doses(n)`."""
        return pkpd.stack(self.fulls + [self.fulls[-1]] * (n - self.size)), self.log_doses(n)


def admissible_candidates(history, plan, rec, constraints, per_kg_weight, usual, who) -> Candidates:
    """The doses `constrained_result` simulates for one plan (host work, no simulation):
    `ValueError` naming the patient `who` and the field when no dose is admissible."""
    scale_w = 1.0 if per_kg_weight is None else float(per_kg_weight)
    optimum = rec["dose"] * scale_w  # absolute amount
    doses = constraints.admissible(lowest=0.0, highest=max(4.0 * optimum, optimum + 1.0))
    if doses.size == 0:  # no rounding: the continuous optimum, clipped to the bounds
        lo = constraints.min_dose or 0.0
        hi = constraints.max_dose or math.inf
        doses = np.asarray([min(max(optimum, lo), hi)])
    durations = np.asarray([constraints.duration(a, usual) or 0.0 for a in doses])
    if usual is not None:
        fits = durations < plan.interval
        if not fits.any():
            raise ValueError(
                f"recommend for patient {who}: max_rate={constraints.max_rate} "
                f"{'mg'}/h makes every admissible dose ({doses.min():g} mg or more) last "
                f"{durations.min():.3g} h or longer, not less than the interval "
                f"{plan.interval:g} h; expected a larger max_rate or a longer interval."
            )
        doses, durations = doses[fits], durations[fits]
    elif constraints.max_rate is not None:
        raise ValueError(
            f"recommend for patient {who}: max_rate={constraints.max_rate} is set but the "
            "drug is not given by infusion; expected max_rate=None."
        )
    if doses.size > _ALL:
        nearest = np.argsort(np.abs(np.log(doses) - math.log(optimum)))[: 2 * 8]
        keep = np.sort(nearest)
        doses, durations = doses[keep], durations[keep]
    full = plan.regimen if history is None else history + plan.regimen
    n_hist = 0 if history is None else history.n_events
    scale = jnp.concatenate([jnp.zeros(n_hist), jnp.ones(plan.regimen.n_events)])
    planned = np.asarray(scale, bool) & (np.asarray(full.rate) == pkpd.MODELLED_DURATION)
    fulls = [
        eqx.tree_at(lambda r: r.duration, full, jnp.where(planned, d, full.duration))
        if usual is not None
        else full
        for d in durations
    ]
    window = (jnp.asarray(plan.end, float), jnp.asarray(plan.interval, float))
    return Candidates(doses, durations, fulls, scale, window, optimum, scale_w)


def pick_admissible(plan, target, rec, constraints, cand, values, usual, who) -> dict[str, Any]:
    """The plan's result at the most probable of the candidate doses `cand`, from the
    metric `values` `(cand.size, n_draws)` of every draw at each; a non-finite metric there
    is a `FloatingPointError` naming the patient `who`."""
    doses, durations, optimum, scale_w = cand.doses, cand.durations, cand.optimum, cand.scale_w
    inside = (values >= target.low) & (values <= target.high)
    probs = inside.mean(axis=1)
    # the most probable; among equally probable doses, the nearest the optimum (log scale)
    ties = np.flatnonzero(probs == probs.max())
    i = int(ties[np.argmin(np.abs(np.log(doses[ties]) - math.log(optimum)))])
    amount = float(doses[i])
    bound = ""
    tol = 1e-9 * max(1.0, optimum)
    if (
        constraints.max_dose is not None
        and amount >= constraints.max_dose - tol
        and optimum > amount
    ):
        bound = "max_dose"
    elif (
        constraints.min_dose is not None
        and amount <= constraints.min_dose + tol
        and optimum < amount
    ):
        bound = "min_dose"
    elif abs(amount - optimum) > tol:
        bound = "strengths" if constraints.strengths is not None else "increment"
    if usual is not None and durations[i] > usual + 1e-12:
        bound = f"{bound} and max_rate" if bound else "max_rate"
    dose = amount / scale_w
    reg = eqx.tree_at(lambda r: r.amount, plan.regimen, plan.regimen.amount * dose)
    if usual is not None:
        reg = eqx.tree_at(
            lambda r: r.duration,
            reg,
            jnp.where(np.asarray(reg.rate) == pkpd.MODELLED_DURATION, durations[i], reg.duration),
        )
    row = values[i]
    if not np.all(np.isfinite(row)):
        raise FloatingPointError(
            f"recommend: non-finite {target.metric} for patient {who} at dose {amount:.4g} "
            f"every {plan.interval:g} h."
        )
    return rec | {
        "dose": dose,
        "regimen": reg,
        "probability": float(probs[i]),
        "median": float(np.median(row)),
        "lower": float(np.quantile(row, 0.05)),
        "upper": float(np.quantile(row, 0.95)),
        "values": row,
        "continuous_dose": rec["dose"],
        "duration": None if usual is None else float(durations[i]),
        "bound": bound,
    }


@eqx.filter_jit
def _metric_candidates(pm, metric, theta, cov, fulls, scale, window, eta, u, solver=ADAPTIVE):
    """`metric_draws` of each candidate dose `u` `(n,)` with its own regimen `fulls`
    (a stacked regimen, leading axis `n`): `(n, n_draws)`."""

    def one(f, v):
        return metric_draws(pm, metric, theta, cov, f, scale, window, eta, v, solver)

    return jax.vmap(one)(fulls, u)


def choose(
    recs: Sequence[dict[str, Any]], target: Target, probability: float | None, unit: str
) -> Recommendation:
    """The `Recommendation` of the best of `recs` (one result per plan, as `_plan_result`
    gives): the most probable; within half a percentage point, the longer interval."""
    rows, best = [], None
    for rec in recs:
        rows.append(
            {
                "interval": rec["interval"],
                "dose": rec["dose"],
                "daily_dose": rec["dose"] * 24.0 / rec["interval"],
                "probability": rec["probability"],
                "metric_median": rec["median"],
            }
            | ({} if "continuous_dose" not in rec else {"continuous_dose": rec["continuous_dose"]})
        )
        better = best is None or (
            rec["probability"] > best["probability"] + _TIE
            or (
                rec["probability"] >= best["probability"] - _TIE
                and rec["interval"] > best["interval"]
            )
        )
        if better:
            best = rec
    if best is None:
        raise ValueError("recommend: no dosing plan to try.")
    return Recommendation(
        dose=best["dose"],
        interval=best["interval"],
        n_doses=best["n_doses"],
        regimen=best["regimen"],
        target=target,
        metric_median=best["median"],
        metric_lower=best["lower"],
        metric_upper=best["upper"],
        probability=best["probability"],
        required_probability=probability,
        achieved=probability is None or best["probability"] >= probability,
        unit=unit,
        candidates=pd.DataFrame(rows),
        metric_values=best.get("values"),
    )


@eqx.filter_jit
def _draw_params(pm, theta, cov, eta):
    """The parameters of every posterior draw `eta` `(..., n_draws, n_eta)` (leading axes
    shared with `cov`'s)."""
    one = lambda c, e: jax.vmap(lambda d: pm.individual_params(theta, c, d))(e)
    for _ in range(eta.ndim - 2):
        one = jax.vmap(one)
    return one(cov, eta)


def check_draws(pm: Any, params: dict[str, Any], full: pkpd.Regimen, who: str) -> None:
    """The engine's run-time checks of a dose search, on the host before it is compiled
    (`pkpd.check_inputs`): every draw's parameters `params` (`(n_draws,)` each) inside the
    model's domain and the doses of `full` possible. `metric_draws` then runs without them:
    its compiled program holds no host callback, so the persistent compilation cache keeps
    it. A `ValueError` naming the patient `who`."""
    try:
        pkpd.check_inputs(pm.model, params, full)
    except ValueError as error:
        raise ValueError(f"recommend: patient {who}: {error}") from None


def _best_for_plan(pm, theta, cov, history, plan, target, eta, u0, steps, who, solver):
    full = plan.regimen if history is None else history + plan.regimen
    check_draws(pm, jax.device_get(_draw_params(pm, theta, cov, eta)), full, who)
    n_hist = 0 if history is None else history.n_events
    scale = jnp.concatenate([jnp.zeros(n_hist), jnp.ones(plan.regimen.n_events)])
    window = (jnp.asarray(plan.end, float), jnp.asarray(plan.interval, float))
    bounds = jnp.asarray([math.log(target.low), math.log(target.high)])
    best_u, values = optimise_dose(
        pm, target.metric, steps, theta, cov, full, scale, window, eta, bounds,
        jnp.asarray(u0, float), solver=solver,
    )  # fmt: skip
    return plan_result(plan, target, best_u, values, who)


def plan_result(plan: Plan, target: Target, best_u: Any, values: Any, who: str) -> dict[str, Any]:
    """One plan's result at the log-dose `best_u`, from the metric `values` of every draw
    there; a non-finite metric or dose is a `FloatingPointError` naming the patient `who`."""
    values = np.asarray(values)
    dose = float(np.exp(best_u))  # per kg when the drug is dosed per kg
    if not (np.all(np.isfinite(values)) and math.isfinite(dose)):
        raise FloatingPointError(
            f"recommend: non-finite {target.metric} for patient {who} at dose {dose:.4g} "
            f"every {plan.interval:g} h."
        )
    return {
        "interval": plan.interval,
        "dose": dose,
        "n_doses": plan.n_doses,
        "regimen": eqx.tree_at(lambda r: r.amount, plan.regimen, plan.regimen.amount * dose),
        "probability": float(np.mean((values >= target.low) & (values <= target.high))),
        "median": float(np.median(values)),
        "lower": float(np.quantile(values, 0.05)),
        "upper": float(np.quantile(values, 0.95)),
        "values": values,
    }


@eqx.filter_jit
def metric_draws(pm, metric, theta, cov, full, scale, window, eta, u, solver=ADAPTIVE):
    """`metric` of every posterior draw `eta` when the planned doses (`scale` 1) are
    `exp(u)` units; `window` is `(end, interval)` of the plan; an ODE model integrated by
    `solver`. The engine's checks are made beforehand on the host (`check_draws`; they do
    not depend on `u`), not here."""
    amount = full.amount * ((1.0 - scale) + scale * jnp.exp(u))
    reg = eqx.tree_at(lambda r: r.amount, full, amount)
    end, interval = window

    def one(e):
        params = pm.individual_params(theta, cov, e)
        return metric.read(
            pm.model, params, reg, end, interval, output=pm.output, solver=solver, checks=False
        )

    return jax.vmap(one)(eta)


def _gap_of(log_draws, bounds):
    """The geometric mean of the metric over the draws (last axis; smooth, unlike the
    median) against the window's centre, on the log scale."""
    return jnp.mean(log_draws, axis=-1) - 0.5 * (bounds[0] + bounds[1])


def _probability_of(log_draws, bounds):
    """The smoothed probability of the window over the draws (last axis): the indicator
    replaced by normal CDFs `_SMOOTH` wide on the log scale."""
    cdf = jax.scipy.stats.norm.cdf
    inside = cdf((log_draws - bounds[0]) / _SMOOTH) - cdf((log_draws - bounds[1]) / _SMOOTH)
    return jnp.mean(inside, axis=-1)


def _gap(log_metric, bounds):
    return lambda u: _gap_of(log_metric(u), bounds)


def _smoothed_probability(log_metric, bounds):
    return lambda u: _probability_of(log_metric(u), bounds)


def _newton_gap(u, g, s):
    step = jnp.clip(jnp.where(jnp.abs(s) > 1e-8, g / s, 0.0), -2.0, 2.0)
    return jnp.where(jnp.isfinite(step), u - step, u)


def _ascent_step(g, h):
    step = jnp.where(h < 0, -g / jnp.where(h < 0, h, -1.0), jnp.sign(g) * 0.1)
    return jnp.clip(jnp.where(jnp.isfinite(step), step, 0.0), -0.5, 0.5)


@functools.partial(jax.jit, static_argnums=0)
def _optimise_affine(steps, without, per_unit, bounds, u0):
    """Linear kinetics: the metric is affine in the planned dose (superposition), so two
    simulations give it exactly for every dose; the 1-d optimisation runs on those."""

    def log_metric(u):
        return jnp.log(jnp.maximum(without + jnp.exp(u) * per_unit, 1e-300))

    gap = jax.value_and_grad(_gap(log_metric, bounds))
    u = jax.lax.fori_loop(0, 8, lambda _, u: _newton_gap(u, *gap(u)), u0)
    prob = _smoothed_probability(log_metric, bounds)
    dprob = jax.value_and_grad(prob)
    curvature = jax.grad(lambda x: dprob(x)[1])

    def ascent(_, carry):
        u, best_u, best_p = carry
        p, g = dprob(u)
        better = p > best_p
        return (
            u + _ascent_step(g, curvature(u)),
            jnp.where(better, u, best_u),
            jnp.where(better, p, best_p),
        )

    u, best_u, best_p = jax.lax.fori_loop(0, steps, ascent, (u, u, -1.0))
    return jnp.where(prob(u) > best_p, u, best_u)


def optimise_dose(
    pm, metric, steps, theta, cov, full, scale, window, eta, bounds, u0, *, solver=ADAPTIVE
):
    """Log-dose of the planned doses (`scale` 1 in `full`): Newton on the geometric mean's
    gap to the window's centre, then Newton ascent on the smoothed probability of the window
    `bounds` (log scale); returns the best log-dose and `metric` of every draw there. An
    additive metric (an AUC or a level) of a linear model is affine in the dose and goes by
    superposition (exact); a peak, or a nonlinear model, is simulated at every step (an ODE
    model integrated by `solver`)."""
    sim = jax.tree_util.Partial(
        metric_draws, pm, metric, theta, cov, full, scale, window, eta, solver=solver
    )
    if pm.model.is_linear and metric.additive:
        without = sim(jnp.asarray(-jnp.inf))
        per_unit = sim(jnp.zeros(())) - without
        best = _optimise_affine(steps, without, per_unit, bounds, u0)
        return best, without + jnp.exp(best) * per_unit

    return _search_by_simulation(sim, bounds, steps, u0)


_H = 1e-3  # log-dose step of the central differences (the smoothing is 0.05 wide)


def _search_by_simulation(sim, bounds, steps, u0):
    """The search of `optimise_dose` for a metric that is not affine in the dose: the same
    Newton steps on the gap to the window's centre and ascent on the smoothed probability,
    with slopes and curvatures by central differences of the simulated metric at `u - h`,
    `u`, `u + h` (three simulations a step, vmapped together; `h = 1e-3` on the log-dose
    scale, against a smoothing 0.05 wide: truncation error ~1e-6 relative). Forward or
    reverse derivatives through an adaptive ODE solve cost several simulations each and
    compile for minutes; these three share one compiled simulation. `sim` is a
    `jax.tree_util.Partial`: `sim(u)` gives the metric of every draw, `(..., n_draws)` for
    log-doses `u` of shape `(...)`. The whole search (8 + `steps` + 1 stencils and the
    final simulation) is one compiled program (`_simulated_search`)."""
    return _simulated_search(sim, bounds, steps, jnp.asarray(u0, float))


@eqx.filter_jit
def _simulated_search(sim, bounds, steps: int, u0):
    def logs(u):
        stencil = jax.vmap(sim)(jnp.stack([u - _H, u, u + _H]))
        return jnp.log(jnp.maximum(stencil, 1e-300))

    def newton(_, u):
        below, at, above = _gap_of(logs(u), bounds)
        return _newton_gap(u, at, (above - below) / (2.0 * _H))

    u = jax.lax.fori_loop(0, 8, newton, u0)

    def ascent(_, carry):
        u, best_u, best_p = carry
        below, at, above = _probability_of(logs(u), bounds)
        better = at > best_p
        best_u, best_p = jnp.where(better, u, best_u), jnp.where(better, at, best_p)
        slope = (above - below) / (2.0 * _H)
        curvature = (above - 2.0 * at + below) / _H**2
        return u + _ascent_step(slope, curvature), best_u, best_p

    carry = (u, u, jnp.full(jnp.shape(u), -1.0))
    _, best, _ = jax.lax.fori_loop(0, steps + 1, ascent, carry)
    return best, sim(best)


# --- many patients at once ------------------------------------------------------------------

_FIELDS = ("time", "amount", "cmt", "rate", "duration", "lag", "bioav", "evid", "ss", "ii", "mask")
_PAD: dict[str, Any] = {}


def _pad_values() -> dict[str, Any]:
    """The values of a padding event in each field (read off `Regimen.pad`)."""
    if not _PAD:
        probe = pkpd.bolus(1.0).pad(2)
        _PAD.update({f: np.asarray(getattr(probe, f))[1] for f in (*_FIELDS, "order")})
    return _PAD


def join_many(
    firsts: Sequence[pkpd.Regimen | None],
    seconds: Sequence[pkpd.Regimen | None],
    n_events: int | None = None,
) -> tuple[list[pkpd.Regimen], pkpd.Regimen]:
    """`[a + b for a, b in zip(firsts, seconds)]` (a part `None`: the other alone) and
    `pkpd.stack` of them (to `n_events` slots), built in NumPy on the host with one
    transfer per field for the stack: what `Regimen.__add__` (`pkpd.concatenate`) and
    `pkpd.stack` give, value for value (event order rank where `mask`, else +inf), without
    their per-twin device transfers. The joined regimens hold NumPy arrays. An
    `addl_offset` (the doses of `Drug.regimen` carry one) is joined as `pkpd` joins it:
    zeros for a part without, padded with zeros. Regimens with traced values go through
    `pkpd` itself."""
    pairs = [[r for r in (a, b) if r is not None] for a, b in zip(firsts, seconds, strict=True)]
    if any(not parts for parts in pairs):
        raise ValueError("join_many: each row needs at least one regimen.")
    regs = [r for parts in pairs for r in parts]
    if any(
        isinstance(x, jax.core.Tracer)
        for r in regs
        for x in (*(getattr(r, f) for f in _FIELDS), r.addl_offset)
    ):
        joined = [parts[0] if len(parts) == 1 else pkpd.concatenate(parts) for parts in pairs]
        return joined, pkpd.stack(joined, n_events)
    lengths = [sum(r.n_events for r in parts) for parts in pairs]
    n = max(lengths) if n_events is None else int(n_events)
    if n < max(lengths):
        raise ValueError(f"join_many: n_events={n} is shorter than the longest ({max(lengths)}).")
    pad = _pad_values()
    host = {f: [[np.asarray(getattr(r, f)) for r in parts] for parts in pairs] for f in _FIELDS}
    out: dict[str, np.ndarray] = {}
    for f in _FIELDS:
        rows = [np.concatenate(parts) if len(parts) > 1 else parts[0] for parts in host[f]]
        dtype = rows[0].dtype
        block = np.full((len(rows), n), pad[f], dtype=dtype)
        for i, row in enumerate(rows):
            block[i, : row.shape[0]] = row
        out[f] = block
    rank = np.arange(n, dtype=pad["order"].dtype)
    out["order"] = np.where(out["mask"], rank, np.inf).astype(pad["order"].dtype)
    # which rows carry offsets (`pkpd.concatenate`: any part has them; `pkpd.stack`: any row)
    offset_rows = [any(r.addl_offset is not None for r in parts) for parts in pairs]
    offsets = [np.concatenate([_host_offsets(r) for r in parts]) for parts in pairs]
    if any(offset_rows):
        block = np.zeros((len(pairs), n), np.result_type(*offsets))
        for i, row in enumerate(offsets):
            block[i, : row.shape[0]] = row
        out["addl_offset"] = block
    flags = [
        {
            "ss_intervals": max(r.ss_intervals for r in parts),
            "has_ss": any(r.has_ss for r in parts),
            "has_reset": any(r.has_reset for r in parts),
            "has_infusion": any(r.has_infusion for r in parts),
        }
        for parts in pairs
    ]
    joined = []
    for i, parts in enumerate(pairs):
        if len(parts) == 1:
            joined.append(parts[0])
            continue
        k = lengths[i]
        joined.append(
            pkpd.Regimen(
                **{f: out[f][i, :k] for f in (*_FIELDS, "order")},
                addl_offset=offsets[i] if offset_rows[i] else None,
                **flags[i],
            )
        )
    stacked = pkpd.Regimen(
        **{f: jnp.asarray(v) for f, v in out.items()},
        ss_intervals=max(fl["ss_intervals"] for fl in flags),
        has_ss=any(fl["has_ss"] for fl in flags),
        has_reset=any(fl["has_reset"] for fl in flags),
        has_infusion=any(fl["has_infusion"] for fl in flags),
    )
    return joined, stacked


def _host_offsets(regimen: pkpd.Regimen) -> np.ndarray:
    """`regimen.addl_offset` on the host (int32 zeros where it is `None`, as `pkpd` joins it)."""
    if regimen.addl_offset is None:
        return np.zeros(regimen.n_events, np.int32)
    return np.asarray(regimen.addl_offset)


def _check_many(pm, draws, fulls, stacked, names, errors) -> None:
    """`check_draws` of every patient not failed yet: one host check of all of them together
    (`pkpd.check_inputs` takes leading axes; a regimen without steady-state doses is
    checked event by event), and one by one only when that fails or a steady-state dose
    needs each patient's own parameters, to name the patient."""
    live = [i for i in range(len(fulls)) if i not in errors]
    if not live:
        return
    if not stacked.has_ss:
        take = np.asarray(live)
        try:
            pkpd.check_inputs(
                pm.model,
                {k: np.asarray(v)[take] for k, v in draws.items()},
                # the events of all of them as one regimen (checked event by event)
                jax.tree_util.tree_map(lambda x: np.asarray(x)[take].reshape(-1), stacked),
            )
            return
        except ValueError:
            pass  # someone's draws or doses fail: find who
    for i in live:
        try:
            check_draws(pm, {n: v[i] for n, v in draws.items()}, fulls[i], names[i])
        except ValueError as error:
            errors[i] = error  # this patient only: the others go on


def recommend_doses(
    pm: Any,
    theta: Any,
    covariates: Any,
    histories: Sequence[pkpd.Regimen],
    plans: Sequence[Sequence[Plan]],
    target: Target,
    eta: jax.Array,
    *,
    u0: float,
    steps: int = 12,
    probability: float | None = None,
    unit: str = "",
    who: Sequence[str] = (),
    constraints: Sequence[DoseConstraints | None] | None = None,
    per_kg_weights: Sequence[float | None] | None = None,
    usual_durations: Sequence[float | None] | None = None,
    loading_doses: Sequence[float | None] | None = None,
    solver: Any = ADAPTIVE,
) -> list[Recommendation | Exception]:
    """`recommend_dose` for K patients of one population model in one vmapped search per
    plan: `covariates` name -> `(K,)`, `histories` K regimens of one number of events,
    `plans[k]` patient k's plans (the same intervals and sizes for every patient), `eta`
    `(K, n_draws, n_eta)`. The same numbers as K calls of `recommend_dose`, to rounding.

    `constraints`, `per_kg_weights`, `usual_durations` and `loading_doses` are those of
    `recommend_dose`, one per patient (`None` in `constraints`: that patient's continuous
    optimum). The admissible doses of every constrained patient are then simulated in one
    vmapped call per plan (each patient's candidates padded to one bucket), and chosen as
    `constrained_result` chooses them.

    **Returns:** one `Recommendation` per patient, or the exception (a `FloatingPointError`
    naming the patient, a `ValueError` naming the patient and the constraint no dose can
    meet) that stopped that patient's search; the others are unaffected."""
    k = len(histories)
    if len(plans) != k or eta.shape[0] != k or k == 0:
        raise ValueError(
            f"recommend_doses: {k} histories, {len(plans)} plan lists and {eta.shape[0]} "
            "posterior draw sets; expected the same number (> 0)."
        )
    sizes = {h.n_events for h in histories}
    shapes = {tuple((p.interval, p.regimen.n_events) for p in ps) for ps in plans}
    if len(sizes) != 1 or len(shapes) != 1:
        raise ValueError(
            "recommend_doses: every patient needs histories of one size and the same plans "
            f"(got history sizes {sorted(sizes)} and {len(shapes)} plan layouts)."
        )
    names = list(who) or [str(i) for i in range(k)]
    limits = list(constraints) if constraints is not None else [None] * k
    weights = list(per_kg_weights) if per_kg_weights is not None else [None] * k
    usual = list(usual_durations) if usual_durations is not None else [None] * k
    loads = list(loading_doses) if loading_doses is not None else [None] * k
    if not len(limits) == len(weights) == len(usual) == len(loads) == k:
        raise ValueError(
            f"recommend_doses: {len(limits)} constraints, {len(weights)} weights, "
            f"{len(usual)} durations and {len(loads)} loading doses for {k} patients; "
            "expected one each."
        )
    n_hist = histories[0].n_events
    bounds = jnp.asarray([math.log(target.low), math.log(target.high)])
    results: list[list[dict[str, Any]]] = [[] for _ in range(k)]
    errors: dict[int, Exception] = {}
    draws = jax.device_get(_draw_params(pm, theta, covariates, eta))
    for j in range(len(plans[0])):
        mine = [ps[j] for ps in plans]
        fulls, full = join_many(histories, [p.regimen for p in mine])
        _check_many(pm, draws, fulls, full, names, errors)
        scale = jnp.concatenate([jnp.zeros(n_hist), jnp.ones(mine[0].regimen.n_events)])
        window = (
            jnp.asarray([p.end for p in mine], float),
            jnp.asarray([p.interval for p in mine], float),
        )
        best_u, values = optimise_doses(
            pm, target.metric, steps, theta, covariates, full, scale, window, eta, bounds,
            jnp.full((k,), u0, float), solver=solver,
        )  # fmt: skip
        best_u, values = np.asarray(best_u), np.asarray(values)
        for i, plan in enumerate(mine):
            if i in errors:
                continue
            try:
                results[i].append(plan_result(plan, target, best_u[i], values[i], names[i]))
            except FloatingPointError as error:
                errors[i] = error
        if any(c is not None for c in limits):
            _constrain_many(
                pm, theta, covariates, histories, mine, target, eta, limits, weights, usual,
                names, results, errors, solver,
            )  # fmt: skip

    def result(i: int) -> Recommendation | Exception:
        if i in errors:
            return errors[i]
        if limits[i] is None:
            return choose(results[i], target, probability, unit)
        return choose_constrained(results[i], target, probability, unit, loads[i])

    return [result(i) for i in range(k)]


def _constrain_many(
    pm, theta, cov, histories, mine, target, eta, limits, weights, usual, names, results, errors,
    solver,
) -> None:  # fmt: skip
    """`constrained_result` of one plan for every constrained patient not failed yet, the
    candidates of all of them simulated in one vmapped call (`_metric_candidates_many`) per
    bucket of candidate counts;
    each one's last result in `results` replaced by its admissible one, a failure recorded
    in `errors` for that patient only."""
    cands: dict[int, Candidates] = {}
    for i, limit in enumerate(limits):
        if limit is None or i in errors:
            continue
        try:
            cands[i] = admissible_candidates(
                histories[i], mine[i], results[i][-1], limit, weights[i], usual[i], names[i]
            )
        except ValueError as error:
            errors[i] = _named(error, names[i])
    if not cands:
        return
    window = (
        jnp.asarray([p.end for p in mine], float),
        jnp.asarray([p.interval for p in mine], float),
    )
    # one vmapped call per bucket of candidate counts (as each one-patient call pads to its
    # own bucket), over the constrained patients only, their number padded to a bucket
    sizes: dict[int, list[int]] = {}
    for i, c in cands.items():
        sizes.setdefault(_bucket(c.size), []).append(i)
    values: dict[int, np.ndarray] = {}
    for m, idx in sizes.items():
        rows = idx + [idx[0]] * (_bucket(len(idx)) - len(idx))
        each = [cands[i] for i in rows]
        flat = pkpd.stack([r for c in each for r in c.fulls + [c.fulls[-1]] * (m - c.size)])
        shape = (len(rows), m)
        fulls = jax.tree_util.tree_map(lambda x, s=shape: x.reshape(*s, *x.shape[1:]), flat)
        u = jnp.stack([c.log_doses(m) for c in each])
        take = jnp.asarray(rows)
        got = np.asarray(
            _metric_candidates_many(
                pm, target.metric, theta, jax.tree_util.tree_map(lambda x, t=take: x[t], cov),
                fulls, each[0].scale, (window[0][take], window[1][take]), eta[take], u, solver,
            )
        )  # fmt: skip
        values.update({i: got[j] for j, i in enumerate(idx)})
    for i, cand in cands.items():
        try:
            results[i][-1] = pick_admissible(
                mine[i], target, results[i][-1], limits[i], cand, values[i][: cand.size],
                usual[i], names[i],
            )  # fmt: skip
        except FloatingPointError as error:
            errors[i] = error


def _named(error: ValueError, who: str) -> ValueError:
    """`error` with the patient named first (`recommend for patient <who>: ...`)."""
    prefix = f"recommend for patient {who}"
    return error if str(error).startswith(prefix) else ValueError(f"{prefix}: {error}")


@eqx.filter_jit
def _metric_candidates_many(pm, metric, theta, cov, fulls, scale, window, eta, u, solver=ADAPTIVE):
    """`_metric_candidates` for K patients: `cov`, `fulls` `(K, n, ...)`, `window`, `eta`
    and `u` `(K, n)` with a leading patient axis; `scale` shared. `(K, n, n_draws)`."""

    def one(c, f, w, e, v):
        return _metric_candidates(pm, metric, theta, c, f, scale, w, e, v, solver)

    return jax.vmap(one)(cov, fulls, window, eta, u)


@eqx.filter_jit
def metric_draws_many(pm, metric, theta, cov, full, scale, window, eta, u, solver=ADAPTIVE):
    """`metric_draws` for K patients: `cov`, `full`, `window`, `eta`, `u` with a leading
    patient axis; `scale` shared."""

    def one(c, f, w, e, v):
        return metric_draws(pm, metric, theta, c, f, scale, w, e, v, solver)

    return jax.vmap(one)(cov, full, window, eta, u)


@functools.partial(jax.jit, static_argnums=0)
def _optimise_affine_many(steps, without, per_unit, bounds, u0):
    return jax.vmap(lambda w, p, u: _optimise_affine(steps, w, p, bounds, u))(without, per_unit, u0)


def optimise_doses(
    pm, metric, steps, theta, cov, full, scale, window, eta, bounds, u0, *, solver=ADAPTIVE
):
    """`optimise_dose` for K patients at once (`cov`, `full`, `window`, `eta`, `u0` with a
    leading patient axis): the same steps, each one vmapped call for all of them.

    **Returns:** the best log-doses `(K,)` and the metric of every draw there `(K, n_draws)`."""
    sim = jax.tree_util.Partial(
        metric_draws_many, pm, metric, theta, cov, full, scale, window, eta, solver=solver
    )
    if pm.model.is_linear and metric.additive:
        without = sim(jnp.full(u0.shape, -jnp.inf))
        per_unit = sim(jnp.zeros(u0.shape)) - without
        best = _optimise_affine_many(steps, without, per_unit, bounds, u0)
        return best, without + jnp.exp(best)[:, None] * per_unit

    return _search_by_simulation(sim, bounds, steps, u0)
