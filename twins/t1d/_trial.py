"""T1D virtual trials: insulin dosing policies as arms, the consensus CGM metrics as endpoints.

`T1DTrial` holds the patients (the 30 of simglucose, and a population sampled around them),
the meals, the arms (`basal_bolus`, `twin_guided`, `parametrised`, optimised on a training
split of the patients) and the reference arm; `run_trial(trial, out)` simulates every arm
on the same patients, meals and CGM noise (common random numbers) and writes a results
folder: `patients.csv` (each patient's endpoints in each arm), `summary.json` (means with
95 % intervals, paired differences against the reference arm, by age group and by training
/ held-out split), `bands.csv` (the glucose profile by time of day), `spec.json` and
`report.html` (`write_t1d_report`). `read_spec` reads a TOML spec
(`examples/t1d_insulin.toml`; `twins trial spec.toml`, read by `twins.app.read_t1d_spec`).

The generic trial engine (`twins.trials.Trial`) is built around one drug's population model
dosed once per period; a T1D trial is a closed loop of meals and boluses on a CGM, so it has
its own runner here, with specs read by the same `TomlReader` (errors name the file and the
entry) and the same `[run]` conventions (`seed`, `out` inside the spec's folder).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np
import pandas as pd
from scipy import stats

from ._cgm import CGMSensor
from ._closed_loop import (
    SENSOR,
    Course,
    MealPlan,
    patient_constants,
    random_meals,
    samples_per_day,
    simulate_policy,
)
from ._metrics import cgm_metrics
from ._optimise import TBR_WEIGHT, optimise_policy, split_patients
from ._patients import VirtualPatient, load_patients
from ._policies import BasalBolus, ParametrisedPolicy
from ._population import sample_population
from ._twin import FACTORS, twin_guided

#: The endpoints (`CGMMetrics` fields), with their labels and units.
ENDPOINTS: dict[str, tuple[str, str]] = {
    "time_in_range": ("Time in range 70-180 mg/dL", "% of readings"),
    "time_below_70": ("Time below 70 mg/dL", "% of readings"),
    "time_below_54": ("Time below 54 mg/dL", "% of readings"),
    "time_above_180": ("Time above 180 mg/dL", "% of readings"),
    "time_above_250": ("Time above 250 mg/dL", "% of readings"),
    "mean_glucose": ("Mean glucose", "mg/dL"),
    "gmi": ("Glucose management indicator", "%"),
    "cv": ("Coefficient of variation", "%"),
}
POLICIES = ("basal_bolus", "parametrised", "twin_guided")


@dataclasses.dataclass(frozen=True)
class Optimisation:
    """How a `parametrised` arm's parameters are optimised (`optimise_policy`): on the
    training split (`split_patients(test_per_group, seed)`) of the nominal patients, over
    `days` days of meals of their own (another seed than the trial's), `steps` Adam steps of
    `learning_rate`, the objective's `tbr_weight`."""

    steps: int = 30
    learning_rate: float = 0.05
    days: int = 2
    test_per_group: int = 3
    tbr_weight: float = TBR_WEIGHT


@dataclasses.dataclass(frozen=True)
class T1DArm:
    """One arm: a name, a label and a policy.

    - `policy`: `"basal_bolus"` (`BasalBolus`: the quest's CR and CF), `"twin_guided"`
      (`twin_guided`, with `prior_sd`), or `"parametrised"` (`ParametrisedPolicy`, with
      `theta` given or `optimise`d).
    """

    name: str
    label: str
    policy: str
    theta: Mapping[str, Any] | None = None
    optimise: Optimisation | None = None
    prior_sd: float = 0.3

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "label": self.label, "policy": self.policy}
        if self.policy == "parametrised":
            if self.theta is not None:
                out["theta"] = _plain(self.theta)
            if self.optimise is not None:
                out["optimise"] = dataclasses.asdict(self.optimise)
        if self.policy == "twin_guided":
            out["prior_sd"] = self.prior_sd
        return out


