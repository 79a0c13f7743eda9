"""`Drug`: a published population model plus the clinical facts needed to use it."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

import calibration
import pkpd

from ._metrics import Metric, metric_from_name
from ._routes import Route, route_from_name

PatientCovariates = Mapping[str, Any]
CovariateFn = Callable[[PatientCovariates], dict[str, float]]


class CovariateError(ValueError):
    """A patient covariate that a drug's model needs is missing or not usable.

    The message names the drug, the patient (its `"ID"` where the covariates carry one), the
    field and what was expected.
    """


def _who(patient: PatientCovariates, drug: str) -> str:
    pid = patient.get("ID") if isinstance(patient, Mapping) else None
    return f"{drug}: patient ID={pid}" if pid is not None else f"{drug}: patient"


def patient_number(
    patient: PatientCovariates,
    key: str,
    *,
    drug: str,
    what: str,
    positive: bool = True,
) -> float:
    """A numeric patient covariate, checked.

    **Arguments:**

    - `patient`: the standard patient covariate dict (`"AGE"`, `"WT"`, `"SCR"`, ...).
    - `key`: the field to read.
    - `drug`: the drug asking (named in the error message).
    - `what`: the meaning and unit of the field, for the message (`"serum creatinine, mg/dL"`).
    - `positive`: require a value > 0 (otherwise >= 0).

    **Returns:** the value as a Python float.

    **Raises:** `CovariateError` naming the drug, the patient and the field when the field is
    missing, not a number, not finite, or out of range.
    """
    if not isinstance(patient, Mapping):
        raise TypeError(
            f"{drug}: expected the patient covariates as a mapping such as "
            f"{{'AGE': 65.0, 'WT': 70.0, ...}}, got {type(patient).__name__}."
        )
    if key not in patient or patient[key] is None:
        raise CovariateError(
            f"{_who(patient, drug)} has no {key!r} ({what}); the model needs it. Got the "
            f"fields {sorted(patient)}."
        )
    value = patient[key]
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise CovariateError(
            f"{_who(patient, drug)}: {key!r} ({what}) is {value!r}; expected a number."
        )
    value = float(value)
    bad = not math.isfinite(value) or (value <= 0 if positive else value < 0)
    if bad:
        expected = "a finite number > 0" if positive else "a finite number >= 0"
        raise CovariateError(
            f"{_who(patient, drug)}: {key!r} ({what}) is {value!r}; expected {expected}."
        )
    return value


def patient_flag(patient: PatientCovariates, key: str, *, drug: str, what: str) -> float:
    """A 0/1 patient covariate (medication, dialysis); a missing or `None` field means 0.

    **Raises:** `CovariateError` when the value is present but neither 0 nor 1.
    """
    value = patient.get(key) if isinstance(patient, Mapping) else None
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float | np.number) and float(value) in (0.0, 1.0):
        return float(value)
    raise CovariateError(f"{_who(patient, drug)}: {key!r} ({what}) is {value!r}; expected 0 or 1.")


def patient_sex(patient: PatientCovariates, *, drug: str) -> float:
    """The `"SEX"` covariate: 1.0 female, 0.0 male.

    **Raises:** `CovariateError` when it is missing or not 0/1.
    """
    if not isinstance(patient, Mapping) or patient.get("SEX") is None:
        raise CovariateError(
            f"{_who(patient, drug)} has no 'SEX' (1 female, 0 male); the model needs it."
        )
    return patient_flag(patient, "SEX", drug=drug, what="1 female, 0 male")


def patient_text(patient: PatientCovariates, key: str, *, drug: str, what: str) -> str:
    """A text patient covariate (a diplotype, a phenotype label), checked to be present.

    **Raises:** `CovariateError` naming the drug, the patient and the field when it is
    missing or not a non-empty string.
    """
    value = patient.get(key) if isinstance(patient, Mapping) else None
    if value is None:
        raise CovariateError(
            f"{_who(patient, drug)} has no {key!r} ({what}); the model needs it. Got the "
            f"fields {sorted(patient)}."
        )
    if not isinstance(value, str) or not value.strip():
        raise CovariateError(
            f"{_who(patient, drug)}: {key!r} ({what}) is {value!r}; expected a non-empty string."
        )
    return value.strip()


@dataclasses.dataclass(frozen=True)
class Target:
    """A therapeutic target or window.

    **Fields:**

    - `metric`: what is measured, a `Metric`: `AUCOver(24)` (the AUC24 of the last 24 h of a
      plan), `Trough()` (the level when the next dose is due; `Trough("INR")` for an INR),
      `Peak()` (Cmax of the last interval). A name (`"AUC24"`, `"trough"`, `"INR"`, ...) is
      still accepted, with a `DeprecationWarning`, for one release.
    - `low`, `high`: the window (inclusive), in `unit`.
    - `unit`: e.g. `"mg·h/L"`, `"mg/L"`, `"-"` for a ratio.
    - `reference`: the guideline or paper that sets the window (authors, year, journal).
    - `note`: context (indication, when to sample).
    """

    metric: Metric
    low: float
    high: float
    unit: str
    reference: str
    note: str = ""

    def __post_init__(self):
        if isinstance(self.metric, str):
            metric = metric_from_name(self.metric)
            warnings.warn(
                f"Target(metric={self.metric!r}) is deprecated; pass metric="
                f"twins.drugs.{metric!r} (a name will be refused in the next release).",
                DeprecationWarning,
                stacklevel=3,
            )
            object.__setattr__(self, "metric", metric)
        elif not isinstance(self.metric, Metric):
            raise TypeError(
                f"Target: metric must be a twins.drugs.Metric (AUCOver(hours), Trough(), Peak()), "
                f"got {self.metric!r}."
            )
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(
                f"Target {self.metric}: expected finite low < high, got low={self.low}, "
                f"high={self.high}."
            )

    def contains(self, value: float) -> bool:
        """Whether `value` lies in the window `[low, high]`."""
        return self.low <= value <= self.high


@dataclasses.dataclass(frozen=True)
class Units:
    """Units of a drug's doses and observations.

    **Fields:** `dose` (what a dose amount means, e.g. `"mg racemic warfarin"`),
    `concentration` (of the modelled drug, e.g. `"mg/L"`), `observed` (the observed model
    output and its unit, e.g. `"INR (ratio)"` or `"vancomycin serum concentration, mg/L"`),
    `time` (`"h"`).
    """

    dose: str
    concentration: str
    observed: str
    time: str = "h"


@dataclasses.dataclass(frozen=True)
class DoseConstraints:
    """What a clinician can actually give: the limits a dose recommendation respects.

    **Fields:**

    - `strengths`: the available vial or tablet sizes (in `Units.dose`, absolute, never per
      kg); a dose is a sum of at most `max_units` of them (repeats allowed). `None`: any dose.
    - `increment`: the dose is moreover a multiple of this (mg), e.g. 250 mg for vancomycin
      from 250/500/750/1000 mg vials; `None`: no rounding beyond the strengths.
    - `max_units`: the most vials or tablets in one dose (default 4).
    - `min_dose`, `max_dose`: bounds on one dose (absolute amount, `Units.dose`).
    - `max_rate`: the fastest infusion (amount per hour); the infusion then lasts
      `max(usual duration, dose / max_rate)` hours. Infusions only.
    - `intervals`: the dosing intervals (h) allowed; `None`: the usual one.
    - `loading_per_kg`: `(low, high)`, the range of a loading dose per kg of body weight that
      the source allows (a requested loading dose outside it is refused); `max_loading`: the
      largest loading dose (absolute).
    - `reference`: where these come from (product label, guideline).

    Every field is checked: `ValueError` naming the field and what was expected.
    """

    strengths: tuple[float, ...] | None = None
    increment: float | None = None
    max_units: int = 4
    min_dose: float | None = None
    max_dose: float | None = None
    max_rate: float | None = None
    intervals: tuple[float, ...] | None = None
    loading_per_kg: tuple[float, float] | None = None
    max_loading: float | None = None
    reference: str = ""

    def __post_init__(self):
        def positive(name, value):
            number = isinstance(value, int | float | np.number) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and value > 0):
                raise ValueError(
                    f"DoseConstraints: {name} must be a finite number > 0, got {value!r}."
                )

        if self.strengths is not None:
            strengths = tuple(self.strengths)
            if not strengths:
                raise ValueError(
                    "DoseConstraints: strengths is empty; expected at least one vial or tablet "
                    "size > 0 (or strengths=None for any dose)."
                )
            for i, s in enumerate(strengths):
                positive(f"strengths[{i}]", s)
            object.__setattr__(self, "strengths", tuple(sorted(float(s) for s in strengths)))
        for name in ("increment", "min_dose", "max_dose", "max_rate", "max_loading"):
            if getattr(self, name) is not None:
                positive(name, getattr(self, name))
        if not (isinstance(self.max_units, int) and self.max_units >= 1):
            raise ValueError(
                f"DoseConstraints: max_units must be an integer >= 1, got {self.max_units!r}."
            )
        if self.min_dose is not None and self.max_dose is not None:
            if self.min_dose > self.max_dose:
                raise ValueError(
                    f"DoseConstraints: min_dose ({self.min_dose}) > max_dose "
                    f"({self.max_dose}); expected min_dose <= max_dose."
                )
        if self.intervals is not None:
            intervals = tuple(self.intervals)
            if not intervals:
                raise ValueError("DoseConstraints: intervals is empty; expected intervals > 0 h.")
            for i, t in enumerate(intervals):
                positive(f"intervals[{i}]", t)
            object.__setattr__(self, "intervals", tuple(float(t) for t in intervals))
        if self.loading_per_kg is not None:
            lo, hi = self.loading_per_kg
            positive("loading_per_kg[0]", lo)
            positive("loading_per_kg[1]", hi)
            if lo > hi:
                raise ValueError(
                    f"DoseConstraints: loading_per_kg is ({lo}, {hi}); expected low <= high."
                )

    def admissible(self, *, lowest: float = 0.0, highest: float | None = None) -> np.ndarray:
        """The doses allowed (absolute amounts, sorted): the sums of at most `max_units`
        `strengths`, multiples of `increment`, within `[min_dose, max_dose]`. Without
        `strengths`, the multiples of `increment` from `lowest` to `highest`; with neither,
        an empty array (any dose)."""
        lo = max(self.min_dose or 0.0, 0.0)
        hi = self.max_dose if self.max_dose is not None else highest
        if self.strengths is None:
            if self.increment is None:
                return np.zeros(0)
            if hi is None:
                raise ValueError("DoseConstraints: an increment without strengths needs max_dose.")
            k = np.arange(
                math.ceil(max(lo, lowest) / self.increment), math.floor(hi / self.increment) + 1
            )
            doses = k[k > 0] * self.increment
        else:
            sums = {0.0}
            for _ in range(self.max_units):
                sums |= {round(a + s, 9) for a in sums for s in self.strengths}
            doses = np.asarray(sorted(sums - {0.0}))
            if self.increment is not None:
                q = doses / self.increment
                doses = doses[np.abs(q - np.round(q)) < 1e-9]
        keep = doses >= lo - 1e-9
        if hi is not None:
            keep &= doses <= hi + 1e-9
        return doses[keep]

    def duration(self, amount: float, usual: float | None) -> float | None:
        """The infusion duration (h) of a dose of `amount`: the usual one, lengthened so
        that the rate stays <= `max_rate`."""
        if usual is None or self.max_rate is None:
            return usual
        return max(float(usual), float(amount) / self.max_rate)


@dataclasses.dataclass(frozen=True)
class Dosing:
    """How the drug is given, and a usual regimen.

    **Fields:**

    - `route`: a `Route`: `Oral()` (a bolus into the depot, compartment `cmt`),
      `Infusion(duration=...)` (a zero-order input into compartment `cmt` over `duration`
      hours) or `Bolus()` (IV bolus). The strings `"oral"` and `"infusion"` (with
      `duration=`) still work for one release, with a `DeprecationWarning`.
    - `amount`: a usual dose, in `Units.dose` (per kg of body weight if `per_kg`).
    - `interval`: the usual dosing interval (h).
    - `duration`: the usual infusion duration (h), read from the route (`None` for
      instantaneous doses); give it in the route, not here.
    - `cmt`: the dosing compartment of the model (1-based, as NONMEM's `CMT`).
    - `per_kg`: `amount` is per kg of body weight.
    - `reference`: where the usual regimen comes from.
    - `constraints`: the library's `DoseConstraints` (strengths, limits, infusion rate,
      intervals, loading dose, with their source); `DigitalTwin.recommend` applies them only
      when asked (`constraints=drug.dosing.constraints`, or its own).
    """

    route: Route
    amount: float
    interval: float
    duration: float | None = None
    cmt: int = 1
    per_kg: bool = False
    reference: str = ""
    constraints: DoseConstraints | None = None

    def __post_init__(self):
        route = self.route
        if isinstance(route, str):
            warnings.warn(
                f"Dosing(route={route!r}) is deprecated; pass twins.Oral() or "
                "twins.Infusion(duration=...) (the duration goes into the route).",
                DeprecationWarning,
                stacklevel=3,
            )
            route = route_from_name(route, self.duration)
        if not isinstance(route, Route):
            raise TypeError(
                f"Dosing: expected a route (twins.Oral(), twins.Infusion(duration=...), "
                f"twins.Bolus()), got {route!r}."
            )
        if self.duration is not None and self.duration != route.duration:
            raise ValueError(
                f"Dosing: duration={self.duration!r} disagrees with the route {route!r}; give "
                "the duration in the route only."
            )
        object.__setattr__(self, "route", route)
        object.__setattr__(self, "duration", route.duration)
        if not (self.amount > 0 and self.interval > 0):
            raise ValueError(
                f"Dosing: expected amount > 0 and interval > 0, got amount={self.amount}, "
                f"interval={self.interval}."
            )


@dataclasses.dataclass(frozen=True)
class Drug:
    r"""A drug of the library: a published population model and its clinical metadata.

    A `Drug` is a `calibration.PopulationModel` (structural `pkpd` model, covariate model for
    the typical values, between-subject variability, residual error), all at the values the
    paper published, plus what a clinician needs to use it: how to turn the standard patient
    covariates into the model's covariates, the units, the therapeutic targets, how the drug
    is given, and the reference.

    Define a new drug in a few lines:

    ```python
    import calibration, pkpd
    from twins.drugs import Drug, Dosing, Oral, Target, Units, patient_number

    def typical(theta, cov):
        return {"KA": theta["KA"], "CL": theta["CL"] * (cov["WT"] / 70) ** 0.75,
                "V": theta["V"] * cov["WT"] / 70}

    drug = Drug(
        name="mydrug_smith2020",
        model=calibration.PopulationModel(
            pkpd.OneCompartmentOral(), theta={"KA": 1.2, "CL": 5.0, "V": 50.0},
            omega={"CL": 0.09, "V": 0.04}, error=calibration.Proportional(0.15),
            typical=typical),
        covariate_fn=lambda p: {"WT": patient_number(p, "WT", drug="mydrug", what="kg")},
        units=Units(dose="mg", concentration="mg/L", observed="plasma concentration, mg/L"),
        dosing=Dosing(route=Oral(), amount=100.0, interval=12.0),
        reference="Smith A et al. J Clin Pharmacol 2020;60:1-10.",
    )
    ```

    **Fields:**

    - `name`: the library name, `<drug>_<first author><year>` in lower case.
    - `model`: the `calibration.PopulationModel`: published typical values as `theta`,
      published between-subject variability as `omega` (log-scale variances; a published
      CV becomes `log(1 + CV^2)`), published residual error as `error`, and `typical(theta,
      covariates)`.
    - `covariate_fn`: `covariate_fn(patient) -> {name: float}` translates the standard
      patient covariate dict (`"AGE"`, `"WT"`, `"SCR"`, `"CRCL"`, `"<GENE>"`,
      `"<GENE>_PHENOTYPE"`, ...) into the numeric covariates `typical` reads. Call it through
      `Drug.covariates`, which checks its output.
    - `units`: a `Units`.
    - `dosing`: a `Dosing` (route and a usual regimen).
    - `reference`: the publication of the model (authors, year, journal, doi).
    - `targets`: `Target`s (therapeutic windows), possibly none.
    - `omega_correlation`: published correlations between etas, `{(a, b): rho}`; the model
      then has `omega_block=True` and `Drug.omega_matrix` / `Drug.population` carry them.
    - `description`: the model in words, its equations and its caveats.
    """

    name: str
    model: calibration.PopulationModel
    covariate_fn: CovariateFn
    units: Units
    dosing: Dosing
    reference: str
    targets: tuple[Target, ...] = ()
    omega_correlation: Mapping[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.model, calibration.PopulationModel):
            raise TypeError(
                f"Drug {self.name!r}: expected model to be a calibration.PopulationModel, got "
                f"{type(self.model).__name__}."
            )
        if not callable(self.covariate_fn):
            raise TypeError(
                f"Drug {self.name!r}: expected covariate_fn to be callable (patient -> dict), "
                f"got {self.covariate_fn!r}."
            )
        names = self.model.eta_names
        for (a, b), rho in self.omega_correlation.items():
            if a not in names or b not in names or a == b:
                raise ValueError(
                    f"Drug {self.name!r}: omega_correlation ({a!r}, {b!r}) must name two "
                    f"different etas of the model {list(names)}."
                )
            if not -1.0 < rho < 1.0:
                raise ValueError(
                    f"Drug {self.name!r}: correlation of ({a!r}, {b!r}) is {rho}; expected a "
                    "value in (-1, 1)."
                )
        if self.omega_correlation and not self.model.omega_block:
            raise ValueError(
                f"Drug {self.name!r}: published eta correlations need a model with "
                "omega_block=True."
            )
        if self.omega_correlation:
            np.linalg.cholesky(self.omega_matrix())  # raises if not positive definite
        if self.dosing.cmt > self.model.model.n_states:
            raise ValueError(
                f"Drug {self.name!r}: dosing compartment {self.dosing.cmt} is not a compartment "
                f"of {type(self.model.model).__name__} {list(self.model.model.state_names)}."
            )

    # --- covariates and parameters -----------------------------------------------------

    def covariates(self, patient: PatientCovariates) -> dict[str, float]:
        """The model's numeric covariates for one patient.

        **Arguments:**

        - `patient`: the standard patient covariate dict (keys `"AGE"` (years), `"WT"` (kg),
          `"HT"` (cm), `"SEX"` (1 female, 0 male), `"SCR"` (mg/dL), `"CRCL"` (mL/min),
          genotypes `"<GENE>"`, `"<GENE>_AS"`, `"<GENE>_PHENOTYPE"`, medications
          `"AMIODARONE"`, `"DIAL"`, ...). Only the fields the drug needs are read.

        **Returns:** `{covariate name: float}`, all finite.

        **Raises:** `CovariateError` naming the drug, the patient and the field that is
        missing or unusable.
        """
        out = self.covariate_fn(patient)
        if not isinstance(out, Mapping):
            raise TypeError(
                f"Drug {self.name!r}: covariate_fn returned {type(out).__name__}; expected a "
                "dict of floats."
            )
        checked = {}
        for key, value in out.items():
            number = float(value)
            if not math.isfinite(number):
                raise CovariateError(
                    f"{_who(patient, self.name)}: the model covariate {key!r} came out as "
                    f"{number}; expected a finite number."
                )
            checked[key] = number
        return checked

    def typical_params(self, patient: PatientCovariates) -> dict[str, float]:
        """Typical (eta = 0) model parameters of a patient at the published values.

        **Returns:** `{parameter: float}` for every parameter of the structural model, and
        any dosing parameters (`F1`, ...) the covariate model sets.
        """
        cov = self.covariates(patient)
        eta = jnp.zeros(self.model.n_eta)
        params = self.model.individual_params(self.model.theta, cov, eta)
        return {k: float(v) for k, v in params.items()}

    def omega_matrix(self) -> np.ndarray:
        """The published between-subject covariance matrix, in the order of the model's etas.

        Variances from `model.omega`; off-diagonal terms from `omega_correlation`.
        """
        names = self.model.eta_names
        sd = np.sqrt([float(self.model.omega[n]) for n in names])
        corr = np.eye(len(names))
        for (a, b), rho in self.omega_correlation.items():
            i, j = names.index(a), names.index(b)
            corr[i, j] = corr[j, i] = rho
        return corr * np.outer(sd, sd)

    def population(self) -> dict[str, Any]:
        """The published population parameters on calibration's unconstrained scale.

        The same pytree as `model.initial()`, with the published eta correlations (which
        `PopulationModel` cannot hold) put into its `omega["corr"]` entry, so that
        `calibration.individual_map(drug.model, data, drug.population())` uses the published
        prior, correlations included.
        """
        phi = self.model.initial()
        if not self.model.omega_block or self.model.n_eta < 2:
            return phi
        # Canonical partial correlations z of the correlation matrix's Cholesky factor L
        # (the inverse of PopulationModel.omega_cholesky): z[i, j] = L[i, j] / sqrt(1 -
        # sum_{k<j} L[i, k]^2), stored as atanh(z) (Lewandowski, Kurowicka & Joe 2009).
        cov = self.omega_matrix()
        sd = np.sqrt(np.diag(cov))
        chol = np.linalg.cholesky(cov / np.outer(sd, sd))
        d = chol.shape[0]
        z = []
        for i, j in zip(*np.tril_indices(d, -1), strict=True):
            z.append(chol[i, j] / math.sqrt(1.0 - float(np.sum(chol[i, :j] ** 2))))
        phi = dict(phi)
        phi["omega"] = dict(phi["omega"]) | {"corr": jnp.arctanh(jnp.asarray(z))}
        return phi

    # --- dosing --------------------------------------------------------------------------

    def regimen(
        self,
        n_doses: int = 1,
        *,
        amount: float | None = None,
        interval: float | None = None,
        duration: float | None = None,
        start: float = 0.0,
        weight: float | None = None,
    ) -> pkpd.Regimen:
        """A regimen of `n_doses` equal doses, by default the drug's usual one (`dosing`).

        **Arguments:**

        - `n_doses`: number of doses (>= 1).
        - `amount`: dose in `units.dose` (per kg when `dosing.per_kg`); default the usual.
        - `interval`: dosing interval (h); default the usual.
        - `duration`: infusion duration (h), for infusions; default the usual.
        - `start`: time of the first dose (h).
        - `weight`: body weight (kg), required when `dosing.per_kg`.

        **Returns:** a `pkpd.Regimen` dosing into `dosing.cmt`.
        """
        d = self.dosing
        if not isinstance(n_doses, int) or n_doses < 1:
            raise ValueError(f"{self.name}.regimen: expected n_doses >= 1, got {n_doses!r}.")
        amount = d.amount if amount is None else amount
        if d.per_kg:
            if weight is None or not weight > 0:
                raise ValueError(
                    f"{self.name}.regimen: the dose is per kg ({d.amount} {self.units.dose}/kg); "
                    f"expected weight > 0 (kg), got weight={weight!r}."
                )
            amount = amount * weight
        interval = d.interval if interval is None else interval
        try:
            route = d.route.with_duration(duration)
        except ValueError as error:
            raise ValueError(f"{self.name}.regimen: {error}") from None
        one = route.dose(amount, time=start, cmt=d.cmt)
        return one if n_doses == 1 else pkpd.repeat(one, ii=interval, addl=n_doses - 1)
