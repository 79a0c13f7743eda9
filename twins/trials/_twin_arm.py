"""A trial arm dosed by each patient's digital twin (model-informed precision dosing).

At each recommendation visit, the patient's `DigitalTwin` (the drug's population model as
prior, the patient's covariates) is given the doses prescribed so far and every level
measured so far (with the drug's assay noise, the same draws as in the other arms), and its
own `recommend` sets the maintenance dose from that day on.

The decisions run on the host: every one is a Bayesian update (MAP + Laplace) and a dose
search over posterior draws, patient by patient, about a second per decision once compiled.
It is meant for hundreds of patients, not millions. The true course is the trial's jitted
engine (`twins.trials._trial.make_runner`, the same program as the scanned arms') run on the
doses decided so far, once per round of decisions (one round per recommendation visit, all
the chunk's patients together) and once at the end; so whatever the trial adds to the
patient, the twin arm gets the same draws by key as the scanned arms:

- **adherence** (`Trial.adherence`): the patient takes the doses the chain, the holidays and
  the dose times say (`Course["taken"]`, `["adherence"]`, `["holiday"]`,
  `["dose_offset_h"]`); the twin is told the doses *prescribed*, at their due time (the
  period start, or `DoseTiming.due_h` after it), as a clinician would be: it does not know
  which doses were missed or when each was taken.
- **within-patient variability** (`Trial.variability`): the patient's true parameters vary
  by occasion and over time (`Course["factors"]`); the twin estimates the patient's
  parameters from the measured levels with the drug's population model (no inter-occasion
  terms): it does not know the per-occasion values.
- **visits** (`Trial.visits`): levels are measured, and the twin decides, only at the visits
  that happened, on the days they happened (a slipped recommendation visit decides from its
  own day; a missed one decides nothing and its level is not given to the twin).
- **curves and exposure**: `Trial.band_points` and AUC/Cmax endpoints as in the other arms.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import numpy as np

import pkpd

from .._twin import DigitalTwin
from ._arms import DosingArm
from ._trial import HostCourse, Trial


@dataclasses.dataclass(frozen=True, eq=False)
class TwinArm(DosingArm):
    """Doses from the twin's `recommend` after each measured level (see the module
    docstring: with `Trial.adherence` the twin is told the doses prescribed, not those
    taken; with `Trial.variability` it does not know the per-occasion parameters; with
    `Trial.visits` it decides at the visits that happened, on their days).

    **Fields** (besides `DosingArm`'s `name`, `label`, `description`, `initial`, `visits`,
    `dose_step`; `rules` must be empty):

    - `target`: the twin's target (a `Target` or the metric name of one of the drug's
      targets; default its first, e.g. INR 2-3 for warfarin, AUC24 400-600 for vancomycin).
    - `recommend_on`: the visit days (1-based) after which the dose is re-set (default every
      visit before the end of the trial).
    - `n_draws`: posterior draws for each recommendation.

    In the trial's engine the arm's `step` is `DosingArm`'s: it gives the doses of the plan
    that `simulate` decides (as loading doses of every period).
    """

    target: Any = None
    recommend_on: tuple[int, ...] | None = None
    n_draws: int = 200
    host_driven: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        if self.rules:
            raise ValueError(
                f"TwinArm {self.name!r}: the twin sets the doses; rules must be empty."
            )
        if self.recommend_on is not None:
            days = [int(d) for d in self.recommend_on]
            missing = sorted({d - 1 for d in days} - set(self.visits))
            if missing:
                raise ValueError(
                    f"TwinArm {self.name!r}: recommend_on days {[d + 1 for d in missing]} are "
                    "not visit days."
                )
        if not (isinstance(self.n_draws, int) and self.n_draws >= 50):
            raise ValueError(f"TwinArm {self.name!r}: n_draws must be an integer >= 50.")

    def describe(self) -> dict[str, Any]:
        target = self.target
        return {
            **super().describe(),
            "rule": "DigitalTwin.recommend after each measured level",
            "target": target if target is None or isinstance(target, str) else repr(target),
            "recommend_on": None if self.recommend_on is None else list(self.recommend_on),
            "n_draws": self.n_draws,
        }

    def check_drug(self, drug) -> None:
        """Called by `Trial`: the target must be one the drug's twin can aim at."""
        if self.target is None or not isinstance(self.target, str):
            if self.target is None and not drug.targets:
                raise ValueError(f"{drug.name} has no targets; give the arm a twins.drugs.Target.")
            return
        metrics = [t.metric.name for t in drug.targets]
        if self.target.lower() not in [m.lower() for m in metrics]:
            raise ValueError(
                f"target {self.target!r} is not one of {drug.name}'s targets {metrics}."
            )

    # --- the simulation ------------------------------------------------------------------

    def simulate(
        self,
        trial: Trial,
        cov: dict[str, np.ndarray],
        params: dict[str, np.ndarray],
        noise_keys: Any,
        course: HostCourse,
    ) -> list[np.ndarray]:
        """The course arrays `(level (n, P + 1), measured (n, V), doses (n, P), *exposure,
        *curve)` of the patients of a chunk, by the trial's engine (`course.run`) under the
        doses decided so far, one round of decisions per recommendation visit."""
        drug = trial.drug
        tau, periods = float(trial.interval), trial.days
        scheduled = np.asarray(self.visits, dtype=int)
        decide = (
            set(scheduled.tolist())
            if self.recommend_on is None
            else {int(d) - 1 for d in self.recommend_on}
        )
        rounds = [j for j, v in enumerate(scheduled.tolist()) if v in decide]
        n = len(cov["ID"])
        state = self.start(cov)
        per_kg = drug.dosing.per_kg
        plan = np.empty((n, periods))
        loading = np.asarray(state["loading"])
        n_load = min(loading.shape[1], periods)
        plan[:, :n_load] = loading[:, :n_load]
        plan[:, n_load:] = np.asarray(state["dose"])[:, None]
        when, attended = np.asarray(course.visit_period), np.asarray(course.attended)
        for j in rounds:
            measured = course.run(plan)[1]
            for i in range(n):
                v = int(when[i, j])
                # A decision needs a dose given before it (not at a baseline visit, period
                # 0) and a period after it; a missed visit decides nothing.
                if not (attended[i, j] and 0 < v < periods):
                    continue
                seen = attended[i, : j + 1]
                patient = {k: x[i] for k, x in cov.items()}
                weight = float(patient["WT"]) if per_kg else 1.0
                twin = DigitalTwin(drug, patient)
                twin.give(_regimen(drug, plan[i, :v], tau, weight, due_h=course.due_h))
                twin.update(
                    times=(when[i, : j + 1][seen] * tau).astype(float).tolist(),
                    values=measured[i, : j + 1][seen].astype(float).tolist(),
                )
                rec = twin.recommend(
                    self.target,
                    interval=tau,
                    start=v * tau + course.due_h,
                    key=jax.random.fold_in(noise_keys[i], 1000 + j),
                    n_draws=self.n_draws,
                )
                plan[i, max(v, n_load) :] = float(self._round(np.asarray(rec.dose * weight)))
        return course.run(plan)


def _regimen(
    drug, plan: np.ndarray, tau: float, weight: float, *, due_h: float = 0.0
) -> pkpd.Regimen:
    """The drug's usual dose form `due_h` hours after the start of every period (amounts in
    mg; a zero amount where a dose is withheld, so that every plan has the same shape)."""
    kw = {"weight": weight} if drug.dosing.per_kg else {}
    reg = None
    for k in range(plan.size):
        one = drug.regimen(
            1, amount=float(plan[k]) / weight, interval=tau, start=k * tau + due_h, **kw
        )
        reg = one if reg is None else reg + one
    assert reg is not None
    return reg