@dataclasses.dataclass(frozen=True)
class T1DTrial:
    """A T1D virtual trial (module docstring).

    **Fields:**

    - `name`, `description`.
    - `patients`: names of simglucose's patients (default all 30).
    - `sampled_per_patient`, `sampled_sd`: the population sampled around them
      (`sample_population`: `Vmx` log-normal); `include_nominal`: whether the patients
      themselves are in the trial too.
    - `days`, `meal_times`, `meal_mean`, `meal_sd`: the meals (`random_meals`).
    - `run_in_days`: days simulated before the endpoints are counted (the twin learns on
      day 1).
    - `arms`, `reference_arm` (default the first).
    - `seed`: meals, CGM noise and sampled patients.
    """

    name: str
    arms: tuple[T1DArm, ...]
    description: str = ""
    patients: tuple[str, ...] = ()
    sampled_per_patient: int = 0
    sampled_sd: float = 0.3
    include_nominal: bool = True
    days: int = 7
    meal_times: tuple[float, ...] = (7.0, 12.0, 18.0)
    meal_mean: tuple[float, ...] = (45.0, 70.0, 80.0)
    meal_sd: tuple[float, ...] = (10.0, 10.0, 10.0)
    run_in_days: int = 1
    reference_arm: str | None = None
    seed: int = 0

    def __post_init__(self):
        if not self.arms:
            raise ValueError(f"T1DTrial {self.name!r}: at least one arm is needed.")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"T1DTrial {self.name!r}: arm names must be unique, got {names}.")
        if self.reference_arm is not None and self.reference_arm not in names:
            raise ValueError(
                f"T1DTrial {self.name!r}: reference_arm {self.reference_arm!r} is not an arm "
                f"({names})."
            )
        if not 0 <= self.run_in_days < self.days:
            raise ValueError(
                f"T1DTrial {self.name!r}: run_in_days must be in [0, days), got "
                f"{self.run_in_days} of {self.days} days."
            )
        if not self.include_nominal and self.sampled_per_patient < 1:
            raise ValueError(
                f"T1DTrial {self.name!r}: no patients (nominal excluded, none sampled)."
            )

    @property
    def reference(self) -> str:
        return self.reference_arm or self.arms[0].name

    def describe(self) -> dict[str, Any]:
        out = {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name != "arms"
        }
        out["arms"] = [a.describe() for a in self.arms]
        out["reference_arm"] = self.reference
        out["endpoints"] = [{"name": k, "label": v[0], "unit": v[1]} for k, v in ENDPOINTS.items()]
        return out

    def cohort(self) -> tuple[list[VirtualPatient], list[VirtualPatient]]:
        """`(patients, nominal)`: the trial's patients and the patient each is centred on."""
        table = load_patients()
        names = self.patients or tuple(table)
        unknown = [n for n in names if n not in table]
        if unknown:
            raise ValueError(f"T1DTrial {self.name!r}: unknown patients {unknown}.")
        chosen = [table[n] for n in names]
        patients: list[VirtualPatient] = list(chosen) if self.include_nominal else []
        nominal: list[VirtualPatient] = list(chosen) if self.include_nominal else []
        if self.sampled_per_patient:
            s, nom = sample_population(
                chosen, self.sampled_per_patient, seed=self.seed, sd=self.sampled_sd
            )
            patients += s
            nominal += nom
        return patients, nominal

    def plan(self, n: int, *, seed: int | None = None, days: int | None = None) -> MealPlan:
        return random_meals(
            n,
            self.days if days is None else days,
            seed=self.seed if seed is None else seed,
            times=self.meal_times,
            mean=self.meal_mean,
            sd=self.meal_sd,
        )


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray | jax.Array):
        return np.asarray(x).tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


# ----------------------------------------------------------------------------- running


@dataclasses.dataclass(frozen=True)
class ArmResult:
    """One arm's simulated course and what else it produced (the optimisation, the twins)."""

    course: Course
    extra: dict[str, Any]
    seconds: float


