"""`DigitalTwin`: one patient on one drug; calibrate on levels, forecast, recommend a dose.

The twin's prior is the drug's published population model at the patient's covariates (and
genotype, through the drug's covariate model). Observed levels update it to the individual
posterior:

- `update(..., method=calibration.MAP())` (default): the posterior mode of the patient's etas
  and the Laplace approximation of the posterior around it (covariance = inverse curvature of
  the negative log posterior, by the twin's `estimator`, `calibration.FOCEI()` by default, or
  `calibration.Laplace()`), as `calibration.individual_map`. Observations and doses are padded
  to fixed sizes, so adding one level reuses the compiled function (milliseconds).
- `update(..., method=calibration.NUTS(...), key=...)`: the full posterior by NUTS
  (`calibration.fit_individual_nuts`).

`forecast` simulates posterior draws (credible bands of the model's prediction, and prediction
bands with the residual error on request); `recommend` finds, by Newton steps through the model,
the dose that maximises the posterior probability of reaching a target window (AUC24, trough,
a concentration or the INR at the end of the regimen).
"""

from __future__ import annotations

import dataclasses
import math
import time as _time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import calibration
import pkpd

from ._patient import Patient
from ._recommend import (
    Recommendation,
    constrained_intervals,
    dosing_choices,
    loading_dose,
    plan_doses,
    recommend_dose,
)
from .drugs import DoseConstraints, Drug, Target
from .drugs import warfarin as _warfarin

_LEVEL = 0.9


