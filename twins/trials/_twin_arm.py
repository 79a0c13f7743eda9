"""A trial arm dosed by each patient's digital twin (model-informed precision dosing).

At each recommendation visit, the patient's `DigitalTwin` (the drug's population model as
prior, the patient's covariates) is given the doses received so far and every level measured
so far (with the drug's assay noise, the same draws as in the other arms), and its own
`recommend` sets the maintenance dose from that day on.

Unlike the other arms this one is not a jitted scan: every decision runs a Bayesian update
(MAP + Laplace) and a dose search over posterior draws, patient by patient on the host, so
it takes about a second per decision once compiled. It is meant for hundreds of patients,
not millions; the true course in between is simulated with `pkpd.simulate` and the trial's
solver (the same numbers as the jitted engine, to the solver's rounding).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

import pkpd

from .._twin import DigitalTwin
from ._arms import DosingArm
from ._trial import Trial


@dataclasses.dataclass(frozen=True, eq=False)
class TwinArm(DosingArm):
    """Doses from the twin's `recommend` after each measured level.

    **Fields** (besides `DosingArm`'s `name`, `label`, `description`, `initial`, `visits`,
    `dose_step`; `rules` must be empty):

    - `target`: the twin's target (a `Target` or the metric name of one of the drug's
      targets; default its first, e.g. INR 2-3 for warfarin, AUC24 400-600 for vancomycin).
    - `recommend_on`: the visit days (1-based) after which the dose is re-set (default every
      visit before the end of the trial).
    - `n_draws`: posterior draws for each recommendation.
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

    def step(self, period, measured, is_visit, state):  # pragma: no cover - host driven
        raise TypeError(f"TwinArm {self.name!r} is simulated on the host, not in a scan.")

    # --- the simulation ------------------------------------------------------------------

    def simulate(
        self,
        trial: Trial,
        cov: dict[str, np.ndarray],
        params: dict[str, np.ndarray],
        noise_keys: Any,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(level (n, P + 1), measured (n, V), doses (n, P))` for the patients of a chunk."""
        if trial.needs_exposure:
            raise ValueError(
                f"Trial {trial.name!r}, arm {self.name!r}: AUC and Cmax endpoints are not "
                "available with a TwinArm yet."
            )
        drug = trial.drug
        model = drug.model.model
        out_idx = trial.output_index
        error = drug.model.error
        sigma = {k: float(getattr(error, k)) for k in error.names}
        tau, periods = float(trial.interval), trial.days
        visits = np.asarray(self.visits, dtype=int)
        decide = (
            set(visits.tolist())
            if self.recommend_on is None
            else {int(d) - 1 for d in self.recommend_on}
        )
        # A decision needs a dose given before it: not at a baseline visit (period 0).
        decide = {v for v in decide if 0 < v < periods}
        n = len(cov["ID"])
        state = self.start(cov)
        eps = np.asarray(
            jax.vmap(lambda k: jax.random.normal(k, (max(visits.size, 1),)))(noise_keys)
        )
        times = jnp.arange(periods + 1, dtype=float) * tau
        per_kg = drug.dosing.per_kg
        level = np.empty((n, periods + 1))
        measured = np.empty((n, visits.size))
        doses = np.empty((n, periods))
        for i in range(n):
            p = {k: jnp.asarray(v[i]) for k, v in params.items()}
            patient = {k: v[i] for k, v in cov.items()}
            weight = float(patient["WT"]) if per_kg else 1.0
            plan = np.empty(periods)
            loading = state["loading"][i]
            n_load = min(loading.size, periods)
            plan[:n_load] = loading[:n_load]
            plan[n_load:] = state["dose"][i]

            def course(plan, p=p, weight=weight):
                reg = _regimen(drug, plan, tau, weight)
                y = pkpd.simulate(model, p, reg, times, solver=trial.solver)
                return np.asarray(y if y.ndim == 1 else y[:, out_idx])

            values: list[float] = []
            for j, v in enumerate(visits):
                y = course(plan)[v]
                values.append(float(error.observe(jnp.asarray(y), sigma, eps[i, j])))
                if v not in decide:
                    continue
                twin = DigitalTwin(drug, patient)
                twin.give(_regimen(drug, plan[:v], tau, weight))
                twin.update(times=(visits[: j + 1] * tau).astype(float).tolist(), values=values)
                rec = twin.recommend(
                    self.target,
                    interval=tau,
                    start=float(v * tau),
                    key=jax.random.fold_in(noise_keys[i], 1000 + j),
                    n_draws=self.n_draws,
                )
                new = float(self._round(np.asarray(rec.dose * weight)))
                plan[max(v, n_load) :] = new
            level[i] = course(plan)
            measured[i] = values
            doses[i] = plan
        return level, measured, doses


def _regimen(drug, plan: np.ndarray, tau: float, weight: float) -> pkpd.Regimen:
    """The drug's usual dose form at the start of every period (amounts in mg; a zero
    amount where a dose is withheld, so that every plan has the same shape)."""
    kw = {"weight": weight} if drug.dosing.per_kg else {}
    reg = None
    for k in range(plan.size):
        one = drug.regimen(1, amount=float(plan[k]) / weight, interval=tau, start=k * tau, **kw)
        reg = one if reg is None else reg + one
    assert reg is not None
    return reg