def _run_arm(
    trial: T1DTrial,
    arm: T1DArm,
    patients: list[VirtualPatient],
    nominal: list[VirtualPatient],
    plan: MealPlan,
    key: jax.Array,
    sensor: CGMSensor,
) -> ArmResult:
    t0 = time.perf_counter()
    consts = patient_constants(patients)
    extra: dict[str, Any] = {}
    if arm.policy == "basal_bolus":
        run = eqx.filter_jit(
            lambda: simulate_policy(BasalBolus(), None, patients, plan, key=key, sensor=sensor)
        )
        course = run()
    elif arm.policy == "parametrised":
        policy = ParametrisedPolicy(n_meals=len(trial.meal_times))
        theta = policy.initial_theta() if arm.theta is None else _theta(arm.theta, policy)
        if arm.optimise is not None:
            o = arm.optimise
            table = {p.name: p for p in nominal}
            unique = list(dict.fromkeys(p.name for p in nominal))
            train, test = split_patients(
                [table[n] for n in unique], test_per_group=o.test_per_group, seed=trial.seed
            )
            train_plan = trial.plan(len(train), seed=trial.seed + 1, days=o.days)
            fit = optimise_policy(
                policy, train, train_plan, key=jax.random.fold_in(key, 10_001),
                steps=o.steps, learning_rate=o.learning_rate, theta0=theta,
                tbr_weight=o.tbr_weight, sensor=sensor,
            )  # fmt: skip
            theta = fit.theta
            extra["optimisation"] = {
                "train": [p.name for p in train],
                "test": [p.name for p in test],
                "history": fit.history.tolist(),
                "theta0": _plain(fit.theta0),
                "theta": _plain(fit.theta),
                "seconds": fit.seconds,
                "compile_seconds": fit.compile_seconds,
            }
        extra["theta"] = _plain(theta)
        run = eqx.filter_jit(
            lambda th: simulate_policy(policy, th, patients, plan, key=key, sensor=sensor)
        )
        course = run(theta)
    elif arm.policy == "twin_guided":
        res = twin_guided(patients, nominal, plan, key=key, prior_sd=arm.prior_sd, sensor=sensor)
        course = res.course
        extra["twin"] = {
            "factors": res.factors.tolist(),
            "eta": res.eta.tolist(),
            "sd": res.sd.tolist(),
            "seconds_per_night": res.seconds.tolist(),
            "factor_grid": list(FACTORS),
        }
    else:  # checked when the arm was read
        raise ValueError(f"arm {arm.name!r}: unknown policy {arm.policy!r}.")
    course = jax.tree.map(np.asarray, course)
    del consts
    return ArmResult(course=course, extra=extra, seconds=time.perf_counter() - t0)


def _theta(given: Mapping[str, Any], policy: ParametrisedPolicy) -> dict[str, Any]:
    base = policy.initial_theta()
    out = {}
    for k, v in base.items():
        value = np.asarray(given.get(k, v), dtype=float)
        if value.shape != np.shape(v):
            raise ValueError(f"theta.{k}: expected shape {np.shape(v)}, got {value.shape}.")
        out[k] = value
    return out


def endpoints(course: Course, *, skip_days: int = 0, sensor: CGMSensor = SENSOR) -> pd.DataFrame:
    """The consensus metrics of each patient's CGM readings (after `skip_days` days)."""
    per_day = samples_per_day(sensor)
    cgm = np.asarray(course.cgm)[:, skip_days * per_day :]
    m = jax.vmap(cgm_metrics)(jax.numpy.asarray(cgm))
    return pd.DataFrame({k: np.asarray(getattr(m, k)) for k in ENDPOINTS})


def _mean_ci(x: Any, level: float = 0.95) -> dict[str, float]:
    x = np.asarray(x, dtype=float)
    n = x.size
    mean = float(np.mean(x))
    if n < 2:
        return {"mean": mean, "ci_low": math.nan, "ci_high": math.nan, "sd": math.nan, "n": n}
    sd = float(np.std(x, ddof=1))
    h = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "ci_low": mean - h, "ci_high": mean + h, "sd": sd, "n": n}


def summarise(frame: pd.DataFrame, reference: str) -> dict[str, Any]:
    """Means (t intervals) per arm, overall and by group and split, and paired differences
    against `reference` (the same patients in every arm)."""
    out: dict[str, Any] = {"arms": {}, "differences": {}, "by_group": {}, "by_split": {}}
    arms = list(dict.fromkeys(frame["arm"]))
    for arm in arms:
        rows = frame[frame["arm"] == arm]
        out["arms"][arm] = {e: _mean_ci(rows[e]) for e in ENDPOINTS}
        for col, key in (("group", "by_group"), ("split", "by_split")):
            out[key].setdefault(arm, {})
            for level, sub in rows.groupby(col):
                out[key][arm][str(level)] = {e: _mean_ci(sub[e]) for e in ENDPOINTS}
    ref = frame[frame["arm"] == reference].set_index("patient")
    for arm in arms:
        if arm == reference:
            continue
        rows = frame[frame["arm"] == arm].set_index("patient").loc[ref.index]
        out["differences"][arm] = {
            e: {**_mean_ci(rows[e].to_numpy() - ref[e].to_numpy()), "reference": reference}
            for e in ENDPOINTS
        }
    return out