def _bucket(n: int) -> int:
    return max(8, 1 << (max(n, 1) - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class Posterior:
    """The twin's current belief about its random effects (etas).

    - `method`: `"prior"`, `"map"` (mode + Laplace covariance) or `"nuts"` (draws);
    - `mode`: `(n_eta,)` the posterior mode (MAP) or mean (NUTS); `cov`: its covariance;
    - `draws`: `(n_draws, n_eta)` posterior draws (NUTS only);
    - `params`: the individual parameters at `mode`;
    - `converged`: whether the optimisation (or the sampler's diagnostics) succeeded;
    - `n_observations`: levels it is conditioned on; `seconds`: wall time of the update.
    """

    method: str
    mode: np.ndarray
    cov: np.ndarray
    params: dict[str, float]
    converged: bool
    n_observations: int
    seconds: float
    draws: np.ndarray | None = None

    def sample(self, *args: Any, n: int | None = None, key: Any = None) -> jnp.ndarray:
        """`sample(n, *, key)`: `(n, n_eta)` draws of the etas (from the Laplace
        approximation, or resampled NUTS draws); `key` a JAX PRNG key or an int.

        The positional form of earlier releases, `sample(key, n)`, still works for this
        release with a `DeprecationWarning`.
        """
        if len(args) == 2 and n is None and key is None:
            warnings.warn(
                "Posterior.sample(key, n) is deprecated; call sample(n, key=key).",
                DeprecationWarning,
                stacklevel=2,
            )
            key, n = args
        elif len(args) == 1 and n is None:
            (n,) = args
        elif args:
            raise TypeError(
                f"Posterior.sample: expected sample(n, *, key=...), got {len(args)} positional "
                "argument(s)."
            )
        if n is None:
            raise TypeError("Posterior.sample: pass the number of draws, sample(n, key=...).")
        key = _as_key(key, "Posterior.sample")
        if self.draws is not None:
            idx = jax.random.choice(key, self.draws.shape[0], (n,), replace=True)
            return jnp.asarray(self.draws)[idx]
        chol = jnp.linalg.cholesky(jnp.asarray(self.cov))
        z = jax.random.normal(key, (n, self.mode.shape[0]))
        return jnp.asarray(self.mode)[None, :] + z @ chol.T


@dataclasses.dataclass(frozen=True)
class Forecast:
    """Predictions of a twin on a regimen: median and bands over posterior draws.

    - `times`, `median`, `lower`, `upper` (the central `level` interval), `draws`
      `(n_draws, times)`; `prediction_interval`: True when the residual error is included;
    - `observations`: the levels the twin was calibrated on (`TIME`, `DV`);
    - `regimen`: the doses simulated (history and plan); `unit`, `drug`: labels.
    """

    times: np.ndarray
    median: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    draws: np.ndarray
    level: float
    prediction_interval: bool
    observations: pd.DataFrame
    regimen: pkpd.Regimen
    unit: str
    drug: str

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"time": self.times, "median": self.median, "lower": self.lower, "upper": self.upper}
        )

    def plot(self, ax=None, *, target: Target | None = None, title: str | None = None):
        """Median and band, the observed levels and the dose times; returns the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(8.0, 4.5))
        pct = round(100 * self.level)
        kind = "prediction" if self.prediction_interval else "credible"
        ax.fill_between(self.times, self.lower, self.upper, alpha=0.25, label=f"{pct}% {kind} band")
        ax.plot(self.times, self.median, lw=2, label="median")
        if len(self.observations):
            ax.scatter(
                self.observations["TIME"],
                self.observations["DV"],
                color="k",
                zorder=3,
                label="observed",
            )
        dose_times = np.asarray(self.regimen.time)[np.asarray(self.regimen.mask)]
        for t in dose_times:
            ax.axvline(float(t), color="0.8", lw=0.8, zorder=0)
        if target is not None and target.metric.on_level:
            ax.axhspan(target.low, target.high, color="tab:green", alpha=0.08, label="target")
        ax.set_xlabel("time (h)")
        ax.set_ylabel(self.unit)
        ax.set_title(title or f"{self.drug}: forecast")
        ax.legend(loc="best", fontsize="small")
        return ax


class DigitalTwin:
    """A patient's digital twin for one drug.

    ```python
    twin = twins.DigitalTwin(twins.drugs.get("vancomycin_goti2018"), patient)
    twin.give(drug.regimen(4, amount=1000.0, interval=12.0))   # doses given so far
    twin.update(times=[11.5, 35.5], values=[9.8, 12.1])        # two levels -> posterior
    fc = twin.forecast(np.linspace(0, 96, 200))                 # median and 90% band
    rec = twin.recommend("AUC24", intervals=(8.0, 12.0, 24.0))  # dose for 400-600 mg*h/L
    ```

    **Arguments:**

    - `drug`: a `twins.Drug` (its population model is the prior).
    - `patient`: a `twins.Patient`, or the standard covariate dict (`Patient.covariates()`).
    - `regimen`: doses already given (a `pkpd.Regimen`), optional; add more with `give`.
    - `population`: population values on calibration's unconstrained scale; default the
      drug's published values (`drug.population()`).
    - `estimator`: the curvature of the Laplace approximation around the MAP:
      `calibration.FOCEI()` (the default for twins; first-order form with the interaction
      term, exact for the prior, quick to compile) or `calibration.Laplace()` (exact second
      derivatives through the model).
    - `curvature`: deprecated spelling of `estimator` (`"focei"` or `"laplace"`; a
      `DeprecationWarning`).
    - `solver`: how the forecasts and dose searches integrate an ODE model: a
      `pkpd.ODESolver` (diffrax, adaptive steps) or a `pkpd.FixedStep`. Default
      `twin_solver(drug)`: `twins.drugs.warfarin.TWIN_SOLVER` (`FixedStep(1.0)`) for the
      warfarin PK/INR models, the population model's own `solver` otherwise (linear
      models are exact and ignore it). With `calibration.FOCEI()` the MAP update uses it
      too (its Jacobians go by forward mode, which `FixedStep` supports);
      `calibration.Laplace()` differentiates in reverse mode, which `FixedStep`'s loops
      do not support, so its update keeps the population model's `solver`.

    The twin is updated in place (`give`, `observe`, `update`); `posterior` is the current
    belief. Read-only attributes: `pm` (the population model), `phi`, `theta`, `sigma`,
    `omega` (population values; natural scale for the last three), `covariates` (the
    model's covariates of the patient) and `covariate_arrays` (the same as JAX arrays),
    `weight` (kg, or None), `history` (doses given), `observations`. Many twins of one drug
    are updated, dosed and forecast together by `twins.update_twins`,
    `twins.recommend_twins` and `twins.forecast_twins` (one vmapped call each).
    """

    def __init__(
        self,
        drug: Drug,
        patient: Any,
        *,
        regimen: pkpd.Regimen | None = None,
        population: Mapping[str, Any] | None = None,
        estimator: calibration.AbstractEstimator | None = None,
        curvature: str | None = None,
        solver: pkpd.ODESolver | pkpd.FixedStep | None = None,
    ):
        self.estimator = _estimator(estimator, curvature)
        if not isinstance(drug, Drug):
            raise TypeError(f"DigitalTwin: expected a twins.Drug, got {type(drug).__name__}.")
        if solver is None:
            solver = twin_solver(drug)
        elif not isinstance(solver, pkpd.ODESolver | pkpd.FixedStep):
            raise TypeError(
                "DigitalTwin: solver must be a pkpd.ODESolver or a pkpd.FixedStep, got "
                f"{solver!r:.80}."
            )
        self.solver = solver
        self.drug = drug
        self.pm = drug.model
        if isinstance(self.estimator, calibration.FOCEI):
            self.pm = _with_solver(drug.model, solver)
        self.patient = patient
        cov_dict = patient.covariates() if isinstance(patient, Patient) else patient
        self.patient_id = str(cov_dict.get("ID", getattr(patient, "id", "patient")))
        self.covariates = drug.covariates(cov_dict)
        weight = cov_dict.get("WT")
        self.weight = None if weight is None else float(weight)
        self.phi: dict[str, Any] = dict(drug.population() if population is None else population)
        nat = self.pm.natural(self.phi)
        self.theta = nat["theta"]
        self.sigma = nat["sigma"]
        self.omega = np.asarray(nat["omega"])
        self.covariate_arrays = {k: jnp.asarray(v) for k, v in self.covariates.items()}
        self.history: pkpd.Regimen | None = None
        if regimen is not None:
            self.give(regimen)
        self.observations = pd.DataFrame({"TIME": [], "DV": [], "CENS": []})
        d = self.pm.n_eta
        self.posterior = Posterior(
            method="prior",
            mode=np.zeros(d),
            cov=self.omega.copy(),
            params=self._params(np.zeros(d)),
            converged=True,
            n_observations=0,
            seconds=0.0,
        )

    # --- history -----------------------------------------------------------------------

    def give(self, regimen: pkpd.Regimen) -> DigitalTwin:
        """Record doses given (appended to the history); returns the twin."""
        if not isinstance(regimen, pkpd.Regimen):
            raise TypeError(f"give: expected a pkpd.Regimen, got {type(regimen).__name__}.")
        if regimen.time.ndim != 1:
            raise ValueError("give: expected the regimen of one patient (1-d event arrays).")
        self.history = regimen if self.history is None else self.history + regimen
        return self

    def _params(self, eta) -> dict[str, float]:
        p = self.pm.individual_params(self.theta, self.covariate_arrays, jnp.asarray(eta))
        return {k: float(v) for k, v in p.items()}

    # --- calibration ---------------------------------------------------------------------

    def update(
        self,
        observations: pd.DataFrame | None = None,
        *,
        times: Sequence[float] | None = None,
        values: Sequence[float] | None = None,
        lloq: float | None = None,
        method: calibration.MAP | calibration.NUTS | str | None = None,
        key: jax.Array | int | None = None,
        **nuts_options: Any,
    ) -> DigitalTwin:
        """Add observed levels and recompute the posterior; returns the twin.

        **Arguments:**

        - `observations`: a DataFrame with `TIME` (h, on the regimen's clock) and `DV`, and
          optionally `CENS` (1: below the limit of quantification, `DV` = the limit); or
        - `times`, `values`: the same as sequences (`lloq` marks values below it as censored).
          With none of these, the posterior is recomputed on the levels already observed
          (`observe` adds levels without recomputing).
        - `method`: `calibration.MAP()` (default; posterior mode and Laplace covariance by the
          twin's `estimator`, milliseconds once compiled) or `calibration.NUTS(num_warmup=...,
          num_samples=..., num_chains=..., ...)` (the full posterior by
          `calibration.fit_individual_nuts`; needs `key`, a JAX PRNG key or an int: without
          it `TypeError`). The strings `"map"` and `"nuts"`
          (with the sampler settings as keywords, `nuts_options`) are deprecated.

        Raises `ValueError` naming the patient and the row for a non-finite level or time, and
        when no doses have been given.
        """
        strategy = _update_method(method, nuts_options)
        if isinstance(strategy, calibration.NUTS):
            key = _as_key(key, "DigitalTwin.update(method=NUTS(...))")
        if self.history is None:
            raise ValueError(
                f"DigitalTwin {self.patient_id}: no doses given; call give(regimen) before update."
            )
        if observations is not None or times is not None or values is not None:
            self.observe(observations, times=times, values=values, lloq=lloq)
        t0 = _time.perf_counter()
        if isinstance(strategy, calibration.NUTS):
            self.posterior = self._nuts(key, t0, strategy)
        else:
            self.posterior = self._map(t0)
        return self

    def observe(
        self,
        observations: pd.DataFrame | None = None,
        *,
        times: Sequence[float] | None = None,
        values: Sequence[float] | None = None,
        lloq: float | None = None,
    ) -> DigitalTwin:
        """Add observed levels (as `update` takes them) without recomputing the posterior;
        returns the twin. Then `update()` recomputes it, or `twins.update_twins` the
        posteriors of many twins in one vmapped MAP."""
        new = self._new_observations(observations, times, values, lloq)
        obs = pd.concat([self.observations, new], ignore_index=True)
        self.observations = obs.sort_values("TIME", kind="stable").reset_index(drop=True)
        return self

    @property
    def curvature(self) -> str:
        """Deprecated: the name of `estimator` (`"focei"` or `"laplace"`)."""
        warnings.warn(
            "DigitalTwin.curvature is deprecated; read DigitalTwin.estimator "
            "(calibration.FOCEI() or calibration.Laplace()).",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.estimator.name

    def _new_observations(self, observations, times, values, lloq) -> pd.DataFrame:
        if observations is not None:
            if times is not None or values is not None:
                raise ValueError("update: give observations or times/values, not both.")
            missing = [c for c in ("TIME", "DV") if c not in observations.columns]
            if missing:
                raise ValueError(f"update: observations need columns {missing}.")
            df = pd.DataFrame(
                {
                    "TIME": observations["TIME"].to_numpy(dtype=float),
                    "DV": observations["DV"].to_numpy(dtype=float),
                    "CENS": observations["CENS"].to_numpy(dtype=int)
                    if "CENS" in observations.columns
                    else np.zeros(len(observations), dtype=int),
                }
            )
        else:
            if times is None or values is None:
                raise ValueError("update: expected observations, or times and values.")
            t = np.atleast_1d(np.asarray(times, dtype=float))
            v = np.atleast_1d(np.asarray(values, dtype=float))
            if t.shape != v.shape:
                raise ValueError(
                    f"update: {t.size} times but {v.size} values for patient {self.patient_id}."
                )
            cens = np.zeros(t.size, dtype=int)
            if lloq is not None:
                cens = (v < lloq).astype(int)
                v = np.where(cens == 1, lloq, v)
            df = pd.DataFrame({"TIME": t, "DV": v, "CENS": cens})
        for col in ("TIME", "DV"):
            bad = ~np.isfinite(df[col].to_numpy())
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"DigitalTwin {self.patient_id}: observation {i} has {col}="
                    f"{df[col].iloc[i]}; expected a finite number."
                )
        negative = df["TIME"].to_numpy() < 0
        if negative.any():
            i = int(np.flatnonzero(negative)[0])
            raise ValueError(
                f"DigitalTwin {self.patient_id}: observation {i} at TIME={df['TIME'].iloc[i]} "
                "is before time 0."
            )
        return df

    def _dataset(self) -> calibration.Dataset:
        """The patient's doses and levels as a one-subject Dataset of bucketed sizes (so that
        new levels and doses reuse the compiled estimator)."""
        return twins_dataset([self])

    def _map(self, t0: float) -> Posterior:
        ind = calibration.individual_map(
            self.pm, self._dataset(), self.phi, estimator=self.estimator
        )
        mode = ind.eta[0]
        return Posterior(
            method="map",
            mode=mode,
            cov=ind.cov[0],
            params=self._params(mode),
            converged=bool(ind.converged[0]),
            n_observations=len(self.observations),
            seconds=_time.perf_counter() - t0,
        )

    def _nuts(self, key, t0: float, sampler: calibration.NUTS) -> Posterior:
        fit = calibration.fit_individual_nuts(
            self.pm, self._dataset(), self.phi, key=key, **sampler.options()
        )
        eta = fit.idata["posterior"]["eta"]  # (chain, draw, subject, eta_name)
        draws = np.asarray(eta.values)[:, :, 0, :].reshape(-1, self.pm.n_eta)
        mean = draws.mean(axis=0)
        return Posterior(
            method="nuts",
            mode=mean,
            cov=np.cov(draws.T).reshape(self.pm.n_eta, self.pm.n_eta),
            params=self._params(mean),
            converged=bool(fit.converged),
            n_observations=len(self.observations),
            seconds=_time.perf_counter() - t0,
            draws=draws,
        )

    # --- forecasting ---------------------------------------------------------------------

    def _plan(self, regimen: pkpd.Regimen | None) -> pkpd.Regimen:
        if regimen is None and self.history is None:
            raise ValueError(f"DigitalTwin {self.patient_id}: no doses given and no regimen.")
        if regimen is None:
            assert self.history is not None
            return self.history
        return regimen if self.history is None else self.history + regimen

    def forecast(
        self,
        times: Any,
        regimen: pkpd.Regimen | None = None,
        *,
        key: jax.Array | int | None = None,
        n_draws: int = 1000,
        level: float = _LEVEL,
        prediction_interval: bool = False,
    ) -> Forecast:
        """Median and central `level` band of the observed output at `times`.

        **Arguments:**

        - `times`: output times (h, the regimen's clock).
        - `regimen`: planned doses, added to those given (default: the history alone).
        - `key`: a JAX PRNG key (or an int) for the posterior draws; the same key gives the
          same forecast. (Omitting it uses `jax.random.key(0)` with a `DeprecationWarning`;
          in the next release it raises `TypeError`.)
        - `n_draws`, `level`: draws of the posterior and width of the band.
        - `prediction_interval`: add the residual error (where a new level would fall)
          instead of the credible band of the model's prediction.
        """
        times = jnp.asarray(np.asarray(times, dtype=float))
        plan = self._plan(regimen)
        key = _as_key(key, "DigitalTwin.forecast", old_default=True)
        k_eta, k_eps = jax.random.split(key)
        eta = self.posterior.sample(n_draws, key=k_eta)
        # Padded to a bucket of event slots, as the update's data set: twins whose histories
        # differ by a few doses share one compiled prediction.
        padded = plan.pad(_bucket(plan.n_events))
        y = np.asarray(
            predict_draws(
                self.pm, self.theta, self.covariate_arrays, padded, times, eta, self.solver
            )
        )
        if prediction_interval:
            y = np.asarray(with_residual(self.pm.error, self.sigma, jnp.asarray(y), k_eps))
        q = (1.0 - level) / 2.0
        lo, med, hi = np.quantile(y, [q, 0.5, 1.0 - q], axis=0)
        return Forecast(
            times=np.asarray(times),
            median=med,
            lower=lo,
            upper=hi,
            draws=y,
            level=level,
            prediction_interval=prediction_interval,
            observations=self.observations.copy(),
            regimen=plan,
            unit=self.drug.units.observed,
            drug=self.drug.name,
        )

    # --- report --------------------------------------------------------------------------

    # --- dosing --------------------------------------------------------------------------

    def recommend(
        self,
        target: str | Target | None = None,
        *,
        interval: float | None = None,
        intervals: Sequence[float] | None = None,
        start: float | None = None,
        n_doses: int | None = None,
        probability: float | None = None,
        key: jax.Array | int | None = None,
        n_draws: int = 500,
        steps: int = 12,
        constraints: DoseConstraints | None = None,
        loading: float | None = None,
    ) -> Recommendation:
        """The dose that maximises the posterior probability of reaching `target`.

        The plan is `n_doses` doses of the drug's usual form (`drug.regimen`) every
        `interval` hours from `start`, after the doses given. The target's metric
        (`twins.drugs.AUCOver`, `Trough`, `Peak`) is read on the plan's end, when the next dose
        would be due: `AUCOver(24)` the AUC of the last 24 h (exact for linear models, through
        `pkpd.interval_exposure`, the trials' engine), `Trough()` the level then, `Peak()` the
        maximum over the last interval. The search is `twins._recommend.recommend_dose`: for
        each interval tried, Newton steps set the posterior geometric mean of the metric on
        the window's centre, then Newton ascent on a smoothed posterior probability of the
        window moves the log-dose (slopes and curvatures by JAX through superposition for an
        AUC or level of a linear model, by central differences of the simulated metric
        otherwise); the reported probability is the plain fraction of draws in the window.

        **Arguments:**

        - `target`: a `Target`, or the metric name of one of the drug's targets (`"AUC24"`,
          `"trough"`, `"INR"`; default its first).
        - `interval` or `intervals`: the dosing interval (h), or several to choose from (the
          most probable wins; within half a percentage point, the longer interval); default
          the drug's usual one.
        - `start`: time of the first planned dose (default: one interval after the last dose
          given, or 0); `n_doses`: planned doses (default: enough for 5 days, at least 3).
        - `probability`: a required probability; `achieved` says whether it is met (the
          dose is the most probable one either way).
        - `key`, `n_draws`, `steps`: posterior draws (a JAX PRNG key or an int; omitting it
          uses `jax.random.key(0)` with a `DeprecationWarning`, and will raise `TypeError`
          in the next release) and Newton ascent steps.
        - `constraints`: a `twins.DoseConstraints` (the drug library's are
          `drug.dosing.constraints`; override fields with `dataclasses.replace`): the dose
          becomes the admissible one (sums of the available strengths, multiples of the
          increment, within `[min_dose, max_dose]`) of highest posterior probability over the
          same draws, each infusion lengthened to `dose / max_rate` where that is longer than
          the usual duration, chosen among `constraints.intervals` when `interval(s)` are not
          given. The reported probability and metric are those of that dose;
          `continuous_dose`, `duration` and `bound` say what was optimal without rounding,
          how long each infusion lasts and which constraint set the dose. None (default):
          the continuous optimum, as before.
        - `loading`: a loading dose in mg per kg of body weight (needs `constraints`):
          `loading * weight` rounded to the nearest admissible amount (at most
          `max_loading`), given at the plan's first dose time (`start`, default one usual
          interval after the last dose given, or 0); the maintenance doses follow one
          interval later. Must lie in `constraints.loading_per_kg` when that is set.
        """
        tgt = self.find_target(target)
        who = f"recommend for patient {self.patient_id}"
        if constraints is not None and not isinstance(constraints, DoseConstraints):
            raise TypeError(
                f"{who}: constraints must be a twins.DoseConstraints, got {constraints!r:.80}."
            )
        if loading is not None and constraints is None:
            raise ValueError(f"{who}: loading= needs constraints= (strengths, max_loading).")
        usual_interval = interval or self.drug.dosing.interval
        intervals = constrained_intervals(constraints, interval, intervals, usual_interval, who)
        choices = dosing_choices(intervals, usual_interval, probability)
        loading_reg, load_amount = None, None
        try:
            if loading is None:
                plans = plan_doses(
                    self.drug, self.history, choices, tgt.metric, start=start, n_doses=n_doses,
                    weight=self.weight,
                )  # fmt: skip
            else:
                assert constraints is not None  # checked above
                t_load, load_amount, loading_reg = loading_dose(
                    self.drug, self.history, self.weight, loading, constraints, start, who
                )
                plans = []
                for tau in choices:
                    plans += plan_doses(
                        self.drug, self.history, [tau], tgt.metric, start=t_load + float(tau),
                        n_doses=n_doses, weight=self.weight,
                    )  # fmt: skip
                size = _bucket(max(p.regimen.n_events for p in plans))
                plans = [p._replace(regimen=p.regimen.pad(size)) for p in plans]
        except ValueError as error:
            if str(error).startswith(who):
                raise
            raise ValueError(f"{who}: {error}") from error
        key = _as_key(key, "DigitalTwin.recommend", old_default=True)
        eta = self.posterior.sample(n_draws, key=key)
        history = self.history
        if loading_reg is not None:
            history = loading_reg if history is None else history + loading_reg
        if history is not None:  # a bucket of slots: one compilation for similar histories
            history = history.pad(_bucket(history.n_events))
        rec = recommend_dose(
            self.pm,
            self.theta,
            self.covariate_arrays,
            history,
            plans,
            tgt,
            eta,
            u0=math.log(float(self.drug.dosing.amount)),
            steps=steps,
            probability=probability,
            unit=self.drug.units.dose,
            who=self.patient_id,
            constraints=constraints,
            per_kg_weight=self.weight if self.drug.dosing.per_kg else None,
            usual_duration=self.drug.dosing.route.duration,
            loading_dose=load_amount,
            solver=self.solver,
        )
        if loading_reg is None:
            return rec
        return dataclasses.replace(rec, regimen=loading_reg + rec.regimen)

    def find_target(self, target: str | Target | None) -> Target:
        """`target` as a `Target`: itself, or the drug's target of that metric name
        (default the first); `ValueError` naming the drug's targets otherwise."""
        if isinstance(target, Target):
            return target
        if not self.drug.targets:
            raise ValueError(f"recommend: {self.drug.name} has no targets; pass a Target.")
        if target is None:
            return self.drug.targets[0]
        for t in self.drug.targets:
            if t.metric.name.lower() == str(target).strip().lower():
                return t
        raise ValueError(
            f"recommend: {self.drug.name} has no target {target!r}; its targets are "
            f"{[t.metric.name for t in self.drug.targets]} (or pass a twins.drugs.Target)."
        )


def twin_solver(drug: Drug) -> pkpd.ODESolver | pkpd.FixedStep:
    """The default `solver` of a `DigitalTwin` of `drug` (its forecasts and dose searches):

    | drug | solver |
    | --- | --- |
    | `warfarin_hamberg2007`, `warfarin_iwpc_recalibrated` (a `pkpd.PKPD` of linear PK and the `HambergINR` model) | `twins.drugs.warfarin.TWIN_SOLVER`: `pkpd.FixedStep`, exact PK, RK4 for the INR chain |
    | any other | the population model's `solver` (`pkpd.ODESolver(throw=False)`: Tsit5, rtol 1e-6); linear models are exact and ignore it |
    """  # noqa: E501
    model = drug.model.model
    if isinstance(model, pkpd.PKPD) and isinstance(model.pd, _warfarin.HambergINR):
        return _warfarin.TWIN_SOLVER
    return drug.model.solver


_WITH_SOLVER: dict[tuple[int, str], tuple[Any, Any]] = {}


def _with_solver(pm: calibration.PopulationModel, solver: Any) -> calibration.PopulationModel:
    """`pm` with its `solver` replaced, one object per model and solver (twins of one
    drug and solver are then computed together: `twins.update_twins` groups them by it)."""
    if solver is pm.solver:
        return pm
    key = (id(pm), repr(solver))
    got = _WITH_SOLVER.get(key)
    if got is None or got[0] is not pm:
        if len(_WITH_SOLVER) > 1024:
            _WITH_SOLVER.clear()
        got = _WITH_SOLVER[key] = (pm, dataclasses.replace(pm, solver=solver))  # holds `pm`
    return got[1]


def twins_dataset(
    twins: Sequence[DigitalTwin], *, n_subjects: int | None = None
) -> calibration.Dataset:
    """The doses and levels of `twins` (of one drug model) as one calibration `Dataset`:
    observations and doses padded to the bucket (a power of two, at least 8) of the largest
    count among them, so that new levels and doses, and batches of similar twins, reuse the
    compiled estimator. `n_subjects` (>= `len(twins)`) pads the subjects too, with copies of
    the first twin (ids `"<id>~pad<k>"`), whose results the caller drops."""
    if not twins:
        raise ValueError("twins_dataset: no twins.")
    for tw in twins:
        if tw.history is None:
            raise ValueError(
                f"DigitalTwin {tw.patient_id}: no doses given; call give(regimen) before update."
            )
    rows = list(twins)
    if n_subjects is not None:
        if n_subjects < len(rows):
            raise ValueError(f"twins_dataset: n_subjects={n_subjects} < {len(rows)} twins.")
        rows += [rows[0]] * (n_subjects - len(rows))
    n = len(rows)
    n_obs = _bucket(max(len(tw.observations) for tw in rows))
    n_events = _bucket(max(tw.history.n_events for tw in rows))  # type: ignore[union-attr]
    time = np.zeros((n, n_obs))
    dv = np.zeros((n, n_obs))
    observed = np.zeros((n, n_obs), dtype=bool)
    blq = np.zeros((n, n_obs), dtype=bool)
    ids, records = [], []
    for i, tw in enumerate(rows):
        obs = tw.observations
        k = len(obs)
        t = obs["TIME"].to_numpy(dtype=float)
        time[i] = t[-1] if k else 0.0
        time[i, :k] = t
        dv[i, :k] = obs["DV"].to_numpy(dtype=float)
        observed[i, :k] = True
        blq[i, :k] = obs["CENS"].to_numpy() == 1
        pid = tw.patient_id if i < len(twins) else f"{tw.patient_id}~pad{i}"
        ids.append(pid)
        records.append(pd.DataFrame({"ID": pid, "TIME": t, "EVID": 0, "MDV": 0, "DV": dv[i, :k]}))
    names = list(rows[0].covariates)
    return calibration.Dataset(
        ids=np.asarray(ids),
        regimen=pkpd.stack([tw.history for tw in rows], n_events),  # type: ignore[misc]
        time=time,
        dv=dv,
        observed=observed,
        blq=blq,
        lloq=np.where(blq, dv, -np.inf),
        occasion=np.zeros((n, n_obs), dtype=np.int32),
        covariates={c: np.asarray([tw.covariates[c] for tw in rows]) for c in names},
        records=pd.concat(records, ignore_index=True),
    )


def _as_key(key: Any, fn: str, *, old_default: bool = False) -> jax.Array:
    """A JAX PRNG key from `key` (a key, or an int through `jax.random.key`). Missing:
    `TypeError`, or, where earlier releases silently used `jax.random.key(0)`
    (`old_default`), that key with a `DeprecationWarning`."""
    if key is None and old_default:
        warnings.warn(
            f"{fn}: no key given, so jax.random.key(0) is used as before; pass "
            "key=jax.random.key(...) (or an int). Omitting key will raise a TypeError in the "
            "next release.",
            DeprecationWarning,
            stacklevel=3,
        )
        return jax.random.key(0)
    if isinstance(key, jax.Array):
        return key
    if isinstance(key, int | np.integer) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if key is None:
        raise TypeError(f"{fn} draws random numbers: pass key=jax.random.key(...) (or an int).")
    raise TypeError(
        f"{fn}: key must be a JAX PRNG key (jax.random.key(...)) or an int, got "
        f"{type(key).__name__}."
    )


_CURVATURES = {"focei": calibration.FOCEI, "laplace": calibration.Laplace}


def _estimator(estimator: Any, curvature: Any) -> calibration.AbstractEstimator:
    """`estimator=`, or the deprecated `curvature=` string (a DeprecationWarning)."""
    if curvature is not None:
        if estimator is not None:
            raise TypeError("DigitalTwin: give estimator= or the deprecated curvature=, not both.")
        if curvature not in _CURVATURES:
            raise ValueError(
                f"DigitalTwin: curvature must be 'focei' or 'laplace', got {curvature!r}; "
                "pass estimator=calibration.FOCEI() or calibration.Laplace()."
            )
        new = _CURVATURES[curvature]
        warnings.warn(
            f"DigitalTwin: curvature={curvature!r} is deprecated; pass "
            f"estimator=calibration.{new.__name__}().",
            DeprecationWarning,
            stacklevel=3,
        )
        return new()
    if estimator is None:
        return calibration.FOCEI()
    if not isinstance(estimator, calibration.AbstractEstimator):
        raise TypeError(
            "DigitalTwin: estimator must be calibration.FOCEI() or calibration.Laplace(), "
            f"got {estimator!r}."
        )
    return estimator


def _update_method(method: Any, nuts_options: dict[str, Any]):
    """`calibration.MAP()` or `calibration.NUTS(...)` from `update`'s `method` (the strings
    'map' and 'nuts' are deprecated: a DeprecationWarning)."""
    if isinstance(method, str):
        if method == "map" and not nuts_options:
            warnings.warn(
                "update: method='map' is deprecated; pass method=calibration.MAP() (the default).",
                DeprecationWarning,
                stacklevel=3,
            )
            return calibration.MAP()
        if method == "nuts":
            sampler = calibration.NUTS(**nuts_options)
            settings = ", ".join(f"{k}={v!r}" for k, v in nuts_options.items())
            warnings.warn(
                f"update: method='nuts' is deprecated; pass method=calibration.NUTS({settings}).",
                DeprecationWarning,
                stacklevel=3,
            )
            return sampler
        if method != "map":
            raise ValueError(
                f"update: method must be calibration.MAP() or calibration.NUTS(...), got "
                f"{method!r}."
            )
    if nuts_options:
        raise TypeError(
            f"update: unexpected keyword(s) {sorted(nuts_options)}; sampler settings go into "
            "method=calibration.NUTS(...)."
        )
    if method is None:
        return calibration.MAP()
    if not isinstance(method, calibration.MAP | calibration.NUTS):
        raise TypeError(
            f"update: method must be calibration.MAP() or calibration.NUTS(...), got {method!r}."
        )
    return method


# Compiled numerics: module-level jitted functions (`equinox.filter_jit`) that take the
# population model as an argument, so that every twin of an equal model reuses them for the
# same shapes (the dose search is in `_recommend`).


@eqx.filter_jit
def predict_draws(pm: calibration.PopulationModel, theta, cov, regimen, times, eta, solver=None):
    """The observed output at `times` of every draw `eta` `(n_draws, n_eta)` (one compiled
    call per model value and shapes); an ODE model integrated by `solver` (default: the
    population model's own)."""
    if solver is not None and solver is not pm.solver:
        pm = dataclasses.replace(pm, solver=solver)

    def one(e):
        params = pm.individual_params(theta, cov, e)
        return pm.predict(params, regimen, times)

    return jax.vmap(one)(eta)


def with_residual(error, sigma, y, key):
    """`y` as measured: the error model's noise added to every prediction."""
    return error.observe(y, sigma, jax.random.normal(key, y.shape))