def profile_bands(
    course: Course, *, skip_days: int = 0, sensor: CGMSensor = SENSOR
) -> pd.DataFrame:
    """The glucose profile by time of day (every sample time of a day): the 5, 25, 50, 75
    and 95 % quantiles of every patient's CGM readings on every day (after `skip_days`),
    as the ambulatory glucose profile shows them (Battelino et al. 2019)."""
    per_day = samples_per_day(sensor)
    cgm = np.asarray(course.cgm)[:, skip_days * per_day :]
    by_time = cgm.reshape(cgm.shape[0], -1, per_day).transpose(2, 0, 1).reshape(per_day, -1)
    q = np.percentile(by_time, [5, 25, 50, 75, 95], axis=1)
    hours = np.arange(per_day) * sensor.sample_time / 60.0
    return pd.DataFrame(
        {"hour": hours, "q05": q[0], "q25": q[1], "q50": q[2], "q75": q[3], "q95": q[4]}
    )


@dataclasses.dataclass(frozen=True)
class T1DResults:
    """What `run_trial` returns (and wrote to `folder`)."""

    folder: Path | None
    patients: pd.DataFrame
    summary: dict[str, Any]
    bands: pd.DataFrame
    arms: dict[str, ArmResult]


def run_trial(
    trial: T1DTrial, out: str | os.PathLike[str] | None = None, *, sensor: CGMSensor = SENSOR
) -> T1DResults:
    """Simulate every arm of `trial` on the same patients, meals and CGM noise; write the
    results folder `out` (module docstring) with its report, when given.

    **Returns:** a `T1DResults`.
    """
    patients, nominal = trial.cohort()
    n = len(patients)
    plan = trial.plan(n)
    key = jax.random.key(trial.seed)
    train_names: set[str] = set()
    results: dict[str, ArmResult] = {}
    for arm in trial.arms:
        results[arm.name] = _run_arm(trial, arm, patients, nominal, plan, key, sensor)
        opt = results[arm.name].extra.get("optimisation")
        if opt is not None:
            train_names = set(opt["train"])
    frames = []
    for arm in trial.arms:
        f = endpoints(results[arm.name].course, skip_days=trial.run_in_days, sensor=sensor)
        f.insert(0, "arm", arm.name)
        f.insert(0, "split", ["train" if p.name in train_names else "test" for p in nominal]
                 if train_names else "all")  # fmt: skip
        f.insert(0, "group", [p.group for p in patients])
        f.insert(0, "nominal", [p.name for p in nominal])
        f.insert(0, "patient", [p.name for p in patients])
        frames.append(f)
    frame = pd.concat(frames, ignore_index=True)
    summary = summarise(frame, trial.reference)
    summary["n_patients"] = n
    summary["days"] = trial.days
    summary["run_in_days"] = trial.run_in_days
    summary["seconds"] = {a: r.seconds for a, r in results.items()}
    summary["extra"] = {a: r.extra for a, r in results.items() if r.extra}
    bands = pd.concat(
        [
            profile_bands(
                results[a.name].course, skip_days=trial.run_in_days, sensor=sensor
            ).assign(arm=a.name)
            for a in trial.arms
        ],
        ignore_index=True,
    )
    folder = None
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        frame.to_csv(folder / "patients.csv", index=False)
        bands.to_csv(folder / "bands.csv", index=False)
        (folder / "summary.json").write_text(json.dumps(_plain(summary), indent=2, allow_nan=True))
        (folder / "spec.json").write_text(json.dumps(trial.describe(), indent=2))
        from ._report import write_t1d_report

        write_t1d_report(folder)
    return T1DResults(folder=folder, patients=frame, summary=summary, bands=bands, arms=results)
